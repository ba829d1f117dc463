"""The benchmark's Django site: one view, one limiter per process (BENCH_HTTP_CONTENDER).

The names here are shared by the site's settings and by ``bench.http``.
"""

from __future__ import annotations

NONE = "none"
OURS_1 = "ours-1"
OURS_3 = "ours-3"
FLOOR = "floor"
DJANGO_RATELIMIT = "django-ratelimit"
SMART_RATELIMIT = "smart-ratelimit"
DRF_THROTTLE = "drf-throttle"
CONTENDERS = (
    NONE,
    OURS_1,
    OURS_3,
    FLOOR,
    DJANGO_RATELIMIT,
    SMART_RATELIMIT,
    DRF_THROTTLE,
)

# How many settings policies match the view's path, per contender of ours.
OUR_POLICIES = {OURS_1: 1, OURS_3: 3}

PATH = "/bench/hello"
POLICY_PATH = "/bench/*"  # a glob matching PATH
# Never denies during a run: GCRA at 2,778/s with a burst of 10 million, and
# capacity x period = 10**7 x 3.6e6 ms = 3.6e13 < 2**50, the engine's bound.
RATE = "10000000/h"


def key_prefixes(run_prefix: str) -> dict[str, str]:
    """The Redis key prefix of every contender that keeps state, for one run."""
    return {
        OURS_1: f"{run_prefix}-{OURS_1}:",
        OURS_3: f"{run_prefix}-{OURS_3}:",
        DJANGO_RATELIMIT: f"{run_prefix}-django",
        SMART_RATELIMIT: f"{run_prefix}-smart:",
        DRF_THROTTLE: f"{run_prefix}-drf",
    }
