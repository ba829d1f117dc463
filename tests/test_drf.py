"""PolicyThrottle: DRF views throttled by the engine, against real Redis.

Named policies come from RATELIMIT['POLICIES'] (override_settings reloads the
snapshot); every test has its own key prefix (tests/conftest.py).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory, force_authenticate

from ratelimit_app import limiter
from ratelimit_app.contrib.drf import PolicyThrottle
from tests import drf_urls
from tests.drf_urls import DeclaredThrottle, NamedThrottle

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.drf_urls")]


def policies(*entries: dict):
    return override_settings(
        RATELIMIT={**settings.RATELIMIT, "POLICIES": list(entries)}
    )


def statuses(client, path: str, n: int) -> list[int]:
    return [client.get(path).status_code for _ in range(n)]


def drf_request(path: str = "/", **extra) -> Request:
    return Request(APIRequestFactory().get(path, **extra))


# -- through the Django test client ------------------------------------------------


def test_a_named_policy_admits_exactly_its_limit_then_429(client):
    with policies({"name": "drf-named", "rate": "5/m"}):
        assert statuses(client, "/drf/named/", 7) == [200] * 5 + [429] * 2


def test_the_429_carries_retry_after_from_wait(client):
    with policies({"name": "drf-named", "rate": "3/m"}):
        statuses(client, "/drf/named/", 3)
        response = client.get("/drf/named/")
    assert response.status_code == 429
    # GCRA 3/m: one unit every 20 s; wait() is just under 20 s, rounded up.
    assert response.headers["Retry-After"] == "20"
    assert response.json()["detail"].endswith("Expected available in 20 seconds.")


def test_the_views_throttle_policy_names_the_policy(client):
    with policies({"name": "drf-view", "rate": "2/m"}):
        assert statuses(client, "/drf/view/", 3) == [200, 200, 429]


def test_a_view_without_a_policy_is_not_throttled(client):
    assert statuses(client, "/drf/unthrottled/", 5) == [200] * 5


def test_a_missing_or_disabled_policy_does_not_throttle(client):
    assert statuses(client, "/drf/named/", 3) == [200] * 3  # not declared yet
    with policies({"name": "drf-named", "rate": "1/m", "enabled": False}):
        assert statuses(client, "/drf/named/", 3) == [200] * 3


def test_a_declared_rate_throttles(client):
    assert statuses(client, "/drf/declared/", 3) == [200, 200, 429]


def test_a_declared_rate_can_be_overridden_by_name(client):
    with policies({"name": "drf-declared", "rate": "1/m"}):
        assert statuses(client, "/drf/declared/", 2) == [200, 429]


def test_a_scope_takes_its_rate_from_drf_settings(client):
    rates = {"DEFAULT_THROTTLE_RATES": {"drf-scoped": "2/min"}}
    with override_settings(REST_FRAMEWORK=rates):
        assert statuses(client, "/drf/scoped/", 3) == [200, 200, 429]


def test_a_scope_with_a_none_rate_is_not_throttled(client):
    with override_settings(
        REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"drf-scoped": None}}
    ):
        assert statuses(client, "/drf/scoped/", 4) == [200] * 4


def test_a_scope_without_a_rate_is_a_configuration_error():
    with pytest.raises(ImproperlyConfigured, match="No default throttle rate"):
        drf_urls.ScopedThrottle().allow_request(drf_request(), SimpleNamespace())


def test_a_policy_the_middleware_already_decided_is_counted_once(client):
    with policies({"name": "drf-routed", "rate": "2/m", "path": "/drf/routed/"}):
        assert statuses(client, "/drf/routed/", 3) == [200, 200, 429]


def test_a_throttle_cost(client):
    with policies({"name": "drf-costly", "rate": "6/h"}):
        assert statuses(client, "/drf/costly/", 3) == [200, 200, 429]


def test_several_policies_are_decided_all_or_nothing(client):
    wide = {"name": "drf-wide", "rate": "10/m", "key": "ip"}
    narrow = {"name": "drf-narrow", "rate": "1/m", "key": "ip"}
    with policies(wide, narrow):
        assert statuses(client, "/drf/pair/", 3) == [200, 429, 429]
        # Only the admitted request consumed from the wide policy.
        assert limiter.peek("drf-wide", "127.0.0.1", "10/m").remaining == 9


# -- the throttle API ----------------------------------------------------------------


def test_wait_reports_the_decisions_retry_after():
    view = SimpleNamespace()
    with policies({"name": "drf-named", "rate": "2/m", "key": "ip"}):
        throttles = [NamedThrottle() for _ in range(3)]
        allowed = [t.allow_request(drf_request(), view) for t in throttles]
    assert allowed == [True, True, False]
    blocked = throttles[2]
    (decision,) = blocked.outcome.decisions
    assert blocked.wait() == decision.retry_after
    assert 29 < blocked.wait() <= 30  # GCRA 2/m: one unit every 30 s
    assert throttles[0].wait() is None  # allowed: nothing to wait for
    assert NamedThrottle().wait() is None  # no decision yet


def test_the_drf_authenticated_user_is_the_identity():
    view = drf_urls.NamedView.as_view()
    factory = APIRequestFactory()

    def call(pk):
        request = factory.get("/drf/named/")
        force_authenticate(request, user=User(pk=pk, username=f"u{pk}"))
        return view(request).status_code

    with policies({"name": "drf-named", "rate": "2/m", "key": "user"}):
        assert [call(1) for _ in range(3)] == [200, 200, 429]
        assert [call(2) for _ in range(2)] == [200, 200]


def test_concurrent_requests_admit_exactly_the_limit():
    view = SimpleNamespace()
    results: list[bool] = []
    lock = threading.Lock()
    with policies({"name": "drf-named", "rate": "20/h", "key": "ip"}):
        NamedThrottle().allow_request(drf_request(REMOTE_ADDR="10.0.0.9"), view)

        def hammer():
            for _ in range(10):
                request = drf_request(REMOTE_ADDR="10.0.0.1")
                allowed = NamedThrottle().allow_request(request, view)
                with lock:
                    results.append(allowed)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 80
    assert results.count(True) == 20


def test_declared_rates_are_checked_when_the_class_is_defined():
    with pytest.raises(ImproperlyConfigured, match="Invalid rate 'lots'"):

        class BadRate(PolicyThrottle):
            rate = "lots"

    with pytest.raises(ImproperlyConfigured, match="not both"):

        class Both(PolicyThrottle):
            policy = "drf-named"
            rate = "5/m"


def test_a_declared_throttle_defaults_its_name_to_the_class_path():
    class Unscoped(PolicyThrottle):
        rate = "1/m"
        key = "ip"

    name = f"{__name__}.{Unscoped.__qualname__}"
    assert Unscoped().get_policy_names(drf_request(), SimpleNamespace()) == [name]
    assert DeclaredThrottle.declared_spec("2/m").name == "drf-declared"
