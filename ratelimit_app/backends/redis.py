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
from redis.exceptions import NoScriptError, RedisError

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


def _log_reload() -> None:
    logger.info(
        "ratelimit: Redis did not know the decision script (NOSCRIPT: a restart "
        "or SCRIPT FLUSH); loaded it again"
    )


def run_script(
    client: redis.Redis, script: Script, keys: list, args: list, command=None
) -> list:
    """EVALSHA a script; load it once after NOSCRIPT (flush or restart).

    ``command``: the call already encoded (``direct.encode``), if kept.
    Redis errors are counted (metrics) and propagate. The client never retries
    a command (``client_options``), so one call runs the script at most once.
    """
    try:
        try:
            return direct.evalsha(client, script.sha, keys, args, command)
        except NoScriptError:
            _log_reload()
            client.script_load(script.source)
            return direct.evalsha(client, script.sha, keys, args, command)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise


async def arun_script(
    client: redis.asyncio.Redis, script: Script, keys: list, args: list, command=None
) -> list:
    """The asyncio twin of ``run_script``."""
    try:
        try:
            return await direct.aevalsha(client, script.sha, keys, args, command)
        except NoScriptError:
            _log_reload()
            await client.script_load(script.source)
            return await direct.aevalsha(client, script.sha, keys, args, command)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise
