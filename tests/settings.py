"""Test settings: the demo's, on DATABASE_URL (PostgreSQL in CI) or SQLite."""

import tempfile
import uuid
from pathlib import Path

from tests.redis_env import ensure_redis_url

REDIS_URL = ensure_redis_url()

from demo_project.settings import *  # noqa: E402, F403

SECRET_KEY = "tests-only-secret-key"
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # A file, not memory: the Celery workers tests start open the same database.
    # One per process, so test runs side by side never share a file.
    _sqlite = Path(tempfile.gettempdir()) / f"ratelimit-tests-{uuid.uuid4().hex}"
    DATABASES["default"]["NAME"] = f"{_sqlite}.sqlite3"  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": f"{_sqlite}.test.sqlite3"}  # noqa: F405
else:  # a server: a test database of this run's own, so runs side by side never meet
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": f"test_ratelimit_{uuid.uuid4().hex[:10]}"
    }
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

import os  # noqa: E402

ROOT_URLCONF = "tests.urls"
assert "ratelimit_app.middleware.RateLimitMiddleware" in MIDDLEWARE  # noqa: F405
# Every test process gets its own key prefix on the shared Redis.
RATELIMIT = {
    "REDIS_URL": REDIS_URL,
    "KEY_PREFIX": os.environ.get(
        "RATELIMIT_TEST_PREFIX", f"rlt-{uuid.uuid4().hex[:10]}:"
    ),
    # As in production (the default): the suite runs with the local deny cache.
    "DENY_CACHE": True,
}
