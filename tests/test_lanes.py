"""The lanes: requests whose policies are all plain, through a plan per
matched policy set: admitted from the process's leases (every policy leases)
or decided by one prepared script call (none leases)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ratelimit_app import (
    aggregation,
    deny_cache,
    enforcement,
    lanes,
    leases,
    limiter,
    local_usage,
)
from ratelimit_app.headers import ratelimit_headers
from ratelimit_app.models import UsageMinute
from ratelimit_app.signals import rate_limited
from tests.policy_helpers import policies


@pytest.fixture(autouse=True)
def fresh_lane():
    leases.table.clear()
    deny_cache.cache.clear()
    lanes.forget()
    yield
    local_usage.buffer.flush()
    leases.table.clear()
    deny_cache.cache.clear()
    lanes.forget()


def leased(name: str, rate: str = "100000/h", path: str = "/plain/", **extra):
    entry = {"name": name, "path": path, "rate": rate, "algorithm": "gcra"}
    return {**entry, "key": "ip", "lease": True, **extra}


def responses(client, path: str, n: int, **kwargs) -> list:
    return [client.get(path, **kwargs) for _ in range(n)]


def from_the_lane(response) -> bool:
    """The lane built this outcome's headers (only it does)."""
    request = getattr(response, "wsgi_request", None) or response.asgi_request
    return request.ratelimit.headers is not None


@pytest.mark.django_db
def test_two_leased_policies_pass_from_their_leases_with_the_usual_headers(
    client, calls
):
    with policies(leased("lane-a"), leased("lane-b", rate="50000/h")):
        answered = responses(client, "/plain/", 60)
    assert [r.status_code for r in answered] == [200] * 60
    # Grants ask Redis (k doubles from the cost up); the rest pass locally.
    assert len(calls) < 20
    last = answered[-1]
    assert from_the_lane(last)
    outcome = last.wsgi_request.ratelimit
    assert [p.name for p in outcome.policies] == ["lane-a", "lane-b"]
    # Byte for byte what the general path builds from the same decisions.
    assert outcome.headers == ratelimit_headers(replace(outcome, headers=None))
    assert last["RateLimit-Policy"] == outcome.headers["RateLimit-Policy"]
    assert last["RateLimit"] == outcome.headers["RateLimit"]
    assert last["RateLimit-Policy"].startswith('"lane-a";q=100000;w=')
    assert ', "lane-b";q=50000;w=' in last["RateLimit-Policy"]


@pytest.mark.django_db
def test_legacy_headers_come_from_the_general_path_and_follow_the_setting(client):
    with policies(leased("lane-legacy"), LEGACY_HEADERS=True):
        answered = responses(client, "/plain/", 30)
    assert all("X-RateLimit-Remaining" in r for r in answered)
    assert not from_the_lane(answered[-1])  # no plan headers with legacy on
    with policies(leased("lane-legacy")):
        answered = responses(client, "/plain/", 30)
    assert not any("X-RateLimit-Remaining" in r for r in answered)
    assert from_the_lane(answered[-1])  # the settings change made a new plan


@pytest.mark.django_db
def test_a_decorator_after_the_lane_adds_its_policy_to_the_headers(client):
    with policies(leased("lane-outer", path="/annotate/")):
        answered = responses(client, "/annotate/", 20)
    assert [r.status_code for r in answered] == [200] * 20
    for response in answered:
        listed = response["RateLimit-Policy"]
        assert '"lane-outer"' in listed and '"annotate-only"' in listed
        assert response["RateLimit"].count(";r=") == 2
    # The annotating decorator (2/m) denies from its third request on; the
    # middleware's leased policy admitted every one.
    assert [r.json()["allowed"] for r in answered[-2:]] == [[True, False]] * 2


@pytest.mark.django_db
def test_requests_admitted_by_the_lane_are_counted_exactly(client):
    with policies(leased("lane-stats", rate="1000000/h")):
        answered = responses(client, "/plain/", 400)
    assert all(r.status_code == 200 for r in answered)
    assert sum(from_the_lane(r) for r in answered) > 300
    leases.table.end_all()
    aggregation.drain_usage()
    rows = UsageMinute.objects.filter(policy="lane-stats")
    assert sum(r.allowed for r in rows) == 400
    assert sum(r.cost for r in rows) == 400


