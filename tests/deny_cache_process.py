"""A separate process for the deny cache tests: requests a path every 20 ms.

With the deny cache on, prints "blocked <denials cached>" after its first 429,
then the wall-clock time of the first 200 after it (-1 if none), then exits.
Needs no database: the policies come from Redis.
"""

from __future__ import annotations

import sys
import time

import django


def main(path: str, timeout: float) -> None:
    django.setup()
    from django.conf import settings
    from django.test import Client
    from django.test.utils import override_settings, setup_test_environment

    from ratelimit_app.deny_cache import cache

    setup_test_environment()  # allows the "testserver" host
    override_settings(RATELIMIT={**settings.RATELIMIT, "DENY_CACHE": True}).enable()

    client = Client()
    deadline = time.monotonic() + timeout
    while client.get(path).status_code != 429:
        if time.monotonic() > deadline:
            print("-1", flush=True)
            return
    assert client.get(path).status_code == 429  # now from the cache
    print("blocked", len(cache), flush=True)
    while time.monotonic() < deadline:
        if client.get(path).status_code == 200:
            print(time.time(), flush=True)
            return
        time.sleep(0.02)
    print("-1", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
