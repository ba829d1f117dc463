"""Find the tests' Redis before Django reads settings (pytest-django loads them first).

REDIS_URL, else 127.0.0.1:6379, else a private redis-server for this process,
stopped when the process exits.
"""

from __future__ import annotations

import atexit
import os

from ratelimit_app.testing import RedisServer, find_redis_url


def ensure_redis_url() -> str:
    url = os.environ.get("REDIS_URL") or find_redis_url()
    if url is None:
        server = RedisServer().start()
        atexit.register(server.stop)
        url = server.url
    os.environ["REDIS_URL"] = url
    return url
