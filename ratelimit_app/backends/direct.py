"""EVALSHA or FCALL on a pooled connection: the decision's hot path without
the client's per-command layers.

redis-py wraps every command in its retry loop, event dispatch and
observability recorders, which cost more than the decision script itself. The
decision script is never retried (``client_options``), so taking a connection
from the client's own pool, sending the command and reading its reply does
the same work, with the same timeouts, health checks and connection settings,
for less. A client without one pool (Redis Cluster routes per slot) or bound
to a single connection takes its own path (EVALSHA only).
"""

from __future__ import annotations

from redis.exceptions import ResponseError

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
    connection = pool.get_connection()
    try:
        if command is None:
            connection.send_command(verb, target, len(keys), *keys, *args)
        else:
            connection.send_packed_command([command])
        return connection.read_response()
    except ResponseError:
        raise  # an error reply (NOSCRIPT, BUSY, OOM...): the connection is fine
    except BaseException:
        connection.disconnect()  # a half-read reply must never reach the next call
        raise
    finally:
        pool.release(connection)


async def acall(client, verb: str, target: str, keys: list, args: list, command=None):
    """The asyncio twin of ``call``."""
    pool = pool_of(client)
    if pool is None:
        return await client.evalsha(target, len(keys), *keys, *args)
    connection = await pool.get_connection()
    try:
        if command is None:
            await connection.send_command(verb, target, len(keys), *keys, *args)
        else:
            await connection.send_packed_command([command])
        return await connection.read_response()
    except ResponseError:
        raise
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
