"""The middleware's own Python cost per request, without a server or a network.

A profile, not a timed test: ``python -m bench.middleware_overhead`` prints
µs per request of ``RateLimitMiddleware.__call__`` around a trivial view, for
the bench site's policies (``bench.http_site.settings.our_policies``): none,
1 and 3 matching policies, 1 leased policy (answered in-process from a lease:
no Redis call after the first requests), and the bare view for reference;
then a cProfile top list (by own time) of the leased case, pure Python.

Requests come from ``RequestFactory`` for the site's view path, built before
each timed round. One Redis (``REDIS_URL``, else 127.0.0.1:6379); every key
under a per-run prefix, deleted at the end. The policy snapshot reads a
throw-away SQLite database, migrated first.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BARE = "bare view"
NO_POLICIES = "no policies"
CASES = (BARE, NO_POLICIES, "ours-1", "ours-3", "ours-leased")
LABELS = {"ours-1": "1 policy", "ours-3": "3 policies", "ours-leased": "1 leased"}


def setup_django(db_path: str) -> None:
    """The bench site's settings (no limiter installed), migrated."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.http_site.settings"
    os.environ["BENCH_HTTP_CONTENDER"] = "none"
    os.environ["BENCH_HTTP_DB"] = db_path
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def ratelimit_settings(case: str, url: str, prefix: str) -> dict:
    """RATELIMIT as the bench site sets it for one contender of ours."""
    from bench.http_site.settings import our_policies

    policies = our_policies(case) if case in LABELS else []
    return {
        "REDIS_URL": url,
        "KEY_PREFIX": f"{prefix}{case.replace(' ', '-')}:",
        "POLICIES": policies,
    }


def build_call(case: str) -> Callable:
    """The callable timed per request: the middleware, or the view alone."""
    from django.http import HttpResponse

    from ratelimit_app.middleware import RateLimitMiddleware

    def view(request):
        return HttpResponse(b"ok", content_type="text/plain")

    return view if case == BARE else RateLimitMiddleware(view)


def requests(count: int) -> list:
    from django.test import RequestFactory

    from bench.http_site import PATH

    factory = RequestFactory()
    return [factory.get(PATH) for _ in range(count)]


def time_round(call: Callable, count: int) -> float:
    """µs per request over one round of fresh requests."""
    batch = requests(count)
    started = time.perf_counter()
    for request in batch:
        response = call(request)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.status_code
    return elapsed / count * 1e6


def measure(
    case: str, url: str, prefix: str, args: argparse.Namespace
) -> tuple[float, float]:
    """(median, best) µs per request over the rounds, after a warm-up round.

    The best round is the one least disturbed by the machine and by the few
    Redis calls that remain (a snapshot check per second, a lease renewal).
    """
    from django.test import override_settings

    with override_settings(RATELIMIT=ratelimit_settings(case, url, prefix)):
        call = build_call(case)
        time_round(call, args.requests)  # snapshot, scripts, lease, caches
        rounds = [time_round(call, args.requests) for _ in range(args.rounds)]
    return statistics.median(rounds), min(rounds)


def profile(case: str, url: str, prefix: str, args: argparse.Namespace) -> str:
    """cProfile top list by own time of one round of ``case``."""
    from django.test import override_settings

    with override_settings(RATELIMIT=ratelimit_settings(case, url, prefix)):
        call = build_call(case)
        time_round(call, args.requests)
        batch = requests(args.requests)
        profiler = cProfile.Profile()
        profiler.enable()
        for request in batch:
            call(request)
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    return out.getvalue()


def delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--top", type=int, default=20, help="profile lines")
    parser.add_argument("--profile", default="ours-leased", choices=CASES)
    parser.add_argument("--no-profile", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"rlbench-mw-{secrets.token_hex(4)}-"
    with tempfile.TemporaryDirectory() as tmp:
        setup_django(str(Path(tmp, "db.sqlite3")))
        try:
            results = {case: measure(case, url, prefix, args) for case in CASES}
            print(f"{args.rounds} rounds x {args.requests} requests; µs/request")
            print("| case | median | best | best over the bare view |")
            print("|---|---:|---:|---:|")
            for case, (median, best) in results.items():
                extra = best - results[BARE][1]
                label = LABELS.get(case, case)
                print(f"| {label} | {median:.1f} | {best:.1f} | {extra:+.1f} |")
            if not args.no_profile:
                print(f"\ncProfile of {LABELS.get(args.profile, args.profile)}:")
                print(profile(args.profile, url, prefix, args))
        finally:
            delete_keys(url, prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
