"""The floor (one bare EVALSHA of ``return 1`` per request, nothing else)
and the ceiling of our middleware with 3 policies (their decision script
alone)."""

from __future__ import annotations

import redis
from django.conf import settings
from redis.exceptions import NoScriptError

from bench.decisions import FLOOR_SCRIPT
from ratelimit_app.backends.redis import run_script


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


class ScriptMiddleware:
    """Our middleware's Redis work for its policies, and nothing else: the
    decision script call it sends (same script, KEYS and ARGV, prepared once
    per client address, over the engine's transport), its reply unread: no
    routing, no decisions, no headers. What any Python around that call
    could reach at best: the rest of ours' gap to the floor is the script's."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.calls: dict[str, tuple] = {}

    def __call__(self, request):
        address = request.META.get("REMOTE_ADDR", "")
        found = self.calls.get(address)
        if found is None:
            found = self.calls[address] = prepared_call(request)
        engine, call = found
        run_script(engine.client, call.script, call.keys, call.args, call)
        return self.get_response(request)


def prepared_call(request) -> tuple:
    """(limiter, the prepared script call) of the request's policies."""
    from ratelimit_app.enforcement import build_rules, routed_policies
    from ratelimit_app.limiter import default_limiter
    from ratelimit_app.snapshot import get_policies

    _, items = build_rules(request, routed_policies(request, get_policies()))
    engine = default_limiter()
    return engine, engine.prepared(items, "hit")
