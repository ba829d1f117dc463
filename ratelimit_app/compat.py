"""A drop-in for django-ratelimit 4.x: its decorator, functions and exception.

Migrate by changing the import: ``from django_ratelimit.decorators import
ratelimit`` becomes ``from ratelimit_app.compat import ratelimit``; likewise
``is_ratelimited``, ``get_usage``, ``Ratelimited``, ``ALL``, ``UNSAFE`` and
``RatelimitMiddleware``. This module only parses django-ratelimit's argument
forms; counting is the engine's fixed window (django-ratelimit's algorithm),
on Redis, atomically. docs/compat.md lists where the semantics differ and why.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.utils.module_loading import import_string
from redis.exceptions import RedisError

from . import conf, identity, limiter
from .fallback import is_fallback
from .headers import whole_seconds
from .rates import Rate
from .types import Decision

__all__ = [
    "ALL",
    "UNSAFE",
    "RatelimitMiddleware",
    "Ratelimited",
    "get_usage",
    "is_ratelimited",
    "ratelimit",
]

ALL = (None,)  # every method; equal to django_ratelimit.ALL, so either works
UNSAFE = ["DELETE", "PATCH", "POST", "PUT"]

ALGORITHM = "fixed_window"  # django-ratelimit counts in fixed windows
SIMPLE_KEYS = ("ip", "user", "user_or_ip")
PREFIXED_KEYS = ("header", "get", "post")
# django-ratelimit's rate grammar, matched at the start of the string (as it
# does): "<count>/<n><unit>", n optional, unit s, m, h or d (default s).
_RATE_RE = re.compile(r"(\d+)/(\d*)([smhd])?")
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
Parsed = tuple[int, int | float]  # (count, seconds)
RATE_GRAMMAR = (
    "'<count>/<n><unit>' with unit s, m, h or d (e.g. '5/m', '100/5m'), a "
    "(count, seconds) tuple, a callable(group, request) or a dotted path to one"
)


class Ratelimited(PermissionDenied):
    """Raised by ``@ratelimit(block=True)``: a PermissionDenied, so a 403."""


def ratelimit(group=None, key=None, rate=None, method=ALL, block=True):
    """django-ratelimit's decorator: count every matching request, then limit.

    Sets ``request.limited`` (True once any decorator limited the request)
    and, when limited and ``block``, raises ``Ratelimited`` (or
    ``settings.RATELIMIT_EXCEPTION_CLASS``). Async views work too.
    """

    def decorator(fn):
        def enforce(request) -> None:
            limited = is_ratelimited(request, group, fn, key, rate, method, True)
            request.limited = limited or getattr(request, "limited", False)
            if limited and block:
                raise exception_class()()

        if iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapped(request, *args, **kwargs):
                # Key functions may read request.user: a database query.
                await sync_to_async(enforce)(request)
                return await fn(request, *args, **kwargs)

            return async_wrapped

        @functools.wraps(fn)
        def wrapped(request, *args, **kwargs):
            enforce(request)
            return fn(request, *args, **kwargs)

        return wrapped

    return decorator


def is_ratelimited(
    request, group=None, fn=None, key=None, rate=None, method=ALL, increment=False
) -> bool:
    """Should this request be limited? ``increment`` counts it too."""
    usage = get_usage(request, group, fn, key, rate, method, increment)
    return usage is not None and usage["should_limit"]


def get_usage(
    request, group=None, fn=None, key=None, rate=None, method=ALL, increment=False
) -> dict | None:
    """``{count, limit, should_limit, time_left}``, or None when not limited.

    None: limits are off, the method does not match, or the rate is None.
    ``increment=True`` consumes one unit (when there is one); ``False`` peeks,
    and ``should_limit`` then says whether one more request would be limited.
    """
    if group is None and fn is None:
        raise ImproperlyConfigured(
            "get_usage must be called with either `group` or `fn` arguments."
        )
    if not enabled() or not method_matches(request, method):
        return None
    if group is None:
        group = default_group(fn)
    parsed = resolve_rate(rate, group, request)
    if parsed is None:
        return None
    client = client_identity(key, group, request)
    return measure(scope_of(group, parsed, method), client, parsed, increment)


def measure(scope: str, client, parsed: Parsed, increment: bool) -> dict | None:
    """One engine call; django-ratelimit's answers for "0/m" and for failures."""
    count, seconds = parsed
    if count == 0:  # blocks everything; the engine's rates start at 1
        return {
            "count": 0,
            "limit": 0,
            "should_limit": True,
            "time_left": whole_seconds(seconds),
        }
    rate = Rate(count, round(seconds * 1000))
    try:
        if increment:  # django-ratelimit's own failure answers, below
            decision = limiter.hit(scope, client, rate, algorithm=ALGORITHM)
        else:
            decision = limiter.peek(scope, client, rate, algorithm=ALGORITHM)
    except RedisError:
        return redis_failed()
    except ValueError as exc:  # the engine's own bounds, e.g. a huge rate
        raise ImproperlyConfigured(f"Ratelimit rate {parsed!r}: {exc}") from exc
    return redis_failed() if is_fallback(decision) else usage_of(decision)


def redis_failed() -> dict | None:
    """django-ratelimit's answer when the cache fails: closed, unless
    RATELIMIT_FAIL_OPEN."""
    if getattr(settings, "RATELIMIT_FAIL_OPEN", False):
        return None
    return {"count": 0, "limit": 0, "should_limit": True, "time_left": -1}


