"""Redis clients from URLs: standalone, TLS, Sentinel and Cluster, sync or asyncio.

Accepted URLs (the schemes the ``limits`` library uses)::

    redis://[user:pass@]host[:port][/db]            standalone
    rediss://[user:pass@]host[:port][/db]           standalone over TLS
    unix://[user:pass@]/path/to/redis.sock[?db=N]   standalone on a socket
    redis+sentinel://[user:pass@]host[:port][,host[:port]...]/service_name[/db]
    redis+cluster://[user:pass@]host[:port][,host[:port]...]

Query parameters become client options with redis-py's own parsers
(``?socket_timeout=0.5&ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem``;
``ssl=true`` turns TLS on for Sentinel and Cluster). As in redis-py's
``from_url``, the URL's query wins over keyword options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.exceptions
import redis.sentinel
from django.core.exceptions import ImproperlyConfigured
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_PORTS = {SENTINEL_SCHEME: 26379, CLUSTER_SCHEME: 6379, "redis": 6379}
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True}
BOOLEANS |= {"false": False, "no": False, "off": False, "0": False}


def _boolean(value: str) -> bool:
    return BOOLEANS[value.lower()]  # KeyError: reported as an invalid value


QUERY_PARSERS = {**URL_QUERY_ARGUMENT_PARSERS, "ssl": _boolean}
# Options that also apply to the connections to the sentinels themselves.
SENTINEL_SHARED_OPTIONS = ("socket_timeout", "socket_connect_timeout", "ssl")

FORMATS = (
    "redis://[user:pass@]host[:port][/db], rediss://... (TLS), "
    "unix:///path/to/redis.sock, "
    "redis+sentinel://[user:pass@]host[:port][,host[:port]...]/service_name[/db] "
    "or redis+cluster://[user:pass@]host[:port][,host[:port]...]"
)

CLUSTER_TYPES = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)


class ClusterUnavailable(redis.exceptions.ConnectionError):
    """Redis Cluster cannot serve a command: no node reachable, slots not
    covered. redis-py raises RedisClusterException, which is no RedisError;
    this one is, so the fail modes apply instead of a 500."""


def _unavailable(exc: RedisClusterException) -> ClusterUnavailable:
    return ClusterUnavailable(f"Redis Cluster unavailable: {exc}")


class Cluster(redis.cluster.RedisCluster):
    """RedisCluster whose cluster-level failures are RedisErrors."""

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc


class AsyncCluster(redis.asyncio.cluster.RedisCluster):
    """The asyncio twin of ``Cluster`` (it connects on the first command)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _unavailable(exc) from exc


@dataclass(frozen=True)
class ParsedURL:
    """A Sentinel or Cluster URL taken apart."""

    scheme: str
    hosts: list[tuple[str, int]]
    path: list[str]  # the non-empty path segments
    options: dict[str, Any] = field(default_factory=dict)  # credentials, query


def client_from_url(url: str, *, asyncio: bool = False, **options: Any):
    """A client for ``url``: ``redis.Redis``, ``RedisCluster``, or the master
    client of a Sentinel service (from ``redis.asyncio`` when ``asyncio``).

    Raises ImproperlyConfigured, saying what is wrong, for a bad URL.
    """
    scheme = _scheme(url)
    if scheme in STANDALONE_SCHEMES:
        return _standalone(url, asyncio, options)
    parsed = parse_url(url, scheme)
    if scheme == CLUSTER_SCHEME:
        return _cluster(parsed, asyncio, options)
    return _sentinel(parsed, asyncio, options)


def is_cluster(client) -> bool:
    """True for a Redis Cluster client (sync or asyncio)."""
    kind = type(client)
    found = _CLUSTER_BY_TYPE.get(kind)
    if found is None:
        found = _CLUSTER_BY_TYPE[kind] = isinstance(client, CLUSTER_TYPES)
    return found


# Per client class: redis-py's cluster classes derive from typing Protocols,
# whose isinstance() is slow, and this runs on every decision.
_CLUSTER_BY_TYPE: dict[type, bool] = {}


def _bad(url: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"Redis URL {_redacted(url)!r}: {problem}. Use {FORMATS}."
    )


def _redacted(url: str) -> str:
    """The URL with any password replaced, fit for an error message."""
    if not isinstance(url, str) or "@" not in url or "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}"


