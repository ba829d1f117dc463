"""Exhausted-key decisions/s with the local deny cache on and off, beside the floor.

A report, not a timed test: ``python -m bench.deny_cache`` prints a markdown
table. One process, one Redis (``REDIS_URL``, else 127.0.0.1:6379, else a
private redis-server), a per-run key prefix deleted at the end.

* floor: ``EVALSHA`` of ``return 1`` through the limiter's redis-py client;
* cache off / on: ``Limiter.hit`` (gcra, 1/day, spent during warm-up, so every
  measured call is a denial) with ``DENY_CACHE`` False / True; with it on,
  every measured call after the first is answered in-process (its usage
  counts flushed by the background thread).

Each contender makes N calls per round, R rounds, in a shuffled order;
decisions/s is the median over rounds.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import time

from django.test.utils import override_settings

from bench.decisions import FLOOR_SCRIPT, bench_redis, configure_django, delete_keys


def rate_of(decide, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        decide()
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    prefix = f"bench-dc-{secrets.token_hex(4)}"
    with bench_redis() as url:
        configure_django(url, prefix)
        from ratelimit_app import local_usage
        from ratelimit_app.limiter import Limiter

        with override_settings(RATELIMIT={"REDIS_URL": url, "KEY_PREFIX": prefix}):
            on = Limiter()
        off_settings = {"REDIS_URL": url, "KEY_PREFIX": prefix, "DENY_CACHE": False}
        with override_settings(RATELIMIT=off_settings):
            off = Limiter()
        client = on.client
        floor = client.register_script(FLOOR_SCRIPT)
        contenders = {
            "floor (EVALSHA `return 1`)": lambda: floor(),
            "deny cache off": lambda: off.hit("bench", "client-1", "1/d"),
            "deny cache on": lambda: on.hit("bench", "client-1", "1/d"),
        }
        try:
            for decide in contenders.values():
                for _ in range(50):  # warm up: script loaded, key spent, cached
                    decide()
            rates = {name: [] for name in contenders}
            for _ in range(options.rounds):
                order = list(contenders)
                random.shuffle(order)
                for name in order:
                    rates[name].append(rate_of(contenders[name], options.calls))
            local_usage.buffer.flush()
        finally:
            delete_keys(client, prefix)
    floor_rate = statistics.median(rates["floor (EVALSHA `return 1`)"])
    print(f"{options.rounds} rounds x {options.calls} calls, one process, {url}\n")
    print("| contender | decisions/s | share of floor |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:,.0f} | {rate / floor_rate:.2f} |")


if __name__ == "__main__":
    main()
