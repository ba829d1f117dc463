"""Test settings: the demo's, on DATABASE_URL (PostgreSQL in CI) or SQLite.

REDIS_URL is set by tests/conftest.py before Django reads these settings.
"""

from demo_project.settings import *  # noqa: F403
from demo_project.settings import BASE_DIR

SECRET_KEY = "tests-only-secret-key"
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    DATABASES["default"]["NAME"] = BASE_DIR / "tests" / ".test-db.sqlite3"  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
