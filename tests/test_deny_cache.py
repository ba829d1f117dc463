"""The local deny cache: denials answered in-process, invalidated within a second."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from ratelimit_app import aggregation, conf, limiter, local_usage, usage
from ratelimit_app.deny_cache import cache
from ratelimit_app.limiter import Limiter
from ratelimit_app.models import Policy, UsageMinute
from ratelimit_app.testing import RedisServer, reset_counters
from ratelimit_app.types import Rule
from tests.conftest import script_calls

ROOT = Path(__file__).resolve().parent.parent


# The local deny cache on, its epoch key read (conftest).
pytestmark = pytest.mark.usefixtures("deny_cache_on")


def hits(n, scope="s", identity="client", rate="1/m", **kwargs):
    engine = limiter.default_limiter()
    return [engine.hit(scope, identity, rate, **kwargs) for _ in range(n)]


def test_a_denied_client_is_answered_locally_not_by_redis(settings):
    # No usage counts: nothing left to flush to the server stopped below.
    settings.RATELIMIT = {**settings.RATELIMIT, "COUNT_USAGE": False}
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        engine = Limiter(client=client, prefix="dc:", secret=b"s" * 16)
        first = [engine.hit("s", "client", "1/m") for _ in range(3)]
        assert [d.allowed for d in first] == [True, False, False]
        ran = sum(script_calls(client).values())
        assert ran >= 3
        local = [engine.hit("s", "client", "1/m") for _ in range(50)]
        assert sum(script_calls(client).values()) == ran
        server.stop()  # a real Redis, gone: the cache still answers
        gone = engine.hit("s", "client", "1/m")
    finally:
        server.stop()
    assert {d.reason for d in local} == {"limit"} and not any(d.allowed for d in local)
    assert gone.reason == "limit" and gone.retry_after > 50


def test_retry_after_counts_down_from_the_cached_deadline(calls):
    hits(1, rate="1/2s")
    denied = hits(2, rate="1/2s")  # the second one is the cache's
    sent = len(calls)
    time.sleep(0.3)
    later = hits(1, rate="1/2s")[0]
    assert len(calls) == sent
    assert later.reason == "limit"
    assert denied[1].retry_after - later.retry_after == pytest.approx(0.3, abs=0.08)
    assert later.reset_after <= denied[1].reset_after - 0.25
    assert later.retry_after == round(later.retry_after, 3)  # whole milliseconds


def test_the_deadline_passed_asks_redis_again(calls):
    hits(1, rate="2/s")
    hits(1, rate="2/s")
    denied = hits(2, rate="2/s")
    assert [d.allowed for d in denied] == [False, False]
    sent = len(calls)
    time.sleep(denied[-1].retry_after + 0.01)
    assert hits(1, rate="2/s")[0].allowed
    assert len(calls) == sent + 1


def test_only_the_same_cost_is_answered_locally(calls):
    engine = limiter.default_limiter()
    rule = dict(algorithm="fixed_window")
    assert engine.hit("s", "c", "5/m", cost=3, **rule).allowed
    assert not engine.hit("s", "c", "5/m", cost=3, **rule).allowed  # Redis
    sent = len(calls)
    again = engine.hit("s", "c", "5/m", cost=3, **rule)
    assert not again.allowed and again.remaining == 2 and len(calls) == sent
    cheaper = engine.hit("s", "c", "5/m", cost=1, **rule)  # a cost 3 denial: no say
    assert cheaper.allowed and cheaper.remaining == 1 and len(calls) == sent + 1


def test_shadow_rules_and_cost_exceeds_capacity_always_ask_redis(calls):
    engine = limiter.default_limiter()
    for _ in range(3):
        engine.hit_many([Rule("shadow", "c", "1/m", shadow=True)])
        engine.hit("big", "c", "1/m", cost=5)
    assert len(calls) == 6


def test_a_local_answer_reports_a_remembered_shadow_denial(calls):
    engine = limiter.default_limiter()
    rules = [Rule("tight", "c", "1/m"), Rule("watch", "c", "1/m", shadow=True)]
    engine.hit_many(rules)
    engine.hit_many(rules)
    sent = len(calls)
    local = engine.hit_many(rules)
    assert len(calls) == sent
    assert [(d.reason, d.shadow, d.allowed) for d in local] == [
        ("limit", False, False),
        ("limit", True, False),
    ]


def test_a_call_with_several_rules_is_local_when_an_enforcing_rule_is_cached(calls):
    engine = limiter.default_limiter()
    rules = [Rule("tight", "c", "1/m"), Rule("loose", "c", "100/m")]
    engine.hit_many(rules)
    from_redis = engine.hit_many(rules)
    sent = len(calls)
    local = engine.hit_many(rules)
    assert len(calls) == sent
    assert [d.reason for d in from_redis] == ["limit", "not_consumed"]
    assert [d.reason for d in local] == ["limit", "not_consumed"]
    assert local[1].allowed and local[1].remaining == 0  # unknown: promise nothing
    # The loose rule alone still asks Redis, which consumed nothing meanwhile.
    alone = engine.hit_many([rules[1]])[0]
    assert alone.allowed and alone.remaining == 98 and len(calls) == sent + 1


def test_the_epoch_is_read_at_the_first_denial_then_denials_are_kept(calls):
    engine = Limiter(prefix=f"{conf.key_prefix()}fresh:")  # epoch never read
    decisions = [engine.hit("s", "client", "1/m") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] + [False] * 5
    assert len(calls) == 3  # allowed, denied (+ GET epoch), denied and kept


def test_the_lru_cap_holds(settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "DENY_CACHE_MAX_KEYS": 3}
    for n in range(6):
        hits(2, identity=f"client-{n}")
    assert len(cache) == 3


def test_a_reset_in_this_process_admits_at_once():
    hits(3)
    reset_counters("s", "client")
    assert hits(1)[0].allowed


async def test_the_async_twin_answers_locally(calls):
    engine = limiter.default_limiter()
    results = [await engine.ahit("s", "client", "1/m") for _ in range(5)]
    assert [d.allowed for d in results] == [True] + [False] * 4
    assert len(calls) <= 3  # allowed, denied, maybe one after the first epoch read
    rules = [Rule("s", "client", "1/m"), Rule("other", "client", "9/m")]
    many = await engine.ahit_many(rules)
    assert [d.reason for d in many] == ["limit", "not_consumed"]
    assert len(calls) <= 3


def test_off_every_request_asks_redis(settings, calls):
    settings.RATELIMIT = {**settings.RATELIMIT, "DENY_CACHE": False}
    assert [d.allowed for d in hits(10)] == [True] + [False] * 9
    assert len(calls) == 10 and len(cache) == 0


def test_a_limiter_with_a_test_clock_never_uses_it(limiter, calls):
    for _ in range(5):
        limiter.hit("s", "client", "1/m")
    assert len(calls) == 5 and len(cache) == 0


@pytest.mark.django_db
def test_stats_stay_exact_with_most_denials_answered_locally(calls):
    denied = [d for d in hits(41) if not d.allowed]
    assert len(denied) == 40 and len(calls) <= 3
    live_keys = list(cache_usage_keys())
    assert local_usage.buffer.flush() >= 37
    top = sum(
        score
        for key in live_keys
        for _, score in redis_client().zrange(f"{key}:top", 0, -1, withscores=True)
    )
    assert top == 40
    aggregation.drain_usage()
    rows = UsageMinute.objects.filter(policy="s")
    assert sum(r.blocked for r in rows) == 40
    assert sum(r.allowed for r in rows) == 1


def redis_client():
    return redis.Redis.from_url(conf.get("REDIS_URL"))


def cache_usage_keys():
    engine = limiter.default_limiter()
    key = engine.keys_for([Rule("s", "client", "1/m")])[0]
    yield usage.live_key_of(key)


# -- another process -------------------------------------------------------------


def start_other_process(path: str):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RATELIMIT_TEST_PREFIX": settings.RATELIMIT["KEY_PREFIX"],
        "REDIS_URL": settings.RATELIMIT["REDIS_URL"],
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.deny_cache_process", path, "15"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["reset", "edit", "exemption"])
def test_a_change_here_reaches_the_cache_of_another_process_within_a_second(
    django_capture_on_commit_callbacks, change
):
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(name="dc", rate="2/h", path="/plain/")
    worker = start_other_process("/plain/")
    try:
        blocked, cached = worker.stdout.readline().split()
        assert blocked == "blocked" and int(cached) >= 1
        time.sleep(0.3)
        with django_capture_on_commit_callbacks(execute=True):
            if change == "reset":
                reset_counters("dc", "127.0.0.1")
            elif change == "edit":
                policy.rate = "100000/h"
                policy.save()
            else:
                policy.exemptions.create(network="127.0.0.1/32")
        changed = time.time()
        admitted = float(worker.stdout.readline())
    finally:
        worker.kill()
        worker.wait()
    assert 0 <= admitted - changed <= 1.1  # refresh interval 1 s + one 20 ms poll
