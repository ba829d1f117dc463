"""Helpers for tests that declare policies."""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.test import override_settings


@contextlib.contextmanager
def policies(*entries: dict, **extra):
    """Run with these RATELIMIT['POLICIES'] (and other RATELIMIT keys)."""
    ratelimit = {**settings.RATELIMIT, "POLICIES": list(entries), **extra}
    with override_settings(RATELIMIT=ratelimit):
        yield


def statuses(client, path: str, n: int, **kwargs) -> list[int]:
    return [client.get(path, **kwargs).status_code for _ in range(n)]


def forget_snapshot(redis_client) -> None:
    """No snapshot in Redis or in this process: the next read publishes the
    current rows."""
    from ratelimit_app.snapshot import snapshot_keys, store

    redis_client.delete(*snapshot_keys())
    store.forget()
