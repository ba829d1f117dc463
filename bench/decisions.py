"""Decisions/s of our six algorithms beside a bare EVALSHA and peer libraries.

A report, not a timed test: ``python -m bench.decisions`` (``make bench``)
prints a markdown table. One process, one Redis (``REDIS_URL``, else
127.0.0.1:6379, else a private redis-server), one key per contender and
scenario, all under a per-run key prefix deleted at the end.

Method:

* floor: ``EVALSHA`` of ``return 1`` through the same redis-py client our
  ``Limiter`` uses (``client.evalsha``): one round trip and nothing else.
  Beside it, for reference, the same call sent the way our engine sends its
  scripts (pre-encoded, on the connection the thread keeps between calls,
  see ``ratelimit_app/backends/direct.py``): our transport's own floor.
* scenario "allowed": rate 100000/second for every contender. One Python
  process makes well under 100000 decisions a second, so nothing is denied,
  and the one-second window keeps the sliding logs (ours: one sorted-set
  member per admitted unit; limits' moving window: one list entry) at about
  one second of traffic instead of growing for the whole run.
* scenario "exhausted": rate 1/day, spent during warm-up, so every measured
  call is a denial.
* rounds: in each of R rounds every contender makes N calls, in slices of S
  calls, the contenders reshuffled for every slice, so the drifts of a noisy
  machine land on all of them alike. decisions/s and the ratio to the floor
  (the floor's time over the contender's for the same round) are medians over
  rounds; p50/p99 pool every per-call time (``perf_counter_ns``) of all rounds.
  The garbage collector stays on: the garbage a library makes is its cost.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import random
import secrets
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import django
import redis
from django.conf import settings
from redis.exceptions import NoScriptError

from ratelimit_app.testing import RedisServer, find_redis_url
from ratelimit_app.types import ALGORITHMS

Decide = Callable[[], bool]  # makes one decision, returns whether it was allowed

IDENTITY = "client-1"
OURS = "ratelimit_app"
OURS_CACHED = "ratelimit_app (deny cache)"
FLOOR_SCRIPT = "return 1"
# Targets: share of the floor's decisions/s, per algorithm (default for the rest).
TARGETS = {"fixed_window": 0.90, "gcra": 0.90}
DEFAULT_TARGET = 0.85


@dataclass(frozen=True)
class Scenario:
    name: str
    limit: int
    period: str  # "second" or "day": spelled the same by every library here
    expect: bool  # the decision every measured call must return

    @property
    def rate(self) -> str:
        return f"{self.limit}/{self.period}"


SCENARIOS = (
    Scenario("allowed", 100_000, "second", True),
    Scenario("exhausted", 1, "day", False),
)


@dataclass(frozen=True)
class Adapter:
    """A library under test: our algorithms it offers and how to call each.

    ``variants`` maps our algorithm name to the library's call or strategy;
    ``make(algorithm, scenario)`` returns a ``Decide`` on its own key.
    """

    library: str
    variants: dict[str, str]
    make: Callable[[str, Scenario], Decide]


@dataclass
class Contender:
    """One decider under measurement and its timings."""

    library: str
    variant: str
    algorithm: str
    scenario: str
    expect: bool
    decide: Decide
    samples: array = field(default_factory=lambda: array("q"))
    round_ns: list[int] = field(default_factory=list)
    unexpected: int = 0

    @property
    def label(self) -> str:
        return f"{self.library} {self.variant}"


@dataclass(frozen=True)
class Result:
    contender: Contender
    per_second: float
    ratio: float
    p50_us: float
    p99_us: float


# -- Redis and Django ---------------------------------------------------------


@contextlib.contextmanager
def bench_redis() -> Iterator[str]:
    """REDIS_URL, else 127.0.0.1:6379, else a private redis-server."""
    url = find_redis_url()
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


def configure_django(url: str, prefix: str) -> None:
    """The minimum for our engine and for django-ratelimit's cache."""
    settings.configure(
        SECRET_KEY="bench-only-secret-key",
        INSTALLED_APPS=["ratelimit_app"],
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": url,
                "KEY_PREFIX": f"{prefix}-django",
            }
        },
        RATELIMIT={"REDIS_URL": url, "KEY_PREFIX": f"{prefix}:"},
    )
    django.setup()


