"""One test per Redis failure, on private redis-server processes and a TCP proxy.

Each test: requests through the Django test client get no 500, the policy's
fail mode decides (open, closed or local), a log line says what failed, and
once the fault is removed, Redis decides again without restarting anything.
Every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import pytest
import redis

from ratelimit_app.backends.redis import get_client
from ratelimit_app.testing import RedisServer
from tests.conftest import script_calls
from tests.policy_helpers import policies
from tests.tcp_proxy import BLACKHOLE, DELAY, PASS, RESET, TcpProxy

pytestmark = pytest.mark.django_db

PATH = "/plain/"
# Short timeouts and cool-down keep each fault test well under a few seconds.
FAST = {
    "REDIS_CONNECT_TIMEOUT": 0.2,
    "REDIS_SOCKET_TIMEOUT": 0.2,
    "BREAKER_THRESHOLD": 3,
    "BREAKER_COOLDOWN": 0.2,
    "FAILURE_LOG_INTERVAL": 60,
}
REDIS_DECIDED = ("ok", "limit", "not_consumed")


@pytest.fixture
def server():
    found = RedisServer().start()
    yield found
    found.stop()


@pytest.fixture
def proxy(server):
    found = TcpProxy(server.port).start()
    yield found
    found.stop()


@pytest.fixture
def admin(server):
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    yield client
    client.close()


@contextlib.contextmanager
def limited(url: str, fail_mode: str, policy=(), **settings):
    """The policy "faulty" on PATH (100 an hour, a fixed window: exact counts)."""
    found = {
        "name": "faulty",
        "rate": "100/h",
        "algorithm": "fixed_window",
        "path": PATH,
        "fail_mode": fail_mode,
        **dict(policy),
    }
    with policies(found, REDIS_URL=url, **{**FAST, **settings}):
        yield


def reason(response) -> str:
    return response.wsgi_request.ratelimit.decisions[0].reason


def redis_decides_again(client, timeout: float = 5.0):
    """Requests until one is decided by Redis (the breaker probes after its
    cool-down); returns that response."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(PATH)
        assert response.status_code != 500
        if reason(response) in REDIS_DECIDED or time.monotonic() > deadline:
            assert reason(response) in REDIS_DECIDED
            return response
        time.sleep(0.05)


