"""Redis connection classes that retry connection setup, and never a command.

redis-py uses one ``Retry`` for both opening a connection and running a
command. Retrying a command after a timeout or a reset could run the decision
script twice (Redis may have run it before the reply was lost), so clients get
a ``Retry`` of zero retries; these classes swap in a setup ``Retry`` only while
they connect or run their health-check PING, both safe to repeat.
"""

from __future__ import annotations

from functools import cache

import redis.asyncio.connection as async_connection
import redis.asyncio.retry as async_retry
import redis.connection as sync_connection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from .. import conf

# Backoff between setup attempts: 10 ms, 20 ms, 40 ms, ... at most 200 ms.
SETUP_BACKOFF_BASE = 0.005
SETUP_BACKOFF_CAP = 0.2


@cache
def setup_retry() -> Retry:
    """Retries of connection setup: refused or reset, not a timeout (a
    connect timeout already waited REDIS_CONNECT_TIMEOUT).

    One per settings: every health check swaps it in, so it must be cheap.
    """
    return Retry(
        ExponentialBackoff(cap=SETUP_BACKOFF_CAP, base=SETUP_BACKOFF_BASE),
        conf.number("REDIS_CONNECT_RETRIES"),
        supported_errors=(ConnectionError,),
    )


@cache
def async_setup_retry() -> async_retry.Retry:
    """``setup_retry`` for asyncio connections, whose Retry awaits each try
    (the sync one would hand back the coroutine and retry nothing)."""
    return async_retry.Retry(
        ExponentialBackoff(cap=SETUP_BACKOFF_CAP, base=SETUP_BACKOFF_BASE),
        conf.number("REDIS_CONNECT_RETRIES"),
        supported_errors=(ConnectionError,),
    )


conf.on_change(setup_retry.cache_clear)
conf.on_change(async_setup_retry.cache_clear)


def command_retry(*, asyncio: bool = False) -> Retry | async_retry.Retry:
    """No retries: a command that failed applies the fail modes instead.

    asyncio clients await their Retry: only an asyncio Retry sees the error
    and lets the client disconnect the failed connection.
    """
    kind = async_retry.Retry if asyncio else Retry
    return kind(NoBackoff(), 0)


class _SetupRetrying:
    """Use the setup Retry while connecting; the command Retry otherwise."""

    def connect(self, *args, **kwargs):
        command = self.retry
        self.retry = setup_retry()
        try:
            return super().connect(*args, **kwargs)
        finally:
            self.retry = command

    def check_health(self, *args, **kwargs):
        command = self.retry
        self.retry = setup_retry()
        try:
            return super().check_health(*args, **kwargs)
        finally:
            self.retry = command


class _AsyncSetupRetrying:
    async def connect(self, *args, **kwargs):
        command = self.retry
        self.retry = async_setup_retry()
        try:
            return await super().connect(*args, **kwargs)
        finally:
            self.retry = command

    async def check_health(self, *args, **kwargs):
        command = self.retry
        self.retry = async_setup_retry()
        try:
            return await super().check_health(*args, **kwargs)
        finally:
            self.retry = command


class Connection(_SetupRetrying, sync_connection.Connection):
    pass


class SSLConnection(_SetupRetrying, sync_connection.SSLConnection):
    pass


class UnixDomainSocketConnection(
    _SetupRetrying, sync_connection.UnixDomainSocketConnection
):
    pass


class AsyncConnection(_AsyncSetupRetrying, async_connection.Connection):
    pass


class AsyncSSLConnection(_AsyncSetupRetrying, async_connection.SSLConnection):
    pass


class AsyncUnixDomainSocketConnection(
    _AsyncSetupRetrying, async_connection.UnixDomainSocketConnection
):
    pass


# Connection class per URL scheme, as redis-py's own parse_url picks them.
SYNC_CLASSES = {
    "redis": Connection,
    "rediss": SSLConnection,
    "unix": UnixDomainSocketConnection,
}
ASYNC_CLASSES = {
    "redis": AsyncConnection,
    "rediss": AsyncSSLConnection,
    "unix": AsyncUnixDomainSocketConnection,
}


def connection_class(scheme: str, *, asyncio: bool = False):
    """The class for a URL scheme; None for other schemes (Sentinel, Cluster
    bring their own connection classes)."""
    return (ASYNC_CLASSES if asyncio else SYNC_CLASSES).get(scheme)