@pytest.mark.django_db
def test_the_plans_and_their_identities_stay_within_their_bounds(client, monkeypatch):
    monkeypatch.setattr(lanes, "IDENTITIES_MAX", 2)
    monkeypatch.setattr(lanes, "PLANS_MAX", 1)
    sets = (leased("lane-one", path="/plain/"), leased("lane-two", path="/health/"))
    with policies(*sets):
        for _ in range(10):
            for n in range(4):
                address = {"REMOTE_ADDR": f"198.51.100.{n}"}
                for path in ("/plain/", "/health/"):
                    assert client.get(path, **address).status_code == 200
    assert len(lanes._plans) <= 1
    for _, plan in lanes._plans.values():
        assert len(plan._lease_ids) <= 2


@pytest.mark.django_db
def test_a_set_with_a_policy_that_does_not_lease_asks_redis_every_time(client, calls):
    ordinary = {"name": "lane-ordinary", "path": "/plain/", "rate": "100000/h"}
    with policies(leased("lane-beside"), ordinary):
        answered = responses(client, "/plain/", 20)
    assert [r.status_code for r in answered] == [200] * 20
    assert not any(from_the_lane(r) for r in answered)
    assert len(calls) == 20


@pytest.mark.django_db
def test_the_lane_counts_its_admissions_in_the_decision_metrics(client):
    from prometheus_client import REGISTRY

    from ratelimit_app import metrics

    labels = {"policy": "lane-metrics", "result": "allowed"}
    before = REGISTRY.get_sample_value(metrics.DECISIONS, labels) or 0.0
    with policies(leased("lane-metrics")):
        answered = responses(client, "/plain/", 50)
    assert sum(from_the_lane(r) for r in answered) > 30
    after = REGISTRY.get_sample_value(metrics.DECISIONS, labels)
    assert after - before == 50


@pytest.mark.django_db
def test_limits_turned_off_or_an_exempt_path_skip_the_lane_too(client):
    with policies(leased("lane-off")):
        assert all(from_the_lane(r) for r in responses(client, "/plain/", 30)[-5:])
    with policies(leased("lane-off"), ENABLED=False):
        answered = responses(client, "/plain/", 5)
    with policies(leased("lane-off"), EXEMPT_PATHS=["/plain/"]):
        answered += responses(client, "/plain/", 5)
    for response in answered:
        assert not hasattr(response.wsgi_request, "ratelimit")
        assert "RateLimit" not in response


@pytest.mark.django_db(transaction=True)
async def test_async_requests_take_the_lane_unless_their_key_reads_the_user(
    async_client, django_user_model
):
    from asgiref.sync import sync_to_async

    with policies(leased("lane-async", path="/async/")):
        answered = [await async_client.get("/async/") for _ in range(30)]
    assert [r.status_code for r in answered] == [200] * 30
    assert from_the_lane(answered[-1])
    user = await sync_to_async(django_user_model.objects.create_user)("lane", "pw")
    await async_client.aforce_login(user)
    with policies(leased("lane-async-user", path="/async/", key="user")):
        answered = [await async_client.get("/async/") for _ in range(30)]
    assert [r.status_code for r in answered] == [200] * 30
    # request.user is read in a thread by the usual path, never in the loop.
    assert not any(from_the_lane(r) for r in answered)


@pytest.mark.django_db
def test_a_policy_matched_by_url_name_is_admitted_through_the_lane_too(client):
    """Matchers that resolve the URL keep the router from caching routes;
    the lane is then taken inside check()."""
    entry = leased("lane-by-name", path="")
    with policies({**entry, "url_name": "plain"}):
        answered = responses(client, "/plain/", 30)
    assert [r.status_code for r in answered] == [200] * 30
    assert from_the_lane(answered[-1])


# -- the called lane: plain policies that do not lease -------------------------------


def plain(name: str, rate: str = "100000/h", path: str = "/plain/", **extra):
    return {"name": name, "path": path, "rate": rate, "key": "ip", **extra}


def no_rules_built(monkeypatch) -> None:
    """The usual path builds rules per request; the lanes never do."""

    def refused(*args, **kwargs):
        raise AssertionError("build_rules called: the request left the lane")

    monkeypatch.setattr(enforcement, "build_rules", refused)


@pytest.mark.django_db
def test_plain_policies_are_decided_in_one_prepared_call_with_the_usual_headers(
    client, calls, monkeypatch
):
    no_rules_built(monkeypatch)
    with policies(plain("called-a"), plain("called-b", rate="500/m")):
        answered = responses(client, "/plain/", 20)
    assert [r.status_code for r in answered] == [200] * 20
    assert len(calls) == 20  # one script call per request, nothing else
    last = answered[-1]
    assert from_the_lane(last)
    outcome = last.wsgi_request.ratelimit
    assert [p.name for p in outcome.policies] == ["called-a", "called-b"]
    assert [d.remaining for d in outcome.decisions] == [100000 - 20, 500 - 20]
    assert outcome.headers == ratelimit_headers(replace(outcome, headers=None))
    assert last["RateLimit-Policy"] == outcome.headers["RateLimit-Policy"]
    assert last["RateLimit"] == '"called-a";r=99980;t=1, "called-b";r=480;t=3'


