"""Token leasing, measured: its bounds, its under-admission and its Redis calls.

A report, not a timed test: ``python -m bench.leases`` prints markdown tables.
One Redis (``REDIS_URL``, else 127.0.0.1:6379, else a private redis-server),
every key under a per-run prefix, deleted at the end; real time throughout
(no test clock), 8 OS processes with their own connections and leases.

1. **Windows** (fixed_window, a daily limit of 3000): even load, every process
   hammers until the limit is spent; then uneven load, half of the processes
   make a few requests (and so hold leases) and go idle while the others
   hammer. Reported: admitted against the limit, the units the idle ones held
   (the under-admission at its worst) against the documented bound
   (processes x LEASE_MAX_SHARE x capacity), and admitted once the idle
   processes' background threads gave their units back.
2. **Buckets** (gcra and token_bucket, 500/s, capacity 500): every process
   hammers for a few seconds; each admission's monotonic time is recorded (one
   clock for all processes). Reported: the largest excess, over any interval
   I, of the admissions over the exact bound capacity + rate x |I|, against
   the documented rate x LEASE_MAX_SECONDS; the same without leasing; and the
   Redis script calls per request (``INFO commandstats``: the whole
   server's, so other traffic on a shared Redis adds to it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from bench.decisions import bench_redis, configure_django, delete_keys, met

PROCESSES = 8
WINDOW_LIMIT = 3000
BUCKET_RATE, BUCKET_PER_S = "500/s", 500


def _limiter(prefix: str):
    """A limiter of this process (forked from the configured parent)."""
    from ratelimit_app.limiter import Limiter

    return Limiter(prefix=prefix)


def _rule(algorithm: str, rate: str, lease: bool, identity: str = "one-key"):
    from ratelimit_app.types import Rule

    return Rule("bench", identity, rate, algorithm=algorithm, lease=lease)


# -- worker processes --------------------------------------------------------------


def hammer_until_denied(url, prefix, rule_args, barrier, results, streak=50):
    """Hit until ``streak`` denials in a row; report the admitted count."""
    limiter, rule = _limiter(prefix), _rule(*rule_args)
    barrier.wait()
    results.put(_until_denied(limiter, rule, streak))


def _until_denied(limiter, rule, streak: int) -> int:
    admitted = denied = 0
    while denied < streak:
        if limiter.hit_many([rule])[0].allowed:
            admitted, denied = admitted + 1, 0
        else:
            denied += 1
    return admitted


def uneven_worker(url, prefix, rule_args, role, barrier, done, results):
    """'idle': a few requests, then hold the leases; 'busy': hammer, wait for
    the give-backs, hammer again. Reports (role, admitted, units held)."""
    from ratelimit_app import leases

    limiter, rule = _limiter(prefix), _rule(*rule_args)
    barrier.wait()
    if role == "idle":
        admitted = sum(limiter.hit_many([rule])[0].allowed for _ in range(200))
        results.put((role, admitted, leases.table.units_held()))
        done.wait()  # stay alive: the background thread gives the units back
        return
    time.sleep(0.2)  # let the idle ones take their leases first
    first = _until_denied(limiter, rule, 50)
    results.put((role, first, 0))
    done.wait()
    results.put((role, _until_denied(limiter, rule, 50), 0))


def timed_worker(url, prefix, rule_args, barrier, results, seconds):
    """Hammer for ``seconds``; report every admission's monotonic time."""
    limiter, rule = _limiter(prefix), _rule(*rule_args)
    barrier.wait()
    end, times, attempts = time.monotonic() + seconds, [], 0
    while (now := time.monotonic()) < end:
        attempts += 1
        if limiter.hit_many([rule])[0].allowed:
            times.append(now)
    results.put((times, attempts))


def run_processes(target, argument_lists) -> list:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(argument_lists)), context.Queue()
    workers = [
        context.Process(target=target, args=(*args[:-1], barrier, results, *args[-1:]))
        for args in argument_lists
    ]
    for worker in workers:
        worker.start()
    return workers, results


# -- scenarios ---------------------------------------------------------------------


def windows(url: str, prefix: str) -> dict:
    rate = f"{WINDOW_LIMIT}/d"
    _away_from_midnight()
    even_prefix = f"{prefix}even:"
    workers, results = run_processes(
        hammer_until_denied,
        [(url, even_prefix, ("fixed_window", rate, True), 50)] * PROCESSES,
    )
    even = sum(results.get(timeout=120) for _ in workers)
    _join(workers)
    return {"even": even, **uneven(url, f"{prefix}uneven:", rate)}


