"""System checks: each id fires on its mistake, with the documented message and hint."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from ratelimit_app import conf
from ratelimit_app.checks import (
    AUTH_MIDDLEWARE_PATH,
    DEPENDENCIES,
    MIDDLEWARE_PATH,
    SESSION_MIDDLEWARE_PATH,
    TAG,
    Advice,
    Codes,
    Hints,
    Messages,
)
from ratelimit_app.middleware import RateLimitMiddleware

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
ROUTED = {"name": "routed", "rate": "5/m", "path": "/plain/"}
BY_USER = {"name": "by-user", "rate": "5/m", "path": "/plain/", "key": "user"}
BY_SESSION = {"name": "by-session", "rate": "5/m", "path": "/x/", "key": "session"}
AUTH_DEPENDENCY, SESSION_DEPENDENCY = DEPENDENCIES


def ratelimit(**values):
    """The tests' RATELIMIT (Redis URL, prefix) with ``values`` laid over it."""
    return {**settings.RATELIMIT, **values}


def messages(**overrides):
    """The ratelimit_app check messages under these settings."""
    with override_settings(**overrides):
        return run_checks(tags=[TAG])


def only(found, code):
    """The single message with ``code``; fails when there are none or several."""
    matching = [m for m in found if m.id == code]
    assert len(matching) == 1, found
    return matching[0]


def without_middleware(*paths):
    return [m for m in settings.MIDDLEWARE if m not in paths]


def bad_view(request):  # RATELIMIT['VIEW'] with the wrong signature
    return None


NOT_CALLABLE = 42


def custom_view(request, exception):
    return None


class CustomAuthenticationMiddleware(AuthenticationMiddleware):
    pass


class CustomRateLimitMiddleware(RateLimitMiddleware):
    pass


# -- clean configurations ---------------------------------------------------------


def test_the_test_settings_are_clean():
    assert run_checks(tags=[TAG]) == []


def test_a_full_valid_configuration_is_clean():
    entries = [
        ROUTED,
        BY_USER,
        {
            "name": "api",
            "rate": "100/5m",
            "algorithm": "token_bucket",
            "burst": 20,
            "key": "header:x-api-key",
            "path_regex": r"^/api/v[12]/",
            "methods": "GET,POST",
            "exempt_networks": ["10.0.0.0/8"],
            "tiers": [["partners", "1000/m", None]],
            "fail_mode": "closed",
            "status_code": 503,
        },
        {"name": "by-callable", "rate": "1/s", "key": "tests.views.plain"},
    ]
    assert (
        messages(
            RATELIMIT=ratelimit(
                POLICIES=entries,
                VIEW="tests.test_checks.custom_view",
                EXEMPT_PATHS=["/health/", "/static/*"],
                POLICY_REFRESH_INTERVAL=0.5,
            )
        )
        == []
    )


def test_checks_touch_neither_redis_nor_the_database(monkeypatch):
    # No django_db mark: pytest-django fails any query.
    def no_redis(*args, **kwargs):
        raise AssertionError("a system check talked to Redis")

    entries = [ROUTED, BY_USER, {"name": "bad", "rate": "x"}]
    with monkeypatch.context() as patch:
        patch.setattr(redis.Redis, "execute_command", no_redis)
        found = messages(RATELIMIT=ratelimit(POLICIES=entries, REDIS_URL=None))
    assert [m.id for m in found] == [Codes.INVALID_POLICY]


def test_the_project_check_command_is_clean():
    call_command("check")


# -- E001-E003: the settings dict ----------------------------------------------


def test_e001_ratelimit_not_a_dict():
    found = messages(RATELIMIT=["REDIS_URL"])
    error = only(found, Codes.SETTINGS_NOT_DICT)
    assert error.msg == Messages.SETTINGS_NOT_DICT.format(type="list")
    assert error.hint == Hints.SETTINGS_NOT_DICT
    assert found == [error]  # nothing else can be read


