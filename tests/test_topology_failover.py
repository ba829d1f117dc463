"""Failover under load: a cluster primary and a Sentinel primary killed by PID.

Four processes hit one key (fixed window, so the state is a readable count)
while the primary that holds it is killed with SIGKILL. The ``closed`` fail
mode denies while Redis fails, so it admits nothing extra. Asynchronous
replication may lose increments the old primary acknowledged; they are
measured as the admissions the new primary's counter does not hold, and the
test checks that they explain every admission above the limit. Each run's
numbers go to test-output/failover-<topology>.json.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from redis.exceptions import RedisClusterException, RedisError

from ratelimit_app.backends import redis as backend
from ratelimit_app.backends.topology import client_from_url
from ratelimit_app.keys import state_field
from ratelimit_app.limiter import Limiter
from ratelimit_app.testing import ManualClock
from tests.policy_helpers import policies
from tests.test_concurrency import NOON_MS
from tests.topologies import (
    Cluster,
    SentinelSet,
    TopologyUnavailable,
    command,
    kill_with_replication_lag,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.alone]

LIMIT = 1500
RATE = f"{LIMIT}/d"
SCOPE, IDENTITY = "failover", "one-key"
STATE_FIELD = state_field(SCOPE, "fixed_window")
WORKERS = 4
# A replica frozen this long before the kill misses the writes acknowledged
# meanwhile (see kill_with_replication_lag).
LAG_S = 0.2
PACE_S = 0.002  # between a worker's calls: the limit is reached after recovery
SECRET = b"failover-secret-0123456"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


def limiter_for(client, prefix: str) -> Limiter:
    return Limiter(
        client=client, prefix=prefix, secret=SECRET, clock=ManualClock(NOON_MS)
    )


def state_key(prefix: str) -> str:
    """The client's state hash; its fixed window is the field STATE_FIELD."""
    return limiter_for(None, prefix).state_hash(IDENTITY)


def hammer(url, prefix, stop, admitted_so_far, limited, results):
    """A worker process: hit until told to stop; report what happened."""
    client = client_from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = limiter_for(client, prefix)
    counts: Counter = Counter()
    while not stop.is_set():
        try:
            decision = limiter.hit(
                SCOPE, IDENTITY, RATE, algorithm="fixed_window", fail_mode="closed"
            )
        except (RedisError, RedisClusterException) as exc:  # would be a 500
            counts[f"escaped {type(exc).__module__}.{type(exc).__name__}"] += 1
            time.sleep(0.01)
            continue
        counts[decision.reason] += 1
        shared = {"ok": admitted_so_far, "limit": limited}.get(decision.reason)
        if shared is not None:
            with shared.get_lock():
                shared.value += 1
        time.sleep(PACE_S)
    results.put(dict(counts))


@dataclass
class Measurement:
    topology: str
    limit: int
    admitted: int  # acknowledged admissions, summed over the workers
    denied: int  # by the limit
    fallback_closed: int  # denied by the fail mode while Redis failed
    escaped: dict  # exceptions that escaped the limiter, by class (none)
    counter_on_new_primary: int
    lost_acknowledged: int  # admitted - counter: at least this many were lost
    # counter - admitted: calls that consumed but whose caller saw an error
    # (a reply lost with the connection), so it denied them (fail mode)
    consumed_unacknowledged: int
    recovery_s: float  # from the kill until the new primary serves the key
    over_limit: int  # admitted - limit


