"""Redis clients built from settings, and EVALSHA with NOSCRIPT recovery."""

from __future__ import annotations

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import NoScriptError, RedisError

from .. import conf, metrics
from ..algorithms import Script
from .topology import client_from_url


@cache
def get_client() -> redis.Redis:
    """The sync client: RATELIMIT['REDIS_URL'], else the django-redis cache."""
    url = conf.get("REDIS_URL")
    if url:
        return client_from_url(url)
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
        client = _async_clients[loop] = client_from_url(url, asyncio=True)
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


def run_script(client: redis.Redis, script: Script, keys: list, args: list) -> list:
    """EVALSHA a script; load it once after NOSCRIPT (flush or restart).

    Redis errors are counted (metrics) and propagate.
    """
    try:
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, len(keys), *keys, *args)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise


async def arun_script(
    client: redis.asyncio.Redis, script: Script, keys: list, args: list
) -> list:
    """The asyncio twin of ``run_script``."""
    try:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)
    except RedisError as exc:
        metrics.record_redis_error(SCRIPT_OPERATION, exc)
        raise
