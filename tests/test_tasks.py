"""The Celery tasks, run by real worker processes on the test's Redis and database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from bench.usage import by_period, record_decisions, rows_of
from ratelimit_app import aggregation, conf, tasks
from ratelimit_app.models import DrainBatch, UsageHour, UsageMinute
from ratelimit_app.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
HOLD_ENV = "RATELIMIT_TEST_HOLD_KEY"
NOW_MINUTE = int(time.time() // 60)
TASKS = (tasks.drain_usage, tasks.rollup_usage, tasks.prune_usage)


def hold_drain(batch_ids: list[str]) -> None:
    """Drain hook for workers: say where it stopped, then wait for a release
    (or for the kill), inside the drain's transaction."""
    from ratelimit_app.backends.redis import get_client

    client, key = get_client(), os.environ[HOLD_ENV]
    client.set(key, json.dumps({"pid": os.getpid(), "batches": batch_ids}), ex=300)
    deadline = time.monotonic() + 60
    while not client.exists(f"{key}:release") and time.monotonic() < deadline:
        time.sleep(0.05)


class Worker:
    """``celery -A demo_project worker --pool=solo`` on a queue of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.queue = f"rlt-tasks-{uuid.uuid4().hex[:12]}"
        self.lines: list[str] = []
        self.exited = False
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "demo_project", "worker"),
                *("--pool=solo", "--loglevel=INFO", "-Q", self.queue),
                *("-n", f"{self.queue}@localhost"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.exited = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in self.output:
                left = deadline - time.monotonic()
                if left <= 0 or self.exited:
                    pytest.fail(f"worker never logged {text!r}:\n{self.output}")
                self._changed.wait(left)

    def run(self, task, timeout: float = 60) -> None:
        """Send a task to this worker and wait until it succeeded."""
        task_id = task.apply_async(queue=self.queue).id
        self.wait_for(f"[{task_id}] succeeded", timeout)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def start_worker(redis_client):
    """Start workers with this test's key prefix and Redis; stopped afterwards."""
    workers = []

    def start(database: dict, *, hold: bool = False) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
            "RATELIMIT_TEST_PREFIX": settings.RATELIMIT["KEY_PREFIX"],
            "REDIS_URL": settings.RATELIMIT["REDIS_URL"],
            "RATELIMIT_TEST_DB": json.dumps(database),
        }
        env.pop(aggregation.DRAIN_HOOK_ENV, None)
        if hold:
            env[aggregation.DRAIN_HOOK_ENV] = f"{__name__}.hold_drain"
            env[HOLD_ENV] = hold_key()
        workers.append(Worker(env))
        return workers[-1]

    yield start
    for worker in workers:
        worker.terminate()  # all at once: a warm shutdown takes a second
    for worker in workers:
        worker.stop()
        forget_queue(redis_client, worker.queue)


def forget_queue(redis_client, queue: str) -> None:
    """Delete what the broker keeps for a test's queue on the shared Redis
    (the message of a killed worker stays in kombu's "unacked" hash)."""
    redis_client.delete(
        queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"
    )
    for tag, entry in redis_client.hscan_iter("unacked"):
        if json.loads(entry)[2] == queue:
            redis_client.hdel("unacked", tag)
            redis_client.zrem("unacked_index", tag)


@pytest.fixture
def test_database() -> dict:
    """The test's database, for a worker process to open."""
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip(
            "the SQLite test database is in memory, where no worker process can "
            "see it: give it a file with DATABASES['default']['TEST']['NAME'] "
            "in tests/settings.py, or run with DATABASE_URL=postgres://..."
        )
    return {"NAME": str(connection.settings_dict["NAME"])}


def hold_key() -> str:
    return f"{settings.RATELIMIT['KEY_PREFIX']}test-hold"


