"""A thread keeps its decision connection between calls (backends/direct.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading

import pytest
import redis
import redis.asyncio

from ratelimit_app.backends import direct
from ratelimit_app.testing import RedisServer

RATE = "1000/h"


@pytest.fixture
def server():
    found = RedisServer().start()
    yield found
    found.stop()


def client_of(server, max_connections=100) -> redis.Redis:
    return redis.Redis.from_url(server.url, max_connections=max_connections)


def clients_connected(client: redis.Redis) -> int:
    return client.info("clients")["connected_clients"] - 1  # INFO's own


def connections_received(server) -> int:
    """Connections the server accepted so far, from a connection of its own."""
    admin = redis.Redis.from_url(server.url)
    try:
        return admin.info("stats")["total_connections_received"]
    finally:
        admin.close()


def test_a_thread_keeps_one_connection_for_its_decisions(make_limiter, server):
    client = client_of(server)
    limiter = make_limiter(client=client)
    assert limiter.hit("kept", "client", RATE).allowed  # (loads the functions too)
    pool = client.connection_pool
    created, received = pool._created_connections, connections_received(server)
    for _ in range(50):
        assert limiter.hit("kept", "client", RATE).allowed
    assert pool._created_connections == created
    assert connections_received(server) == received + 1  # INFO's own
    assert direct._keeping.kept(pool) == 1
    assert len(pool._in_use_connections) == 1  # held by this thread


def test_an_ended_threads_connection_goes_back_to_its_pool(make_limiter, server):
    client = client_of(server)
    limiter = make_limiter(client=client)
    thread = threading.Thread(target=lambda: limiter.hit("kept", "client", RATE))
    thread.start()
    thread.join()
    del thread
    gc.collect()
    pool = client.connection_pool
    assert direct._keeping.kept(pool) == 0
    assert not pool._in_use_connections  # back in the pool's list


def test_threads_keep_at_most_half_the_pool_and_the_rest_take_turns(
    make_limiter, server
):
    client = client_of(server, max_connections=4)
    limiter = make_limiter(client=client)
    barrier, results = threading.Barrier(6), []

    def decide():
        barrier.wait()
        for _ in range(20):
            results.append(limiter.hit("kept", f"c{threading.get_ident()}", RATE))

    threads = [threading.Thread(target=decide) for _ in range(6)]
    for thread in threads:
        thread.start()
    kept_while_running = []
    for thread in threads:
        kept_while_running.append(direct._keeping.kept(client.connection_pool))
        thread.join()
    assert len(results) == 120
    assert all(d.allowed for d in results)
    assert max(kept_while_running) <= 2


def test_a_kept_connection_the_server_closed_is_opened_again_not_failed(
    make_limiter, server
):
    client = client_of(server)
    limiter = make_limiter(client=client)
    assert limiter.hit("kept", "client", RATE).remaining == 999
    admin = redis.Redis.from_url(server.url)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the kept connection among them
    assert limiter.hit("kept", "client", RATE).remaining == 998  # no fail mode
    assert clients_connected(admin) >= 1


def test_a_forked_child_decides_on_a_connection_of_its_own(make_limiter, server):
    client = client_of(server)
    limiter = make_limiter(client=client)
    assert limiter.hit("kept", "client", RATE).remaining == 999
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one decision, reported, then leave at once
        try:
            remaining = limiter.hit("kept", "client", RATE).remaining
            os.write(write, str(remaining).encode())
        finally:
            os._exit(0)
    os.close(write)
    reported = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert reported == "998"
    # The parent's kept connection was not used by the child: its replies
    # still pair with its own commands.
    assert limiter.hit("kept", "client", RATE).remaining == 997


# -- asyncio: one kept connection per pool (each event loop has its own) --------


async def test_an_event_loops_decisions_share_one_kept_connection(make_limiter, server):
    client = redis.asyncio.from_url(server.url, max_connections=10)
    limiter = make_limiter(async_client=client)
    try:
        assert (await limiter.ahit("kept", "client", RATE)).allowed
        received = connections_received(server)
        for _ in range(30):
            assert (await limiter.ahit("kept", "client", RATE)).allowed
        assert connections_received(server) == received + 1  # INFO's own
        assert direct._akept.kept(client.connection_pool)
    finally:
        await client.aclose()


async def test_a_kept_async_connection_the_server_closed_fails_once_then_reopens(
    make_limiter, server
):
    """As redis-py's asyncio pool does for its own connections (its readiness
    check does not see this close): one decision takes the fail mode, the
    connection is dropped, and the next decision is Redis's again."""
    client = redis.asyncio.from_url(server.url, max_connections=10)
    limiter = make_limiter(async_client=client)
    try:
        assert (await limiter.ahit("kept", "client", RATE)).remaining == 999
        admin = redis.Redis.from_url(server.url)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        first = await limiter.ahit("kept", "client", RATE)
        assert first.reason in ("ok", "fallback_open")
        consumed = 1 if first.reason == "ok" else 0
        second = await limiter.ahit("kept", "client", RATE)
        assert (second.reason, second.remaining) == ("ok", 998 - consumed)
    finally:
        await client.aclose()


async def test_a_pool_of_one_keeps_nothing_and_concurrent_calls_share_it(
    make_limiter, server
):
    client = redis.asyncio.from_url(server.url, max_connections=1)
    limiter = make_limiter(async_client=client)
    try:
        assert (await limiter.ahit("kept", "client", RATE)).allowed
        pool = client.connection_pool
        assert not direct._akept.kept(pool)
        assert not pool._in_use_connections  # back in the pool
    finally:
        await client.aclose()


async def test_cancelled_async_decisions_leak_no_connection(make_limiter, server):
    client = redis.asyncio.from_url(server.url, max_connections=4)
    limiter = make_limiter(async_client=client)
    try:
        assert (await limiter.ahit("kept", "client", RATE)).allowed
        for delay in (0, 0.00005, 0.0001, 0.0002, 0.0005, 0.001) * 5:
            task = asyncio.ensure_future(limiter.ahit("kept", "client", RATE))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool = client.connection_pool
        # At most the kept connection is out of the pool's list.
        assert len(pool._in_use_connections) <= 1
        assert (await limiter.ahit("kept", "client", RATE)).allowed
    finally:
        await client.aclose()
