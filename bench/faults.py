"""Decision latency when Redis fails: the breaker open, beside Redis up and the floor.

A report, not a timed test: ``python -m bench.faults`` prints a markdown table.
It starts a private redis-server on a free loopback port (stopped by its PID):

* floor: a bare ``EVALSHA`` of ``return 1``, the least a Redis decision costs;
* breaker closed: ``limiter.hit`` deciding in Redis (GCRA, always allowed);
* Redis down, no breaker: every call tries to connect (refused on loopback;
  a hung or distant Redis costs REDIS_CONNECT_TIMEOUT instead);
* breaker open: the server is gone and the breaker open, so each fail mode
  (open, closed, local) decides without touching the network.

The target: with the breaker open a decision adds well under 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import django
import redis
from django.conf import settings

from ratelimit_app.testing import RedisServer

FLOOR_SCRIPT = "return 1"
TARGET_MS = 1.0


def configure_django(url: str) -> None:
    settings.configure(
        SECRET_KEY="bench-only-secret-key",
        INSTALLED_APPS=["ratelimit_app"],
        RATELIMIT={
            "REDIS_URL": url,
            "KEY_PREFIX": "rl-bench-faults:",
            "BREAKER_COOLDOWN": 3600.0,  # stays open for the whole measurement
            "FAILURE_LOG_INTERVAL": 3600.0,
            "METRICS": False,
        },
    )
    django.setup()


def timings(call: Callable[[], object], count: int) -> list[float]:
    """Per-call times in microseconds, after a short warm-up."""
    for _ in range(min(count, 200)):
        call()
    found = []
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        found.append((time.perf_counter_ns() - start) / 1000)
    return found


def row(name: str, found: list[float]) -> str:
    cuts = statistics.quantiles(found, n=100)
    return (
        f"| {name} | {statistics.median(found):.1f} | {cuts[98]:.1f} | "
        f"{statistics.fmean(found):.1f} |"
    )


def measure(count: int) -> list[str]:
    from ratelimit_app.limiter import Limiter

    server = RedisServer().start()
    try:
        configure_django(server.url)
        client = redis.Redis.from_url(server.url)
        floor = client.register_script(FLOOR_SCRIPT)
        limiter = Limiter()
        rows = [row("floor: bare EVALSHA", timings(floor, count))]

        def hit(mode: str) -> Callable[[], object]:
            return lambda: limiter.hit("bench", "c", "1000000/s", fail_mode=mode)

        rows.append(row("breaker closed: Redis decides", timings(hit("open"), count)))
        client.close()
    finally:
        server.stop()
    unbroken = Limiter()
    unbroken.breaker.threshold = 10**12  # never opens: every call tries Redis

    def down() -> object:
        return unbroken.hit("bench", "c", "5/s", fail_mode="open")

    rows.append(row("Redis down, no breaker (refused)", timings(down, count // 50)))
    for _ in range(limiter.breaker.threshold):
        limiter.hit("bench", "c", "5/s")
    assert limiter.breaker.state == "open"
    for mode in ("open", "closed", "local"):
        rows.append(row(f"breaker open, fail mode {mode}", timings(hit(mode), count)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    print("| scenario | p50 µs | p99 µs | mean µs |")
    print("|---|---|---|---|")
    for line in measure(args.calls):
        print(line)
    print(f"\nTarget: breaker open adds well under {TARGET_MS:g} ms per decision.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
