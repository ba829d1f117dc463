"""EVALSHA on a pooled connection: the decision's hot path without the
client's per-command layers.

redis-py wraps every command in its retry loop, event dispatch and
observability recorders, which cost more than the decision script itself. The
decision script is never retried (``client_options``), so taking a connection
from the client's own pool, sending the command and reading its reply does
the same work, with the same timeouts, health checks and connection settings,
for less. A client without one pool (Redis Cluster routes per slot) or bound
to a single connection takes its own path.
"""

from __future__ import annotations

from redis.exceptions import ResponseError

from .topology import is_cluster


def _pool_of(client):
    """The client's connection pool, or None when it must route itself."""
    if is_cluster(client) or getattr(client, "connection", None) is not None:
        return None
    return getattr(client, "connection_pool", None)


def evalsha(client, sha: str, keys: list, args: list):
    """``client.evalsha(sha, len(keys), *keys, *args)``, on a pooled connection."""
    pool = _pool_of(client)
    if pool is None:
        return client.evalsha(sha, len(keys), *keys, *args)
    connection = pool.get_connection()
    try:
        connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
        return connection.read_response()
    except ResponseError:
        raise  # an error reply (NOSCRIPT, BUSY, OOM...): the connection is fine
    except BaseException:
        connection.disconnect()  # a half-read reply must never reach the next call
        raise
    finally:
        pool.release(connection)


async def aevalsha(client, sha: str, keys: list, args: list):
    """The asyncio twin of ``evalsha``."""
    pool = _pool_of(client)
    if pool is None:
        return await client.evalsha(sha, len(keys), *keys, *args)
    connection = await pool.get_connection()
    try:
        await connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
        return await connection.read_response()
    except ResponseError:
        raise
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