def delete_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# -- contenders -----------------------------------------------------------------


def floor_decider(client: redis.Redis) -> Decide:
    """A bare EVALSHA through redis-py; like our engine, it reloads after
    NOSCRIPT (another process, e.g. the test suite, may flush scripts on a
    shared Redis)."""
    sha = client.script_load(FLOOR_SCRIPT)

    def decide() -> bool:
        try:
            return client.evalsha(sha, 0) == 1
        except NoScriptError:
            client.script_load(FLOOR_SCRIPT)
            return client.evalsha(sha, 0) == 1

    return decide


def transport_decider(client: redis.Redis) -> Decide:
    """The same EVALSHA the way our engine sends its scripts (``run_script``:
    pre-encoded, on the connection the thread keeps): the floor of our own
    transport, shown for reference; targets are to redis-py's floor."""
    from ratelimit_app.algorithms import Script
    from ratelimit_app.backends.redis import run_script

    script = Script(FLOOR_SCRIPT, client.script_load(FLOOR_SCRIPT))
    return lambda: run_script(client, script, [], []) == 1


def ours(client: redis.Redis, url: str, prefix: str) -> Adapter:
    """The engine alone: every decision is a script call (deny cache off), as
    the floor targets mean."""
    from ratelimit_app.limiter import Limiter

    limiter = Limiter(client=client, prefix=f"{prefix}:")
    limiter.deny = None
    return _our_adapter(OURS, limiter, "Limiter.hit")


def ours_with_deny_cache(client: redis.Redis, url: str, prefix: str) -> Adapter:
    """As deployed by default: denials answered in-process until they expire."""
    from ratelimit_app.limiter import Limiter

    limiter = Limiter(client=client, prefix=f"{prefix}-cached:")
    return _our_adapter(OURS_CACHED, limiter, "Limiter.hit")


def _our_adapter(library: str, limiter, variant: str) -> Adapter:
    def make(algorithm: str, scenario: Scenario) -> Decide:
        scope, rate = f"bench-{scenario.name}", scenario.rate
        hit = limiter.hit
        return lambda: hit(scope, IDENTITY, rate, algorithm=algorithm).allowed

    return Adapter(library, dict.fromkeys(ALGORITHMS, variant), make)


def django_ratelimit(client: redis.Redis, url: str, prefix: str) -> Adapter:
    """Fixed window on the django-redis cache: cache.add, then cache.incr."""
    from django.test import RequestFactory
    from django_ratelimit.core import is_ratelimited

    request = RequestFactory().get("/")

    def make(algorithm: str, scenario: Scenario) -> Decide:
        group = f"bench-{scenario.name}"
        rate = f"{scenario.limit}/{scenario.period[0]}"  # its grammar: s, m, h, d
        return lambda: (
            not is_ratelimited(
                request, group=group, key="ip", rate=rate, increment=True
            )
        )

    return Adapter("django-ratelimit", {"fixed_window": "is_ratelimited"}, make)


def limits(client: redis.Redis, url: str, prefix: str) -> Adapter:
    from limits import parse, strategies
    from limits.storage import RedisStorage

    storage = RedisStorage(limits_uri(url), key_prefix=f"{prefix}-limits")
    strategy = {
        "fixed_window": strategies.FixedWindowRateLimiter,
        "sliding_window_log": strategies.MovingWindowRateLimiter,
        "sliding_window_counter": strategies.SlidingWindowCounterRateLimiter,
    }

    def make(algorithm: str, scenario: Scenario) -> Decide:
        hit, item = strategy[algorithm](storage).hit, parse(scenario.rate)
        return lambda: hit(item, algorithm, scenario.name, IDENTITY)

    variants = {name: cls.__name__ for name, cls in strategy.items()}
    return Adapter("limits", variants, make)


def limits_uri(url: str) -> str:
    """limits spells a unix-socket URL ``redis+unix://``."""
    return "redis+" + url if url.startswith("unix://") else url