def test_e002_unknown_settings_are_named_and_other_problems_still_reported():
    found = messages(RATELIMIT=ratelimit(REDIS_ULR="x", ENABLD=True, EXEMPT_PATHS="/"))
    error = only(found, Codes.UNKNOWN_SETTINGS)
    assert error.msg == Messages.UNKNOWN_SETTINGS.format(names="ENABLD, REDIS_ULR")
    assert error.hint == Hints.UNKNOWN_SETTINGS.format(
        known=", ".join(sorted(conf.DEFAULTS))
    )
    only(found, Codes.INVALID_EXEMPT_PATHS)


@pytest.mark.parametrize(
    ("name", "value", "validate"),
    [
        ("KEY_PREFIX", "rl{x}:", conf.key_prefix),
        ("KEY_SECRET", "short", conf.key_secret),
        ("SHARDS", 0, conf.shard_count),
    ],
)
def test_e003_reports_the_settings_errors_that_conf_raises(name, value, validate):
    with override_settings(RATELIMIT=ratelimit(**{name: value})):
        with pytest.raises(ImproperlyConfigured) as raised:
            validate()
        found = run_checks(tags=[TAG])
    error = only(found, Codes.INVALID_SETTING)
    assert error.msg == str(raised.value)
    assert error.hint == Hints.INVALID_SETTING


def test_e003_never_shows_the_key_secret():
    found = messages(RATELIMIT=ratelimit(KEY_SECRET="sekrit"))
    assert "sekrit" not in only(found, Codes.INVALID_SETTING).msg


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://127.0.0.1:6380/0",
        "unix:///run/redis.sock",
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
        "redis+cluster://redis-node-1:6379,redis-node-2:6379",
    ],
)
def test_every_topology_url_scheme_is_a_valid_redis_url(url):
    found = messages(RATELIMIT=ratelimit(REDIS_URL=url))
    assert Codes.INVALID_SETTING not in [message.id for message in found]


@pytest.mark.parametrize(
    ("name", "value", "advice"),
    [
        ("REDIS_URL", "http://127.0.0.1:6379", Advice.REDIS_URL),
        ("REDIS_URL", 6379, Advice.REDIS_URL),
        ("CACHE_ALIAS", None, Advice.CACHE_ALIAS),
        ("ENABLED", "no", Advice.BOOLEAN),
        ("COUNT_OPTIONS", 1, Advice.BOOLEAN),
        ("LEGACY_HEADERS", None, Advice.BOOLEAN),
        ("METRICS", "yes", Advice.BOOLEAN),
        ("GROUPS_CACHE_SECONDS", -1, Advice.GROUPS_CACHE_SECONDS),
        ("GROUPS_CACHE_SECONDS", "30", Advice.GROUPS_CACHE_SECONDS),
        ("POLICIES", {"name": "x", "rate": "1/m"}, Advice.POLICIES),
    ],
)
def test_e003_bad_values(name, value, advice):
    found = messages(RATELIMIT=ratelimit(**{name: value}))
    error = only(found, Codes.INVALID_SETTING)
    assert error.msg == Messages.INVALID_SETTING.format(
        name=name, value=value, advice=advice
    )
    assert error.hint == Hints.INVALID_SETTING


def test_check_command_reports_a_broken_ratelimit_setting_instead_of_crashing():
    with (
        override_settings(RATELIMIT=ratelimit(SHARDS="many", ENABLD=True)),
        pytest.raises(SystemCheckError) as raised,
    ):
        call_command("check")
    assert Codes.UNKNOWN_SETTINGS in str(raised.value)


# -- E004: Redis -------------------------------------------------------------------


def test_e004_no_redis_url_and_no_django_redis_cache():
    values = {k: v for k, v in settings.RATELIMIT.items() if k != "REDIS_URL"}
    found = messages(RATELIMIT=values, CACHES=LOCMEM)
    error = only(found, Codes.NO_REDIS)
    assert error.msg == Messages.NO_REDIS.format(alias="default")
    assert error.hint == Hints.NO_REDIS