def usage_of(decision: Decision) -> dict:
    """django-ratelimit's usage dict from a fixed-window decision.

    A denied request consumes nothing, so ``count`` stops at ``limit``; the
    window's end is ``reset_after`` when allowed and ``retry_after`` when not.
    """
    wait = decision.reset_after if decision.allowed else decision.retry_after
    return {
        "count": decision.limit - decision.remaining,
        "limit": decision.limit,
        "should_limit": not decision.allowed,
        "time_left": whole_seconds(decision.reset_after if wait is None else wait),
    }


# -- argument forms ------------------------------------------------------------


def enabled() -> bool:
    """RATELIMIT['ENABLED'], and django-ratelimit's RATELIMIT_ENABLE if set."""
    return bool(conf.get("ENABLED") and getattr(settings, "RATELIMIT_ENABLE", True))


def exception_class() -> type[Exception]:
    cls = getattr(settings, "RATELIMIT_EXCEPTION_CLASS", Ratelimited)
    return import_string(cls) if isinstance(cls, str) else cls


def methods_of(method) -> list[str] | None:
    """The upper-cased methods, or None for every method."""
    if method is None or method == ALL:
        return None
    return [m.upper() for m in ([method] if isinstance(method, str) else method)]


def method_matches(request, method) -> bool:
    methods = methods_of(method)
    return methods is None or request.method in methods


def default_group(fn) -> str:
    """The view's dotted name, built as django-ratelimit builds it.

    For ``method_decorator`` the function is a partial of a bound method, so
    the class name appears twice: ``module.View.View.get``.
    """
    if isinstance(fn, functools.partial):
        fn = fn.func
    parts = [getattr(fn, "__module__", None)]
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        parts.append(type(owner).__name__)
    parts.append(fn.__qualname__)
    return ".".join(part for part in parts if part)


def scope_of(group: str, parsed: Parsed, method) -> str:
    """One counter per group, rate and methods, as django-ratelimit keys them.

    So stacked decorators with different rates on one view count apart.
    """
    methods = ",".join(sorted(methods_of(method) or ()))
    return f"compat:{group}:{parsed[0]}/{parsed[1]}s:{methods}"


def resolve_rate(rate, group: str, request) -> Parsed | None:
    """(count, seconds), or None for no limit."""
    if callable(rate):
        rate = rate(group, request)
    elif isinstance(rate, str) and "." in rate:
        rate = imported(rate, "rate")(group, request)
    return None if rate is None else split_rate(rate)


def split_rate(rate) -> Parsed:
    if isinstance(rate, tuple) and len(rate) == 2:
        count, seconds = rate
    elif isinstance(rate, str) and (match := _RATE_RE.match(rate)):
        count, multiplier, unit = match.groups()
        count, seconds = int(count), _PERIODS[unit or "s"] * int(multiplier or 1)
    else:
        raise ImproperlyConfigured(
            f"Invalid ratelimit rate {rate!r}: use {RATE_GRAMMAR}."
        )
    if not _is_number(count, int) or count < 0 or not _is_number(seconds, int | float):
        raise ImproperlyConfigured(
            f"Invalid ratelimit rate {rate!r}: use {RATE_GRAMMAR}."
        )
    if round(seconds * 1000) < 1:
        raise ImproperlyConfigured("Ratelimit period must be greater than 0")
    return count, seconds


def _is_number(value, kind) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def client_identity(key, group: str, request):
    """The counted value for django-ratelimit's key forms."""
    if not key:
        raise ImproperlyConfigured("Ratelimit key must be specified")
    if callable(key):
        value = key(group, request)
    elif not isinstance(key, str):
        raise ImproperlyConfigured(f"Could not understand ratelimit key: {key!r}")
    elif key in SIMPLE_KEYS or key.partition(":")[0] in PREFIXED_KEYS:
        try:
            function = identity.key_function(key)
        except ValueError as exc:  # e.g. "header:" without a name
            raise ImproperlyConfigured(f"Invalid ratelimit key: {exc}") from exc
        value = function(request)
    elif ":" in key:
        raise ImproperlyConfigured(f"Unknown ratelimit key: {key}")
    elif "." in key:
        value = imported(key, "key")(group, request)
    else:
        raise ImproperlyConfigured(f"Could not understand ratelimit key: {key}")
    return as_identity(value)


def as_identity(value):
    """Absent values share one bucket (as django-ratelimit's '' does)."""
    if value is None or value == "":
        return identity.MISSING
    if isinstance(value, str | bytes | int) and not isinstance(value, bool):
        return value
    return str(value)


@functools.lru_cache(maxsize=256)
def imported(path: str, what: str) -> Callable:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"Ratelimit {what} {path!r} is not an importable callable: {exc}"
        ) from exc


class RatelimitMiddleware:
    """Renders ``Ratelimited`` with ``settings.RATELIMIT_VIEW(request, exc)``."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, Ratelimited):
            return None
        return import_string(settings.RATELIMIT_VIEW)(request, exception)


for _function in (ratelimit, is_ratelimited, get_usage):
    _function.ALL, _function.UNSAFE = ALL, UNSAFE  # django-ratelimit's aliases
