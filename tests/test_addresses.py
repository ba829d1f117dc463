"""Client addresses: trusted proxies, X-Forwarded-For right to left, grouping."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings

from ratelimit_app.addresses import MAX_HOPS, parse_address
from ratelimit_app.checks import TAG, Codes
from ratelimit_app.identity import MISSING, client_ip
from tests.policy_helpers import policies, statuses

PROXY = "10.0.0.1"  # REMOTE_ADDR of requests that come through a proxy
NETS = ["10.0.0.0/8"]
LONG_SPOOF = "203.0.113.66, " * 5000  # ~75 KB a client put in front


def ip_of(remote_addr=PROXY, forwarded=None, **ratelimit) -> str:
    meta = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    request = RequestFactory().get("/", **meta)
    with override_settings(RATELIMIT={**settings.RATELIMIT, **ratelimit}):
        return client_ip(request)


@pytest.mark.parametrize(
    ("trusted", "remote_addr", "forwarded", "expected"),
    [
        # No trusted proxies (the default): the header is never read.
        (0, "192.0.2.7", "198.51.100.1", "192.0.2.7"),
        ([], "192.0.2.7", "198.51.100.1", "192.0.2.7"),
        # A count: the Nth entry from the right; a client's entries are left of it.
        (1, PROXY, "198.51.100.1", "198.51.100.1"),
        (1, PROXY, "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        (2, PROXY, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (1, PROXY, LONG_SPOOF + "198.51.100.1", "198.51.100.1"),
        (1, "", "198.51.100.1", "198.51.100.1"),  # proxy on a Unix socket
        # Short, empty, missing or malformed: REMOTE_ADDR.
        (2, PROXY, "198.51.100.1", PROXY),
        (1, PROXY, "", PROXY),
        (1, PROXY, None, PROXY),
        (1, PROXY, "not-an-ip", PROXY),
        (2, PROXY, "bad, 10.0.0.2", PROXY),
        # Networks: skip trusted entries right to left; the first other is the client.
        (NETS, PROXY, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (NETS, PROXY, "198.51.100.1,10.9.9.9 , 10.0.0.2", "198.51.100.1"),
        (NETS, PROXY, LONG_SPOOF + "198.51.100.1", "198.51.100.1"),
        (["10.0.0.1", "10.0.0.2/32"], PROXY, "198.51.100.1, 10.0.0.2", "198.51.100.1"),
        # ... but only from a trusted REMOTE_ADDR: a direct client may forge it.
        (NETS, "203.0.113.5", "198.51.100.1", "203.0.113.5"),
        (NETS, "", "198.51.100.1", MISSING),
        # Every entry trusted: the leftmost (a client inside the networks).
        (NETS, PROXY, "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # Malformed before an untrusted entry, or too many hops: REMOTE_ADDR.
        (NETS, PROXY, "198.51.100.1, junk, 10.0.0.2", PROXY),
        (NETS, PROXY, ", ".join(["10.0.0.9"] * (MAX_HOPS + 2)), PROXY),
        # Forms proxies write: ports, brackets, IPv4-mapped IPv6, IPv6 zones.
        (1, PROXY, "198.51.100.1:8080", "198.51.100.1"),
        (1, PROXY, "[2001:db8:1:2::7]:443", "2001:db8:1:2::/64"),
        (1, PROXY, "::ffff:198.51.100.1", "198.51.100.1"),
        (1, PROXY, "fe80::1%eth0", "fe80::/64"),
    ],
)
def test_the_client_is_read_right_to_left_through_trusted_proxies(
    trusted, remote_addr, forwarded, expected
):
    assert ip_of(remote_addr, forwarded, TRUSTED_PROXIES=trusted) == expected


@pytest.mark.parametrize(
    ("prefixes", "remote_addr", "expected"),
    [
        ({}, "192.0.2.7", "192.0.2.7"),
        ({}, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ({"IPV4_PREFIX": 24}, "192.0.2.7", "192.0.2.0/24"),
        ({"IPV4_PREFIX": 24}, "2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ({"IPV6_PREFIX": 56}, "2001:db8:1:2:3:4:5:6", "2001:db8:1::/56"),
        ({"IPV6_PREFIX": 128}, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        ({"IPV6_PREFIX": 48}, "::ffff:192.0.2.9", "192.0.2.9"),  # IPv4 rules
    ],
)
def test_addresses_are_grouped_by_the_configured_prefixes(
    prefixes, remote_addr, expected
):
    assert ip_of(remote_addr, **prefixes) == expected


def test_clients_of_one_ipv6_64_share_a_bucket():
    one, other = "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"
    assert ip_of(one) == ip_of(other) != ip_of("2001:db8:1:3::1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7 ", "192.0.2.7"),
        ("192.0.2.7:80", "192.0.2.7"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("[2001:db8::1", None),
        ("2001:db8::1", "2001:db8::1"),
        ("", None),
        ("unknown", None),  # what some proxies write for a hidden client
        ("192.0.2.7, 10.0.0.1", None),
        ("x" * 70_000, None),
        (None, None),
        (b"192.0.2.7", None),
    ],
)
def test_parse_address(text, expected):
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


# -- spoofing through the whole stack ----------------------------------------------

LIMITED = {"name": "per-ip", "rate": "1/m", "path": "/plain/", "key": "ip"}
SPOOFS = [
    {"HTTP_X_FORWARDED_FOR": "198.51.100.1"},
    {"HTTP_X_REAL_IP": "198.51.100.2"},
    {"HTTP_X_FORWARDED_FOR": "198.51.100.3", "HTTP_X_REAL_IP": "198.51.100.4"},
    {"HTTP_FORWARDED": "for=198.51.100.5", "HTTP_CLIENT_IP": "198.51.100.6"},
]


@pytest.mark.django_db
def test_spoofed_headers_do_not_change_the_key_without_trusted_proxies(client):
    with policies(LIMITED):
        assert client.get("/plain/", REMOTE_ADDR="192.0.2.7").status_code == 200
        for headers in SPOOFS:
            response = client.get("/plain/", REMOTE_ADDR="192.0.2.7", **headers)
            assert response.status_code == 429, headers


@pytest.mark.django_db
def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(client):
    with policies(LIMITED, TRUSTED_PROXIES=NETS):
        for n in (1, 2):
            forwarded = {"HTTP_X_FORWARDED_FOR": f"198.51.100.{n}"}
            assert statuses(client, "/plain/", 2, REMOTE_ADDR=PROXY, **forwarded) == [
                200,
                429,
            ]
        # The client prepends a fake address: its real one still counts.
        spoofed = {"HTTP_X_FORWARDED_FOR": "203.0.113.9, 198.51.100.1"}
        assert client.get("/plain/", REMOTE_ADDR=PROXY, **spoofed).status_code == 429


# -- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TRUSTED_PROXIES", "10.0.0.0/8", "use the number of proxies in front"),
        ("TRUSTED_PROXIES", -1, "use the number of proxies in front"),
        ("TRUSTED_PROXIES", True, "use the number of proxies in front"),
        ("TRUSTED_PROXIES", 1.5, "use the number of proxies in front"),
        ("TRUSTED_PROXIES", None, "use the number of proxies in front"),
        ("TRUSTED_PROXIES", ["10.0.0.0/33"], "lists '10.0.0.0/33', which is not"),
        ("TRUSTED_PROXIES", ["proxy.internal"], "lists 'proxy.internal'"),
        ("TRUSTED_PROXIES", [10], "lists 10, which is not an IP"),
        ("IPV4_PREFIX", 0, "use a prefix length from 1 to 32"),
        ("IPV4_PREFIX", 33, "use a prefix length from 1 to 32"),
        ("IPV4_PREFIX", "24", "use a prefix length from 1 to 32"),
        ("IPV4_PREFIX", True, "use a prefix length from 1 to 32"),
        ("IPV6_PREFIX", 129, "use a prefix length from 1 to 128"),
        ("IPV6_PREFIX", None, "use a prefix length from 1 to 128"),
    ],
)
def test_bad_address_settings_are_refused_with_the_fix(name, value, message):
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        ip_of("192.0.2.7", **{name: value})
    assert f"RATELIMIT[{name!r}]" in str(raised.value)
    ratelimit = {**settings.RATELIMIT, name: value}
    with override_settings(RATELIMIT=ratelimit):
        found = [m for m in run_checks(tags=[TAG]) if m.id == Codes.INVALID_SETTING]
    assert [m.msg for m in found] == [str(raised.value)]


@pytest.mark.parametrize("trusted", [0, 3, [], ["10.0.0.0/8", "2001:db8::/32"]])
def test_good_address_settings_pass_the_checks(trusted):
    ratelimit = {**settings.RATELIMIT, "TRUSTED_PROXIES": trusted, "IPV4_PREFIX": 24}
    with override_settings(RATELIMIT=ratelimit):
        assert run_checks(tags=[TAG]) == []
