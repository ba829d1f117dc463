"""The benchmark's Django site: one view, one limiter per process (BENCH_HTTP_CONTENDER).

The names here are shared by the site's settings and by ``bench.http``.
"""

from __future__ import annotations

NONE = "none"
OURS_1 = "ours-1"
OURS_3 = "ours-3"
OURS_LEASED = "ours-leased"
# Our 3 policies' decision script alone, from a bare middleware (see middleware.py).
SCRIPT_3 = "script-3"
FLOOR = "floor"
DJANGO_RATELIMIT = "django-ratelimit"
SMART_RATELIMIT = "smart-ratelimit"
DRF_THROTTLE = "drf-throttle"
# The deny storm: one client far over its limit, the deny cache on and off.
STORM_CACHED = "storm-cached"
STORM_UNCACHED = "storm-uncached"
STORMS = (STORM_CACHED, STORM_UNCACHED)
CONTENDERS = (
    NONE,
    OURS_1,
    OURS_3,
    OURS_LEASED,
    SCRIPT_3,
    FLOOR,
    DJANGO_RATELIMIT,
    SMART_RATELIMIT,
    DRF_THROTTLE,
    *STORMS,
)

# How many settings policies match the view's path, per contender of ours.
OUR_POLICIES = {
    OURS_1: 1,
    OURS_3: 3,
    OURS_LEASED: 1,
    STORM_CACHED: 1,
    STORM_UNCACHED: 1,
}

PATH = "/bench/hello"
POLICY_PATH = "/bench/*"  # a glob matching PATH
# Never denies during a run: GCRA at 2,778/s with a burst of 10 million, and
# capacity x period = 10**7 x 3.6e6 ms = 3.6e13 < 2**50, the engine's bound.
RATE = "10000000/h"
# The storm's limit: the first request passes, every later one is a 429.
STORM_RATE = "1/h"
# The leased policy's key: a header wrk never sends, so every request counts
# in the one shared bucket of a missing value (a global limit).
SHARED_KEY = "header:x-bench-shared"


def key_prefixes(run_prefix: str) -> dict[str, str]:
    """The Redis key prefix of every contender that keeps state, for one run."""
    return {
        OURS_1: f"{run_prefix}-{OURS_1}:",
        OURS_3: f"{run_prefix}-{OURS_3}:",
        OURS_LEASED: f"{run_prefix}-{OURS_LEASED}:",
        SCRIPT_3: f"{run_prefix}-{SCRIPT_3}:",
        STORM_CACHED: f"{run_prefix}-{STORM_CACHED}:",
        STORM_UNCACHED: f"{run_prefix}-{STORM_UNCACHED}:",
        DJANGO_RATELIMIT: f"{run_prefix}-django",
        SMART_RATELIMIT: f"{run_prefix}-smart:",
        DRF_THROTTLE: f"{run_prefix}-drf",
    }