def test_e004_names_the_configured_cache_alias():
    values = {k: v for k, v in settings.RATELIMIT.items() if k != "REDIS_URL"}
    found = messages(RATELIMIT={**values, "CACHE_ALIAS": "limits"})
    assert only(found, Codes.NO_REDIS).msg == Messages.NO_REDIS.format(alias="limits")


def test_a_django_redis_cache_is_enough(redis_url):
    caches = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}
    }
    values = {k: v for k, v in settings.RATELIMIT.items() if k != "REDIS_URL"}
    assert messages(RATELIMIT=values, CACHES=caches) == []


def test_a_redis_url_is_enough_without_any_cache():
    assert messages(CACHES=LOCMEM) == []


# -- E005: policies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"name": "p", "rate": "often"}, "Invalid rate 'often'"),
        ({"name": "p", "rate": "5/m", "algorithm": "magic"}, "Unknown algorithm"),
        ({"name": "p", "rate": "5/m", "path_regex": "(["}, "does not compile"),
        ({"name": "p", "rate": "5/m", "key": "cookie:x"}, "Unknown key type"),
        (
            {"name": "p", "rate": "5/m", "key": "tests.nowhere.key"},
            "not an importable callable",
        ),
        (
            {"name": "p", "rate": "5/m", "algorithm": "fixed_window", "burst": 9},
            "burst applies to",
        ),
        ({"name": "p", "rate": "5/m", "colour": "red"}, "unknown field(s) colour"),
        ({"name": "p", "rate": "5/m", "methods": "GET,FETCH"}, "FETCH"),
        ({"name": "p", "rate": "5/m", "mode": "loud"}, "mode must be"),
        ({"name": "p", "rate": "5/m", "fail_mode": "maybe"}, "fail_mode"),
        ({"name": "p", "rate": "5/m", "status_code": 200}, "400-599"),
        ({"name": "p", "rate": "5/m", "enabled": "yes"}, "enabled must be True"),
        ({"name": "p", "rate": "5/m", "path": 7}, "path must be a string"),
        ({"name": "p", "rate": "5/m", "cost": 0}, "cost must be a positive"),
        ({"name": "p", "rate": "5/m", "tiers": [["g", "nope", None]]}, "nope"),
        ({"name": "p", "rate": "5/m", "tiers": [["g"]]}, "each tier must be"),
        ({"name": "p", "rate": "5/m", "exempt_groups": "staff"}, "must be a list"),
        (
            {"name": "p", "rate": "5/m", "exempt_networks": ["10.0.0.300"]},
            "10.0.0.300",
        ),
        ({"name": "p"}, "missing required field(s) rate"),
    ],
)
def test_e005_names_the_entry_and_the_problem(entry, problem):
    entries = [ROUTED, entry]
    error = only(messages(RATELIMIT=ratelimit(POLICIES=entries)), Codes.INVALID_POLICY)
    prefix = Messages.INVALID_POLICY.format(index=1, name="'p'", problem="")
    assert error.msg.startswith(prefix), error.msg
    assert problem in error.msg
    assert error.hint == Hints.INVALID_POLICY


def test_e005_an_entry_that_is_not_a_dict():
    found = messages(RATELIMIT=ratelimit(POLICIES=["login"]))
    assert only(found, Codes.INVALID_POLICY).msg == Messages.INVALID_POLICY.format(
        index=0, name="unnamed", problem="each entry must be a dict, not str"
    )


def test_e005_reports_every_bad_entry():
    entries = [{"name": "a", "rate": "x"}, ROUTED, {"name": "b", "rate": "y"}]
    found = messages(RATELIMIT=ratelimit(POLICIES=entries))
    errors = [m for m in found if m.id == Codes.INVALID_POLICY]
    assert [e.msg.split(" is invalid")[0] for e in errors] == [
        "RATELIMIT['POLICIES'][0] ('a')",
        "RATELIMIT['POLICIES'][2] ('b')",
    ]


