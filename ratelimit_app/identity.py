"""Who the client is for a policy: ip, user, header, parameter, session or callable."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

from django.http import HttpRequest
from django.utils.module_loading import import_string

from .addresses import client_network

# A request without the key's value (absent header or parameter) counts in
# one shared bucket per policy, so omitting the value never bypasses a limit.
MISSING = "\x00missing"

SIMPLE_KEYS = ("ip", "user", "user_or_ip", "session")
PREFIXED_KEYS = ("header", "get", "post")

KEY_GRAMMAR = (
    "ip, user, user_or_ip, session, header:<name>, get:<name>, post:<name>, "
    "or a dotted path to a callable(request) returning a string"
)


def check_key(key: str) -> None:
    """Raise ValueError saying what is wrong with a key type."""
    key_function(key)


@lru_cache(maxsize=512)
def key_function(key: str) -> Callable[[HttpRequest], str]:
    """The function that extracts the identity for a key type."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"Empty key type: use one of {KEY_GRAMMAR}.")
    key = key.strip()
    if key in SIMPLE_KEYS:
        return _SIMPLE[key]
    kind, sep, name = key.partition(":")
    if sep and kind in PREFIXED_KEYS:
        if not name:
            raise ValueError(
                f"Key {key!r} needs a name after the colon, e.g. {kind}:x-api-key."
            )
        return _prefixed(kind, name)
    if "." in key and not sep:
        return _callable(key)
    raise ValueError(f"Unknown key type {key!r}: use one of {KEY_GRAMMAR}.")


def client_ip(request: HttpRequest) -> str:
    """The client's address, grouped (IPv6 by /64 by default); MISSING when
    REMOTE_ADDR (or the trusted X-Forwarded-For entry) is absent or malformed.

    See ``addresses`` for RATELIMIT['TRUSTED_PROXIES'] and the prefixes.
    """
    return client_network(request) or MISSING


def _user(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_ip(request)}"


def _session(request: HttpRequest) -> str:
    session = getattr(request, "session", None)
    return (session and session.session_key) or MISSING


_SIMPLE: dict[str, Callable[[HttpRequest], str]] = {
    "ip": client_ip,
    "user": _user,
    "user_or_ip": _user,
    "session": _session,
}


def _prefixed(kind: str, name: str) -> Callable[[HttpRequest], str]:
    if kind == "header":
        meta_name = "HTTP_" + name.upper().replace("-", "_")
        if meta_name in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            meta_name = meta_name[5:]
        return lambda request: request.META.get(meta_name) or MISSING
    if kind == "get":
        return lambda request: request.GET.get(name) or MISSING
    return lambda request: _post_value(request, name)


def _post_value(request: HttpRequest, name: str) -> str:
    try:
        return request.POST.get(name) or MISSING
    except Exception:  # an unparsable body must not become a 500
        return MISSING


def _callable(path: str) -> Callable[[HttpRequest], str]:
    try:
        function = import_string(path)
    except ImportError as exc:
        raise ValueError(
            f"Key {path!r} is not an importable callable ({exc}); use one of "
            f"{KEY_GRAMMAR}."
        ) from exc
    if not callable(function):
        raise ValueError(
            f"Key {path!r} names {type(function).__name__}, not a callable."
        )
    return lambda request: _call_key(function, request)


def _call_key(function: Callable, request: HttpRequest) -> str:
    value = function(request)
    if value is None or value == "":
        return MISSING
    return value if isinstance(value, str | bytes | int) else str(value)


def identify(key: str, request: HttpRequest) -> str:
    """The identity of the request's client for a key type."""
    return key_function(key)(request)


# -- display labels (top offenders) ---------------------------------------------

# Labels travel inside a Redis member name split on "|"; keep them short.
MAX_LABEL_LENGTH = 64
MISSING_LABEL = "(no key value)"


def display_label(identity: str | bytes | int) -> str:
    """What the stats may show for an identity; see ``_label``. Long
    identities skip the cache, so its memory stays bounded."""
    if not isinstance(identity, str):
        return ""
    if len(identity) > _CACHED_LABEL_LENGTH:
        return _label(identity)
    return _cached_label(identity)


# Addresses and user ids are short; anything longer gets no useful label.
_CACHED_LABEL_LENGTH = 256


def _label(identity: str) -> str:
    """What the stats may show for an identity without exposing it.

    A masked address (``203.0.113.x``; an IPv6 /64 shown as its /48), a
    user id (``user 42``), or "" for anything else (header and parameter
    values, sessions, custom keys may be secrets), which the dashboard shows
    as the start of the keyed hash instead.
    """
    kind, sep, value = identity.partition(":")
    if sep and kind == "user":
        return _clean_label(f"user {value}")
    if sep and kind == "ip":
        identity = value
    if identity == MISSING:
        return MISSING_LABEL
    return _clean_label(masked_ip(identity))


_cached_label = lru_cache(maxsize=8192)(_label)


def masked_ip(text: str) -> str:
    """``203.0.113.x`` for an IPv4 address or a /24 or narrower (IPV4_PREFIX),
    the /48 for IPv6, else ""."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return ""
    if network.version == 4:
        if network.prefixlen < 24:
            return ""
        head, _, _ = str(network.network_address).rpartition(".")
        return f"{head}.x"
    if network.prefixlen < 48:
        return ""
    return str(network.supernet(new_prefix=48))


def _clean_label(label: str) -> str:
    label = label[:MAX_LABEL_LENGTH]  # first: a label may come from a huge identity
    return "".join(c if c.isprintable() and c != "|" else "?" for c in label)
