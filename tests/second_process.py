"""A separate process for the cross-process test: requests a path every 20 ms.

Prints "ready" after its first (allowed) request, then the wall-clock time of
the first 429, then exits. Needs no database: the policies come from Redis.
"""

from __future__ import annotations

import sys
import time

import django


def main(path: str, timeout: float) -> None:
    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # allows the "testserver" host

    client = Client()
    assert client.get(path).status_code == 200
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(path).status_code == 429:
            print(time.time(), flush=True)
            return
        time.sleep(0.02)
    print("-1", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