def logged(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def assert_closed(response) -> None:
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert reason(response) == "fallback_closed"


def assert_open(response) -> None:
    assert response.status_code == 200
    assert reason(response) == "fallback_open"


# -- the faults ------------------------------------------------------------------


def test_redis_killed_and_restarted_fails_closed_then_reloads_the_script(
    client, server, caplog
):
    with limited(server.url, "closed"):
        assert reason(client.get(PATH)) == "ok"
        server.kill()
        assert_closed(client.get(PATH))
        assert logged(caplog, "Redis failed (ConnectionError")
        restarted = RedisServer(port=server.port).start()
        try:
            with caplog.at_level(logging.INFO, "ratelimit_app"):
                assert redis_decides_again(client).status_code == 200
            assert logged(caplog, "NOSCRIPT")
        finally:
            restarted.stop()


def test_flushed_scripts_and_functions_are_reloaded_without_a_fallback(
    client, server, admin, caplog
):
    with limited(server.url, "closed"), caplog.at_level(logging.INFO):
        assert reason(client.get(PATH)) == "ok"
        admin.script_flush()
        admin.function_flush()
        response = client.get(PATH)
        assert (response.status_code, reason(response)) == (200, "ok")
        assert logged(caplog, "NOSCRIPT")
        assert not logged(caplog, "Redis failed")


def test_a_hung_redis_falls_back_to_the_local_limiter(client, server, caplog):
    with limited(server.url, "local", {"fallback_rate": "3/m"}):
        assert reason(client.get(PATH)) == "ok"
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            responses = [client.get(PATH) for _ in range(5)]
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
        assert {reason(r) for r in responses} == {"fallback_local"}
        assert "Retry-After" in responses[-1].headers
        assert logged(caplog, "Redis failed (TimeoutError")
        redis_decides_again(client)


def test_a_slow_reply_applies_the_fail_mode_and_the_script_runs_once(
    client, proxy, admin, caplog
):
    with limited(proxy.url, "open"):
        first = client.get(PATH)
        assert first.headers["RateLimit"].startswith('"faulty";r=99;')
        admin.config_resetstat()
        proxy.set(DELAY, delay=0.6)  # past REDIS_SOCKET_TIMEOUT (0.2 s)
        assert_open(client.get(PATH))
        assert logged(caplog, "Redis failed (TimeoutError")
        time.sleep(0.7)  # the late reply arrives, to a closed connection
        assert sum(script_calls(admin).values()) == 1  # never retried
        proxy.set(PASS)
        response = redis_decides_again(client)
        # The timed-out request consumed once, and this one once: 100 - 3.
        assert response.headers["RateLimit"].startswith('"faulty";r=97;')


def test_a_resetting_connection_fails_open(client, proxy, caplog):
    with limited(proxy.url, "open"):
        assert reason(client.get(PATH)) == "ok"
        proxy.set(RESET)
        assert_open(client.get(PATH))
        assert logged(caplog, "Redis failed (ConnectionError")
        proxy.set(PASS)
        redis_decides_again(client)


def test_a_blackholed_connection_fails_closed(client, proxy, caplog):
    with limited(proxy.url, "closed"):
        assert reason(client.get(PATH)) == "ok"
        proxy.set(BLACKHOLE)
        assert_closed(client.get(PATH))
        assert logged(caplog, "Redis failed (TimeoutError")
        proxy.set(PASS)
        redis_decides_again(client)


def test_pool_exhaustion_fails_closed_at_once(client, server, caplog):
    with limited(server.url, "closed", REDIS_MAX_CONNECTIONS=1):
        assert reason(client.get(PATH)) == "ok"
        pool = get_client().connection_pool
        held = pool.get_connection()  # the only connection
        try:
            started = time.monotonic()
            assert_closed(client.get(PATH))
            assert time.monotonic() - started < 0.2  # no waiting for a timeout
        finally:
            pool.release(held)
        assert logged(caplog, "Redis failed (MaxConnectionsError")
        redis_decides_again(client)


def test_busy_redis_falls_back_to_the_local_limiter(client, caplog):
    busy = RedisServer(args=["--lua-time-limit", "50"]).start()
    runner = redis.Redis.from_url(busy.url)
    errors: list[Exception] = []

    def run_forever():
        try:
            runner.eval("while true do end", 0)
        except redis.RedisError as exc:  # "Script killed by user"
            errors.append(exc)

    thread = threading.Thread(target=run_forever)
    try:
        with limited(busy.url, "local", {"fallback_rate": "2/m"}):
            assert reason(client.get(PATH)) == "ok"
            thread.start()
            time.sleep(0.2)  # past lua-time-limit: Redis answers BUSY
            statuses = [client.get(PATH).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            assert logged(caplog, "Redis failed (ResponseError: BUSY")
            killer = redis.Redis.from_url(busy.url, socket_timeout=5)
            killer.script_kill()
            killer.close()
            thread.join(timeout=5)
            redis_decides_again(client)
    finally:
        thread.join(timeout=5)
        runner.close()
        busy.stop()
    assert errors


def test_out_of_memory_under_noeviction_fails_closed(client, server, admin, caplog):
    admin.config_set("maxmemory-policy", "noeviction")
    with limited(server.url, "closed"):
        assert reason(client.get(PATH)) == "ok"
        admin.config_set("maxmemory", 1)  # every write is refused: OOM
        try:
            assert_closed(client.get(PATH))
        finally:
            admin.config_set("maxmemory", 0)
        assert logged(caplog, "Redis failed (OutOfMemoryError")
        redis_decides_again(client)


def test_a_read_only_replica_fails_open(client, server, admin, caplog):
    primary = RedisServer().start()
    try:
        with limited(server.url, "open"):
            assert reason(client.get(PATH)) == "ok"
            admin.execute_command("REPLICAOF", "127.0.0.1", primary.port)
            assert_open(client.get(PATH))
            assert logged(caplog, "Redis failed (ReadOnlyError")
            admin.execute_command("REPLICAOF", "NO", "ONE")
            redis_decides_again(client)
    finally:
        primary.stop()


def test_a_wrong_password_fails_closed_until_the_server_accepts_it(
    client, server, admin, caplog
):
    admin.config_set("requirepass", "the-right-one")
    url = f"redis://:a-wrong-one@127.0.0.1:{server.port}/0"
    with limited(url, "closed"):
        assert_closed(client.get(PATH))
        assert logged(caplog, "Redis failed (AuthenticationError")
        # The operator gives the server the password the clients hold.
        admin.config_set("requirepass", "a-wrong-one")
        redis_decides_again(client)


async def test_an_async_view_fails_closed_while_redis_is_down(
    async_client, server, caplog
):
    with policies(
        {"name": "faulty", "rate": "100/m", "path": "/async/", "fail_mode": "closed"},
        REDIS_URL=server.url,
        **FAST,
    ):
        assert (await async_client.get("/async/")).status_code == 200
        server.kill()
        response = await async_client.get("/async/")
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert logged(caplog, "Redis failed (ConnectionError")
