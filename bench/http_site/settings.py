"""Settings of the benchmark site; the environment picks the contender and its Redis.

BENCH_HTTP_CONTENDER: one of ``bench.http_site.CONTENDERS`` (it also picks
our policies and whether the deny cache is on). REDIS_URL: the
Redis every limiter uses. BENCH_HTTP_PREFIX: the run's key prefix (each
limiter adds its own suffix). BENCH_HTTP_DB: the SQLite file, migrated before
the server starts (only our policy snapshot reads it, once per process).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from bench.http_site import (
    CONTENDERS,
    DJANGO_RATELIMIT,
    DRF_THROTTLE,
    FLOOR,
    OUR_POLICIES,
    OURS_3,
    OURS_LEASED,
    POLICY_PATH,
    RATE,
    SCRIPT_3,
    SHARED_KEY,
    SMART_RATELIMIT,
    STORM_RATE,
    STORM_UNCACHED,
    STORMS,
    key_prefixes,
)

BENCH_CONTENDER = os.environ.get("BENCH_HTTP_CONTENDER", CONTENDERS[0])
if BENCH_CONTENDER not in CONTENDERS:
    raise ImproperlyConfigured(
        f"BENCH_HTTP_CONTENDER={BENCH_CONTENDER!r}: use one of {', '.join(CONTENDERS)}."
    )
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIXES = key_prefixes(os.environ.get("BENCH_HTTP_PREFIX", "rlbench-http"))

SECRET_KEY = "bench-only-secret-key"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "bench.http_site.urls"
WSGI_APPLICATION = "bench.http_site.wsgi.application"
USE_TZ = True

# The same apps for every contender: only the limiter differs between them.
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "ratelimit_app",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "BENCH_HTTP_DB", str(Path(tempfile.gettempdir(), "rlbench-http.sqlite3"))
        ),
    }
}
# Our 429 page (the deny storm's every response) is a template of the app.
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
]
# django-ratelimit and DRF's throttles count in this cache.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIXES[
            DRF_THROTTLE if BENCH_CONTENDER == DRF_THROTTLE else DJANGO_RATELIMIT
        ],
    }
}
# Errors (a 500 during a run) go to stderr, which is the server's log file.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}


def our_policies(contender: str) -> list[dict]:
    """The settings policies of one of our contenders, all matching the view."""
    base = {"path": POLICY_PATH, "algorithm": "gcra", "key": "ip", "rate": RATE}
    if contender == OURS_LEASED:
        return [{**base, "name": "bench-leased", "key": SHARED_KEY, "lease": True}]
    if contender in STORMS:
        return [{**base, "name": "bench-storm", "rate": STORM_RATE}]
    count = OUR_POLICIES[contender]
    return [{**base, "name": f"bench-{number}"} for number in range(1, count + 1)]


MIDDLEWARE = []
if BENCH_CONTENDER == FLOOR:
    MIDDLEWARE = ["bench.http_site.middleware.FloorMiddleware"]
elif BENCH_CONTENDER == SCRIPT_3:  # ours-3's policies, their script alone
    MIDDLEWARE = ["bench.http_site.middleware.ScriptMiddleware"]
    RATELIMIT = {
        "REDIS_URL": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIXES[SCRIPT_3],
        "POLICIES": our_policies(OURS_3),
    }
elif BENCH_CONTENDER in OUR_POLICIES:
    MIDDLEWARE = ["ratelimit_app.middleware.RateLimitMiddleware"]
    RATELIMIT = {
        "REDIS_URL": REDIS_URL,
        "KEY_PREFIX": KEY_PREFIXES[BENCH_CONTENDER],
        "POLICIES": our_policies(BENCH_CONTENDER),
        # On by default; off, every denial of the storm asks Redis.
        "DENY_CACHE": BENCH_CONTENDER != STORM_UNCACHED,
    }

# django-smart-ratelimit: its Redis backend on the same Redis, fixed window
# (its O(1) strategy, like django-ratelimit's; the default sliding window
# keeps one sorted-set member per request of the window).
if BENCH_CONTENDER == SMART_RATELIMIT:
    RATELIMIT_BACKEND = "redis"
    RATELIMIT_REDIS = {"url": REDIS_URL}
    RATELIMIT_KEY_PREFIX = KEY_PREFIXES[SMART_RATELIMIT]
    RATELIMIT_ALGORITHM = "fixed_window"

# DRF's AnonRateThrottle (per client IP) keeps each client's request times of
# the window as a list in the cache: its cost grows with requests per window.
if BENCH_CONTENDER == DRF_THROTTLE:
    INSTALLED_APPS.append("rest_framework")
    REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"anon": RATE}}
