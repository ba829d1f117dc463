"""Demo settings: SQLite by default, Redis from REDIS_URL."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent


def database_from_url(url: str | None) -> dict:
    """A DATABASES entry from ``postgres://user:pass@host:port/name`` or SQLite."""
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", BASE_DIR / "db.sqlite3"),
        }
    parts = urlparse(url)
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path}
    raise ValueError(
        f"DATABASE_URL scheme {parts.scheme!r} is not supported: use "
        "postgres://user:password@host:port/name or sqlite:///path/to/db.sqlite3"
    )


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-insecure-secret-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ratelimit_app",
    "demo_project",  # manage.py demo_setup
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "ratelimit_app.middleware.RateLimitMiddleware",
]

ROOT_URLCONF = "demo_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "demo_project.wsgi.application"

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL"))}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
    }
}
RATELIMIT = {
    # The limiter may use another Redis than the cache and Celery's broker:
    # docker-compose's cluster profile sets redis+cluster://... here, since
    # Celery has no Redis Cluster broker.
    "REDIS_URL": os.environ.get("RATELIMIT_REDIS_URL") or REDIS_URL,
    # `make lb-demo` gives each run a prefix of its own, so it starts from zero.
    "KEY_PREFIX": os.environ.get("RATELIMIT_KEY_PREFIX") or "rl:",
    # Proxies in front of the app (nginx in docker-compose.yml: 1).
    "TRUSTED_PROXIES": int(os.environ.get("RATELIMIT_TRUSTED_PROXIES") or 0),
    # The other demo policies are database rows (demo_project/policies.py,
    # `manage.py demo_setup`). A database row of the same name wins over these.
    "POLICIES": [
        # One limit shared by every instance behind the load balancer
        # (`make lb-demo`, docker-compose's nginx): 100 a day per client IP.
        {
            "name": "demo-service",
            "path": "/demo-service/*",
            "rate": os.environ.get("DEMO_SERVICE_RATE") or "100/d",
            "key": "ip",
        },
    ],
}

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery: the broker is the demo's Redis; beat runs the usage statistics
# pipeline (see docs/usage-stats.md). Start with:
#   celery -A demo_project worker --beat --loglevel=INFO
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE = {
    # Redis counters -> minute rows; a run that waited longer than the next
    # one is dropped (expires), the next run drains everything anyway.
    "ratelimit-drain-usage": {
        "task": "ratelimit_app.tasks.drain_usage",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "ratelimit-rollup-usage": {
        "task": "ratelimit_app.tasks.rollup_usage",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "ratelimit-prune-usage": {
        "task": "ratelimit_app.tasks.prune_usage",
        "schedule": 24 * 3600.0,
        "options": {"expires": 3600},
    },
}
