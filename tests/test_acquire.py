"""acquire/aacquire: wait for the limiter, sleeping retry_after plus jitter."""

from __future__ import annotations

import threading

import pytest
import redis

from ratelimit_app import limiter as limiter_module
from ratelimit_app.limiter import ACQUIRE_JITTER, Limiter, acquire_pause
from ratelimit_app.testing import free_port
from ratelimit_app.types import Decision


@pytest.fixture
def sleeps(limiter, clock) -> list[float]:
    """The manual-clock limiter sleeps by moving its clock; returns the sleeps."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(round(seconds * 1000))

    async def asleep(seconds: float) -> None:
        sleep(seconds)

    limiter.sleep, limiter.asleep = sleep, asleep
    limiter.monotonic = lambda: clock() / 1000
    return slept


def in_jitter_range(slept: float, retry_after: float) -> bool:
    return retry_after <= slept <= retry_after * (1 + ACQUIRE_JITTER)


def test_an_allowed_call_returns_at_once(limiter, sleeps):
    decision = limiter.acquire("jobs", "global", "5/s")
    assert (decision.allowed, decision.remaining, sleeps) == (True, 4, [])


def test_a_denied_call_sleeps_retry_after_plus_jitter_then_passes(limiter, sleeps):
    assert limiter.acquire("jobs", "global", "5/s", burst=1).allowed
    retry_after = limiter.peek("jobs", "global", "5/s", burst=1).retry_after
    assert retry_after == 0.2
    decision = limiter.acquire("jobs", "global", "5/s", burst=1)
    assert (decision.allowed, decision.reason) == (True, "ok")
    assert len(sleeps) == 1
    assert in_jitter_range(sleeps[0], 0.2)


def test_waiting_forever_admits_every_call_at_the_rate(limiter, sleeps, clock):
    start = clock()
    decisions = [limiter.acquire("jobs", "g", "10/s", burst=1) for _ in range(10)]
    assert all(d.allowed for d in decisions)
    assert len(sleeps) == 9
    assert all(in_jitter_range(s, 0.1) for s in sleeps)
    # Ten admissions at 10/s with a burst of 1 span at least 0.9 s.
    assert clock() - start >= 900


def test_a_timeout_shorter_than_retry_after_returns_the_denial_at_once(limiter, sleeps):
    assert limiter.acquire("jobs", "g", "1/m").allowed
    for timeout in (0, 10, 59.999):
        decision = limiter.acquire("jobs", "g", "1/m", timeout=timeout)
        assert (decision.allowed, decision.reason) == (False, "limit")
        assert decision.retry_after == 60
    assert sleeps == []


def test_the_jitter_never_sleeps_past_the_timeout(limiter, sleeps):
    assert limiter.acquire("jobs", "g", "1/m").allowed
    decision = limiter.acquire("jobs", "g", "1/m", timeout=60)
    assert decision.allowed
    assert sleeps == [60]


def test_timeout_zero_tries_once(limiter, sleeps):
    assert limiter.acquire("jobs", "g", "1/m", timeout=0).allowed
    assert not limiter.acquire("jobs", "g", "1/m", timeout=0).allowed
    assert sleeps == []


def test_a_cost_above_the_capacity_returns_at_once_even_without_timeout(
    limiter, sleeps
):
    decision = limiter.acquire("jobs", "g", "5/s", cost=6)
    assert (decision.allowed, decision.reason, decision.retry_after) == (
        False,
        "cost_exceeds_capacity",
        None,
    )
    assert sleeps == []


def test_a_negative_timeout_is_refused(limiter):
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        limiter.acquire("jobs", "g", "5/s", timeout=-1)


@pytest.mark.parametrize(
    ("decision", "left", "expected"),
    [
        (Decision(True, 5, 4, 0.2, 0, "s"), 10, None),
        (Decision(False, 5, 0, 1, None, "s", "cost_exceeds_capacity"), 10, None),
        (Decision(False, 5, 0, 1, 2.0, "s", "limit"), 1.999, None),
        (Decision(False, 5, 0, 1, 2.0, "s", "limit"), 2.0, 2.0),
        (Decision(False, 5, 0, 1, 0.0, "s", "fallback_closed"), 0.001, 0.001),
    ],
)
def test_acquire_pause(decision, left, expected):
    assert acquire_pause(decision, 100 + left, 100) == pytest.approx(expected)


def test_acquire_pause_jitter_is_bounded_by_a_share_and_by_a_second():
    denied = Decision(False, 5, 0, 1, 0.5, "s", "limit")
    pauses = [acquire_pause(denied, float("inf"), 0) for _ in range(2000)]
    assert 0.5 <= min(pauses) < max(pauses) <= 0.5 * (1 + ACQUIRE_JITTER)
    denied = Decision(False, 5, 0, 1, 3600.0, "s", "limit")
    pauses = [acquire_pause(denied, float("inf"), 0) for _ in range(2000)]
    assert 3600 <= min(pauses) < max(pauses) <= 3601


def test_redis_down_closed_waits_the_breaker_cool_down_open_passes():
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    down = Limiter(client=client, prefix="rlt-acquire:", secret=b"s" * 16)
    slept: list[float] = []
    down.sleep = slept.append
    decision = down.acquire("jobs", "g", "5/s", fail_mode="closed", timeout=1)
    # The breaker's cool-down (2 s) ends past the timeout: no sleep at all.
    assert (decision.allowed, decision.reason) == (False, "fallback_closed")
    assert (decision.retry_after, slept) == (2.0, [])
    decision = down.acquire("jobs", "g", "5/s", fail_mode="open")
    assert (decision.allowed, decision.reason) == (True, "fallback_open")
    client.close()


async def test_aacquire_sleeps_like_acquire(limiter, sleeps):
    assert (await limiter.aacquire("jobs", "g", "5/s", burst=1)).allowed
    decision = await limiter.aacquire("jobs", "g", "5/s", burst=1)
    assert decision.allowed
    assert len(sleeps) == 1
    assert in_jitter_range(sleeps[0], 0.2)
    decision = await limiter.aacquire("jobs", "g", "5/s", burst=1, timeout=0.1)
    assert (decision.allowed, decision.retry_after) == (False, 0.2)
    assert len(sleeps) == 1
    denied = await limiter.aacquire("jobs", "g", "5/s", cost=6)
    assert denied.reason == "cost_exceeds_capacity"


# -- real time, Redis TIME ------------------------------------------------------------


def test_threads_sharing_a_rate_in_real_time_are_all_admitted_at_the_rate(
    make_limiter, redis_client
):
    shared = make_limiter()
    decisions: list[Decision] = []

    def work() -> None:
        for _ in range(4):
            decisions.append(shared.acquire("jobs", "shared", "10/s", burst=1))

    before = redis_client.time()
    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    after = redis_client.time()
    assert len(decisions) == 12
    assert all(d.allowed and d.reason == "ok" for d in decisions)
    # Twelve admissions 100 ms apart (burst 1) span at least 1.1 s of Redis time.
    assert seconds(after) - seconds(before) >= 1.1


def test_the_module_functions_use_the_settings_limiter():
    assert limiter_module.acquire("jobs", "module", "1/m", timeout=0).allowed
    denied = limiter_module.acquire("jobs", "module", "1/m", timeout=0.5)
    assert (denied.allowed, denied.reason) == (False, "limit")
    assert 59 < denied.retry_after <= 60


async def test_the_async_module_function_waits_in_real_time():
    first = await limiter_module.aacquire("jobs", "amodule", "20/s", burst=1)
    second = await limiter_module.aacquire("jobs", "amodule", "20/s", burst=1)
    assert first.allowed and second.allowed
    third = await limiter_module.aacquire("jobs", "amodule", "20/s", burst=1, timeout=0)
    assert (third.allowed, third.reason) == (False, "limit")
    assert 0 < third.retry_after <= 0.05


def seconds(redis_time: tuple[int, int]) -> float:
    return redis_time[0] + redis_time[1] / 1e6
