"""Redis key names: hashed identities, shard hash tags, layout-versioned prefix."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache

from .types import ALGORITHMS, Identity

# Short, stable codes: the key names the algorithm, never the rate, so an
# edited rate applies to the current state instead of resetting it.
ALGORITHM_CODES = {
    "fixed_window": "fw",
    "sliding_window_log": "swl",
    "sliding_window_counter": "swc",
    "token_bucket": "tb",
    "leaky_bucket": "lb",
    "gcra": "gcra",
}
assert set(ALGORITHM_CODES) == set(ALGORITHMS)

_PLAIN_SCOPE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def identity_bytes(identity: Identity) -> bytes:
    """Any identity as bytes; lone surrogates survive instead of raising."""
    if isinstance(identity, bytes):
        return identity
    if isinstance(identity, int):
        return _int_text(identity).encode()
    return identity.encode("utf-8", "surrogatepass")


def _int_text(number: int) -> str:
    """Decimal, as always; hexadecimal beyond Python's limit on decimal
    conversion (4300 digits), which would raise instead."""
    try:
        return str(number)
    except ValueError:
        return hex(number)


def hash_identity(secret: bytes, identity: Identity) -> tuple[int, str]:
    """(shard seed, 22-character digest) of an identity under a keyed hash."""
    digest = hmac.digest(secret, identity_bytes(identity), hashlib.sha256)[:16]
    seed = int.from_bytes(digest[:4], "big")
    return seed, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@lru_cache(maxsize=4096)
def scope_part(scope: str) -> str:
    """A readable scope when it is a plain slug, else a fixed-length hash."""
    if _PLAIN_SCOPE.match(scope):
        return scope
    raw = scope.encode("utf-8", "surrogatepass")
    return "~" + hashlib.blake2b(raw, digest_size=12).hexdigest()


def identity_base(prefix: str, shards: int, secret: bytes, identity: Identity) -> str:
    """The part of a key shared by every scope of one identity.

    Example: ``rl:1:{s417}:Zx3...`` — the hash tag keeps every key of the
    identity (its state hash, its own keys) in one Redis Cluster slot.
    """
    if _size(identity) <= _CACHED_IDENTITY_LENGTH:
        return _cached_identity_base(prefix, shards, secret, identity)
    return _identity_base(prefix, shards, secret, identity)


def _identity_base(prefix: str, shards: int, secret: bytes, identity: Identity) -> str:
    seed, digest = hash_identity(secret, identity)
    return f"{prefix}{{s{seed % shards}}}:{digest}"


# Hot clients repeat; caching their keyed hash saves the HMAC per request.
# Long identities are not cached so the cache's memory stays bounded.
_CACHED_IDENTITY_LENGTH = 256
_cached_identity_base = lru_cache(maxsize=8192, typed=True)(_identity_base)


def _size(identity: Identity) -> int:
    """Characters, bytes, or bytes of an int (the cache holds the object)."""
    return identity.bit_length() // 8 if isinstance(identity, int) else len(identity)


# Algorithms whose state is not one string (a sorted set) keep a key of their
# own; every other rule's state is a field of its identity's state hash.
OWN_KEY_ALGORITHMS = frozenset({"sliding_window_log"})
STATE_HASH_SUFFIX = ":state"
# The state hash's field holding until when it lives (see prelude.lua).
DEADLINE_FIELD = "~"


def state_field(scope: str, algorithm: str) -> str:
    """A rule's name within its identity: the scope and the algorithm."""
    return f"{scope_part(scope)}:{ALGORITHM_CODES[algorithm]}"


def key_suffix(scope: str, algorithm: str) -> str:
    """What follows the identity base in the key holding a rule's state: the
    state hash's suffix, or the rule's own key (``:<scope>:<algorithm>``)."""
    if algorithm in OWN_KEY_ALGORITHMS:
        return ":" + state_field(scope, algorithm)
    return STATE_HASH_SUFFIX


def rule_key(base: str, scope: str, algorithm: str) -> str:
    return base + key_suffix(scope, algorithm)


def hash_fields(scope: str) -> list[str]:
    """Every field one scope may hold in a state hash."""
    return [
        state_field(scope, algorithm)
        for algorithm in ALGORITHM_CODES
        if algorithm not in OWN_KEY_ALGORITHMS
    ]