def uneven(url: str, prefix: str, rate: str) -> dict:
    context = multiprocessing.get_context("fork")
    barrier, done, results = (
        context.Barrier(PROCESSES),
        context.Event(),
        context.Queue(),
    )
    roles = ["idle", "busy"] * (PROCESSES // 2)
    workers = [
        context.Process(
            target=uneven_worker,
            args=(
                url,
                prefix,
                ("fixed_window", rate, True),
                role,
                barrier,
                done,
                results,
            ),
        )
        for role in roles
    ]
    for worker in workers:
        worker.start()
    first = [results.get(timeout=120) for _ in workers]
    held = sum(units for _, _, units in first)
    worst = sum(admitted for _, admitted, _ in first)
    time.sleep(2.0)  # leases end (0.5 s) and the threads give back (1 s)
    done.set()
    after = worst + sum(results.get(timeout=120)[1] for _ in range(PROCESSES // 2))
    _join(workers)
    return {"worst": worst, "held": held, "after": after}


def buckets(url: str, prefix: str, seconds: float) -> list[dict]:
    from ratelimit_app import conf

    lease_s = conf.number("LEASE_MAX_SECONDS")
    rows = []
    for algorithm in ("gcra", "token_bucket"):
        for lease in (True, False):
            client = redis.Redis.from_url(url)
            before = _script_calls(client)
            run_prefix = f"{prefix}{algorithm}-{int(lease)}:"
            workers, results = run_processes(
                timed_worker,
                [(url, run_prefix, (algorithm, BUCKET_RATE, lease), seconds)]
                * PROCESSES,
            )
            reports = [results.get(timeout=120) for _ in workers]
            _join(workers)
            times = sorted(t for report, _ in reports for t in report)
            attempts = sum(n for _, n in reports)
            calls = _script_calls(client) - before
            rows.append(
                {
                    "algorithm": algorithm,
                    "lease": lease,
                    "admitted": len(times),
                    "excess": max_excess(times, BUCKET_PER_S, BUCKET_PER_S),
                    "allowed_excess": BUCKET_PER_S * lease_s if lease else 0,
                    "attempts": attempts,
                    "calls_per_request": calls / max(attempts, 1),
                }
            )
    return rows


def max_excess(times: Sequence[float], capacity: int, per_second: float) -> float:
    """The largest count - (capacity + rate x |I|) over intervals I = [t_i, t_j]
    of the sorted admission times: O(n) with a running maximum."""
    best, running = -float("inf"), -float("inf")
    for j, t in enumerate(times):
        running = max(running, per_second * t - j)
        best = max(best, (j + 1 - per_second * t) + running - capacity)
    return best


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(
        stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("fcall", "evalsha", "eval")
    )


def _away_from_midnight() -> None:
    """A daily window must not end during the run: wait out its last minute."""
    left = 86_400 - time.time() % 86_400
    if left < 60:
        time.sleep(left + 1)


def _join(workers) -> None:
    for worker in workers:
        worker.join(timeout=30)
        if worker.exitcode != 0:
            raise RuntimeError(f"a bench process failed (exit code {worker.exitcode})")


# -- report -----------------------------------------------------------------------


def report(window: dict, bucket_rows: list[dict], share: float, lease_s: float) -> str:
    bound = PROCESSES * int(WINDOW_LIMIT * share)
    lines = [
        f"#### fixed_window, {WINDOW_LIMIT}/day, {PROCESSES} processes, leasing on",
        "",
        "| load | admitted | limit | under-admission | documented bound | |",
        "|---|---:|---:|---:|---:|---|",
        _window_row("even", window["even"], bound),
        _window_row("uneven, idle leases held", window["worst"], bound),
        _window_row("uneven, after the give-backs", window["after"], bound),
        "",
        f"Units the idle processes held at the worst moment: {window['held']}.",
        "",
        f"#### Buckets, {BUCKET_RATE} (capacity {BUCKET_PER_S}), {PROCESSES} processes",
        "",
        "| algorithm | lease | requests | admitted | largest excess over exact | "
        f"allowed (rate x {lease_s:g} s) | script calls per request | |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in bucket_rows:
        lines.append(
            f"| {row['algorithm']} | {'on' if row['lease'] else 'off'} | "
            f"{row['attempts']} | {row['admitted']} | {row['excess']:.0f} | "
            f"{row['allowed_excess']:.0f} | {row['calls_per_request']:.3f} | "
            f"{met(row['excess'] <= row['allowed_excess'] + 1)} |"
        )
    return "\n".join(lines)


def _window_row(load: str, admitted: int, bound: int) -> str:
    under = WINDOW_LIMIT - admitted
    ok = admitted <= WINDOW_LIMIT and under <= bound
    return f"| {load} | {admitted} | {WINDOW_LIMIT} | {under} | {bound} | {met(ok)} |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="bucket runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--markdown-out", help="also write the tables here")
    options = parser.parse_args(argv)
    if options.quick:
        options.seconds = 1.0
    prefix = f"bench-lease-{secrets.token_hex(4)}"
    with bench_redis() as url:
        configure_django(url, prefix)
        from ratelimit_app import conf

        client = redis.Redis.from_url(url)
        try:
            window = windows(url, f"{prefix}:")
            rows = buckets(url, f"{prefix}:", options.seconds)
        finally:
            delete_keys(client, prefix)
        share, lease_s = (
            conf.number("LEASE_MAX_SHARE"),
            conf.number("LEASE_MAX_SECONDS"),
        )
        markdown = report(window, rows, share, lease_s)
    print(markdown)
    if options.markdown_out:
        Path(options.markdown_out).write_text(markdown + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
