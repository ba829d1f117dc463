"""The limiter on real Redis topologies: Cluster, Sentinel, TLS and ACL users.

Each topology is started from the redis-server binary on loopback (see
tests/topologies.py) and skipped, with the reason, when it cannot run here.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from redis.cluster import key_slot

from ratelimit_app import aggregation, stats
from ratelimit_app.algorithms import script_for
from ratelimit_app.backends.topology import client_from_url, is_cluster
from ratelimit_app.limiter import Limiter, spec_of
from ratelimit_app.models import UsageMinute
from ratelimit_app.testing import ManualClock, reset_all
from ratelimit_app.types import ALGORITHMS, Rule
from tests.policy_helpers import policies
from tests.test_concurrency import PROCESSES, admitted_by_processes
from tests.topologies import Cluster, SentinelSet, TLSServer, TopologyUnavailable

pytestmark = pytest.mark.slow

SECRET = b"topology-secret-0123456"


def started(topology):
    try:
        return topology.start()
    except TopologyUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cluster():
    topology = started(Cluster())
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def sentinel():
    topology = started(SentinelSet())
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def tls():
    topology = started(TLSServer())
    yield topology
    topology.stop()


@pytest.fixture
def prefix() -> str:
    return f"rlt-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def cluster_client(cluster):
    client = client_from_url(cluster.url)
    yield client
    client.close()


def limiter_on(client, prefix, **kwargs) -> Limiter:
    return Limiter(client=client, prefix=prefix, secret=SECRET, **kwargs)


# -- exactness -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cluster_processes_admit_exactly_the_limit(cluster, prefix, algorithm):
    admitted = admitted_by_processes(cluster.url, prefix, algorithm)
    assert (sum(admitted), len(admitted)) == (100, PROCESSES)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sentinel_processes_admit_exactly_the_limit(sentinel, prefix, algorithm):
    admitted = admitted_by_processes(sentinel.url, prefix, algorithm)
    assert (sum(admitted), len(admitted)) == (100, PROCESSES)


# -- cluster semantics -----------------------------------------------------------


def identities_on_two_nodes(limiter: Limiter, cluster: Cluster) -> tuple[str, str]:
    """Two identities whose keys live on different cluster nodes."""
    first = "ip:203.0.113.7"
    node = cluster.node_of(limiter._base(first))
    for n in range(1000):
        other = f"user:{n}"
        if cluster.node_of(limiter._base(other)) is not node:
            return first, other
    raise AssertionError("no identity on another node")


def rules(ip: str, user: str, user_first: bool = False) -> list[Rule]:
    by_ip = Rule("per-ip", ip, "5/h", "fixed_window")
    by_user = Rule("per-user", user, "1/h", "fixed_window")
    return [by_user, by_ip] if user_first else [by_ip, by_user]


def test_rules_of_two_identities_are_decided_per_identity(
    cluster, cluster_client, prefix
):
    limiter = limiter_on(cluster_client, prefix, clock=ManualClock())
    ip, user = identities_on_two_nodes(limiter, cluster)
    assert key_slot(limiter._base(ip).encode()) != key_slot(
        limiter._base(user).encode()
    )

    first = limiter.hit_many(rules(ip, user))
    assert [d.allowed for d in first] == [True, True]
    # The user rule denies; the ip rule, decided first, keeps what it consumed.
    second = limiter.hit_many(rules(ip, user))
    assert [(d.reason, d.remaining) for d in second] == [("ok", 3), ("limit", 0)]
    # User first: its denial leaves the ip rule only peeked, nothing consumed.
    third = limiter.hit_many(rules(ip, user, user_first=True))
    assert [(d.reason, d.remaining) for d in third] == [
        ("limit", 0),
        ("not_consumed", 3),
    ]


def test_all_or_nothing_holds_within_one_identity(cluster_client, prefix):
    limiter = limiter_on(cluster_client, prefix, clock=ManualClock())
    both = [
        Rule("burst", "ip:198.51.100.1", "1/h", "gcra"),
        Rule("hourly", "ip:198.51.100.1", "10/h", "token_bucket"),
    ]
    assert all(d.allowed for d in limiter.hit_many(both))
    denied = limiter.hit_many(both)
    assert [d.reason for d in denied] == ["limit", "not_consumed"]
    assert denied[1].remaining == 9  # nothing consumed by the denied call


async def test_the_async_limiter_decides_per_identity_too(cluster, prefix):
    client = client_from_url(cluster.url, asyncio=True)
    try:
        limiter = limiter_on(None, prefix, async_client=client, clock=ManualClock())
        limiter._client = client_from_url(cluster.url)  # node_of needs no client
        ip, user = identities_on_two_nodes(limiter, cluster)
        await limiter.ahit_many(rules(ip, user))
        second = await limiter.ahit_many(rules(ip, user))
        assert [(d.reason, d.remaining) for d in second] == [("ok", 3), ("limit", 0)]
        assert (await limiter.ahit("one", ip, "1/h")).allowed
        assert not (await limiter.apeek("one", ip, "1/h")).allowed
    finally:
        await client.aclose()


def test_scripts_are_reloaded_on_the_node_that_owns_the_slot(
    cluster, cluster_client, prefix
):
    limiter = limiter_on(cluster_client, prefix)
    assert limiter.hit("api", "client-1", "3/h").allowed
    owner = cluster.node_of(limiter._base("client-1"))
    with redis.Redis(port=owner.port) as node:
        node.script_flush()
        assert node.script_exists(script_for(frozenset({"gcra"})).sha) == [False]
    assert limiter.hit("api", "client-1", "3/h").remaining == 1


def test_reset_forgets_a_clients_counters(cluster_client, prefix):
    limiter = limiter_on(cluster_client, prefix)
    for algorithm in ALGORITHMS:
        limiter.hit("api", "client-2", "1/h", algorithm=algorithm)
    limiter.reset("api", "client-2")
    assert all(
        limiter.hit("api", "client-2", "1/h", algorithm=a).allowed for a in ALGORITHMS
    )


@pytest.mark.django_db
def test_middleware_usage_drain_and_distinct_clients_on_a_cluster(
    cluster, cluster_client, settings, client
):
    """Settings point at the cluster: policy snapshot, middleware, decisions,
    counters on every node, the drain, distinct clients, reset_all."""
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": cluster.url}
    assert is_cluster(aggregation.get_client())
    with policies({"name": "spread", "rate": "2/m", "path": "/plain/"}):
        codes = [client.get("/plain/").status_code for _ in range(3)]
        limiter = Limiter()  # Redis TIME: the minute rows are recent
        for n in range(60):  # identities on every node
            limiter.hit("spread", f"c{n}", "10/m", algorithm="fixed_window")
        aggregation.drain_usage()
    assert codes == [200, 200, 429]
    assert stats.totals("spread")["allowed"] == 62
    minutes = {row.minute: row for row in UsageMinute.objects.filter(policy="spread")}
    assert sum(row.distinct_clients for row in minutes.values()) == 61
    shards = {limiter._base(f"c{n}").split("}")[0] for n in range(60)}
    assert len({cluster.node_of(s + "}").port for s in shards}) == 3
    assert reset_all() > 0
    assert not list(
        cluster_client.scan_iter(match=f"{settings.RATELIMIT['KEY_PREFIX']}*{{s*:fw")
    )


@pytest.mark.django_db
def test_middleware_through_sentinel(sentinel, settings, client):
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": sentinel.url}
    with policies({"name": "watched", "rate": "1/m", "path": "/plain/"}):
        codes = [client.get("/plain/").status_code for _ in range(2)]
    assert codes == [200, 429]


# -- TLS and ACL users ---------------------------------------------------------------


def test_rediss_with_the_servers_ca(tls, prefix):
    url = tls.url(f"ssl_ca_certs={tls.ca}&ssl_cert_reqs=required")
    limiter = limiter_on(client_from_url(url), prefix)
    assert limiter.hit("tls", "client", "1/h").allowed
    assert not limiter.hit("tls", "client", "1/h").allowed


def test_rediss_refuses_a_server_it_cannot_verify(tls, prefix):
    client = client_from_url(tls.url("ssl_cert_reqs=required"))  # system CAs only
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()
    unverified = client_from_url(tls.url("ssl_cert_reqs=none"))
    assert unverified.ping()


@pytest.fixture(scope="session")
def acl_user(tls):
    """A user allowed what the limiter needs, on the TLS server's ports."""
    with redis.Redis(port=tls.server.port) as admin:
        admin.acl_setuser(
            "limiter",
            enabled=True,
            passwords=["+s3cr%t"],
            keys=["rlt-*"],
            commands=["+@all", "-@dangerous", "+script|load"],
        )
    return "limiter", "s3cr%25t"  # the password as a URL spells it


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_acl_user_and_password_from_the_url(tls, acl_user, prefix, scheme):
    user, password = acl_user
    port, query = (
        (tls.tls_port, f"?ssl_ca_certs={tls.ca}")
        if scheme == "rediss"
        else (tls.server.port, "")
    )
    client = client_from_url(f"{scheme}://{user}:{password}@127.0.0.1:{port}/0{query}")
    assert client.acl_whoami() in ("limiter", b"limiter")
    assert limiter_on(client, prefix).hit("acl", "client", "1/h").allowed


