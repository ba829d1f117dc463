"""Retries of the Redis clients: connection setup only, and asyncio-aware."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ratelimit_app.backends.connections import async_setup_retry, command_retry
from ratelimit_app.backends.redis import client_options


def flaky(failures: int):
    """A coroutine function failing ``failures`` times, then answering."""
    calls = []

    async def attempt():
        calls.append(1)
        if len(calls) <= failures:
            raise RedisConnectionError("refused (test)")
        return "connected"

    return attempt, calls


def noted(failures: list):
    """An asyncio client's failure callback (it disconnects), noting each call."""

    async def fail(error):
        failures.append(error)

    return fail


async def test_async_connection_setup_is_retried(settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_CONNECT_RETRIES": 2}
    attempt, calls = flaky(failures=2)
    failures = []
    result = await async_setup_retry().call_with_retry(attempt, noted(failures))
    assert (result, len(calls), len(failures)) == ("connected", 3, 2)


async def test_async_commands_are_not_retried_and_report_their_failure():
    attempt, calls = flaky(failures=1)
    failures = []  # the client disconnects the connection here
    retry = client_options("redis://127.0.0.1:6379/0", asyncio=True)["retry"]
    with pytest.raises(RedisConnectionError):
        await retry.call_with_retry(attempt, noted(failures))
    assert (len(calls), len(failures)) == (1, 1)


def test_sync_commands_are_not_retried_and_report_their_failure():
    calls, failures = [], []

    def attempt():
        calls.append(1)
        raise RedisConnectionError("reset (test)")

    with pytest.raises(RedisConnectionError):
        command_retry().call_with_retry(attempt, failures.append)
    assert (len(calls), len(failures)) == (1, 1)
