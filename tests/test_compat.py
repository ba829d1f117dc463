"""The django-ratelimit drop-in: decorator, is_ratelimited, get_usage, on real Redis.

Rates are per hour (or day) so that an epoch-aligned window boundary falling
inside a test is negligibly unlikely.
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured, PermissionDenied

from ratelimit_app.compat import (
    ALL,
    UNSAFE,
    Ratelimited,
    get_usage,
    is_ratelimited,
    ratelimit,
    split_rate,
)
from tests.compat_urls import CustomLimited

URLS = pytest.mark.urls("tests.compat_urls")


def unique(name: str = "group") -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def hits(request, n: int, **kwargs) -> list[bool]:
    """is_ratelimited(increment=True) n times on one request."""
    return [is_ratelimited(request, increment=True, **kwargs) for _ in range(n)]


def window_left(redis_client, period: int) -> int:
    """Seconds to the end of the current epoch-aligned window, by Redis TIME."""
    seconds, micros = redis_client.time()
    return period - int((seconds * 1000 + micros // 1000) / 1000) % period


# -- the decorator, through the Django test client ------------------------------


@URLS
@pytest.mark.django_db
def test_blocks_after_the_limit_with_a_403(client):
    codes = [client.get("/blocking/").status_code for _ in range(4)]
    assert codes == [200, 200, 403, 403]


@URLS
@pytest.mark.django_db
def test_block_false_sets_request_limited_and_keeps_it_set(client):
    # The outer decorator (1/h) limits the second request; the inner one
    # (100/h) does not, and must not reset request.limited to False.
    bodies = [client.get("/annotating/").json() for _ in range(3)]
    assert bodies == [{"limited": False}, {"limited": True}, {"limited": True}]


@URLS
@pytest.mark.django_db
def test_stacked_decorators_with_different_rates_count_apart(client):
    codes = [client.get("/stacked/").status_code for _ in range(3)]
    assert codes == [200, 200, 403]  # one shared counter would block the 2nd


@URLS
@pytest.mark.django_db
def test_the_unsafe_method_filter_leaves_get_alone(client):
    assert [client.get("/unsafe/").status_code for _ in range(3)] == [200] * 3
    assert [client.post("/unsafe/").status_code for _ in range(2)] == [200, 403]


@URLS
@pytest.mark.django_db
def test_class_based_views_with_method_decorator(client, rf):
    assert [client.get("/class/").status_code for _ in range(3)] == [200, 200, 403]
    assert client.post("/class/").status_code == 200  # only get is decorated
    # The default group is built as django-ratelimit builds it for a bound
    # method: module, class name, then the qualified name.
    group = "tests.compat_urls.ClassLimited.ClassLimited.get"
    assert is_ratelimited(rf.get("/"), group=group, key="ip", rate="2/h")


@URLS
@pytest.mark.django_db
async def test_async_views(async_client):
    codes = [(await async_client.get("/async/")).status_code for _ in range(2)]
    assert codes == [200, 403]


@URLS
@pytest.mark.django_db
def test_the_compat_middleware_renders_ratelimited_with_ratelimit_view(
    client, settings
):
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "ratelimit_app.compat.RatelimitMiddleware",
    ]
    settings.RATELIMIT_VIEW = "tests.compat_urls.teapot"
    responses = [client.get("/blocking/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 418]
    assert responses[2].content == b"slow down (Ratelimited)"


# -- the decorator, called directly ----------------------------------------------


def test_ratelimited_is_a_permission_denied():
    assert issubclass(Ratelimited, PermissionDenied)


def test_the_exception_class_setting_is_honoured(rf, settings):
    settings.RATELIMIT_EXCEPTION_CLASS = "tests.compat_urls.CustomLimited"

    @ratelimit(key="ip", rate="1/h")
    def view(request):
        return "ok"

    assert view(rf.get("/")) == "ok"
    with pytest.raises(CustomLimited):
        view(rf.get("/"))


def test_the_default_group_is_the_views_dotted_name(rf):
    @ratelimit(key="ip", rate="1/h", block=False)
    def view(request):
        return request.limited

    assert view(rf.get("/")) is False
    group = f"{__name__}.test_the_default_group_is_the_views_dotted_name.<locals>.view"
    assert is_ratelimited(rf.get("/"), group=group, key="ip", rate="1/h")
    assert is_ratelimited(rf.get("/"), fn=view, key="ip", rate="1/h")


def test_an_explicit_group_is_shared_between_views(rf):
    group = unique()

    @ratelimit(group=group, key="ip", rate="1/h", block=False)
    def first(request):
        return request.limited

    @ratelimit(group=group, key="ip", rate="1/h", block=False)
    def second(request):
        return request.limited

    assert (first(rf.get("/")), second(rf.get("/"))) == (False, True)


def test_function_attributes_alias_the_method_constants():
    for function in (ratelimit, is_ratelimited, get_usage):
        assert (function.ALL, function.UNSAFE) == (ALL, UNSAFE)


# -- methods ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "counted"),
    [
        (ALL, {"GET", "POST", "DELETE"}),
        ((None,), {"GET", "POST", "DELETE"}),  # django_ratelimit.ALL is equal
        (UNSAFE, {"POST", "DELETE"}),
        (["POST"], {"POST"}),
        ("post", {"POST"}),
        (("GET", "delete"), {"GET", "DELETE"}),
    ],
)
def test_method_filters(rf, method, counted):
    group = unique()
    for verb in ("GET", "POST", "DELETE"):
        request = rf.generic(verb, "/")
        usage = get_usage(
            request, group=group, key="ip", rate="1/h", method=method, increment=True
        )
        assert (usage is not None) == (verb in counted), verb


def test_counters_of_different_method_filters_are_apart(rf):
    group = unique()
    assert hits(rf.post("/"), 2, group=group, key="ip", rate="1/h") == [False, True]
    kwargs = {"group": group, "key": "ip", "rate": "1/h", "method": "POST"}
    assert hits(rf.post("/"), 2, **kwargs) == [False, True]


# -- keys ------------------------------------------------------------------------


def _with_user(request, pk):
    request.user = User(pk=pk, username=f"u{pk}")
    return request


KEY_CASES = {
    "ip": lambda rf, v: rf.get("/", REMOTE_ADDR=f"10.0.0.{v}"),
    "user": lambda rf, v: _with_user(rf.get("/"), v),
    "user_or_ip": lambda rf, v: _with_user(rf.get("/"), v),
    "header:x-api-key": lambda rf, v: rf.get("/", HTTP_X_API_KEY=f"k{v}"),
    "get:token": lambda rf, v: rf.get("/", {"token": f"t{v}"}),
    "post:username": lambda rf, v: rf.post("/", {"username": f"n{v}"}),
    "tests.compat_urls.tenant_key": lambda rf, v: rf.get("/", HTTP_X_TENANT=f"t{v}"),
}


@pytest.mark.parametrize("key", KEY_CASES)
def test_each_key_type_counts_each_value_apart(rf, key):
    make = KEY_CASES[key]
    group = unique()
    assert hits(make(rf, 1), 2, group=group, key=key, rate="1/h") == [False, True]
    assert hits(make(rf, 2), 1, group=group, key=key, rate="1/h") == [False]


def test_a_callable_key_gets_the_group_and_the_request(rf):
    group, seen = unique(), []

    def key(group, request):
        seen.append(group)
        return request.GET["t"]

    kwargs = {"group": group, "key": key, "rate": "1/h"}
    assert hits(rf.get("/", {"t": "a"}), 2, **kwargs) == [False, True]
    assert hits(rf.get("/", {"t": "b"}), 1, **kwargs) == [False]
    assert seen == [group] * 3


def test_requests_without_the_keyed_value_share_one_counter(rf):
    group = unique()
    kwargs = {"group": group, "key": "header:x-api-key", "rate": "1/h"}
    assert hits(rf.get("/"), 1, **kwargs) == [False]
    assert hits(rf.get("/", REMOTE_ADDR="10.9.9.9"), 1, **kwargs) == [True]


def test_anonymous_users_are_counted_by_ip_for_the_user_key(rf):
    group = unique()

    def anonymous(ip):
        request = rf.get("/", REMOTE_ADDR=ip)
        request.user = AnonymousUser()
        return request

    kwargs = {"group": group, "key": "user", "rate": "1/h"}
    assert hits(anonymous("10.1.1.1"), 2, **kwargs) == [False, True]
    assert hits(anonymous("10.1.1.2"), 1, **kwargs) == [False]


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (None, "key must be specified"),
        ("", "key must be specified"),
        ("session", "Could not understand ratelimit key"),
        ("cookie:x", "Unknown ratelimit key"),
        ("header:", "needs a name after the colon"),
        ("tests.compat_urls.no_such_key", "not an importable callable"),
        (42, "Could not understand ratelimit key"),
    ],
)
def test_bad_keys_are_refused(rf, key, match):
    with pytest.raises(ImproperlyConfigured, match=match):
        is_ratelimited(rf.get("/"), group=unique(), key=key, rate="1/h")


# -- rates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "parsed"),
    [
        ("5/s", (5, 1)),
        ("5/m", (5, 60)),
        ("100/5m", (100, 300)),
        ("3/h", (3, 3600)),
        ("2/d", (2, 86400)),
        ("10/", (10, 1)),  # no unit: seconds, as in django-ratelimit
        ("10/30", (10, 30)),
        ("5/minute", (5, 60)),  # matched at the start, as in django-ratelimit
        ("0/m", (0, 60)),
        ((7, 30), (7, 30)),
    ],
)
def test_split_rate(rate, parsed):
    assert split_rate(rate) == parsed


@pytest.mark.parametrize(
    ("rate", "match"),
    [
        ("lots", "Invalid ratelimit rate"),
        ("/m", "Invalid ratelimit rate"),
        (5, "Invalid ratelimit rate"),
        (("5", 60), "Invalid ratelimit rate"),
        ((-1, 60), "Invalid ratelimit rate"),
        ((5, 0), "period must be greater than 0"),
        ("5/0m", "period must be greater than 0"),
    ],
)
def test_bad_rates_are_refused(rate, match):
    with pytest.raises(ImproperlyConfigured, match=match):
        split_rate(rate)


@pytest.mark.parametrize(
    "rate",
    [
        "1/h",
        (1, 3600),
        lambda group, request: "1/h",
        lambda group, request: (1, 3600),
    ],
)
def test_rate_forms(rf, rate):
    assert hits(rf.get("/"), 2, group=unique(), key="ip", rate=rate) == [False, True]


def test_a_none_rate_means_no_limit(rf):
    kwargs = {"group": unique(), "key": "ip", "rate": lambda group, request: None}
    assert hits(rf.get("/"), 3, **kwargs) == [False, False, False]
    assert get_usage(rf.get("/"), **kwargs) is None
    assert get_usage(rf.get("/"), group=unique(), key="ip", rate=None) is None


def test_a_dotted_path_rate_is_called_with_group_and_request(rf):
    kwargs = {"group": unique(), "key": "ip", "rate": "tests.compat_urls.tenant_rate"}
    assert hits(rf.get("/"), 2, **kwargs) == [False, True]
    free = rf.get("/", HTTP_X_TENANT="free-pass")
    assert hits(free, 3, **kwargs) == [False, False, False]


def test_a_zero_rate_limits_everything(rf):
    usage = get_usage(rf.get("/"), group=unique(), key="ip", rate="0/m")
    assert usage == {"count": 0, "limit": 0, "should_limit": True, "time_left": 60}


# -- is_ratelimited and get_usage ----------------------------------------------------


def test_is_ratelimited_without_increment_consumes_nothing(rf):
    kwargs = {"group": unique(), "key": "ip", "rate": "2/h"}
    assert [is_ratelimited(rf.get("/"), **kwargs) for _ in range(5)] == [False] * 5
    assert hits(rf.get("/"), 3, **kwargs) == [False, False, True]


def test_without_increment_should_limit_means_the_next_request_would_be(rf):
    kwargs = {"group": unique(), "key": "ip", "rate": "2/h"}
    hits(rf.get("/"), 1, **kwargs)
    assert is_ratelimited(rf.get("/"), **kwargs) is False
    hits(rf.get("/"), 1, **kwargs)
    # django-ratelimit says False here (count 2 is not > 2) and would admit a
    # third request in the check-then-count pattern; we say True.
    assert is_ratelimited(rf.get("/"), **kwargs) is True


def test_get_usage_fields(rf, redis_client):
    kwargs = {"group": unique(), "key": "ip", "rate": "3/h"}
    assert get_usage(rf.get("/"), **kwargs) == {
        "count": 0,
        "limit": 3,
        "should_limit": False,
        "time_left": 0,  # nothing counted: nothing to wait for
    }
    first = get_usage(rf.get("/"), increment=True, **kwargs)
    expected_left = window_left(redis_client, 3600)
    assert (first["count"], first["limit"], first["should_limit"]) == (1, 3, False)
    assert abs(first["time_left"] - expected_left) <= 1
    hits(rf.get("/"), 2, **kwargs)
    denied = get_usage(rf.get("/"), increment=True, **kwargs)
    # A denied request consumes nothing: count stops at the limit.
    assert (denied["count"], denied["limit"], denied["should_limit"]) == (3, 3, True)
    assert abs(denied["time_left"] - expected_left) <= 1
    peeked = get_usage(rf.get("/"), **kwargs)
    assert (peeked["count"], peeked["should_limit"]) == (3, True)


def test_get_usage_needs_a_group_or_a_function(rf):
    with pytest.raises(ImproperlyConfigured, match="either `group` or `fn`"):
        get_usage(rf.get("/"), key="ip", rate="1/h")


@pytest.mark.parametrize(
    "switch",
    [
        {"RATELIMIT_ENABLE": False},  # django-ratelimit's setting
        {"ENABLED": False},  # ours, inside RATELIMIT
    ],
)
def test_limits_switched_off(rf, settings, switch):
    if "ENABLED" in switch:
        settings.RATELIMIT = {**settings.RATELIMIT, **switch}
    else:
        settings.RATELIMIT_ENABLE = False
    kwargs = {"group": unique(), "key": "ip", "rate": "1/h"}
    assert hits(rf.get("/"), 3, **kwargs) == [False, False, False]
    assert get_usage(rf.get("/"), **kwargs) is None


# -- Redis failures ------------------------------------------------------------------


@pytest.fixture
def redis_down(settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": "redis://127.0.0.1:1/0"}


def test_a_redis_failure_limits_like_django_ratelimit(rf, redis_down):
    usage = get_usage(rf.get("/"), group=unique(), key="ip", rate="5/h")
    assert usage == {"count": 0, "limit": 0, "should_limit": True, "time_left": -1}

    @ratelimit(key="ip", rate="5/h")
    def view(request):
        return "ok"

    with pytest.raises(Ratelimited):
        view(rf.get("/"))


def test_a_redis_failure_with_fail_open_lets_requests_through(rf, redis_down, settings):
    settings.RATELIMIT_FAIL_OPEN = True
    assert get_usage(rf.get("/"), group=unique(), key="ip", rate="5/h") is None
    assert hits(rf.get("/"), 2, group=unique(), key="ip", rate="1/h") == [False] * 2
