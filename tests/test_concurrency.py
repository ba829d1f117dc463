"""Exactness under concurrency: 8 OS processes on one key admit exactly the limit."""

from __future__ import annotations

import multiprocessing

import pytest

from ratelimit_app.backends.topology import client_from_url
from ratelimit_app.limiter import Limiter
from ratelimit_app.testing import ManualClock
from ratelimit_app.types import ALGORITHMS

PROCESSES = 8
ATTEMPTS = 400
RATE = "100/d"
# Mid-day, so no fixed or sliding-counter window edge falls inside the test.
NOON_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + 43_200_000


def attempt_many(url, prefix, algorithm, barrier, results):
    """Runs in a child process with its own connection."""
    client = client_from_url(url)  # any topology: standalone, Sentinel, Cluster
    limiter = Limiter(
        client=client,
        prefix=prefix,
        secret=b"concurrency-secret-0123",
        shards=1024,
        clock=ManualClock(NOON_MS),
    )
    client.ping()
    barrier.wait()
    admitted = sum(
        limiter.hit("shared", "one-key", RATE, algorithm=algorithm).allowed
        for _ in range(ATTEMPTS)
    )
    results.put(admitted)


def admitted_by_processes(url: str, prefix: str, algorithm: str) -> list[int]:
    """What each of PROCESSES processes hitting one key got admitted."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(
            target=attempt_many,
            args=(url, prefix, algorithm, barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    admitted = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    return admitted


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_eight_processes_admit_exactly_the_limit(redis_url, key_prefix, algorithm):
    admitted = admitted_by_processes(redis_url, key_prefix, algorithm)
    assert sum(admitted) == 100
    assert len(admitted) == PROCESSES
