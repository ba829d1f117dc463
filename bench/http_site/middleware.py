"""The floor: one bare EVALSHA of ``return 1`` per request, nothing else."""

from __future__ import annotations

import redis
from django.conf import settings
from redis.exceptions import NoScriptError

from bench.decisions import FLOOR_SCRIPT


class FloorMiddleware:
    """What any Redis-backed limiter costs at least: one round trip per request."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.sha = self.client.script_load(FLOOR_SCRIPT)  # once per worker

    def __call__(self, request):
        try:
            self.client.evalsha(self.sha, 0)
        except NoScriptError:  # SCRIPT FLUSH or a restart, as our engine recovers
            self.client.script_load(FLOOR_SCRIPT)
            self.client.evalsha(self.sha, 0)
        return self.get_response(request)
