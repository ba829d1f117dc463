"""Prometheus counters: real requests, real Redis, real Redis failures."""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
import redis.asyncio
from django.urls import path
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)

from ratelimit_app import metrics
from ratelimit_app.algorithms import Script
from ratelimit_app.backends.redis import SCRIPT_OPERATION, run_script
from ratelimit_app.limiter import Limiter
from ratelimit_app.metrics import DECISIONS, FALLBACKS, REDIS_ERRORS, metrics_view
from ratelimit_app.testing import free_port
from tests import views
from tests.policy_helpers import policies, statuses

pytestmark = pytest.mark.django_db

# The wiring the README shows, beside a view the policies limit.
urlpatterns = [
    path("metrics/", metrics_view),
    path("plain/", views.plain),
]


def value(metric: str, **labels: str) -> float:
    """The counter's current value; 0 when the series does not exist yet."""
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def decisions(policy: str) -> dict[str, float]:
    results = ("allowed", "blocked", "shadow_blocked", "not_consumed")
    return {r: value(DECISIONS, policy=policy, result=r) for r in results}


@pytest.fixture
def name() -> str:
    """A policy name of this test's own: the registry outlives tests."""
    return f"metrics-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def without_prometheus(monkeypatch):
    """As if prometheus_client were not installed (imports of it fail)."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    metrics.forget()
    yield
    monkeypatch.undo()
    metrics.forget()


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


# -- decisions ---------------------------------------------------------------------


def test_allowed_and_blocked_requests_count_once_per_policy(client, name):
    with policies({"name": name, "rate": "2/m", "path": "/plain/"}):
        assert statuses(client, "/plain/", 5) == [200, 200, 429, 429, 429]
    assert decisions(name) == {
        "allowed": 2,
        "blocked": 3,
        "shadow_blocked": 0,
        "not_consumed": 0,
    }


def folded(policy: str, result: str) -> float:
    """The counter's value without collecting the registry (which folds)."""
    return metrics._decisions_child(metrics.counters(), policy, result)._value.get()


def test_decisions_reach_the_counter_within_a_second_without_a_scrape(client, name):
    """Other processes of multiprocess mode are never scraped themselves: the
    background thread adds their decisions to the counter."""
    with policies({"name": name, "rate": "2/m", "path": "/plain/"}):
        assert statuses(client, "/plain/", 3) == [200, 200, 429]
    deadline = time.monotonic() + 5
    while folded(name, "allowed") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (folded(name, "allowed"), folded(name, "blocked")) == (2, 1)


def test_a_forked_child_leaves_the_parents_decisions_to_the_parent(client, name):
    with policies({"name": name, "rate": "2/m", "path": "/plain/"}):
        read, write = os.pipe()
        with metrics._pending_lock:  # the background thread cannot fold now
            metrics._pending[(name, "allowed")] += 5  # counted, not folded yet
            pid = os.fork()
        if pid == 0:  # the child: what it would fold, then leave at once
            os.write(write, str(sum(metrics._pending.values())).encode())
            os._exit(0)
        os.close(write)
        reported = os.read(read, 100).decode()
        os.waitpid(pid, 0)
    assert reported == "0"
    assert value(DECISIONS, policy=name, result="allowed") == 5


def test_shadow_would_blocks_count_as_shadow_blocked(client, name):
    with policies({"name": name, "rate": "1/m", "path": "/plain/", "mode": "shadow"}):
        assert statuses(client, "/plain/", 3) == [200, 200, 200]
    assert decisions(name) == {
        "allowed": 1,
        "blocked": 0,
        "shadow_blocked": 2,
        "not_consumed": 0,
    }


def test_a_policy_with_room_counts_not_consumed_when_another_blocks(client, name):
    with policies(
        {"name": f"{name}-wide", "rate": "10/m", "path": "/*", "priority": 20},
        {"name": f"{name}-narrow", "rate": "1/m", "path": "/plain/", "priority": 10},
    ):
        assert statuses(client, "/plain/", 3) == [200, 429, 429]
    assert decisions(f"{name}-narrow") == {
        "allowed": 1,
        "blocked": 2,
        "shadow_blocked": 0,
        "not_consumed": 0,
    }
    assert decisions(f"{name}-wide") == {
        "allowed": 1,
        "blocked": 0,
        "shadow_blocked": 0,
        "not_consumed": 2,
    }


