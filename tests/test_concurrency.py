"""Exactness under concurrency: 8 OS processes on one key admit exactly the limit."""

from __future__ import annotations

import multiprocessing

import pytest

from ratelimit_app import conf
from ratelimit_app.backends.topology import client_from_url
from ratelimit_app.limiter import Limiter
from ratelimit_app.testing import ManualClock
from ratelimit_app.types import ALGORITHMS, LEASE_ALGORITHMS, Rule

PROCESSES = 8
ATTEMPTS = 400
RATE = "100/d"
# Mid-day, so no fixed or sliding-counter window edge falls inside the test.
NOON_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000 + 43_200_000


def attempt_many(url, prefix, algorithm, barrier, results, rate=RATE, lease=False):
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
    rule = Rule("shared", "one-key", rate, algorithm=algorithm, lease=lease)
    admitted = sum(limiter.hit_many([rule])[0].allowed for _ in range(ATTEMPTS))
    results.put(admitted)


def admitted_by_processes(
    url: str, prefix: str, algorithm: str, rate: str = RATE, lease: bool = False
) -> list[int]:
    """What each of PROCESSES processes hitting one key got admitted."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(
            target=attempt_many,
            args=(url, prefix, algorithm, barrier, results, rate, lease),
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


LEASED_RATE = "800/d"


@pytest.mark.parametrize("algorithm", sorted(LEASE_ALGORITHMS))
def test_eight_leasing_processes_never_admit_more_than_the_limit(
    redis_url, key_prefix, algorithm
):
    """With leasing on, each process holds up to LEASE_MAX_SHARE x 800 = 40
    units: admitted is never above the limit, and with the load spread evenly
    never below the limit minus 8 x 40 (units stuck unused in leases)."""
    admitted = admitted_by_processes(
        redis_url, key_prefix, algorithm, LEASED_RATE, lease=True
    )
    bound = PROCESSES * int(800 * conf.number("LEASE_MAX_SHARE"))
    assert 800 - bound <= sum(admitted) <= 800
    assert len(admitted) == PROCESSES
