"""ratelimit_consume_demo: three consumer processes drain one queue at one rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "consume-demo.json"
CONSUMERS = 3
RATE, PER_SECOND, SECONDS = "20/s", 20, 3
ITEMS = 1000


def start_consumer(queue: str, results: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RATELIMIT_TEST_PREFIX": settings.RATELIMIT["KEY_PREFIX"],
        "REDIS_URL": settings.RATELIMIT["REDIS_URL"],
    }
    command = [
        *(sys.executable, "manage.py", "ratelimit_consume_demo", "-v", "0"),
        *("--queue", queue, "--results", results, "--rate", RATE, "--burst", "1"),
    ]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def most_in_one_second(stamps: list[float]) -> int:
    """The most stamps in any closed 1-second span (each starting at a stamp)."""
    ends = 0
    most = 0
    for start, stamp in enumerate(stamps):
        ends = max(ends, start)
        while ends < len(stamps) and stamps[ends] <= stamp + 1.0:
            ends += 1
        most = max(most, ends - start)
    return most


@pytest.fixture
def consumers():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:  # by PID, in case a test failed before stopping them
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.alone
def test_three_consumers_share_twenty_per_second(redis_client, consumers):
    prefix = settings.RATELIMIT["KEY_PREFIX"]
    queue, results = f"{prefix}queue", f"{prefix}results"
    consumers.extend(start_consumer(queue, results) for _ in range(CONSUMERS))
    for process in consumers:  # connected and about to pop
        assert process.stdout.readline().startswith(f"consuming {queue}")
    redis_client.rpush(queue, *range(ITEMS))
    time.sleep(SECONDS + 0.5)
    for process in consumers:
        os.kill(process.pid, signal.SIGTERM)
    for process in consumers:
        assert process.wait(10) == 0
        assert "stopped after" in process.stdout.read()

    entries = [e.decode().split() for e in redis_client.lrange(results, 0, -1)]
    stamps = sorted(float(stamp) for stamp, _, _ in entries)
    window = [s for s in stamps if s < stamps[0] + SECONDS]
    most = most_in_one_second(stamps)
    per_pid = {
        p.pid: sum(int(pid) == p.pid for _, pid, _ in entries) for p in consumers
    }
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(
        json.dumps(
            {
                "rate": RATE,
                "burst": 1,
                "consumers": CONSUMERS,
                "most_in_one_second": most,
                "admitted_in_first_3_seconds": len(window),
                "admitted_total": len(stamps),
                "per_consumer": list(per_pid.values()),
            },
            indent=2,
        )
    )
    assert most <= PER_SECOND + 1
    assert len(window) >= 0.9 * PER_SECOND * SECONDS
    assert all(per_pid.values()), per_pid  # every process took a share
    # Nothing lost: each item was admitted once or is back in the queue.
    items = sorted([int(item) for _, _, item in entries])
    left = sorted(int(item) for item in redis_client.lrange(queue, 0, -1))
    assert sorted(items + left) == list(range(ITEMS))
