"""The RATELIMIT settings dict: every default with one comment, read lazily."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from functools import cache
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Redis URL for the limiter (redis://, rediss://, unix://). None: use the
    # django-redis cache named by CACHE_ALIAS.
    "REDIS_URL": None,
    # django-redis cache alias used when REDIS_URL is not set.
    "CACHE_ALIAS": "default",
    # Prefix of every Redis key; the key layout version is appended to it.
    "KEY_PREFIX": "rl:",
    # Secret for the keyed hash of identities. None: derived from SECRET_KEY
    # (rotating SECRET_KEY then starts every client with fresh counters).
    "KEY_SECRET": None,
    # Number of hash-tag shards; all keys of one identity share one shard, so
    # every decision for a client is one call even on Redis Cluster.
    "SHARDS": 1024,
    # Off: no request is counted or limited (e.g. in development).
    "ENABLED": True,
    # Policies declared in settings: dicts with the Policy model's fields (a
    # database row with the same name overrides one).
    "POLICIES": [],
    # Seconds between checks that this process's policy copy is current; an
    # admin edit reaches every process within this time.
    "POLICY_REFRESH_INTERVAL": 1.0,
    # Paths never counted (health checks); globs, * matches anything.
    "EXEMPT_PATHS": [],
    # Count OPTIONS requests (CORS preflight) too.
    "COUNT_OPTIONS": False,
    # Also send X-RateLimit-Limit / -Remaining / -Reset (delta seconds).
    "LEGACY_HEADERS": False,
    # A view(request, exception), or its dotted path, rendering blocked responses.
    "VIEW": None,
    # Seconds a process caches a user's group names (group exemptions, tiers).
    "GROUPS_CACHE_SECONDS": 30,
    # Export Prometheus counters (decisions, fallbacks, Redis errors) when
    # prometheus_client is installed; off: never import it, count nothing.
    "METRICS": True,
    # Count usage (allowed, blocked, shadow-blocked, cost per policy and
    # minute) inside the decision script, for the stats drained by Celery.
    "COUNT_USAGE": True,
    # Seconds live usage counters (and batches a failed drain left behind) stay
    # in Redis after their last write: a Celery outage longer than this loses counts.
    "USAGE_TTL": 7 * 24 * 3600,
    # Seconds minute rows are kept once rolled up (at least a day; None: forever).
    "USAGE_MINUTE_RETENTION": 3 * 24 * 3600,
    # Seconds hour rows are kept once rolled up; at least a day longer than
    # USAGE_MINUTE_RETENTION (None: forever).
    "USAGE_HOUR_RETENTION": 90 * 24 * 3600,
    # Seconds day rows are kept (None: forever).
    "USAGE_DAY_RETENTION": 730 * 24 * 3600,
    # Identities with the most denials kept per shard between two drains
    # (the live offenders set drops its lowest member beyond this).
    "USAGE_OFFENDERS_PER_SHARD": 50,
    # Offender rows kept per policy and hour in the database (the most denied).
    "USAGE_OFFENDERS_KEPT": 100,
    # Proxies whose X-Forwarded-For to believe: their count in front of Django
    # (1 behind one load balancer), or a list of their networks. 0 or []:
    # ignore the header and use REMOTE_ADDR (a client could forge it).
    "TRUSTED_PROXIES": 0,
    # Prefix length counting IPv4 clients together (32: each address).
    "IPV4_PREFIX": 32,
    # Prefix length counting IPv6 clients together: one host usually owns a /64.
    "IPV6_PREFIX": 64,
    # What a policy does when Redis fails, unless it says otherwise: "open"
    # (allow), "closed" (deny with 503 and Retry-After) or "local" (an
    # in-process limiter at the policy's fallback rate).
    "FAIL_MODE": "open",
    # Clients the "local" fail mode remembers per process (least recently seen
    # forgotten first, ~200 bytes each); a forgotten client starts afresh.
    "FALLBACK_MAX_KEYS": 10_000,
    # Answer a client Redis denied locally until its retry_after has passed,
    # without calling Redis (per process; resets, exemptions and policy edits
    # reach every process within POLICY_REFRESH_INTERVAL). See deny_cache.
    "DENY_CACHE": True,
    # Denials the deny cache remembers per process (least recently denied
    # forgotten first, ~300 bytes each); a forgotten one asks Redis again.
    "DENY_CACHE_MAX_KEYS": 10_000,
    # Token leasing (policies with lease on; see leases): the longest a lease
    # lives (a fixed_window lease also ends with its window). Token bucket and
    # GCRA may admit up to rate x this more over an interval than exactly.
    "LEASE_MAX_SECONDS": 0.5,
    # The largest lease as a share of the rule's capacity; at most processes x
    # this much can sit unused in leases (possible under-admission).
    "LEASE_MAX_SHARE": 0.05,
    # Leases a process keeps (least recently granted given back first).
    "LEASE_MAX_KEYS": 10_000,
    # Redis errors within BREAKER_WINDOW seconds that open the circuit breaker:
    # Redis is then not called for BREAKER_COOLDOWN seconds (the fail modes
    # decide at once), then one request probes it.
    "BREAKER_THRESHOLD": 5,
    "BREAKER_WINDOW": 10.0,
    "BREAKER_COOLDOWN": 2.0,
    # Seconds between two log lines about the same kind of Redis error.
    "FAILURE_LOG_INTERVAL": 10.0,
    # Seconds to open a connection to Redis (a TCP connect and the handshake).
    "REDIS_CONNECT_TIMEOUT": 0.5,
    # Seconds to wait for a reply; past it the fail modes decide.
    "REDIS_SOCKET_TIMEOUT": 0.5,
    # Extra attempts to open a connection (refused or reset while connecting);
    # commands are never retried, so a request never consumes twice.
    "REDIS_CONNECT_RETRIES": 1,
    # Connections per process (and per event loop for asyncio); past it a
    # request gets the fail modes at once instead of waiting.
    "REDIS_MAX_CONNECTIONS": 100,
    # Seconds a pooled connection may stay idle before a PING checks it on
    # its next use (0: never).
    "REDIS_HEALTH_CHECK_INTERVAL": 30,
}

# Bumped when the key layout changes, so old and new releases can run side by
# side during a rolling upgrade without reading each other's state.
KEY_LAYOUT_VERSION = "1"

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")


@cache
def get_settings() -> dict[str, Any]:
    """The merged RATELIMIT settings; cached until Django reports a change."""
    user = getattr(django_settings, "RATELIMIT", None) or {}
    if not isinstance(user, dict):
        raise ImproperlyConfigured(
            "settings.RATELIMIT must be a dict, e.g. RATELIMIT = {'REDIS_URL': "
            f"'redis://127.0.0.1:6379/0'}}; got {type(user).__name__}."
        )
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown RATELIMIT setting(s): {', '.join(unknown)}. "
            f"Known settings: {', '.join(sorted(DEFAULTS))}."
        )
    return {**DEFAULTS, **user}


def get(name: str) -> Any:
    return get_settings()[name]


def key_prefix() -> str:
    """The configured prefix plus the key layout version, e.g. ``rl:1:``."""
    prefix = get("KEY_PREFIX")
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ImproperlyConfigured(
            f"RATELIMIT['KEY_PREFIX'] = {prefix!r} is not allowed: use up to 64 "
            "characters from A-Z a-z 0-9 _ . : - (braces would break the "
            "Redis Cluster hash tag)."
        )
    return f"{prefix}{KEY_LAYOUT_VERSION}:"


def key_secret() -> bytes:
    """The secret for hashing identities into keys."""
    secret = get("KEY_SECRET")
    if secret is None:
        base = django_settings.SECRET_KEY.encode()
        return hmac.digest(base, b"ratelimit_app.identity-key", hashlib.sha256)
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ImproperlyConfigured(
            "RATELIMIT['KEY_SECRET'] must be a str or bytes of at least 16 "
            "characters; leave it unset to derive one from SECRET_KEY."
        )
    return secret


def shard_count() -> int:
    shards = get("SHARDS")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ImproperlyConfigured(
            f"RATELIMIT['SHARDS'] = {shards!r}: use a positive integer (default 1024)."
        )
    return shards


FAIL_MODES = ("open", "closed", "local")


def fail_mode() -> str:
    """The default fail mode of policies and limiter calls."""
    mode = get("FAIL_MODE")
    if mode not in FAIL_MODES:
        raise ImproperlyConfigured(
            f"RATELIMIT['FAIL_MODE'] = {mode!r}: use one of "
            f"{', '.join(map(repr, FAIL_MODES))} (default 'open')."
        )
    return mode


# Numeric settings of the failure handling: (name, smallest allowed, integer).
_NUMBERS = (
    ("FALLBACK_MAX_KEYS", 1, True),
    ("BREAKER_THRESHOLD", 1, True),
    ("BREAKER_WINDOW", 0.001, False),
    ("BREAKER_COOLDOWN", 0, False),
    ("FAILURE_LOG_INTERVAL", 0, False),
    ("REDIS_CONNECT_TIMEOUT", 0.001, False),
    ("REDIS_SOCKET_TIMEOUT", 0.001, False),
    ("REDIS_CONNECT_RETRIES", 0, True),
    ("REDIS_MAX_CONNECTIONS", 1, True),
    ("REDIS_HEALTH_CHECK_INTERVAL", 0, False),
    ("LEASE_MAX_SECONDS", 0.001, False),
    ("LEASE_MAX_SHARE", 0.0001, False),
    ("LEASE_MAX_KEYS", 1, True),
)
# Settings that are shares: at most 1.
_SHARES = frozenset({"LEASE_MAX_SHARE"})


def number(name: str) -> int | float:
    """A numeric failure-handling setting, checked against its lower bound."""
    _, low, integer = next(n for n in _NUMBERS if n[0] == name)
    value = get(name)
    kinds = int if integer else (int, float)
    high = 1 if name in _SHARES else math.inf
    if (
        not isinstance(value, kinds)
        or isinstance(value, bool)
        or not low <= value <= high
    ):
        kind = "an integer" if integer else "a number"
        most = f" and at most {high}" if high < math.inf else ""
        raise ImproperlyConfigured(
            f"RATELIMIT[{name!r}] = {value!r}: use {kind} of at least {low}"
            f"{most} (default {DEFAULTS[name]!r})."
        )
    return value


@cache
def lease_settings() -> tuple[float, float, int]:
    """(LEASE_MAX_SECONDS in ms, LEASE_MAX_SHARE, LEASE_MAX_KEYS), checked;
    cached, as the leased hot path reads them on every grant."""
    return (
        number("LEASE_MAX_SECONDS") * 1000,
        number("LEASE_MAX_SHARE"),
        number("LEASE_MAX_KEYS"),
    )


def failure_settings() -> None:
    """Check every failure-handling setting (the system check calls this)."""
    fail_mode()
    for name, _, _ in _NUMBERS:
        number(name)


_listeners: list = []


def on_change(callback) -> None:
    """Register a callback run whenever RATELIMIT (or SECRET_KEY) changes."""
    _listeners.append(callback)


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("RATELIMIT", "SECRET_KEY", "CACHES"):
        get_settings.cache_clear()
        lease_settings.cache_clear()
        for callback in _listeners:
            callback()


def connect_signals() -> None:
    setting_changed.connect(_reset, dispatch_uid="ratelimit_app.conf.reset")
