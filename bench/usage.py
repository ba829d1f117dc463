"""Usage statistics end to end: make N decisions, drain, roll up, compare.

``python -m bench.usage`` makes 1,000,000 decisions (``--decisions``) through
the real decision script (``--source script``: pipelined ``EVALSHA`` calls
built by ``Limiter.pack``, each at a chosen minute, over many clients,
policies, algorithms, costs and shadow rules), tallying what each reply says
was allowed, blocked or shadow-blocked; ``--source counters`` instead writes
the counters directly as the script does (``HINCRBY`` and a TTL, faster). It
drains every ``--drain-every`` decisions, then rolls up and checks that the
minute, hour and day rows and ``stats.totals`` equal the tally, and (script
source) that the distinct clients per policy and minute are within the
HyperLogLog's error of the exact count. Prints the time of each phase; exits
1 on any difference.

Redis: ``REDIS_URL``, else 127.0.0.1:6379, else a private redis-server; keys
under a per-run prefix, deleted at the end. Database: ``DATABASE_URL`` (a
database of this run's own is created and dropped), else in-memory SQLite.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import django
import redis
from django.conf import settings

from ratelimit_app.testing import RedisServer, find_redis_url

# Policy names as the counters see them: '|' and non-ASCII included.
POLICIES = (
    "api",
    "login",
    "api|v2",
    "lögin",
    "search.read",
    "upload-large",
    "p" * 255,
)

Expected = dict[tuple[str, int], list[int]]  # (policy, minute) -> a, b, s, c


def record_decisions(
    client: redis.Redis,
    count: int,
    *,
    seed: int,
    last_minute: int,
    minutes: int,
    shards: int,
    prefix: str,
    ttl: int = 7 * 24 * 3600,
    policies: Sequence[str] = POLICIES,
    expected: Expected | None = None,
    pipeline_size: int = 5000,
) -> Expected:
    """Record ``count`` random decisions; returns (adds to) the expected counts.

    A decision is allowed (cost 1, 2 or 5; one in seven also shadow-blocked)
    or blocked, at a random shard, policy and one of the ``minutes`` minutes
    up to ``last_minute``.
    """
    from ratelimit_app.usage import queue_usage

    rng = random.Random(seed)
    tally: Expected = expected if expected is not None else {}
    pipe = client.pipeline(transaction=False)
    for number in range(1, count + 1):
        policy = policies[rng.randrange(len(policies))]
        minute = last_minute - rng.randrange(minutes)
        roll = rng.random()
        cost = (1, 1, 1, 2, 5)[rng.randrange(5)] if roll < 0.7 else 0
        counts = [int(roll < 0.7), int(roll >= 0.7), int(roll < 0.1), cost]
        queue_usage(
            pipe, rng.randrange(shards), minute, policy, *counts, prefix=prefix, ttl=ttl
        )
        row = tally.setdefault((policy, minute), [0, 0, 0, 0])
        for index, amount in enumerate(counts):
            row[index] += amount
        if number % pipeline_size == 0:
            pipe.execute()
    pipe.execute()
    return tally


class PinnedClock:
    """The limiter's clock: the minute a decision is made at, set per call."""

    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        return self.now_ms


# Rules the scripted decisions pick from: (rate, algorithm). Small limits so
# that many decisions are denied.
SCRIPT_RULES = (
    ("20/m", "fixed_window"),
    ("30/m", "gcra"),
    ("10/m", "token_bucket"),
    ("15/m", "sliding_window_counter"),
)
STATUS_CONSUMED, STATUS_DENIED, STATUS_TOO_COSTLY = 0, 1, 3