def test_a_wrong_password_is_an_authentication_error(tls, acl_user):
    client = client_from_url(f"redis://limiter:wrong@127.0.0.1:{tls.server.port}/0")
    with pytest.raises(redis.AuthenticationError):
        client.ping()


def test_cluster_with_an_acl_user(cluster, prefix):
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as admin:
            admin.acl_setuser(
                "clustered",
                enabled=True,
                passwords=["+pw"],
                keys=["rlt-*"],
                commands=[
                    "+@all",
                    "-@dangerous",
                    "+script|load",
                    "+cluster|slots",
                    "+cluster|shards",
                ],
            )
    client = client_from_url(cluster.url.replace("://", "://clustered:pw@"))
    limiter = limiter_on(client, prefix)
    assert all(limiter.hit("acl", f"c{n}", "1/h").allowed for n in range(20))


def test_async_clients_of_each_topology(cluster, sentinel, prefix):
    async def hits(url):
        client = client_from_url(url, asyncio=True)
        try:
            limiter = limiter_on(None, prefix, async_client=client)
            return [(await limiter.ahit("a", "c", "1/h")).allowed for _ in range(2)]
        finally:
            await client.aclose()

    for url in (cluster.url, sentinel.url):
        assert asyncio.run(hits(url)) == [True, False]


def test_spec_keys_of_one_identity_share_a_slot(prefix):
    limiter = limiter_on(None, prefix)
    keys = limiter.pack(
        [
            (spec_of(s, "1/h", a, 1, None), "one")
            for s in ("a", "b")
            for a in ALGORITHMS
        ],
        "hit",
    )[1]
    assert len({key_slot(k.encode()) for k in keys}) == 1
