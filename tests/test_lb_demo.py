"""`make lb-demo`: two gunicorn instances, one limit of 100 a day, 1000 requests.

Real processes on loopback ports: gunicorn twice, nginx in front when Debian's
nginx and apache2-utils are installed or installable, else the client
alternating between the two ports with 100 threads.
"""

from __future__ import annotations

import pytest

from demo_project import lb_demo
from ratelimit_app.backends.topology import client_from_url
from ratelimit_app.testing import free_port
from tests.topologies import Cluster, TopologyUnavailable


def assert_one_shared_limit(result: lb_demo.Result) -> None:
    assert result.total == {200: 100, 429: 900}
    assert set(result.instances) == {"web1", "web2"}
    for name, counts in result.instances.items():
        assert counts[200] + counts[429] > 0, f"{name} served nothing"
    assert result.problems(1000) == []


def test_two_instances_behind_nginx_allow_exactly_100(redis_url):
    """With nginx and ab when they can be installed, else the client balances."""
    result = lb_demo.run(redis_url, lb_port=free_port())
    assert_one_shared_limit(result)
    if result.balancer == "nginx":
        assert result.client == {"2xx": 100, "non-2xx": 900}
    else:
        assert result.client == {"200": 100, "429": 900}


def test_two_ports_hit_alternately_allow_exactly_100():
    """The command, with the client alternating between the two ports."""
    lines: list[str] = []
    code = lb_demo.main(["--balancer", "client"], lines.append)
    assert code == 0, lines
    assert lines[0] == "load tool (client): {'200': 100, '429': 900}"
    assert lines[-1].startswith("OK: exactly 100 of 1000 allowed")
    rows = {
        row[0]: [int(n) for n in row[1:]]
        for row in (line.split() for line in "\n".join(lines).splitlines())
        if len(row) == 4 and row[0] in ("web1", "web2", "total")
    }
    assert rows["total"] == [100, 900, 0]
    # Alternating: each instance answered half of the requests.
    assert sum(rows["web1"]) == sum(rows["web2"]) == 500
    assert rows["web1"][0] + rows["web2"][0] == 100


@pytest.mark.slow
def test_limiter_on_a_cluster_with_cache_on_standalone_redis(redis_url, monkeypatch):
    """docker-compose's cluster profile: RATELIMIT_REDIS_URL=redis+cluster://...,
    REDIS_URL (cache, Celery broker) on the standalone server."""
    try:
        cluster = Cluster().start()
    except TopologyUnavailable as exc:
        pytest.skip(str(exc))
    found: dict[str, int] = {}
    delete_keys = lb_demo.delete_keys

    def count_then_delete(url: str, prefix: str) -> None:
        for where in (url, redis_url):
            client = client_from_url(where)
            found[where] = sum(1 for _ in client.scan_iter(match=f"{prefix}*"))
            client.close()
        delete_keys(url, prefix)

    monkeypatch.setattr(lb_demo, "delete_keys", count_then_delete)
    try:
        result = lb_demo.run(redis_url, balancer="client", limiter_url=cluster.url)
        assert_one_shared_limit(result)
        client = client_from_url(cluster.url)
        try:
            assert client.dbsize() == 0  # deleted after the run
        finally:
            client.close()
    finally:
        cluster.stop()
    assert found[cluster.url] > 0  # the limiter's keys were on the cluster
    assert found[redis_url] == 0  # and none on the standalone server
