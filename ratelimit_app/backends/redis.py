"""Redis clients built from settings, and EVALSHA with NOSCRIPT recovery."""

from __future__ import annotations

import asyncio
import logging
import weakref
from functools import cache
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    RedisError,
    ResponseError,
)

from .. import conf, metrics
from ..algorithms import Script
from . import direct
from .connections import command_retry, connection_class
from .topology import client_from_url

logger = logging.getLogger("ratelimit_app")


def client_options(url: str = "", *, asyncio: bool = False) -> dict[str, Any]:
    """Keyword arguments of every client built from a URL (RATELIMIT's REDIS_*
    settings): timeouts, pool size, health checks, and no command retries.

    ``connection_class`` (which retries connection setup) is included for
    redis://, rediss:// and unix:// URLs; Sentinel and Cluster keep their own.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": conf.number("REDIS_CONNECT_TIMEOUT"),
        "socket_timeout": conf.number("REDIS_SOCKET_TIMEOUT"),
        "retry": command_retry(asyncio=asyncio),
        "max_connections": conf.number("REDIS_MAX_CONNECTIONS"),
        "health_check_interval": conf.number("REDIS_HEALTH_CHECK_INTERVAL"),
    }
    found = connection_class(urlparse(url).scheme, asyncio=asyncio)
    if found is not None:
        options["connection_class"] = found
    return options


@cache
def get_client() -> redis.Redis:
    """The sync client: RATELIMIT['REDIS_URL'], else the django-redis cache
    (configured by its own CACHES OPTIONS; see the README)."""
    url = conf.get("REDIS_URL")
    if url:
        return client_from_url(url, **client_options(url))
    from django_redis import get_redis_connection

    alias = conf.get("CACHE_ALIAS")
    _cache_location(alias)  # fail early with a helpful message
    return get_redis_connection(alias)


_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_async_client() -> redis.asyncio.Redis:
    """The asyncio client for the running event loop (clients are loop-bound)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        url = conf.get("REDIS_URL") or _cache_location(conf.get("CACHE_ALIAS"))
        options = client_options(url, asyncio=True)
        client = _async_clients[loop] = client_from_url(url, asyncio=True, **options)
    return client


def _cache_location(alias: str) -> str:
    from django.conf import settings

    cache_conf = settings.CACHES.get(alias)
    if not cache_conf or "django_redis" not in cache_conf.get("BACKEND", ""):
        raise ImproperlyConfigured(
            f"ratelimit_app needs Redis: set RATELIMIT['REDIS_URL'] (e.g. "
            f"'redis://127.0.0.1:6379/0') or configure CACHES[{alias!r}] with "
            "BACKEND 'django_redis.cache.RedisCache' (or point "
            "RATELIMIT['CACHE_ALIAS'] at such a cache)."
        )
    location = cache_conf.get("LOCATION")
    return location[0] if isinstance(location, list | tuple) else location


def reset_clients() -> None:
    """Forget cached clients (settings changed)."""
    get_client.cache_clear()
    _async_clients.clear()


conf.on_change(reset_clients)


# The `operation` label of the Redis errors counted while running a script.
SCRIPT_OPERATION = "decide"


def _log_reload(what: str) -> None:
    logger.info(
        "ratelimit: Redis did not know the decision %s (NOSCRIPT or no such "
        "function: a restart, SCRIPT FLUSH or FUNCTION FLUSH); loaded it again",
        what,
    )


# Connection pools whose server cannot run our functions (Redis < 7, or an ACL
# without FCALL/FUNCTION): they EVALSHA. Cluster clients always EVALSHA.
_without_functions: weakref.WeakSet = weakref.WeakSet()
# What a refused FCALL or FUNCTION LOAD says, lowercased, when the server
# cannot run functions at all (as opposed to not knowing ours yet); an ACL
# refusal arrives as NoPermissionError.
_UNSUPPORTED = ("unknown command", "noperm")


def uses_functions(client) -> bool:
    """Whether decisions on this client FCALL (else EVALSHA)."""
    pool = direct.pool_of(client)
    # Membership of a WeakSet runs Python code: asked only once one exists.
    return pool is not None and not (_without_functions and pool in _without_functions)


def _cannot_run_functions(client, exc: ResponseError) -> bool:
    """Remember (and log once) a server that cannot run functions."""
    refused = isinstance(exc, NoPermissionError)
    if not refused and not any(r in str(exc).lower() for r in _UNSUPPORTED):
        return False
    pool = direct.pool_of(client)
    if pool is not None and pool not in _without_functions:
        _without_functions.add(pool)
        logger.info("ratelimit: Redis refused functions (%s); using EVALSHA", exc)
    return True


def _missing_function(exc: ResponseError) -> bool:
    return "function not found" in str(exc).lower()


def run_script(
    client: redis.Redis, script: Script, keys: list, args: list, prepared=None
) -> list:
    """Run a script: FCALL its function (loaded once per server), or EVALSHA
    it where functions cannot run; after a restart or a flush, load it once.

    ``prepared`` (``limiter.Prepared``) keeps the encoded commands. Redis
    errors are counted (metrics) and propagate. The client never retries a
    command (``client_options``), so one call runs the script at most once: a
    refused FCALL ran nothing before its EVALSHA.
    """
    try:
        if script.function and uses_functions(client):
            try:
                return _fcall(client, script, keys, args, prepared)
            except ResponseError as exc:
                if not _cannot_run_functions(client, exc):
                    raise
        return _evalsha(client, script, keys, args, prepared)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise


def _fcall(client, script: Script, keys, args, prepared):
    command = prepared.encoded(client, "FCALL") if prepared else None
    try:
        return direct.call(client, "FCALL", script.function, keys, args, command)
    except ResponseError as exc:
        if not _missing_function(exc):
            raise
    _log_reload("function")
    client.function_load(script.library, replace=True)
    return direct.call(client, "FCALL", script.function, keys, args, command)


def _evalsha(client, script: Script, keys, args, prepared):
    command = prepared.encoded(client, "EVALSHA") if prepared else None
    try:
        return direct.call(client, "EVALSHA", script.sha, keys, args, command)
    except NoScriptError:
        _log_reload("script")
        client.script_load(script.source)
        return direct.call(client, "EVALSHA", script.sha, keys, args, command)


async def arun_script(
    client: redis.asyncio.Redis, script: Script, keys: list, args: list, prepared=None
) -> list:
    """The asyncio twin of ``run_script`` (``prepared`` holds the sync
    client's encodings: not sent here)."""
    try:
        if script.function and uses_functions(client):
            try:
                return await _afcall(client, script, keys, args)
            except ResponseError as exc:
                if not _cannot_run_functions(client, exc):
                    raise
        return await _aevalsha(client, script, keys, args)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise


async def _afcall(client, script: Script, keys, args):
    try:
        return await direct.acall(client, "FCALL", script.function, keys, args)
    except ResponseError as exc:
        if not _missing_function(exc):
            raise
    _log_reload("function")
    await client.function_load(script.library, replace=True)
    return await direct.acall(client, "FCALL", script.function, keys, args)


async def _aevalsha(client, script: Script, keys, args):
    try:
        return await direct.acall(client, "EVALSHA", script.sha, keys, args)
    except NoScriptError:
        _log_reload("script")
        await client.script_load(script.source)
        return await direct.acall(client, "EVALSHA", script.sha, keys, args)
