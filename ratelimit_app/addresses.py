"""The client's IP address: REMOTE_ADDR or trusted proxies' X-Forwarded-For, grouped.

``X-Forwarded-For`` is read only when ``RATELIMIT["TRUSTED_PROXIES"]`` says
which proxies to believe, right to left: each proxy appends the address it
received the request from, so only the entries that trusted proxies wrote
are true; anything to their left may come from the client.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cache, lru_cache

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from . import conf

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = "HTTP_X_FORWARDED_FOR"
# The longest textual IPv6 address (with an IPv4 tail, a port and a zone)
# plus some spaces; anything longer is no address and stays out of the caches.
LONGEST_ADDRESS = 64
# Entries of X-Forwarded-For examined at most, right to left: a longer chain
# of trusted proxies is treated as malformed (REMOTE_ADDR is used).
MAX_HOPS = 32


@dataclass(frozen=True)
class AddressSettings:
    """TRUSTED_PROXIES, IPV4_PREFIX and IPV6_PREFIX, validated."""

    hops: int  # a count of proxies in front of Django; 0 with networks
    networks: tuple[Network, ...]  # the trusted proxies' networks
    ipv4_prefix: int
    ipv6_prefix: int

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


# -- settings ----------------------------------------------------------------------


@cache
def address_settings() -> AddressSettings:
    """The validated settings; ImproperlyConfigured says what to fix."""
    hops, networks = _trusted_proxies(conf.get("TRUSTED_PROXIES"))
    return AddressSettings(
        hops,
        networks,
        _prefix("IPV4_PREFIX", conf.get("IPV4_PREFIX"), 32),
        _prefix("IPV6_PREFIX", conf.get("IPV6_PREFIX"), 128),
    )


conf.on_change(address_settings.cache_clear)

TRUSTED_PROXIES_ADVICE = (
    "use the number of proxies in front of Django (e.g. 1 behind one load "
    "balancer), or a list of the proxies' addresses or networks (e.g. "
    "['10.0.0.0/8']); 0 or [] ignores X-Forwarded-For and uses REMOTE_ADDR."
)


def _trusted_proxies(value: object) -> tuple[int, tuple[Network, ...]]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, ()
    if not isinstance(value, list | tuple):
        raise _invalid("TRUSTED_PROXIES", value, TRUSTED_PROXIES_ADVICE)
    return 0, tuple(_network(entry) for entry in value)


def _network(entry: object) -> Network:
    try:
        if not isinstance(entry, str):
            raise ValueError(entry)
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"RATELIMIT['TRUSTED_PROXIES'] lists {entry!r}, which is not an IP "
            "address or network: use strings such as '10.0.0.0/8', "
            "'192.0.2.10' or '2001:db8::/32'."
        ) from None


def _prefix(name: str, value: object, bits: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= bits:
        return value
    example = "32 counts each address, 24 a /24" if bits == 32 else "64 (the default)"
    raise _invalid(
        name, value, f"use a prefix length from 1 to {bits}, e.g. {example}."
    )


def _invalid(name: str, value: object, advice: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"RATELIMIT[{name!r}] = {value!r}: {advice}")


# -- parsing -----------------------------------------------------------------------


def parse_address(text: object) -> Address | None:
    """An address from REMOTE_ADDR or one X-Forwarded-For entry; None if malformed.

    Accepts surrounding spaces, a port (``192.0.2.7:443``, ``[2001:db8::1]:443``),
    a zone (dropped) and IPv4-mapped IPv6 (read as the IPv4 address).
    """
    if not isinstance(text, str) or len(text) > LONGEST_ADDRESS:
        return None  # long input stays out of the cache
    return _parse_address(text)


@lru_cache(maxsize=8192)
def _parse_address(text: str) -> Address | None:
    text = _without_port(text.strip()).partition("%")[0]  # no zone: fe80::1%eth0
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _without_port(text: str) -> str:
    if text.startswith("["):  # [2001:db8::1]:443
        host, bracket, _ = text[1:].partition("]")
        return host if bracket else text
    if text.count(":") == 1:  # 192.0.2.7:443; IPv6 has at least two colons
        return text.partition(":")[0]
    return text


# -- the client --------------------------------------------------------------------


# Where a request keeps its client address once found: several policies and
# the log line ask for it during one request.
_CACHED = "_ratelimit_client_address"


def client_address(request: HttpRequest) -> Address | None:
    """The client's own address (not grouped); None when it cannot be known."""
    try:
        return request.__dict__[_CACHED]
    except KeyError:
        address = request.__dict__[_CACHED] = _find_client_address(request)
        return address


def _find_client_address(request: HttpRequest) -> Address | None:
    config = address_settings()
    remote = parse_address(request.META.get("REMOTE_ADDR"))
    if not (config.hops or config.networks):
        return remote
    if config.networks and (remote is None or not config.trusts(remote)):
        return remote  # not from a trusted proxy: its header may be forged
    header = request.META.get(FORWARDED_FOR)
    if not isinstance(header, str) or not header.strip():
        return remote
    if config.hops:
        return _nth_from_right(header, config.hops) or remote
    return _first_untrusted(header, config) or remote


def _nth_from_right(header: str, hops: int) -> Address | None:
    """The entry the outermost of ``hops`` proxies appended; None if too short."""
    entries = header.rsplit(",", hops)
    if len(entries) < hops:
        return None
    return parse_address(entries[-hops])


def _first_untrusted(header: str, config: AddressSettings) -> Address | None:
    """Right to left, skipping trusted proxies; when every entry is trusted,
    the leftmost (a client inside the trusted networks). None if malformed."""
    address = None
    for entry in reversed(header.rsplit(",", MAX_HOPS)):
        address = parse_address(entry)
        if address is None or not config.trusts(address):
            return address
    return address


def client_network(request: HttpRequest) -> str | None:
    """The client's address grouped by IPV4_PREFIX / IPV6_PREFIX, as text.

    ``192.0.2.7`` (a whole /32), ``192.0.2.0/24``, ``2001:db8:1:2::/64``.
    Kept on the request like the address: every ip-keyed policy asks.
    """
    found = request.__dict__.get(_CACHED_NETWORK, _UNKNOWN)
    if found is _UNKNOWN:
        found = request.__dict__[_CACHED_NETWORK] = _find_client_network(request)
    return found


_CACHED_NETWORK = "_ratelimit_client_network"
_UNKNOWN = object()


def _find_client_network(request: HttpRequest) -> str | None:
    config = address_settings()
    if not (config.hops or config.networks):  # REMOTE_ADDR alone decides
        remote = request.META.get("REMOTE_ADDR")
        if isinstance(remote, str) and len(remote) <= LONGEST_ADDRESS:
            return _remote_network(remote, config.ipv4_prefix, config.ipv6_prefix)
    address = client_address(request)
    if address is None:
        return None
    return group(address, config.ipv4_prefix, config.ipv6_prefix)


# By the REMOTE_ADDR text: hashing a str is done in C, an address object's
# hash runs Python code, and this is asked for every ip-keyed request.
@lru_cache(maxsize=8192)
def _remote_network(remote: str, ipv4_prefix: int, ipv6_prefix: int) -> str | None:
    address = _parse_address(remote)
    return None if address is None else group(address, ipv4_prefix, ipv6_prefix)


@lru_cache(maxsize=8192)
def group(address: Address, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The address's network at the prefix; the address alone for a full prefix."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    if prefix == address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