def wait_until_held(redis_client, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = redis_client.get(hold_key())
        if held:
            return json.loads(held)
        time.sleep(0.05)
    pytest.fail("no drain reached the hook")


def record(redis_client, count: int, seed: int, expected=None) -> dict:
    return record_decisions(
        redis_client,
        count,
        seed=seed,
        last_minute=NOW_MINUTE,
        minutes=90,
        shards=conf.shard_count(),
        prefix=conf.key_prefix(),
        expected=expected,
    )


def usage_keys(redis_client, kind: str = "usage*") -> list[bytes]:
    return list(redis_client.scan_iter(match=f"{conf.key_prefix()}*:{kind}"))


def test_tasks_are_named_and_retry_database_and_redis_errors():
    for task in TASKS:
        assert task.name.startswith("ratelimit_app.tasks.")
        assert task.autoretry_for == tasks.RETRY_ON
        assert task.retry_backoff is True
        assert task.ignore_result is True
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {task.name for task in TASKS}


@pytest.mark.django_db(transaction=True)
def test_a_worker_drains_rolls_up_and_prunes(redis_client, start_worker, test_database):
    expected = record(redis_client, 3000, seed=1)
    worker = start_worker(test_database)
    for task in TASKS:
        worker.run(task)
    assert rows_of(UsageMinute) == expected
    assert rows_of(UsageHour) == by_period(expected, timedelta(hours=1))
    assert DrainBatch.objects.filter(key_deleted=True).exists()
    assert usage_keys(redis_client) == []


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_drain_loses_and_doubles_nothing(
    redis_client, start_worker, test_database
):
    expected = record(redis_client, 3000, seed=2)
    worker = start_worker(test_database, hold=True)
    tasks.drain_usage.apply_async(queue=worker.queue)
    held = wait_until_held(redis_client)
    assert held["pid"] == worker.process.pid
    # Stopped between the rename and the commit: counts in batch keys only.
    assert len(usage_keys(redis_client, "usage:batch:*")) == len(held["batches"])
    assert usage_keys(redis_client, "usage") == []
    assert not DrainBatch.objects.exists()
    assert not UsageMinute.objects.exists()

    os.kill(worker.process.pid, signal.SIGKILL)
    assert worker.process.wait(10) == -signal.SIGKILL
    record(redis_client, 1000, seed=3, expected=expected)
    report = aggregation.drain_usage()

    assert report.recorded > len(held["batches"])  # the held ones, then new ones
    assert rows_of(UsageMinute) == expected
    assert usage_keys(redis_client) == []


@pytest.mark.django_db(transaction=True)
def test_two_workers_draining_at_once_count_each_decision_once(
    redis_client, start_worker, test_database
):
    expected = record(redis_client, 3000, seed=4)
    held_worker = start_worker(test_database, hold=True)
    other_worker = start_worker(test_database)
    tasks.drain_usage.apply_async(queue=held_worker.queue)
    held = wait_until_held(redis_client)
    record(redis_client, 2000, seed=5, expected=expected)
    other_id = tasks.drain_usage.apply_async(queue=other_worker.queue).id
    other_worker.wait_for(f"[{other_id}] received")
    time.sleep(1)  # the other drain meets the held batches and waits for them
    redis_client.set(f"{hold_key()}:release", 1)

    held_worker.wait_for("succeeded")
    other_worker.wait_for(f"[{other_id}] succeeded")
    assert f"cleaned={len(held['batches'])}" in other_worker.output
    assert rows_of(UsageMinute) == expected
    assert usage_keys(redis_client) == []


@pytest.mark.django_db(transaction=True)
def test_a_worker_without_its_database_keeps_the_counts_in_redis(
    redis_client, start_worker
):
    if connection.vendor == "sqlite":
        unreachable = {"NAME": "/nonexistent-ratelimit-dir/db.sqlite3"}
    else:
        unreachable = {"HOST": "127.0.0.1", "PORT": str(free_port())}
    expected = record(redis_client, 2000, seed=6)
    shards_used = len(usage_keys(redis_client, "usage"))
    worker = start_worker(unreachable)
    task_id = tasks.drain_usage.apply_async(queue=worker.queue).id
    worker.wait_for(f"[{task_id}] retry: Retry in")
    worker.stop()
    # The drain renamed the live hashes, then failed to record them.
    assert len(usage_keys(redis_client, "usage:batch:*")) == shards_used
    assert not UsageMinute.objects.exists()

    report = aggregation.drain_usage()
    assert report.recorded == shards_used
    assert rows_of(UsageMinute) == expected
    assert usage_keys(redis_client) == []