def throttled(client: redis.Redis, url: str, prefix: str) -> Adapter:
    """throttled-py's Throttled.limit on a RedisStore, non-blocking."""
    from throttled import RedisStore, Throttled

    store = RedisStore(server=url)
    # Its "sliding_window" weighs the previous window's count: a counter, not a log.
    using = {
        "fixed_window": "fixed_window",
        "sliding_window_counter": "sliding_window",
        "token_bucket": "token_bucket",
        "leaky_bucket": "leaking_bucket",
        "gcra": "gcra",
    }

    def make(algorithm: str, scenario: Scenario) -> Decide:
        limit = Throttled(
            key=f"{scenario.name}:{IDENTITY}",
            using=using[algorithm],
            quota=scenario.rate,
            store=store,
            key_prefix=f"{prefix}-throttled",
        ).limit
        return lambda: not limit().limited

    variants = {name: f"using={kind}" for name, kind in using.items()}
    return Adapter("throttled-py", variants, make)


PEERS = (django_ratelimit, limits, throttled)


def load_adapters(
    client: redis.Redis, url: str, prefix: str
) -> tuple[list[Adapter], list[str]]:
    """Ours, then every importable peer; a peer that fails to load is a note."""
    adapters = [ours(client, url, prefix), ours_with_deny_cache(client, url, prefix)]
    notes = []
    for peer in PEERS:
        try:
            adapters.append(peer(client, url, prefix))
        except ImportError as exc:
            notes.append(f"skipped {peer.__name__}: {exc}")
    return adapters, notes


def build_contenders(
    adapters: Sequence[Adapter], floor: Decide, references: Sequence[Contender] = ()
) -> list[Contender]:
    """The floor first, the references, then per algorithm and scenario: ours,
    then the peers."""
    contenders = [
        Contender(
            adapter.library,
            variant,
            algorithm,
            scenario.name,
            scenario.expect,
            adapter.make(algorithm, scenario),
        )
        for algorithm in ALGORITHMS
        for scenario in SCENARIOS
        for adapter in adapters
        if (variant := adapter.variants.get(algorithm))
    ]
    floor_row = Contender("floor", f"EVALSHA `{FLOOR_SCRIPT}`", "-", "-", True, floor)
    return [floor_row, *references, *contenders]


# -- measurement ------------------------------------------------------------------


def warm_up(contenders: Sequence[Contender], calls: int) -> None:
    """Load scripts, open connections, and spend the exhausted keys."""
    for contender in contenders:
        for _ in range(calls):
            contender.decide()


def time_slice(contender: Contender, calls: int) -> None:
    decide, clock, samples = contender.decide, time.perf_counter_ns, contender.samples
    expect, total, unexpected = contender.expect, 0, 0
    for _ in range(calls):
        start = clock()
        allowed = decide()
        elapsed = clock() - start
        samples.append(elapsed)
        total += elapsed
        if allowed != expect:
            unexpected += 1
    contender.round_ns[-1] += total
    contender.unexpected += unexpected


def run_round(
    contenders: Sequence[Contender], calls: int, slice_calls: int, rng: random.Random
) -> None:
    """N calls per contender, in slices, in a fresh random order per slice."""
    for contender in contenders:
        contender.round_ns.append(0)
    order = list(contenders)
    for start in range(0, calls, slice_calls):
        rng.shuffle(order)
        for contender in order:
            time_slice(contender, min(slice_calls, calls - start))


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summarize(contender: Contender, floor: Contender, calls: int) -> Result:
    per_second = [calls * 1e9 / ns for ns in contender.round_ns]
    ratios = [f / ns for f, ns in zip(floor.round_ns, contender.round_ns, strict=True)]
    ordered = sorted(contender.samples)
    return Result(
        contender,
        statistics.median(per_second),
        statistics.median(ratios),
        percentile(ordered, 50) / 1000,
        percentile(ordered, 99) / 1000,
    )


# -- report -------------------------------------------------------------------------

HEADER = (
    "| contender | algorithm | scenario | decisions/s | ratio to floor "
    "| p50 µs | p99 µs |\n|---|---|---|---:|---:|---:|---:|"
)


def table_row(result: Result) -> str:
    c = result.contender
    scenario = c.scenario
    if c.unexpected:
        scenario += f" ({c.unexpected} unexpected decisions!)"
    return (
        f"| {c.label} | {c.algorithm} | {scenario} | {result.per_second:,.0f} "
        f"| {result.ratio:.2f} | {result.p50_us:.1f} | {result.p99_us:.1f} |"
    )