def test_w004_a_name_declared_twice():
    found = messages(RATELIMIT=ratelimit(POLICIES=[ROUTED, {**ROUTED, "rate": "1/s"}]))
    warning = only(found, Codes.DUPLICATE_POLICY)
    assert warning.msg == Messages.DUPLICATE_POLICY.format(name="routed")
    assert warning.hint == Hints.DUPLICATE_POLICY


# -- E006-E009: VIEW, EXEMPT_PATHS, POLICY_REFRESH_INTERVAL ---------------------------


@pytest.mark.parametrize(
    "value", ["tests.views.no_such_view", "no_such_module.view", "nodots", 42]
)
def test_e006_view_not_importable(value):
    error = only(messages(RATELIMIT=ratelimit(VIEW=value)), Codes.VIEW_NOT_IMPORTABLE)
    prefix = Messages.VIEW_NOT_IMPORTABLE.format(value=value, problem="")
    assert error.msg.startswith(prefix)
    assert error.hint == Hints.VIEW_NOT_IMPORTABLE


@pytest.mark.parametrize(
    "value", ["tests.test_checks.NOT_CALLABLE", "tests.test_checks.bad_view"]
)
def test_e007_view_not_callable_as_a_view(value):
    error = only(messages(RATELIMIT=ratelimit(VIEW=value)), Codes.VIEW_NOT_CALLABLE)
    assert error.msg == Messages.VIEW_NOT_CALLABLE.format(value=value)
    assert error.hint == Hints.VIEW_NOT_CALLABLE


@pytest.mark.parametrize("value", ["/health/", ["/health/", 7], None, {"/x/": 1}])
def test_e008_exempt_paths_not_a_list_of_strings(value):
    found = messages(RATELIMIT=ratelimit(EXEMPT_PATHS=value))
    error = only(found, Codes.INVALID_EXEMPT_PATHS)
    assert error.msg == Messages.INVALID_EXEMPT_PATHS.format(value=value)
    assert error.hint == Hints.INVALID_EXEMPT_PATHS


@pytest.mark.parametrize("value", [0, -1, "1", None, True, float("nan")])
def test_e009_refresh_interval_not_a_positive_number(value):
    found = messages(RATELIMIT=ratelimit(POLICY_REFRESH_INTERVAL=value))
    error = only(found, Codes.INVALID_REFRESH_INTERVAL)
    assert error.msg == Messages.INVALID_REFRESH_INTERVAL.format(value=value)
    assert error.hint == Hints.INVALID_REFRESH_INTERVAL


# -- W001-W003: the middleware --------------------------------------------------------


def test_w001_routed_policies_without_the_middleware():
    found = messages(
        RATELIMIT=ratelimit(POLICIES=[ROUTED, {**BY_USER, "enabled": False}]),
        MIDDLEWARE=without_middleware(MIDDLEWARE_PATH),
    )
    warning = only(found, Codes.MIDDLEWARE_MISSING)
    assert warning.msg == Messages.MIDDLEWARE_MISSING.format(names="'routed'")
    assert warning.hint == Hints.MIDDLEWARE_MISSING


def test_no_w001_when_policies_are_only_named_for_rate_limit_decorators():
    entries = [{"name": "login", "rate": "5/m"}]
    middleware = without_middleware(MIDDLEWARE_PATH)
    assert messages(RATELIMIT=ratelimit(POLICIES=entries), MIDDLEWARE=middleware) == []


