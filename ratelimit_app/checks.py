"""System checks: the RATELIMIT settings, the Redis setup and the middleware order.

Ids, messages and hints are constants that the tests reuse. Checks do no I/O:
they never touch Redis or the database, they only import dotted paths.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import conf
from .addresses import address_settings
from .backends.topology import CLUSTER_SCHEME, SENTINEL_SCHEME, STANDALONE_SCHEMES
from .enforcement import needs_user
from .policies import CompiledPolicy, PolicySpec, compile_spec

TAG = "ratelimit_app"
MIDDLEWARE_PATH = "ratelimit_app.middleware.RateLimitMiddleware"
AUTH_MIDDLEWARE_PATH = "django.contrib.auth.middleware.AuthenticationMiddleware"
SESSION_MIDDLEWARE_PATH = "django.contrib.sessions.middleware.SessionMiddleware"
# Every scheme client_from_url accepts (standalone, Sentinel, Cluster).
REDIS_SCHEMES = (*STANDALONE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME)


class Codes:
    SETTINGS_NOT_DICT = "ratelimit_app.E001"
    UNKNOWN_SETTINGS = "ratelimit_app.E002"
    INVALID_SETTING = "ratelimit_app.E003"
    NO_REDIS = "ratelimit_app.E004"
    INVALID_POLICY = "ratelimit_app.E005"
    VIEW_NOT_IMPORTABLE = "ratelimit_app.E006"
    VIEW_NOT_CALLABLE = "ratelimit_app.E007"
    INVALID_EXEMPT_PATHS = "ratelimit_app.E008"
    INVALID_REFRESH_INTERVAL = "ratelimit_app.E009"
    MIDDLEWARE_MISSING = "ratelimit_app.W001"
    MIDDLEWARE_ORDER = "ratelimit_app.W002"
    DEPENDENCY_MISSING = "ratelimit_app.W003"
    DUPLICATE_POLICY = "ratelimit_app.W004"


class Messages:
    SETTINGS_NOT_DICT = "settings.RATELIMIT must be a dict, not {type}."
    UNKNOWN_SETTINGS = "Unknown RATELIMIT setting(s): {names}."
    # Also used for the ImproperlyConfigured messages of conf.py, verbatim.
    INVALID_SETTING = "RATELIMIT[{name!r}] = {value!r}: {advice}"
    NO_REDIS = (
        "ratelimit_app has no Redis: RATELIMIT['REDIS_URL'] is not set and "
        "CACHES[{alias!r}] is not a django-redis cache."
    )
    INVALID_POLICY = "RATELIMIT['POLICIES'][{index}] ({name}) is invalid: {problem}"
    VIEW_NOT_IMPORTABLE = "RATELIMIT['VIEW'] = {value!r} cannot be imported: {problem}"
    VIEW_NOT_CALLABLE = (
        "RATELIMIT['VIEW'] = {value!r} is not callable as view(request, exception)."
    )
    INVALID_EXEMPT_PATHS = (
        "RATELIMIT['EXEMPT_PATHS'] must be a list of path globs (strings), "
        "got {value!r}."
    )
    INVALID_REFRESH_INTERVAL = (
        "RATELIMIT['POLICY_REFRESH_INTERVAL'] must be a positive number of "
        "seconds, got {value!r}."
    )
    MIDDLEWARE_MISSING = (
        "RateLimitMiddleware is not in MIDDLEWARE, so these routed policies "
        "never apply: {names}."
    )
    MIDDLEWARE_ORDER = (
        "RateLimitMiddleware comes before {dependency} in MIDDLEWARE, but "
        "policies {names} read request.{attribute}: {consequence}."
    )
    DEPENDENCY_MISSING = (
        "{dependency} is not in MIDDLEWARE, but policies {names} read "
        "request.{attribute}: {consequence}."
    )
    DUPLICATE_POLICY = (
        "RATELIMIT['POLICIES'] declares {name!r} more than once; only the last "
        "entry applies."
    )


class Hints:
    SETTINGS_NOT_DICT = (
        "Use a dict, e.g. RATELIMIT = {'REDIS_URL': 'redis://127.0.0.1:6379/0'}."
    )
    UNKNOWN_SETTINGS = "Check the spelling. Known settings: {known}."
    INVALID_SETTING = (
        "Each setting's default and meaning is documented in "
        "ratelimit_app/conf.py (DEFAULTS)."
    )
    NO_REDIS = (
        "Set RATELIMIT['REDIS_URL'] (e.g. 'redis://127.0.0.1:6379/0'), or "
        "configure that cache with BACKEND 'django_redis.cache.RedisCache', or "
        "point RATELIMIT['CACHE_ALIAS'] at such a cache."
    )
    INVALID_POLICY = (
        "Each entry is a dict of Policy fields, e.g. {'name': 'login', "
        "'rate': '5/m', 'url_name': 'login', 'methods': 'POST'}. Until it is "
        "fixed, every process skips this entry and logs an error."
    )
    VIEW_NOT_IMPORTABLE = (
        "Give the dotted path of a view(request, exception), e.g. "
        "'myproject.views.rate_limited', or None for the built-in 429 response."
    )
    VIEW_NOT_CALLABLE = VIEW_NOT_IMPORTABLE
    INVALID_EXEMPT_PATHS = (
        "e.g. ['/health/', '/static/*'], where * matches any characters."
    )
    INVALID_REFRESH_INTERVAL = (
        "The default is 1.0: an admin edit reaches every process within that "
        "many seconds."
    )
    MIDDLEWARE_MISSING = (
        f"Add '{MIDDLEWARE_PATH}' to MIDDLEWARE after AuthenticationMiddleware, "
        "or drop url_name, view, path and path_regex from policies that you "
        "only apply with @rate_limit."
    )
    MIDDLEWARE_ORDER = f"Move '{MIDDLEWARE_PATH}' below '{{dependency}}'."
    DEPENDENCY_MISSING = (
        f"Add '{{dependency}}' to MIDDLEWARE, above '{MIDDLEWARE_PATH}'."
    )
    DUPLICATE_POLICY = "Give each entry its own name, or merge the entries."


class Advice:
    """The {advice} of Messages.INVALID_SETTING, per setting."""

    REDIS_URL = (
        "use a redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// "
        "URL, or None."
    )
    CACHE_ALIAS = "use the name of a cache in CACHES."
    BOOLEAN = "use True or False."
    GROUPS_CACHE_SECONDS = "use a number of seconds, 0 or more."
    POLICIES = "use a list of dicts."


@dataclass(frozen=True)
class Dependency:
    """A middleware that sets a request attribute some policies read."""

    path: str
    attribute: str
    consequence: str
    needed_by: Callable[[CompiledPolicy], bool]


DEPENDENCIES = (
    Dependency(
        AUTH_MIDDLEWARE_PATH,
        "user",
        "signed-in users are counted by IP address and user exemptions and "
        "tiers never apply",
        lambda policy: needs_user([policy]),
    ),
    Dependency(
        SESSION_MIDDLEWARE_PATH,
        "session",
        "every client shares one counter",
        lambda policy: policy.spec.key.strip() == "session",
    ),
)


def register_checks() -> None:
    """Called from AppConfig.ready(); registering twice is harmless."""
    for check in (check_settings, check_redis, check_policies, check_middleware):
        register(check, TAG)


# -- helpers -------------------------------------------------------------------


def configured() -> dict[str, Any] | None:
    """The RATELIMIT values over the defaults; None when it is not a dict.

    Unlike ``conf.get_settings`` this tolerates unknown keys, so one typo
    does not hide every other problem.
    """
    user = getattr(settings, "RATELIMIT", None) or {}
    if not isinstance(user, dict):
        return None
    return {**conf.DEFAULTS, **user}


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _report(kind: type, constant: str, /, **values: Any) -> CheckMessage:
    """The check message named ``constant``: its text, hint and id constants."""
    return kind(
        getattr(Messages, constant).format(**values),
        hint=getattr(Hints, constant),
        id=getattr(Codes, constant),
    )


def _invalid(name: str, value: Any, advice: str) -> Error:
    return _invalid_setting(
        Messages.INVALID_SETTING.format(name=name, value=value, advice=advice)
    )


def _invalid_setting(message: str) -> Error:
    return Error(message, hint=Hints.INVALID_SETTING, id=Codes.INVALID_SETTING)


# -- the settings dict -----------------------------------------------------------


def check_settings(app_configs=None, **kwargs) -> list[CheckMessage]:
    """E001-E003 and E006-E009: the shape and values of RATELIMIT."""
    user = getattr(settings, "RATELIMIT", None) or {}
    if not isinstance(user, dict):
        return [_report(Error, "SETTINGS_NOT_DICT", type=type(user).__name__)]
    errors: list[CheckMessage] = []
    unknown = sorted(set(user) - set(conf.DEFAULTS))
    if unknown:
        errors.append(
            Error(
                Messages.UNKNOWN_SETTINGS.format(names=", ".join(unknown)),
                hint=Hints.UNKNOWN_SETTINGS.format(
                    known=", ".join(sorted(conf.DEFAULTS))
                ),
                id=Codes.UNKNOWN_SETTINGS,
            )
        )
    else:  # conf's own validators refuse to read a dict with unknown keys
        errors += _conf_errors()
    values = {**conf.DEFAULTS, **user}
    errors += _value_errors(values)
    errors += _view_errors(values["VIEW"])
    errors += _exempt_paths_errors(values["EXEMPT_PATHS"])
    errors += _refresh_interval_errors(values["POLICY_REFRESH_INTERVAL"])
    return errors


# conf and addresses validate these when first used; report the same messages.
CONF_VALIDATORS = (
    conf.key_prefix,
    conf.key_secret,
    conf.shard_count,
    address_settings,  # TRUSTED_PROXIES, IPV4_PREFIX, IPV6_PREFIX
    conf.failure_settings,  # FAIL_MODE, breaker, fallback and REDIS_* client
)


def _conf_errors() -> list[CheckMessage]:
    errors = []
    for validate in CONF_VALIDATORS:
        try:
            validate()
        except ImproperlyConfigured as exc:
            errors.append(_invalid_setting(str(exc)))
    return errors


BOOLEAN_SETTINGS = ("ENABLED", "COUNT_OPTIONS", "LEGACY_HEADERS", "METRICS")


def _value_errors(values: dict[str, Any]) -> list[CheckMessage]:
    """Types of the settings that no other check covers."""
    errors = []
    url = values["REDIS_URL"]
    if url is not None and (
        not isinstance(url, str) or urlparse(url).scheme not in REDIS_SCHEMES
    ):
        errors.append(_invalid("REDIS_URL", url, Advice.REDIS_URL))
    if not isinstance(values["CACHE_ALIAS"], str):
        errors.append(
            _invalid("CACHE_ALIAS", values["CACHE_ALIAS"], Advice.CACHE_ALIAS)
        )
    for name in BOOLEAN_SETTINGS:
        if not isinstance(values[name], bool):
            errors.append(_invalid(name, values[name], Advice.BOOLEAN))
    seconds = values["GROUPS_CACHE_SECONDS"]
    if not _is_number(seconds) or seconds < 0:
        errors.append(
            _invalid("GROUPS_CACHE_SECONDS", seconds, Advice.GROUPS_CACHE_SECONDS)
        )
    if not isinstance(values["POLICIES"], list | tuple):
        errors.append(_invalid("POLICIES", values["POLICIES"], Advice.POLICIES))
    return errors


def _view_errors(path: Any) -> list[CheckMessage]:
    if path is None:
        return []
    if callable(path):
        view = path
    elif not isinstance(path, str) or not path:
        return [_view_not_importable(path, "use a callable or a dotted path string.")]
    else:
        try:
            view = import_string(path)
        except ImportError as exc:
            return [_view_not_importable(path, str(exc))]
    if not _accepts_two_arguments(view):
        return [_report(Error, "VIEW_NOT_CALLABLE", value=path)]
    return []


def _view_not_importable(value: Any, problem: str) -> Error:
    return _report(Error, "VIEW_NOT_IMPORTABLE", value=value, problem=problem)


def _accepts_two_arguments(view: Any) -> bool:
    if not callable(view):
        return False
    try:
        inspect.signature(view).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): trust callable()
        return True
    return True


def _exempt_paths_errors(paths: Any) -> list[CheckMessage]:
    if isinstance(paths, list | tuple) and all(isinstance(p, str) for p in paths):
        return []
    return [_report(Error, "INVALID_EXEMPT_PATHS", value=paths)]


def _refresh_interval_errors(interval: Any) -> list[CheckMessage]:
    if _is_number(interval) and interval > 0:
        return []
    return [_report(Error, "INVALID_REFRESH_INTERVAL", value=interval)]


# -- Redis ---------------------------------------------------------------------


def check_redis(app_configs=None, **kwargs) -> list[CheckMessage]:
    """E004: a Redis URL, or a django-redis cache to borrow the client from."""
    values = configured()
    if values is None or values["REDIS_URL"]:
        return []
    alias = values["CACHE_ALIAS"]
    caches = getattr(settings, "CACHES", None) or {}
    cache = caches.get(alias) if isinstance(alias, str) else None
    if isinstance(cache, dict) and "django_redis" in str(cache.get("BACKEND", "")):
        return []
    return [_report(Error, "NO_REDIS", alias=alias)]


# -- policies ----------------------------------------------------------------------

REQUIRED_FIELDS = ("name", "rate")
STRING_FIELDS = tuple(f.name for f in fields(PolicySpec) if f.type == "str")
BOOLEAN_FIELDS = ("enabled", "exempt_staff", "lease")
INTEGER_FIELDS = ("cost", "priority", "status_code")
LIST_FIELDS = ("exempt_networks", "exempt_users", "exempt_groups", "tiers")


def check_policies(app_configs=None, **kwargs) -> list[CheckMessage]:
    """E005 for each RATELIMIT['POLICIES'] entry that fails; W004 for repeated names."""
    messages: list[CheckMessage] = []
    seen: set[str] = set()
    for index, entry, result in settings_policies():
        if isinstance(result, str):
            messages.append(
                _report(
                    Error,
                    "INVALID_POLICY",
                    index=index,
                    name=_label(entry),
                    problem=result,
                )
            )
            continue
        if result.name in seen:
            messages.append(_report(Warning, "DUPLICATE_POLICY", name=result.name))
        seen.add(result.name)
    return messages


def settings_policies() -> list[tuple[int, Any, CompiledPolicy | str]]:
    """(index, entry, compiled policy or what is wrong) per settings entry."""
    values = configured()
    entries = values["POLICIES"] if values is not None else None
    if not isinstance(entries, list | tuple):
        return []
    results = []
    for index, entry in enumerate(entries):
        try:
            results.append((index, entry, compile_entry(entry)))
        except Exception as exc:  # a check reports; it never crashes `check`
            results.append((index, entry, str(exc) or type(exc).__name__))
    return results


def compile_entry(entry: Any) -> CompiledPolicy:
    """Validate one settings entry as the snapshot would, and a little more."""
    problem = shape_problem(entry)
    if problem:
        raise ValueError(problem)
    spec = PolicySpec.from_dict(dict(entry), "settings")
    problem = field_problem(spec)
    if problem:
        raise ValueError(problem)
    return compile_spec(spec)


def shape_problem(entry: Any) -> str | None:
    """What from_dict would misread: a missing field, a string for a list."""
    if not isinstance(entry, dict):
        return f"each entry must be a dict, not {type(entry).__name__}"
    missing = [name for name in REQUIRED_FIELDS if name not in entry]
    if missing:
        return f"missing required field(s) {', '.join(missing)}"
    for name in LIST_FIELDS:  # tuple("staff") would be five one-letter groups
        if not isinstance(entry.get(name) or [], list | tuple):
            return f"{name} must be a list, got {entry[name]!r}"
    for tier in entry.get("tiers") or ():
        if not isinstance(tier, list | tuple) or len(tier) != 3:
            return f"each tier must be [group, rate, burst or None], got {tier!r}"
    return None


def field_problem(spec: PolicySpec) -> str | None:
    """Field types and choices that compile_spec leaves to the model form."""
    for name in STRING_FIELDS:
        value = getattr(spec, name)
        if not isinstance(value, str):
            return f"{name} must be a string, got {value!r}"
    for name in BOOLEAN_FIELDS:
        if not isinstance(getattr(spec, name), bool):
            return f"{name} must be True or False, got {getattr(spec, name)!r}"
    for name in INTEGER_FIELDS:
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} must be an integer, got {value!r}"
    if not spec.name.strip():
        return "name must not be empty"
    from .models import FailMode  # the app registry is ready when checks run

    if spec.fail_mode and spec.fail_mode not in FailMode.values:
        choices = ", ".join(FailMode.values)
        return f"fail_mode must be one of {choices}, not {spec.fail_mode!r}"
    if not 400 <= spec.status_code <= 599:
        status = spec.status_code
        return f"status_code must be an HTTP error status (400-599), not {status}"
    return None


def _label(entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return repr(name) if name is not None else "unnamed"


# -- middleware ---------------------------------------------------------------------


def check_middleware(app_configs=None, **kwargs) -> list[CheckMessage]:
    """W001-W003: routed settings policies need the middleware, in the right place."""
    routed = [
        result
        for _, _, result in settings_policies()
        if isinstance(result, CompiledPolicy) and result.routed and result.spec.enabled
    ]
    if not routed:
        return []
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    position = middleware_position(middleware, MIDDLEWARE_PATH)
    if position is None:
        return [_report(Warning, "MIDDLEWARE_MISSING", names=_names(routed))]
    warnings: list[CheckMessage] = []
    for dependency in DEPENDENCIES:
        readers = [p for p in routed if dependency.needed_by(p)]
        if readers:
            warnings += _dependency_warnings(middleware, position, dependency, readers)
    return warnings


def _dependency_warnings(
    middleware: list[str],
    position: int,
    dependency: Dependency,
    readers: list[CompiledPolicy],
) -> list[CheckMessage]:
    found = middleware_position(middleware, dependency.path)
    if found is not None and found < position:
        return []
    if found is None:
        message, hint, code = (
            Messages.DEPENDENCY_MISSING,
            Hints.DEPENDENCY_MISSING,
            Codes.DEPENDENCY_MISSING,
        )
    else:
        message, hint, code = (
            Messages.MIDDLEWARE_ORDER,
            Hints.MIDDLEWARE_ORDER,
            Codes.MIDDLEWARE_ORDER,
        )
    text = message.format(
        dependency=dependency.path,
        names=_names(readers),
        attribute=dependency.attribute,
        consequence=dependency.consequence,
    )
    return [Warning(text, hint=hint.format(dependency=dependency.path), id=code)]


def middleware_position(middleware: list[str], path: str) -> int | None:
    """Index of ``path`` in MIDDLEWARE, or of the first subclass of it."""
    if path in middleware:
        return middleware.index(path)
    try:
        base = import_string(path)
    except ImportError:
        return None
    for index, entry in enumerate(middleware):
        try:
            candidate = import_string(entry)
        except Exception:  # Django reports a broken entry itself
            continue
        if isinstance(candidate, type) and issubclass(candidate, base):
            return index
    return None


def _names(policies: list[CompiledPolicy]) -> str:
    return ", ".join(repr(p.name) for p in policies)
