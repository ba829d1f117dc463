"""EVALSHA or FCALL on a pooled connection, kept between calls (by each
thread; by each asyncio pool, that is each event loop): the decision's hot
path without the client's per-command layers.

redis-py wraps every command in its retry loop, event dispatch and
observability recorders, which cost more than the decision script itself. The
decision script is never retried (``client_options``), so taking a connection
from the client's own pool, sending the command and reading its reply does
the same work, with the same timeouts, health checks and connection settings,
for less. A client without one pool (Redis Cluster routes per slot) or bound
to a single connection takes its own path (EVALSHA only).
"""

from __future__ import annotations

import os
import threading
import weakref

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .topology import is_cluster


def pool_of(client):
    """The client's connection pool, or None when it must route itself."""
    if is_cluster(client) or getattr(client, "connection", None) is not None:
        return None
    return getattr(client, "connection_pool", None)


def encode(client, verb: str, target: str, keys: list, args: list) -> bytes | None:
    """``verb target numkeys *keys *args`` as the client would send it (RESP,
    the client's own encoder), to keep and send again; None when the client
    routes itself."""
    pool = pool_of(client)
    if pool is None:
        return None
    encoder = pool.get_encoder()
    parts = [encoder.encode(p) for p in (verb, target, len(keys), *keys, *args)]
    head = b"*%d\r\n" % len(parts)
    return head + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def call(client, verb: str, target: str, keys: list, args: list, command=None):
    """``verb`` ("EVALSHA" a sha, "FCALL" a function) on a pooled connection;
    ``command`` is that call already encoded (see ``encode``). A client that
    routes itself gets ``client.evalsha`` (never asked to FCALL)."""
    pool = pool_of(client)
    if pool is None:
        return client.evalsha(target, len(keys), *keys, *args)
    connection = _kept.take(pool)
    try:
        if command is None:
            connection.send_command(verb, target, len(keys), *keys, *args)
        else:
            connection.send_packed_command([command])
        reply = connection.read_response()
    except ResponseError:
        _kept.give(pool, connection)  # an error reply: the connection is fine
        raise
    except BaseException:
        connection.disconnect()  # a half-read reply must never reach the next call
        pool.release(connection)
        raise
    _kept.give(pool, connection)
    return reply


class _Held:
    """The connection one thread keeps between its decisions on one pool."""

    __slots__ = ("connection", "generation", "pool")

    def __init__(self, pool, generation: int) -> None:
        self.pool, self.connection, self.generation = pool, None, generation

    def __del__(self) -> None:  # the thread ended, or it keeps for another pool
        keeping = _keeping  # None at interpreter shutdown: nothing to give back
        if keeping is None or self.generation != keeping.generation:
            return  # (or a forked child's copy: the parent's connection and count)
        keeping.unkeep(self.pool)
        if self.connection is not None:
            try:  # noqa: SIM105  (contextlib may be gone at shutdown)
                self.pool.release(self.connection)
            except Exception:
                pass


class _Kept(threading.local):
    """Each thread keeps the connection of its last decision for the next.

    Taking a connection from redis-py's pool and giving it back costs about
    as much as the decision script itself (a lock, a readiness poll, event
    hooks). So a thread holds on to one, while the pool has room: threads
    keep at most half of ``max_connections``; beyond, a call takes one and
    gives it back. A connection that failed is never kept, one a thread
    holds goes back to its pool when the thread ends, and a forked child
    never uses its parent's.
    """

    held: _Held | None = None

    def take(self, pool):
        held = self.held
        if (
            held is not None
            and held.connection is not None
            and held.pool is pool
            and held.generation == _keeping.generation
        ):
            connection, held.connection = held.connection, None
            return _ready(connection)
        return pool.get_connection()

    def give(self, pool, connection) -> None:
        held = self.held
        if (
            held is None
            or held.pool is not pool
            or held.generation != _keeping.generation
        ):
            if not _keeping.keep(pool):
                pool.release(connection)
                return
            self.held = held = _Held(pool, _keeping.generation)  # frees the old
        if held.connection is None:
            held.connection = connection
        else:
            pool.release(connection)


def _ready(connection):
    """The pool's readiness poll on a kept connection: one with something to
    read (the server closed it: a restart, an idle timeout) is connected
    afresh before the decision is sent, not failed by it."""
    try:
        stale = connection.can_read()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        stale = True
    if stale:
        connection.disconnect()  # the send connects again (setup retries)
    return connection


class _Keeping:
    """How many threads keep a connection of each pool (bounded), and how
    many forks this process is from the one that counted them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.generation = 0

    def keep(self, pool) -> bool:
        """Count one more keeping thread of ``pool`` if it has room."""
        room = (getattr(pool, "max_connections", 0) or 0) // 2
        with self._lock:
            count = self._counts.get(pool, 0)
            if count >= room:
                return False
            self._counts[pool] = count + 1
        return True

    def unkeep(self, pool) -> None:
        with self._lock:
            count = self._counts.get(pool, 0)
            if count:
                self._counts[pool] = count - 1

    def kept(self, pool) -> int:
        return self._counts.get(pool, 0)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._counts = weakref.WeakKeyDictionary()
        self.generation += 1


_keeping = _Keeping()
_kept = _Kept()
os.register_at_fork(after_in_child=_keeping.after_fork_in_child)


async def acall(client, verb: str, target: str, keys: list, args: list, command=None):
    """The asyncio twin of ``call``."""
    pool = pool_of(client)
    if pool is None:
        return await client.evalsha(target, len(keys), *keys, *args)
    connection = await _akept.take(pool)
    try:
        if command is None:
            await connection.send_command(verb, target, len(keys), *keys, *args)
        else:
            await connection.send_packed_command([command])
        reply = await connection.read_response()
    except ResponseError:
        await _akept.give(pool, connection)  # an error reply: the connection is fine
        raise
    except BaseException:  # cancelled too: a half-read reply must not be reused
        await connection.disconnect()
        await pool.release(connection)
        raise
    await _akept.give(pool, connection)
    return reply


class _AsyncKept:
    """Each asyncio pool (one per event loop) keeps the connection of its
    last decision for the next decision that finds it free.

    ``_Kept`` for coroutines: the pool's get and release take about as long
    as a decision script. One connection per pool, and only from a pool of
    two or more, so the kept one never starves the pool's other users. The
    pool's own readiness check (``ensure_connection``) runs before reuse.
    """

    def __init__(self) -> None:
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def take(self, pool):
        found = self._kept.pop(pool, None)
        if found is None or found[1] != _keeping.generation:
            return await pool.get_connection()
        connection = found[0]
        try:
            await pool.ensure_connection(connection)
        except BaseException:
            await connection.disconnect()
            await pool.release(connection)
            raise
        return connection

    async def give(self, pool, connection) -> None:
        if pool not in self._kept and self._keeps(pool):
            self._kept[pool] = (connection, _keeping.generation)
            return
        await pool.release(connection)

    @staticmethod
    def _keeps(pool) -> bool:
        most = getattr(pool, "max_connections", 0) or 0
        return most >= 2 and hasattr(pool, "ensure_connection")

    def kept(self, pool) -> bool:
        return pool in self._kept


_akept = _AsyncKept()