def test_the_middleware_and_the_decorator_each_count_their_own_policy(client, name):
    before = decisions("code-limited")
    with policies({"name": name, "rate": "10/m", "path": "/code/"}):
        assert statuses(client, "/code/", 3) == [200, 200, 429]
    after = decisions("code-limited")
    assert after["allowed"] - before["allowed"] == 2
    assert after["blocked"] - before["blocked"] == 1
    # The middleware's policy passed all three; the third was blocked by the
    # decorator's, in a second call, after the middleware had consumed.
    assert decisions(name)["allowed"] == 3


def test_count_when_views_count_the_request_once_not_the_check_and_the_count(client):
    before = decisions("failed-logins")
    codes = [client.post("/login/", {"password": "no"}).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    after = decisions("failed-logins")
    assert after["allowed"] - before["allowed"] == 2
    assert after["blocked"] - before["blocked"] == 1
    assert after["not_consumed"] == before["not_consumed"]


async def test_async_views_are_counted(async_client):
    before = decisions("async-code")
    codes = [(await async_client.get("/async-code/")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    after = decisions("async-code")
    assert after["allowed"] - before["allowed"] == 2
    assert after["blocked"] - before["blocked"] == 1


def test_the_metrics_setting_off_counts_nothing_and_on_again_counts(client, name):
    with policies({"name": name, "rate": "1/m", "path": "/plain/"}, METRICS=False):
        assert metrics.counters() is None
        assert statuses(client, "/plain/", 2) == [200, 429]
    assert (
        REGISTRY.get_sample_value(DECISIONS, {"policy": name, "result": "allowed"})
        is None
    )
    with policies({"name": name, "rate": "1/m", "path": "/plain/"}):
        assert statuses(client, "/plain/", 1) == [429]
    assert decisions(name)["blocked"] == 1


# -- fallbacks and Redis errors ---------------------------------------------------------


def test_record_fallback_counts_by_policy_and_mode(name):
    metrics.record_fallback(name, "open")
    metrics.record_fallback(name, "open")
    metrics.record_fallback(name, "closed")
    assert value(FALLBACKS, policy=name, mode="open") == 2
    assert value(FALLBACKS, policy=name, mode="closed") == 1
    assert value(FALLBACKS, policy=name, mode="local") == 0


def test_a_redis_connection_error_is_counted_and_the_fail_mode_decides():
    client = redis.Redis.from_url(closed_port_url(), socket_connect_timeout=1)
    limiter = Limiter(client=client, prefix="rlt-metrics:", secret=b"x" * 16)
    labels = {"operation": "decide", "error": "ConnectionError"}
    before = value(REDIS_ERRORS, **labels)
    fallbacks = value(FALLBACKS, policy="errors", mode="closed")
    decision = limiter.hit("errors", "client", "5/m", fail_mode="closed")
    assert decision.reason == "fallback_closed"
    assert value(REDIS_ERRORS, **labels) - before == 1
    assert value(FALLBACKS, policy="errors", mode="closed") - fallbacks == 1
    client.close()


async def test_an_async_redis_connection_error_is_counted_and_the_fail_mode_decides():
    client = redis.asyncio.from_url(closed_port_url(), socket_connect_timeout=1)
    limiter = Limiter(async_client=client, prefix="rlt-metrics:", secret=b"x" * 16)
    labels = {"operation": "decide", "error": "ConnectionError"}
    before = value(REDIS_ERRORS, **labels)
    decision = await limiter.ahit("errors", "client", "5/m", fail_mode="open")
    assert (decision.allowed, decision.reason) == (True, "fallback_open")
    assert value(REDIS_ERRORS, **labels) - before == 1
    await client.aclose()


def test_a_script_error_counts_by_class_and_a_recovered_noscript_does_not(
    redis_client,
):
    # A script Redis has never seen: NOSCRIPT, load, then the real error.
    source = f"return redis.error_reply('metrics test {uuid.uuid4().hex}')"
    script = Script(source, hashlib.sha1(source.encode()).hexdigest())
    before = {
        error: value(REDIS_ERRORS, operation=SCRIPT_OPERATION, error=error)
        for error in ("ResponseError", "NoScriptError")
    }
    with pytest.raises(redis.exceptions.ResponseError, match="metrics test"):
        run_script(redis_client, script, [], [])
    after = {
        error: value(REDIS_ERRORS, operation=SCRIPT_OPERATION, error=error)
        for error in before
    }
    assert after["ResponseError"] - before["ResponseError"] == 1
    assert after["NoScriptError"] == before["NoScriptError"]


# -- labels and registration ----------------------------------------------------------


def test_labels_name_policies_and_outcomes_never_clients(client, name):
    with policies({"name": name, "rate": "1/m", "path": "/plain/"}):
        statuses(client, "/plain/", 2)
    metrics.record_fallback(name, "open")
    metrics.record_redis_error("decide", redis.exceptions.TimeoutError())
    expected = {
        "ratelimit_decisions": {"policy", "result"},
        "ratelimit_fallback_activations": {"policy", "mode"},
        "ratelimit_redis_errors": {"operation", "error"},
    }
    seen = {}
    for family in REGISTRY.collect():
        if family.name in expected:
            seen[family.name] = {k for s in family.samples for k in s.labels}
            values = {v for s in family.samples for v in s.labels.values()}
            assert "127.0.0.1" not in values
    assert seen == expected


def test_counters_are_registered_once_across_settings_changes_and_reloads():
    first = metrics.counters()
    metrics.forget()
    assert metrics.counters().decisions is first.decisions
    importlib.reload(metrics)
    assert metrics.counters().decisions is first.decisions


# -- without prometheus_client ------------------------------------------------------


@pytest.mark.urls(__name__)
def test_without_prometheus_client_requests_pass_and_nothing_is_counted(
    client, name, without_prometheus
):
    assert metrics.counters() is None
    metrics.record_fallback(name, "open")
    metrics.record_redis_error("decide", redis.exceptions.ConnectionError())
    with policies({"name": name, "rate": "1/m", "path": "/plain/"}):
        assert statuses(client, "/plain/", 2) == [200, 429]
    response = client.get("/metrics/")
    assert response.status_code == 404
    assert response.content.decode() == metrics.MISSING_MESSAGE
    assert (
        REGISTRY.get_sample_value(DECISIONS, {"policy": name, "result": "allowed"})
        is None
    )
    assert value(FALLBACKS, policy=name, mode="open") == 0


# -- the view ---------------------------------------------------------------------


@pytest.mark.urls(__name__)
def test_the_metrics_view_exports_the_counters(client, name):
    with policies({"name": name, "rate": "1/m", "path": "/plain/"}):
        statuses(client, "/plain/", 2)
    response = client.get("/metrics/")
    assert response.status_code == 200
    # The text format every Prometheus server reads (no Accept header here).
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.content.decode()
    assert f'ratelimit_decisions_total{{policy="{name}",result="allowed"}} 1.0' in text
    assert f'ratelimit_decisions_total{{policy="{name}",result="blocked"}} 1.0' in text
    assert "# TYPE ratelimit_redis_errors_total counter" in text


@pytest.mark.urls(__name__)
def test_the_metrics_view_speaks_openmetrics_when_asked(client, name):
    metrics.record_fallback(name, "closed")
    response = client.get("/metrics/", HTTP_ACCEPT="application/openmetrics-text")
    assert response["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    text = response.content.decode()
    assert (
        f'ratelimit_fallback_activations_total{{mode="closed",policy="{name}"}} 1.0'
        in text
    )
    assert text.endswith("# EOF\n")


@pytest.mark.urls(__name__)
def test_the_metrics_view_adds_up_processes_in_multiprocess_mode(
    client, tmp_path, monkeypatch
):
    # Another process (a gunicorn worker, say) counts into the shared directory.
    counting = (
        "from prometheus_client import Counter\n"
        "c = Counter('ratelimit_decisions', 'x', ('policy', 'result'))\n"
        "c.labels('worker-policy', 'allowed').inc(3)\n"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", counting], env=env, check=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = client.get("/metrics/").content.decode()
    assert (
        'ratelimit_decisions_total{policy="worker-policy",result="allowed"} 3.0' in text
    )
