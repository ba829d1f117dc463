"""Tasks under global_rate_limit for tests/test_contrib_celery.py (workers import
them through tests.celery_limit_settings)."""

from __future__ import annotations

import json
import os

from celery import shared_task

from ratelimit_app.backends.redis import get_client
from ratelimit_app.contrib.celery import deferrals, global_rate_limit

OWN_RETRY_SCOPE = "celery-own-retry"
SHARED_SCOPE = "celery-shared"


def record(key: str, **fields) -> None:
    """Append what a run saw, stamped with Redis TIME, to the list ``key``."""
    client = get_client()
    seconds, micros = client.time()
    fields.update(time=seconds + micros / 1e6, pid=os.getpid())
    client.rpush(key, json.dumps(fields))


@shared_task(bind=True, max_retries=1)
@global_rate_limit(OWN_RETRY_SCOPE, rate="1/h", max_countdown=0.2)
def own_retry(self, key: str) -> None:
    """Records each run, then asks for a retry of its own (one allowed)."""
    record(key, retries=self.request.retries, deferrals=deferrals(self.request))
    raise self.retry(countdown=0)


@shared_task(ignore_result=True)
@global_rate_limit(SHARED_SCOPE, rate="5/s", burst=1, identity=lambda key, group: group)
def shared(key: str, group: str) -> None:
    """Records each run: one 5/s rate per group, across all workers."""
    record(key, group=group)
