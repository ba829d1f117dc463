"""Keys: fixed length for any identity, a TTL on every key, even for 1,000,000 clients."""

from __future__ import annotations

import re
import time
from itertools import islice

import pytest

from ratelimit_app import fallback
from ratelimit_app.identity import _cached_label, display_label
from ratelimit_app.keys import _cached_identity_base, identity_base
from ratelimit_app.limiter import Limiter, spec_of
from ratelimit_app.rates import parse_rate
from ratelimit_app.types import ALGORITHMS

SECRET = b"keys-test-secret-0123456789"
HOSTILE_IDENTITIES = [
    "",
    "192.0.2.7",
    "x" * 65_536,
    "\x00\r\n{}*?[]|:\t",
    "\udcff lone surrogate",
    "emoji \U0001f600" * 1000,
    b"\x00\xff" * 40_000,
    0,
    -1,
    10**5000,  # beyond Python's 4300-digit limit on str(int)
    -(10**5000) - 1,
]


@pytest.mark.parametrize("identity", HOSTILE_IDENTITIES, ids=lambda i: type(i).__name__)
def test_any_identity_gives_a_fixed_length_key(identity):
    base = identity_base("rl:1:", 1024, SECRET, identity)
    assert re.fullmatch(r"rl:1:\{s\d{1,4}\}:[A-Za-z0-9_-]{22}", base), base


def test_huge_ints_are_distinct_identities():
    one, other = 10**5000, 10**5000 + 1
    assert identity_base("p:", 8, SECRET, one) != identity_base("p:", 8, SECRET, other)
    assert identity_base("p:", 8, SECRET, 42) != identity_base("p:", 8, SECRET, 43)


def test_huge_identities_stay_out_of_the_process_caches():
    before = (_cached_identity_base.cache_info(), _cached_label.cache_info())
    for n in range(50):
        huge = f"{n}" + "y" * 100_000
        identity_base("p:", 8, SECRET, huge)
        identity_base("p:", 8, SECRET, 10**5000 + n)
        assert display_label(huge) == ""
    after = (_cached_identity_base.cache_info(), _cached_label.cache_info())
    assert [a.currsize for a in after] == [b.currsize for b in before]


def test_hostile_identities_are_limited_like_any_other(make_limiter):
    limiter = make_limiter()
    for identity in HOSTILE_IDENTITIES:
        assert limiter.hit("hostile", identity, "1/h").allowed
        assert not limiter.hit("hostile", identity, "1/h").allowed


# -- a million clients -------------------------------------------------------------

CLIENTS = 1_000_000
PER_CALL = 100  # identities per script call (hit_many of distinct clients)
DENIED = 20_000  # clients that come back and are denied (top offenders)
PREFIX = "scale:1:"
# A day: window keys end at the window's end (aligned to the epoch), so a run
# across it loses them before the count; see the test.
RATE = "1/d"


def million_identities():
    """Mostly short; every 997th huge or binary, so size never shows in a key."""
    for n in range(CLIENTS):
        if n % 997 == 0:
            yield bytes([n % 256]) * 4096 + n.to_bytes(4, "big")
        else:
            yield f"client-{n}"


def hit_in_batches(limiter: Limiter, client, identities) -> None:
    """Pipelined calls of PER_CALL clients each; every algorithm in turn."""
    specs = [spec_of("scale", RATE, algorithm, 1, None) for algorithm in ALGORITHMS]
    loaded: set[str] = set()
    pipe = client.pipeline(transaction=False)
    batch = []
    for n, identity in enumerate(identities):
        batch.append((specs[n % len(specs)], identity))
        if len(batch) == PER_CALL:
            _queue(limiter, client, pipe, batch, loaded)
            batch = []
        if len(pipe) >= 100:
            pipe.execute()
    if batch:
        _queue(limiter, client, pipe, batch, loaded)
    pipe.execute()


def _queue(limiter, client, pipe, batch, loaded) -> None:
    script, keys, args = limiter.pack(batch, "hit")
    if script.sha not in loaded:
        client.script_load(script.source)
        loaded.add(script.sha)
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def ttls_of_every_key(client) -> dict[bytes, int]:
    """PTTL of every key on the server (SCAN, pipelined PTTL)."""
    found: dict[bytes, int] = {}
    pending: list[bytes] = []
    for key in client.scan_iter(count=10_000):
        pending.append(key)
        if len(pending) >= 10_000:
            found.update(_pttls(client, pending))
            pending = []
    found.update(_pttls(client, pending))
    return found


def _pttls(client, keys: list[bytes]) -> dict[bytes, int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    return dict(zip(keys, pipe.execute(), strict=True))


@pytest.mark.slow
def test_a_million_clients_leave_every_key_with_a_ttl(private_redis):
    started = time.monotonic()
    window = int(time.time() // 86400)
    limiter = Limiter(client=private_redis, prefix=PREFIX, secret=SECRET, shards=1024)
    hit_in_batches(limiter, private_redis, million_identities())
    # The first clients come back (same identity, same algorithm) and are denied.
    hit_in_batches(limiter, private_redis, islice(million_identities(), DENIED))
    ttls = ttls_of_every_key(private_redis)

    no_ttl = [key for key, ttl in ttls.items() if ttl == -1]
    assert no_ttl == [], no_ttl[:10]
    # -2: gone since SCAN (a window key can end at the top of the hour).
    assert all(ttl > 0 or ttl == -2 for ttl in ttls.values())
    kinds = {_kind(key) for key in ttls}
    assert kinds == {*STATE_KINDS, "usage", "hll", "top"}, kinds
    kept = sum(_kind(key) in STATE_KINDS for key in ttls)  # one per client
    if int(time.time() // 86400) == window:
        assert kept == CLIENTS
    else:  # the run crossed midnight (UTC): the window keys ended there
        assert CLIENTS * 0.6 <= kept <= CLIENTS
    longest = max(len(key) for key in ttls)
    assert longest <= len(PREFIX) + 64, longest
    print(f"1M clients: {time.monotonic() - started:.1f} s")  # budget: 60 s


# A client's state: its state hash, or the sliding window log's own key.
STATE_KINDS = {"state", "swl"}


def _kind(key: bytes) -> str:
    """A state hash, an own key's algorithm code, or which usage key it is."""
    text = key.decode()
    if ":usage:hll:" in text:
        return "hll"
    return text.rsplit(":", 1)[-1]


def test_the_local_fallback_stays_within_its_cap_for_a_million_clients():
    local = fallback.LocalLimiter(max_keys=10_000)
    spec = spec_of("scale", RATE, "gcra", 1, None)
    rate = parse_rate(RATE)
    for n in range(CLIENTS):
        local.decide(spec, f"client-{n}", rate, 1, 1, True)
        if n % 100_000 == 0:
            assert len(local) <= local.max_keys
    assert len(local) == local.max_keys
