"""Real services for the tests: a real Redis for every test, isolated keys."""

from __future__ import annotations

import uuid

import pytest
import redis

from ratelimit_app.testing import ManualClock, RedisServer
from tests.persisting_client import PersistingClient
from tests.redis_env import ensure_redis_url

_url = ensure_redis_url()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client):
    """A prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"rlt-{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def private_redis_server():
    """A redis-server of this test's own (its keys, commandstats and clients
    meet no other test's), stopped afterwards."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(private_redis_server):
    """A client of ``private_redis_server``: INFO commandstats sees its calls only."""
    client = redis.Redis.from_url(private_redis_server.url)
    yield client
    client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_limiter(redis_client, key_prefix):
    """Build a Limiter on the test Redis with an isolated key prefix."""
    from ratelimit_app.limiter import Limiter

    def make(**kwargs):
        kwargs.setdefault("client", redis_client)
        kwargs.setdefault("prefix", key_prefix)
        kwargs.setdefault("secret", b"test-secret-0123456789")
        return Limiter(**kwargs)

    return make


@pytest.fixture
def limiter(make_limiter, clock, redis_client):
    """A limiter driven by a manual clock.

    Its keys lose their TTL after each call: Redis expires keys in real time,
    which would wipe state while the manual clock stands still.
    """
    return make_limiter(clock=clock, client=PersistingClient(redis_client))


@pytest.fixture(autouse=True)
def isolated_ratelimit(settings, redis_client):
    """Each test gets its own key prefix (and so its own policy snapshot)."""
    prefix = f"rlt-{uuid.uuid4().hex[:12]}:"
    settings.RATELIMIT = {**settings.RATELIMIT, "KEY_PREFIX": prefix}
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(autouse=True)
def close_async_test_connections():
    """Async tests reach the database from asgiref's one sync thread; close its
    connection afterwards so the test databases can be dropped at the end."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture
def calls(monkeypatch):
    """The scripts the limiter sent to Redis (a counting wrapper, not a mock)."""
    from ratelimit_app import limiter as limiter_module

    sent = []

    def counted(original):
        def run(*args, **kwargs):
            sent.append(args[1])
            return original(*args, **kwargs)

        return run

    def acounted(original):
        async def run(*args, **kwargs):
            sent.append(args[1])
            return await original(*args, **kwargs)

        return run

    monkeypatch.setattr(
        limiter_module, "run_script", counted(limiter_module.run_script)
    )
    monkeypatch.setattr(
        limiter_module, "arun_script", acounted(limiter_module.arun_script)
    )
    return sent


def forget_scripts(client) -> None:
    """What a restart without persistence does to the engine's code: the
    scripts flushed and its function libraries deleted."""
    client.script_flush()
    for library in client.function_list(library="ratelimit_*"):
        # A flat [field, value, ...] list per library.
        client.function_delete(library[library.index(b"library_name") + 1])


@pytest.fixture
def deny_cache_on(settings):
    """The local deny cache on, its epoch key read (as the snapshot refresh of
    a served process does: denials are kept only once it was read, see
    test_the_epoch_is_read_...); local usage flushed before the keys go."""
    from ratelimit_app import limiter, local_usage
    from ratelimit_app.deny_cache import cache, now_ms

    settings.RATELIMIT = {**settings.RATELIMIT, "DENY_CACHE": True}
    cache.clear()
    engine = limiter.default_limiter()
    cache.observe(engine.epoch_key, engine.client.get(engine.epoch_key), now_ms())
    yield
    local_usage.buffer.flush()  # before the prefix's keys are deleted
    cache.clear()


def script_calls(client) -> dict[str, int]:
    """Decision scripts a Redis server ran, per command (FCALL on Redis 7,
    EVALSHA where functions cannot run), from INFO commandstats."""
    stats = client.info("commandstats")
    return {
        c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha")
    }