def script_decisions(
    client: redis.Redis,
    count: int,
    *,
    seed: int,
    last_minute: int,
    minutes: int,
    expected: Expected,
    clients_seen: dict[tuple[str, int], set[str]],
    pipeline_size: int = 2000,
) -> None:
    """Make ``count`` decisions through the decision script and tally, from
    each reply, what the script must have counted."""
    from ratelimit_app.algorithms import script_for
    from ratelimit_app.limiter import Limiter, spec_of

    rng = random.Random(seed)
    clock = PinnedClock()
    limiter = Limiter(client=client, clock=clock)
    for _, algorithm in SCRIPT_RULES:
        client.script_load(script_for(frozenset((algorithm,))).source)
    pipe = client.pipeline(transaction=False)
    pending: list[tuple[str, int, str, int, bool]] = []

    def flush() -> None:
        for (policy, minute, identity, cost, shadow), reply in zip(
            pending, pipe.execute(), strict=True
        ):
            tally_reply(
                expected, clients_seen, policy, minute, identity, cost, shadow, reply
            )
        pending.clear()

    for _ in range(count):
        policy = POLICIES[rng.randrange(len(POLICIES))]
        minute = last_minute - rng.randrange(minutes)
        identity = f"client-{rng.randrange(300)}"
        cost = (1, 1, 1, 2, 5)[rng.randrange(5)]
        shadow = rng.random() < 1 / 7
        rate, algorithm = SCRIPT_RULES[rng.randrange(len(SCRIPT_RULES))]
        spec = spec_of(policy, rate, algorithm, cost, None, shadow)
        clock.now_ms = minute * 60_000 + rng.randrange(60_000)
        script, keys, argv = limiter.pack([(spec, identity)], "hit")
        pipe.evalsha(script.sha, len(keys), *keys, *argv)
        pending.append((policy, minute, identity, cost, shadow))
        if len(pending) == pipeline_size:
            flush()
    flush()


def tally_reply(expected, clients_seen, policy, minute, identity, cost, shadow, reply):
    """What the script counts for one single-rule decision (see driver.lua)."""
    status = reply[1]
    row = expected.setdefault((policy, minute), [0, 0, 0, 0])
    if status == STATUS_CONSUMED:
        row[0] += 1
        row[3] += cost
    elif status in (STATUS_DENIED, STATUS_TOO_COSTLY):
        row[2 if shadow else 1] += 1
    else:
        return
    clients_seen.setdefault((policy, minute), set()).add(identity)


def by_period(expected: Expected, period: timedelta) -> Expected:
    """The expected counts summed per (policy, period start in minutes)."""
    step = int(period.total_seconds()) // 60
    sums: Expected = defaultdict(lambda: [0, 0, 0, 0])
    for (policy, minute), values in expected.items():
        row = sums[(policy, minute - minute % step)]
        for index, amount in enumerate(values):
            row[index] += amount
    return dict(sums)


def rows_of(model) -> Expected:
    """A usage table as (policy, minute) -> counts, for comparing."""
    from ratelimit_app.usage import minute_of

    field = model.period
    return {
        (row[0], minute_of(row[1])): list(row[2:])
        for row in model.objects.values_list(
            "policy", field, "allowed", "blocked", "shadow_blocked", "cost"
        )
    }


def configure_django(redis_url: str, prefix: str) -> None:
    from demo_project.settings import database_from_url

    database = database_from_url(os.environ.get("DATABASE_URL"))
    if database["ENGINE"].endswith("postgresql"):  # never the test suite's
        database["TEST"] = {"NAME": f"test_{prefix.strip(':').replace('-', '_')}"}
    settings.configure(
        SECRET_KEY="bench-only-secret-key",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "ratelimit_app",
        ],
        DATABASES={"default": database},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        RATELIMIT={"REDIS_URL": redis_url, "KEY_PREFIX": prefix},
    )
    django.setup()