@pytest.mark.django_db
def test_a_denial_in_the_called_lane_blocks_reports_and_is_then_answered_locally(
    client, calls, monkeypatch
):
    no_rules_built(monkeypatch)
    signalled = []

    def receiver(sender, **kwargs):
        signalled.append((sender, kwargs["shadow"]))

    rate_limited.connect(receiver)
    try:
        with policies(plain("called-wide"), plain("called-tight", rate="2/h")):
            answered = responses(client, "/plain/", 8)
    finally:
        rate_limited.disconnect(receiver)
    assert [r.status_code for r in answered] == [200, 200] + [429] * 6
    blocked = answered[-1]
    assert int(blocked["Retry-After"]) >= 1
    assert '"called-tight";r=0;t=3600' in blocked["RateLimit"]
    assert signalled == [("called-tight", False)] * 6
    # The first denials are Redis's; once this process knows the deny cache's
    # epoch it answers the rest itself.
    assert len(calls) < 8
    assert blocked.wsgi_request.ratelimit.blocking_names == ["called-tight"]


@pytest.mark.django_db
def test_a_shadow_policy_in_the_called_lane_is_left_out_of_the_headers(
    client, monkeypatch
):
    no_rules_built(monkeypatch)
    sets = (plain("called-enforced"), plain("called-shadow", rate="1/h", mode="shadow"))
    with policies(*sets):
        answered = responses(client, "/plain/", 3)
    assert [r.status_code for r in answered] == [200] * 3
    last = answered[-1]
    outcome = last.wsgi_request.ratelimit
    assert [d.reason for d in outcome.decisions] == ["ok", "limit"]
    assert last["RateLimit-Policy"].startswith('"called-enforced";')
    assert "called-shadow" not in last["RateLimit-Policy"] + last["RateLimit"]


@pytest.mark.django_db
def test_the_called_lane_follows_a_new_key_prefix(client, redis_client):
    with policies(plain("called-prefix")):
        assert client.get("/plain/").status_code == 200
    with policies(plain("called-prefix"), KEY_PREFIX="lanes-moved:"):
        assert client.get("/plain/").status_code == 200
        assert limiter.default_limiter().prefix.startswith("lanes-moved:")
    moved = list(redis_client.scan_iter(match="lanes-moved:*:state"))
    assert len(moved) == 1
    assert redis_client.hexists(moved[0], "called-prefix:gcra")
    redis_client.delete(*redis_client.scan_iter(match="lanes-moved:*"))


@pytest.mark.django_db
def test_the_called_lanes_prepared_calls_stay_within_their_bound(client, monkeypatch):
    monkeypatch.setattr(lanes, "IDENTITIES_MAX", 3)
    with policies(plain("called-bound")):
        for n in range(10):
            address = {"REMOTE_ADDR": f"198.51.100.{n}"}
            assert client.get("/plain/", **address).status_code == 200
        (plan,) = [plan for _, plan in lanes._plans.values() if plan is not None]
    assert not plan.leased
    assert 1 <= len(plan._calls) <= 3


@pytest.mark.django_db
def test_a_decorated_view_decides_its_plain_policy_in_the_called_lane_too(
    client, monkeypatch
):
    no_rules_built(monkeypatch)
    with policies():
        answered = responses(client, "/code/", 3)  # @rate_limit(rate="2/m")
    assert [r.status_code for r in answered] == [200, 200, 429]
    assert all(from_the_lane(r) for r in answered)
    assert answered[-1]["RateLimit"] == '"code-limited";r=0;t=60'


@pytest.mark.django_db(transaction=True)
async def test_async_requests_take_the_called_lane_and_its_denials_block(
    async_client, calls
):
    with policies(plain("called-async", rate="3/h", path="/async/")):
        answered = [await async_client.get("/async/") for _ in range(5)]
    assert [r.status_code for r in answered] == [200, 200, 200, 429, 429]
    assert all(from_the_lane(r) for r in answered)
    assert answered[2]["RateLimit"] == '"called-async";r=0;t=3600'
    assert int(answered[-1]["Retry-After"]) >= 1
    assert 4 <= len(calls) <= 5  # the last denial may come from the deny cache
