"""Celery tasks for the usage statistics: thin shells over ``aggregation``.

Schedule them with Celery beat (see docs/usage-stats.md). Each is idempotent
and safe to run twice at once; database and Redis errors retry with backoff.
"""

from __future__ import annotations

from celery import shared_task
from django.db import DatabaseError
from redis.exceptions import RedisError

from . import aggregation

RETRY_ON = (DatabaseError, RedisError)


@shared_task(bind=True, autoretry_for=RETRY_ON, retry_backoff=True, ignore_result=True)
def drain_usage(self) -> None:
    """Move the Redis usage counters into the minute rows (every minute)."""
    aggregation.drain_usage()


@shared_task(bind=True, autoretry_for=RETRY_ON, retry_backoff=True, ignore_result=True)
def rollup_usage(self) -> None:
    """Recompute hour and day rows from changed finer rows (every 5 minutes)."""
    aggregation.rollup_usage()


@shared_task(bind=True, autoretry_for=RETRY_ON, retry_backoff=True, ignore_result=True)
def prune_usage(self) -> None:
    """Delete rows past their retention (daily)."""
    aggregation.prune_usage()