def run_under_load(topology: str, url: str, prefix: str, fail_over, counter):
    """Load, fail over when a third of the limit is admitted, go on until the
    limit is reached, and measure."""
    context = multiprocessing.get_context("fork")
    stop, admitted_so_far = context.Event(), context.Value("i", 0)
    limited = context.Value("i", 0)
    results = context.Queue()
    workers = [
        context.Process(
            target=hammer,
            args=(url, prefix, stop, admitted_so_far, limited, results),
        )
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    failure = None
    try:
        wait_for(lambda: admitted_so_far.value >= LIMIT // 3, "a third of the limit")
        started = time.monotonic()
        fail_over()
        recovery = time.monotonic() - started
        # Denials by the limit: it is reached (a call that consumed but
        # answered with an error leaves the admissions one short of it).
        wait_for(lambda: limited.value >= 200, "the limit", timeout=30)
    except TimeoutError as exc:
        failure = exc
    finally:
        stop.set()
    reports = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0, "a worker died of an unhandled exception"
    assert failure is None, f"{failure}; the workers saw {reports}"
    return measure(topology, reports, counter(), recovery)


def measure(topology, reports, counter_value, recovery) -> Measurement:
    totals = sum((Counter(r) for r in reports), Counter())
    escaped = {k[8:]: v for k, v in totals.items() if k.startswith("escaped ")}
    admitted = totals["ok"]
    result = Measurement(
        topology,
        LIMIT,
        admitted,
        totals["limit"],
        totals["fallback_closed"],
        escaped,
        counter_value,
        max(0, admitted - counter_value),
        max(0, counter_value - admitted),
        round(recovery, 2),
        admitted - LIMIT,
    )
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"failover-{topology}.json"
    path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print(f"\n{topology} failover: {asdict(result)}")
    return result


def used_in(raw: bytes | None) -> int:
    """The count in a fixed-window state, ``b"<window start>:<used>"``."""
    return int(raw.split(b":")[1]) if raw else 0


def check(result: Measurement, lag_s: float) -> None:
    assert result.counter_on_new_primary <= LIMIT, result
    # Every admission over the limit is one the new primary lost.
    assert result.over_limit <= result.lost_acknowledged, result
    assert result.denied > 0, result  # the limit holds after the failover
    assert result.fallback_closed > 0, result  # the failover was felt
    assert not result.escaped, result  # the fail mode handled every failure
    if lag_s:  # the writes of a frozen replica's lag are lost, and measured
        assert result.lost_acknowledged > 0, result


def started(topology):
    try:
        return topology.start()
    except TopologyUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def prefix() -> str:
    return f"rlt-failover-{time.monotonic_ns()}:"


@pytest.mark.parametrize("lag_s", [0, LAG_S], ids=["in-sync", "lagging-replica"])
def test_cluster_primary_killed_under_load(prefix, lag_s):
    cluster = started(Cluster())
    try:
        key = state_key(prefix)
        primary = cluster.node_of(key)
        replica = cluster.replica_of(primary)

        def fail_over():
            kill_with_replication_lag(primary, replica, lag_s)
            wait_for(
                lambda: cluster.node_of(key) is not primary and cluster.healthy(),
                "a replica to take over the slot",
                timeout=30,
            )

        def counter() -> int:
            return used_in(command(cluster.node_of(key), "HGET", key, STATE_FIELD))

        name = f"cluster-{'lagging' if lag_s else 'in-sync'}"
        check(run_under_load(name, cluster.url, prefix, fail_over, counter), lag_s)
    finally:
        cluster.stop()


@pytest.mark.parametrize("lag_s", [0, LAG_S], ids=["in-sync", "lagging-replica"])
def test_sentinel_primary_killed_under_load(prefix, lag_s):
    sentinels = started(SentinelSet())
    try:
        key, old = state_key(prefix), sentinels.master_port()

        def fail_over():
            kill_with_replication_lag(sentinels.primary, sentinels.replica, lag_s)
            wait_for(
                lambda: (
                    sentinels.master_port() != old
                    and command(sentinels.server_on(sentinels.master_port()), "ROLE")[0]
                    == b"master"
                ),
                "the sentinels to promote the replica",
                timeout=30,
            )

        def counter() -> int:
            new = sentinels.server_on(sentinels.master_port())
            return used_in(command(new, "HGET", key, STATE_FIELD))

        name = f"sentinel-{'lagging' if lag_s else 'in-sync'}"
        check(run_under_load(name, sentinels.url, prefix, fail_over, counter), lag_s)
    finally:
        sentinels.stop()


@pytest.mark.django_db
def test_a_whole_shard_down_applies_the_fail_modes(prefix, settings, client):
    """Primary and replica of one slot range killed: the cluster refuses
    every command (CLUSTERDOWN); a client built then cannot even start
    (redis-py's RedisClusterException, raised as a RedisError instead)."""
    cluster = started(Cluster())
    try:
        settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": cluster.url}
        limiter = Limiter(prefix=prefix, secret=SECRET)
        assert limiter.hit(SCOPE, IDENTITY, "1/h").reason == "ok"
        primary = cluster.node_of(state_key(prefix))
        replica = cluster.replica_of(primary)
        primary.kill()
        replica.kill()
        wait_for(
            lambda: all(
                b"cluster_state:fail" in command(n, "CLUSTER INFO")
                for n in cluster.live()
            ),
            "the cluster to notice the lost slots",
        )
        decision = limiter.hit(SCOPE, IDENTITY, "1/h", fail_mode="closed")
        assert decision.reason == "fallback_closed"
        backend.reset_clients()  # as in a process starting now
        fresh = Limiter(prefix=prefix, secret=SECRET)
        assert fresh.hit(SCOPE, "other", "1/h", fail_mode="open").allowed
        with policies(
            {"name": "down", "rate": "5/m", "path": "/plain/", "fail_mode": "closed"}
        ):
            assert client.get("/plain/").status_code == 503
    finally:
        cluster.stop()