def test_w002_middleware_before_authentication_with_a_user_key():
    middleware = [MIDDLEWARE_PATH, *without_middleware(MIDDLEWARE_PATH)]
    found = messages(RATELIMIT=ratelimit(POLICIES=[BY_USER]), MIDDLEWARE=middleware)
    warning = only(found, Codes.MIDDLEWARE_ORDER)
    assert warning.msg == Messages.MIDDLEWARE_ORDER.format(
        dependency=AUTH_MIDDLEWARE_PATH,
        names="'by-user'",
        attribute="user",
        consequence=AUTH_DEPENDENCY.consequence,
    )
    assert warning.hint == Hints.MIDDLEWARE_ORDER.format(
        dependency=AUTH_MIDDLEWARE_PATH
    )


@pytest.mark.parametrize(
    "reads_user",
    [
        {"key": "user_or_ip"},
        {"exempt_staff": True},
        {"exempt_groups": ["partners"]},
        {"tiers": [["partners", "50/m", None]]},
    ],
)
def test_w002_every_policy_that_reads_request_user(reads_user):
    middleware = [MIDDLEWARE_PATH, *without_middleware(MIDDLEWARE_PATH)]
    entries = [{**ROUTED, **reads_user}]
    found = messages(RATELIMIT=ratelimit(POLICIES=entries), MIDDLEWARE=middleware)
    assert "'routed'" in only(found, Codes.MIDDLEWARE_ORDER).msg


def test_no_w002_for_ip_keys_or_for_policies_the_decorator_applies():
    middleware = [MIDDLEWARE_PATH, *without_middleware(MIDDLEWARE_PATH)]
    unrouted_user_policy = {"name": "login", "rate": "5/m", "key": "user"}
    entries = [ROUTED, unrouted_user_policy]
    assert messages(RATELIMIT=ratelimit(POLICIES=entries), MIDDLEWARE=middleware) == []


def test_a_subclass_of_authentication_middleware_counts():
    middleware = [
        "tests.test_checks.CustomAuthenticationMiddleware"
        if m == AUTH_MIDDLEWARE_PATH
        else m
        for m in settings.MIDDLEWARE
    ]
    assert (
        messages(RATELIMIT=ratelimit(POLICIES=[BY_USER]), MIDDLEWARE=middleware) == []
    )


def test_a_subclass_of_the_ratelimit_middleware_counts():
    middleware = [
        "tests.test_checks.CustomRateLimitMiddleware" if m == MIDDLEWARE_PATH else m
        for m in settings.MIDDLEWARE
    ]
    assert (
        messages(RATELIMIT=ratelimit(POLICIES=[BY_USER]), MIDDLEWARE=middleware) == []
    )


def test_w003_authentication_middleware_missing():
    middleware = without_middleware(
        AUTH_MIDDLEWARE_PATH, "django.contrib.messages.middleware.MessageMiddleware"
    )
    found = messages(RATELIMIT=ratelimit(POLICIES=[BY_USER]), MIDDLEWARE=middleware)
    warning = only(found, Codes.DEPENDENCY_MISSING)
    assert warning.msg == Messages.DEPENDENCY_MISSING.format(
        dependency=AUTH_MIDDLEWARE_PATH,
        names="'by-user'",
        attribute="user",
        consequence=AUTH_DEPENDENCY.consequence,
    )
    assert warning.hint == Hints.DEPENDENCY_MISSING.format(
        dependency=AUTH_MIDDLEWARE_PATH
    )


def test_w002_session_key_before_the_session_middleware():
    middleware = [MIDDLEWARE_PATH, *without_middleware(MIDDLEWARE_PATH)]
    found = messages(RATELIMIT=ratelimit(POLICIES=[BY_SESSION]), MIDDLEWARE=middleware)
    warning = only(found, Codes.MIDDLEWARE_ORDER)
    assert warning.msg == Messages.MIDDLEWARE_ORDER.format(
        dependency=SESSION_MIDDLEWARE_PATH,
        names="'by-session'",
        attribute="session",
        consequence=SESSION_DEPENDENCY.consequence,
    )