def scenario_rows(
    results: Sequence[Result], algorithm: str, scenario: str
) -> tuple[Result, Result | None]:
    """Our result and the best peer's (highest ratio) for one comparison."""
    rows = [r for r in results if r.contender.algorithm == algorithm]
    rows = [r for r in rows if r.contender.scenario == scenario]
    mine = next(r for r in rows if r.contender.library == OURS)
    peers = [r for r in rows if r.contender.library not in (OURS, OURS_CACHED)]
    return mine, max(peers, key=lambda r: r.ratio, default=None)


def verdict(algorithm: str, results: Sequence[Result]) -> str:
    """One line: our ratio per scenario against the floor target and the peers."""
    target = TARGETS.get(algorithm, DEFAULT_TARGET)
    pairs = {s.name: scenario_rows(results, algorithm, s.name) for s in SCENARIOS}
    floor_met = all(mine.ratio >= target for mine, _ in pairs.values())
    ours = ", ".join(f"{name} {mine.ratio:.2f}" for name, (mine, _) in pairs.items())
    peers = {name: (mine, best) for name, (mine, best) in pairs.items() if best}
    peer_met = all(mine.ratio >= best.ratio for mine, best in peers.values())
    versus = "; ".join(
        f"{name} {mine.ratio:.2f} vs {best.ratio:.2f} {best.contender.label}"
        for name, (mine, best) in peers.items()
    )
    peer_part = f"{met(peer_met)} ({versus})" if peers else "n/a (no peer offers it)"
    return (
        f"- {algorithm}: floor target {target:.2f} {met(floor_met)} ({ours}); "
        f"best peer {peer_part}"
    )


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def environment(client: redis.Redis, url: str, args: argparse.Namespace) -> list[str]:
    info = client.info("server")
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python"
    return [
        f"Redis {info['redis_version']} at {without_password(url)}; "
        f"Python {platform.python_version()}; "
        f"redis-py {redis.__version__} ({parser} parser)",
        f"{args.rounds} rounds x {args.calls} calls per contender, slices of "
        f"{args.slice} (reshuffled), warm-up {args.warmup}; rates: "
        + ", ".join(f"{s.name} {s.rate}" for s in SCENARIOS),
        "decisions/s and ratio: medians over rounds of the per-round figures; "
        "p50/p99: all per-call times pooled",
    ]


def render(
    results: Sequence[Result], intro: Sequence[str], notes: Sequence[str]
) -> str:
    lines = [*intro, "", HEADER, *map(table_row, results), ""]
    lines += [verdict(algorithm, results) for algorithm in ALGORITHMS]
    lines += [f"- note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2500, help="per round")
    parser.add_argument("--slice", type=int, default=100, help="calls per slice")
    parser.add_argument("--warmup", type=int, default=300, help="calls")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--markdown-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.slice, args.warmup = 2, 60, 30, 10
    if min(args.rounds, args.calls, args.slice, args.warmup) < 1:
        parser.error("--rounds, --calls, --slice and --warmup must be at least 1")
    return args


def measure(contenders: Sequence[Contender], args: argparse.Namespace) -> list[Result]:
    rng = random.Random(args.seed)
    started = time.monotonic()
    warm_up(contenders, args.warmup)
    for number in range(1, args.rounds + 1):
        run_round(contenders, args.calls, args.slice, rng)
        elapsed = time.monotonic() - started
        print(f"round {number}/{args.rounds} done, {elapsed:.0f} s", file=sys.stderr)
    floor = contenders[0]
    return [summarize(contender, floor, args.calls) for contender in contenders]


def run(url: str, args: argparse.Namespace) -> str:
    prefix = f"rlbench-{secrets.token_hex(4)}"
    configure_django(url, prefix)
    client = redis.Redis.from_url(url)
    try:
        adapters, notes = load_adapters(client, url, prefix)
        transport = Contender(
            "ratelimit_app transport",
            f"EVALSHA `{FLOOR_SCRIPT}`, kept connection",
            "-",
            "-",
            True,
            transport_decider(client),
        )
        contenders = build_contenders(adapters, floor_decider(client), [transport])
        results = measure(contenders, args)
        return render(results, environment(client, url, args), notes)
    finally:
        delete_keys(client, prefix)
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_redis() as url:
        report = run(url, args)
    print(report, end="")
    if args.markdown_out:
        args.markdown_out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
