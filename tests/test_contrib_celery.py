"""global_rate_limit on Celery tasks: real workers, one rate across all of them."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable

import pytest
from django.conf import settings

from ratelimit_app import limiter
from ratelimit_app.contrib.celery import deferral_countdown, global_rate_limit
from tests import celery_limited_tasks as tasks
from tests.test_tasks import Worker, forget_queue


@pytest.fixture
def start_worker(redis_client):
    """Workers loading the rate-limited tasks, with this test's key prefix."""
    workers: list[Worker] = []

    def start() -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.celery_limit_settings",
            "RATELIMIT_TEST_PREFIX": settings.RATELIMIT["KEY_PREFIX"],
            "REDIS_URL": settings.RATELIMIT["REDIS_URL"],
        }
        workers.append(Worker(env))
        return workers[-1]

    yield start
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.stop()
        forget_queue(redis_client, worker.queue)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def records(redis_client, key: str, count: int) -> list[dict]:
    wait_until(lambda: redis_client.llen(key) >= count, f"{count} records")
    return [json.loads(entry) for entry in redis_client.lrange(key, 0, -1)]


def record_key() -> str:
    return f"{settings.RATELIMIT['KEY_PREFIX']}records"


DEFERRED = f"rate limited by global_rate_limit({tasks.OWN_RETRY_SCOPE!r})"


@pytest.mark.django_db(transaction=True)
def test_deferrals_leave_the_tasks_own_retry_budget_intact(redis_client, start_worker):
    worker = start_worker()
    key = record_key()
    assert limiter.hit(tasks.OWN_RETRY_SCOPE, "global", "1/h").allowed  # full
    task_id = tasks.own_retry.apply_async((key,), queue=worker.queue).id

    wait_until(lambda: worker.output.count(DEFERRED) >= 5, "5 deferrals")
    limiter.reset(tasks.OWN_RETRY_SCOPE, "global")
    [first] = records(redis_client, key, 1)
    # Its own retry is rate-limited (the first run took the hour's one slot).
    wait_until(lambda: worker.output.count(DEFERRED) > first["deferrals"], "more")
    limiter.reset(tasks.OWN_RETRY_SCOPE, "global")
    worker.wait_for(f"[{task_id}] raised unexpected: MaxRetriesExceededError")

    first, second = records(redis_client, key, 2)
    assert (first["retries"], second["retries"]) == (0, 1)
    assert first["deferrals"] >= 5
    assert second["deferrals"] > first["deferrals"]
    # Every deferral was logged as a retry, and counted in the header.
    assert worker.output.count(DEFERRED) == second["deferrals"]
    assert worker.output.count(f"[{task_id}] retry: Retry in 0s") == 1


@pytest.mark.alone  # 20 ms of slack between admission and stamp: no load beside
@pytest.mark.django_db(transaction=True)
def test_two_workers_share_one_rate(redis_client, start_worker):
    workers = [start_worker(), start_worker()]
    for worker in workers:
        worker.wait_for("ready.")
    key = record_key()
    for index in range(8):
        queue = workers[index % 2].queue
        tasks.shared.apply_async((key, "g1"), queue=queue)

    runs = records(redis_client, key, 8)
    stamps = sorted(run["time"] for run in runs)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    # 5/s with a burst of 1: admissions 200 ms apart on the Redis clock; the
    # stamps come a little after each admission, hence the 20 ms allowance.
    assert min(gaps) >= 0.18, gaps
    assert {run["pid"] for run in runs} == {w.process.pid for w in workers}
    deferred = sum(w.output.count("rate limited by global_rate_limit") for w in workers)
    assert deferred >= 4  # the rate, not the workers, paced them


@pytest.mark.alone  # gaps between stamps taken after each admission
def test_called_directly_or_eagerly_the_task_waits_in_process(redis_client):
    key = record_key()
    tasks.shared(key, "direct")
    tasks.shared.apply(args=(key, "direct"))  # eager
    tasks.shared(key, "other")  # another identity: a rate of its own
    first, second, other = records(redis_client, key, 3)
    assert second["time"] - first["time"] >= 0.18
    assert other["time"] - second["time"] < 0.18
    assert not limiter.peek(tasks.SHARED_SCOPE, "direct", "5/s", burst=1).allowed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": "often"}, "rate"),
        ({"rate": "5/s", "cost": 6}, "cost 6 exceeds the capacity 5"),
        ({"rate": "5/s", "algorithm": "magic"}, "Unknown algorithm"),
        ({"rate": "5/s", "max_countdown": 0}, "max_countdown must be > 0"),
    ],
)
def test_bad_arguments_fail_at_decoration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        global_rate_limit("scope", **kwargs)


@pytest.mark.parametrize(
    ("retry_after", "previous", "cap", "low", "high"),
    [
        (0.5, 0, 300, 0.5, 1.5),  # first deferral: up to 3 x retry_after
        (0.5, 2.0, 300, 0.5, 6.0),  # grows from the previous countdown
        (0.5, 200, 300, 0.5, 300),  # capped
        (3600, 0, 0.2, 0.2, 0.2),  # a long wait is re-checked at the cap
        (2.0, 0.1, 300, 2.0, 2.0),  # never before retry_after
    ],
)
def test_deferral_countdown_is_decorrelated_jitter(
    retry_after, previous, cap, low, high
):
    countdowns = [deferral_countdown(retry_after, previous, cap) for _ in range(500)]
    assert low <= min(countdowns) <= max(countdowns) <= high