def run(redis_url: str, args: argparse.Namespace) -> bool:
    prefix = f"rlbench-{secrets.token_hex(4)}:"
    configure_django(redis_url, prefix)
    from django.db import connection

    from ratelimit_app import aggregation, conf, stats
    from ratelimit_app.models import UsageDay, UsageHour, UsageMinute

    client = redis.Redis.from_url(redis_url)
    connection.creation.create_test_db(verbosity=0)
    try:
        last_minute = int(time.time() // 60)
        expected: Expected = {}
        clients_seen: dict[tuple[str, int], set[str]] = {}
        timings = defaultdict(float)
        done, seed = 0, args.seed
        while done < args.decisions:
            step = min(args.drain_every, args.decisions - done)
            started = time.perf_counter()
            if args.source == "script":
                script_decisions(
                    client,
                    step,
                    seed=seed,
                    last_minute=last_minute,
                    minutes=args.minutes,
                    expected=expected,
                    clients_seen=clients_seen,
                )
            else:
                record_decisions(
                    client,
                    step,
                    seed=seed,
                    last_minute=last_minute,
                    minutes=args.minutes,
                    shards=conf.shard_count(),
                    prefix=conf.key_prefix(),
                    expected=expected,
                )
            timings["decide" if args.source == "script" else "record"] += (
                time.perf_counter() - started
            )
            started = time.perf_counter()
            aggregation.drain_usage(client)
            timings["drain"] += time.perf_counter() - started
            done, seed = done + step, seed + 1
            print(f"{done:,} decisions recorded and drained", file=sys.stderr)
        started = time.perf_counter()
        aggregation.rollup_usage()
        timings["rollup"] += time.perf_counter() - started
        started = time.perf_counter()
        per_policy = {policy: stats.totals(policy) for policy in POLICIES}
        timings["totals"] += time.perf_counter() - started
        checks = {
            "minute rows": rows_of(UsageMinute) == expected,
            "hour rows": rows_of(UsageHour) == by_period(expected, timedelta(hours=1)),
            "day rows": rows_of(UsageDay) == by_period(expected, timedelta(days=1)),
            "stats.totals": per_policy == expected_totals(expected),
        }
        if args.source == "script":
            checks["distinct clients (within HLL error: 3% or 3)"] = distinct_close(
                clients_seen
            )
        decisions = sum(t["allowed"] + t["blocked"] for t in per_policy.values())
        if args.source == "counters":
            checks["decisions"] = decisions == args.decisions
        else:
            shadow = sum(t["shadow_blocked"] for t in per_policy.values())
            # a shadow rule's denial is counted as shadow-blocked only
            checks["decisions"] = decisions + shadow == args.decisions
        report(args, timings, checks, decisions)
        return all(checks.values())
    finally:
        connection.creation.destroy_test_db(
            connection.settings_dict["NAME"], verbosity=0
        )
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


def distinct_close(clients_seen: dict[tuple[str, int], set[str]]) -> bool:
    """Each minute row's distinct clients within 3% (or 3) of the exact count.

    That is the HyperLogLog's error at these small counts; the stored values
    equal a PFCOUNT of the exact set of identity digests.
    """
    from ratelimit_app.models import UsageMinute
    from ratelimit_app.usage import minute_of

    stored = {
        (policy, minute_of(minute)): clients
        for policy, minute, clients in UsageMinute.objects.values_list(
            "policy", "minute", "distinct_clients"
        )
    }
    far = {
        key: (stored.get(key, 0), len(seen))
        for key, seen in clients_seen.items()
        if abs(stored.get(key, 0) - len(seen)) > max(3, 0.03 * len(seen))
    }
    if far:
        print(f"distinct clients (stored, exact) far apart: {far}", file=sys.stderr)
    return not far


def expected_totals(expected: Expected) -> dict[str, dict[str, int]]:
    names = ("allowed", "blocked", "shadow_blocked", "cost")
    sums = {policy: dict.fromkeys(names, 0) for policy in POLICIES}
    for (policy, _minute), values in expected.items():
        for name, amount in zip(names, values, strict=True):
            sums[policy][name] += amount
    return sums


def report(args, timings: dict, checks: dict, decisions: int) -> None:
    from django.db import connection

    print(f"# usage statistics: {args.decisions:,} decisions")
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; database: {connection.vendor}; "
        f"{len(POLICIES)} policies over {args.minutes} minutes; drained every "
        f"{args.drain_every:,} decisions. "
        + (
            "decide: single-rule calls of the decision script (pipelined EVALSHA)."
            if args.source == "script"
            else "record: Python writing the counters as the decision script "
            "does (HINCRBY and PEXPIRE, pipelined)."
        )
    )
    print()
    print("| phase | seconds | decisions/s |")
    print("|---|---:|---:|")
    for phase, seconds in timings.items():
        rate = f"{args.decisions / seconds:,.0f}" if phase != "totals" else "-"
        print(f"| {phase} | {seconds:.2f} | {rate} |")
    print()
    for name, ok in checks.items():
        verdict = ("yes" if "within" in name else "exact") if ok else "DIFFERENT"
        print(f"- {name}: {verdict}")
    print(f"- decisions counted by stats.totals: {decisions:,}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--drain-every", type=int, default=250_000)
    parser.add_argument("--minutes", type=int, default=240)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--source",
        choices=("script", "counters"),
        default="script",
        help="decisions through the decision script, or counters written directly",
    )
    args = parser.parse_args(argv)
    if min(args.decisions, args.drain_every, args.minutes) < 1:
        parser.error("--decisions, --drain-every and --minutes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = find_redis_url()
    server = None if url else RedisServer().start()
    try:
        ok = run(url or server.url, args)
    finally:
        if server is not None:
            server.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