def _scheme(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise _bad(url, "expected a non-empty string")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise _bad(url, "no scheme (e.g. 'redis://')")
    scheme = scheme.lower()
    if scheme not in (*STANDALONE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise _bad(url, f"unknown scheme {scheme!r}")
    return scheme


# -- standalone ----------------------------------------------------------------


def _standalone(url: str, asyncio: bool, options: dict):
    if not url.lower().startswith("unix"):
        _check_standalone(url)
    cls = redis.asyncio.Redis if asyncio else redis.Redis
    try:
        return cls.from_url(url, **options)
    except ValueError as exc:  # redis-py's own parsing (e.g. a query value)
        raise _bad(url, str(exc)) from exc


def _check_standalone(url: str) -> None:
    """What redis-py would silently ignore: a bad port or database number."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError as exc:
        raise _bad(url, "the port must be a number from 1 to 65535") from exc
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise _bad(url, f"the path must be a database number, not {db!r}")


# -- Sentinel and Cluster ------------------------------------------------------


def parse_url(url: str, scheme: str) -> ParsedURL:
    """Split a ``redis+sentinel://`` or ``redis+cluster://`` URL."""
    rest = url.partition("://")[2]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, host_list = netloc.rpartition("@")
    options = _query_options(url, query)
    if at:
        options.update(_credentials(userinfo))
    hosts = [_host(url, text, DEFAULT_PORTS[scheme]) for text in host_list.split(",")]
    segments = [unquote(s) for s in path.split("/") if s] if slash else []
    return ParsedURL(scheme, hosts, segments, options)


def _credentials(userinfo: str) -> dict[str, str]:
    user, colon, password = userinfo.partition(":")
    credentials = {}
    if user:
        credentials["username"] = unquote(user)
    if colon and password:
        credentials["password"] = unquote(password)
    return credentials


def _host(url: str, text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[ipv6]:port`` as (host, port)."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise _bad(url, f"unreadable IPv6 address {text!r}")
        port = port[1:]
    else:
        host, _, port = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if not host:
        raise _bad(url, f"empty host in {text!r} (hosts are comma-separated)")
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _bad(url, f"port {port!r} of {host!r} is not a number from 1 to 65535")
    return host, int(port)


def _query_options(url: str, query: str) -> dict[str, Any]:
    options = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parser = QUERY_PARSERS.get(name)
        try:
            options[name] = parser(value) if parser else value
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(url, f"invalid value {value!r} for {name!r}") from exc
    return options


def _cluster(parsed: ParsedURL, asyncio: bool, options: dict):
    if parsed.path:
        raise _bad_parsed(parsed, "a cluster URL takes no path (only database 0)")
    kwargs = {**options, **parsed.options}
    if kwargs.pop("db", 0) != 0:
        raise _bad_parsed(parsed, "Redis Cluster has only database 0")
    if asyncio:
        nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in parsed.hosts]
        return AsyncCluster(startup_nodes=nodes, **kwargs)
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in parsed.hosts]
    return Cluster(startup_nodes=nodes, **kwargs)


def _sentinel(parsed: ParsedURL, asyncio: bool, options: dict):
    service, db = _service_and_db(parsed)
    kwargs = {**options, **parsed.options}
    kwargs["db"] = kwargs.get("db", db)
    sentinel_kwargs = kwargs.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:  # by default the sentinels share the credentials
        shared = (*SENTINEL_SHARED_OPTIONS, "username", "password")
        sentinel_kwargs = {k: kwargs[k] for k in shared if k in kwargs}
    module = redis.asyncio.sentinel if asyncio else redis.sentinel
    sentinel = module.Sentinel(parsed.hosts, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(service, **kwargs)


def _service_and_db(parsed: ParsedURL) -> tuple[str, int]:
    if not parsed.path:
        raise _bad_parsed(parsed, "no service name (the path names the master)")
    if len(parsed.path) > 2:
        raise _bad_parsed(parsed, "the path must be /service_name[/db]")
    db = parsed.path[1] if len(parsed.path) == 2 else "0"
    if not db.isdigit():
        raise _bad_parsed(parsed, f"the database must be a number, not {db!r}")
    return parsed.path[0], int(db)


def _bad_parsed(parsed: ParsedURL, problem: str) -> ImproperlyConfigured:
    hosts = ",".join(f"{h}:{p}" for h, p in parsed.hosts)
    return _bad(f"{parsed.scheme}://{hosts}/{'/'.join(parsed.path)}", problem)


# -- scripts on any topology ---------------------------------------------------


def evalsha_each(client, source: str, calls: list[tuple[list, list]]) -> list:
    """Run one script once per (keys, args); the replies or errors, in order.

    Pipelined on one server. A Redis Cluster pipeline cannot carry EVALSHA,
    so on a cluster each call goes alone to its slot's node, loading the
    script there after NOSCRIPT.
    """
    sha = client.script_load(source)
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)
    return [_evalsha_alone(client, sha, source, keys, args) for keys, args in calls]


def _evalsha_alone(client, sha: str, source: str, keys: list, args: list):
    try:
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # e.g. a replica promoted since the load
            client.script_load(source)
            return client.evalsha(sha, len(keys), *keys, *args)
    except RedisError as exc:
        return exc
