"""Client URLs: what each scheme builds, and a clear error for each bad URL.

Real servers of each topology are in test_topologies.py; these need none
(redis-py connects lazily, except for a cluster).
"""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from django.core.exceptions import ImproperlyConfigured

from ratelimit_app.backends import redis as backend
from ratelimit_app.backends.topology import (
    ClusterUnavailable,
    client_from_url,
    is_cluster,
    parse_url,
)
from ratelimit_app.limiter import Limiter
from ratelimit_app.testing import free_port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "expected a non-empty string"),
        (None, "expected a non-empty string"),
        (b"redis://localhost", "expected a non-empty string"),
        ("localhost:6379", "no scheme"),
        ("http://localhost:6379", "unknown scheme 'http'"),
        ("redis+foo://localhost", "unknown scheme 'redis+foo'"),
        ("redis://localhost:99999/0", "port must be a number from 1 to 65535"),
        ("redis://localhost:port/0", "port must be a number from 1 to 65535"),
        ("redis://localhost:6379/zero", "must be a database number, not 'zero'"),
        ("redis://localhost/0?socket_timeout=soon", "socket_timeout"),
        ("redis+sentinel://localhost:26379", "no service name"),
        ("redis+sentinel://localhost:26379/", "no service name"),
        ("redis+sentinel://h:1/mymaster/0/x", "the path must be /service_name[/db]"),
        ("redis+sentinel://h:1/mymaster/one", "database must be a number, not 'one'"),
        ("redis+sentinel://h:1,,h:2/mymaster", "empty host in ''"),
        ("redis+sentinel:///mymaster", "empty host in ''"),
        ("redis+sentinel://h:0/mymaster", "port '0' of 'h'"),
        ("redis+sentinel://h:65536/mymaster", "port '65536' of 'h'"),
        ("redis+sentinel://h:x/mymaster", "port 'x' of 'h'"),
        (
            "redis+sentinel://h:1/m?socket_timeout=x",
            "invalid value 'x' for 'socket_timeout'",
        ),
        ("redis+sentinel://h:1/m?ssl=maybe", "invalid value 'maybe' for 'ssl'"),
        ("redis+cluster://", "empty host in ''"),
        ("redis+cluster://h:1,:2", "empty host in ':2'"),
        ("redis+cluster://[::1", "unreadable IPv6 address"),
        ("redis+cluster://[::1]x", "unreadable IPv6 address"),
        ("redis+cluster://h:1/0", "a cluster URL takes no path"),
        ("redis+cluster://h:1?db=2", "Redis Cluster has only database 0"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(ImproperlyConfigured) as raised:
        client_from_url(url)
    text = str(raised.value)
    assert message in text
    assert "redis+sentinel://[user:pass@]host[:port]" in text  # the formats


def test_errors_never_show_the_password():
    with pytest.raises(ImproperlyConfigured) as raised:
        client_from_url("redis+sentinel://ada:s3cret@h:1")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(ImproperlyConfigured) as raised:
        client_from_url("redis://ada:s3cret@h:99999/0")
    assert "s3cret" not in str(raised.value)
    assert "ada:***@h:99999" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "hosts", "path", "options"),
    [
        ("redis+cluster://a", [("a", 6379)], [], {}),
        ("redis+sentinel://a/m", [("a", 26379)], ["m"], {}),
        (
            "redis+sentinel://u:p%40ss@a:1,b:2,[::1]:3,[fe80::1]/m/2",
            [("a", 1), ("b", 2), ("::1", 3), ("fe80::1", 26379)],
            ["m", "2"],
            {"username": "u", "password": "p@ss"},
        ),
        (
            "redis+cluster://:pw@a:7000?ssl=true&socket_timeout=0.5&x=y",
            [("a", 7000)],
            [],
            {"password": "pw", "ssl": True, "socket_timeout": 0.5, "x": "y"},
        ),
    ],
)
def test_parses_hosts_credentials_and_options(url, hosts, path, options):
    parsed = parse_url(url, url.partition("://")[0])
    assert (parsed.hosts, parsed.path, parsed.options) == (hosts, path, options)


@pytest.mark.parametrize("asyncio", [False, True])
def test_standalone_urls_build_plain_clients(asyncio):
    client = client_from_url("rediss://u:p@example.test:6380/3", asyncio=asyncio)
    assert isinstance(client, redis.asyncio.Redis if asyncio else redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("example.test", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("u", "p")
    assert "SSL" in client.connection_pool.connection_class.__name__
    assert not is_cluster(client)


@pytest.mark.parametrize("asyncio", [False, True])
def test_sentinel_urls_build_a_master_client(asyncio):
    url = "redis+sentinel://u:p@s1:26380,s2/mymaster/4?socket_timeout=0.25"
    client = client_from_url(url, asyncio=asyncio, health_check_interval=7)
    pool = client.connection_pool
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["health_check_interval"] == 7  # options pass on
    assert pool.connection_kwargs["password"] == "p"
    sentinels = pool.sentinel_manager.sentinels
    assert [
        (
            s.connection_pool.connection_kwargs["host"],
            s.connection_pool.connection_kwargs["port"],
        )
        for s in sentinels
    ] == [("s1", 26380), ("s2", 26379)]
    # By default the sentinels take the URL's credentials and timeouts.
    first = sentinels[0].connection_pool.connection_kwargs
    assert (first["username"], first["password"], first["socket_timeout"]) == (
        "u",
        "p",
        0.25,
    )


@pytest.mark.parametrize(
    "url", ["redis://h/0?socket_timeout=1", "redis+sentinel://h/m?socket_timeout=1"]
)
def test_the_urls_options_win_over_keyword_options(url):
    """As in redis-py's from_url; keyword options fill in the rest."""
    client = client_from_url(url, socket_timeout=2, health_check_interval=3)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["health_check_interval"]) == (1, 3)


def test_the_redis_url_setting_goes_through_client_from_url(settings):
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": "redis+sentinel://h:1"}
    with pytest.raises(ImproperlyConfigured, match="no service name"):
        backend.get_client()


def test_an_unreachable_cluster_applies_the_fail_mode_not_a_500(settings):
    """redis-py raises RedisClusterException, which is no RedisError, when no
    startup node answers; the client raises ClusterUnavailable instead."""
    url = f"redis+cluster://127.0.0.1:{free_port()}"  # nothing listens there
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": url}
    with pytest.raises(ClusterUnavailable, match="Redis Cluster unavailable"):
        client_from_url(url)
    decision = Limiter().hit("api", "client", "1/m", fail_mode="open")
    assert (decision.allowed, decision.reason) == (True, "fallback_open")


async def test_an_unreachable_cluster_fails_as_a_redis_error_in_asyncio(settings):
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    client = client_from_url(url, asyncio=True)  # connects on first use
    with pytest.raises(redis.RedisError, match="Redis Cluster unavailable"):
        await client.ping()
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": url}
    decision = await Limiter().ahit("api", "client", "1/m", fail_mode="closed")
    assert (decision.allowed, decision.reason) == (False, "fallback_closed")
