"""Client identities for each key type, including hostile input."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from ratelimit_app.identity import MISSING, check_key, client_ip, identify
from tests.policy_helpers import policies, statuses


@pytest.mark.parametrize(
    ("remote_addr", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        (" 192.0.2.7 ", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.9", "192.0.2.9"),
        ("", MISSING),
        ("not-an-ip", MISSING),
        ("192.0.2.7, 10.0.0.1", MISSING),
        ("x" * 70_000, MISSING),
    ],
)
def test_client_ip(remote_addr, expected):
    request = RequestFactory().get("/", REMOTE_ADDR=remote_addr)
    assert client_ip(request) == expected


def test_a_missing_remote_addr_is_the_shared_missing_bucket():
    request = RequestFactory().get("/")
    del request.META["REMOTE_ADDR"]
    assert client_ip(request) == MISSING


def test_headers_and_parameters():
    factory = RequestFactory()
    request = factory.get("/?q=abc", HTTP_X_API_KEY="k1", CONTENT_TYPE="text/x")
    assert identify("header:x-api-key", request) == "k1"
    assert identify("header:X-Api-Key", request) == "k1"
    assert identify("header:content-type", request) == "text/x"
    assert identify("header:x-missing", request) == MISSING
    assert identify("get:q", request) == "abc"
    assert identify("get:nope", request) == MISSING
    assert identify("post:u", factory.post("/", {"u": "me"})) == "me"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Empty key type"),
        ("   ", "Empty key type"),
        ("cookie:x", "Unknown key type 'cookie:x'"),
        ("header:", "needs a name after the colon"),
        ("nope", "Unknown key type 'nope'"),
        ("no.such.module.func", "not an importable callable"),
        ("tests.views.VALUE_THAT_DOES_NOT_EXIST", "not an importable callable"),
        ("tests.settings.SECRET_KEY", "names str, not a callable"),
    ],
)
def test_bad_key_types_are_explained(key, message):
    with pytest.raises(ValueError, match=message):
        check_key(key)


def test_a_callable_returning_nothing_counts_as_missing():
    request = RequestFactory().get("/")
    assert identify("tests.views.user_tier_key", request) == MISSING


# -- hostile input through the whole stack: a shared bucket, never a 500 ------------

BY_IP = {"name": "by-ip", "rate": "2/m", "path": "/plain/", "key": "ip"}
BY_HEADER = {
    "name": "by-key",
    "rate": "2/m",
    "path": "/plain/",
    "key": "header:x-api-key",
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "remote_addr",
    ["", "   ", "not-an-ip", "999.1.1.1", "\x00\xff", "1.2.3.4, 5.6.7.8", "x" * 70_000],
)
def test_an_empty_or_garbage_remote_addr_counts_in_one_shared_bucket(
    client, remote_addr
):
    with policies(BY_IP):
        assert statuses(client, "/plain/", 2, REMOTE_ADDR=remote_addr) == [200, 200]
        # Another unusable address is the same client: garbage never bypasses.
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="garbage") == [429]
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="192.0.2.7") == [200]


@pytest.mark.django_db
def test_a_missing_remote_addr_counts_in_the_shared_bucket(client):
    with policies(BY_IP):
        assert statuses(client, "/plain/", 2, REMOTE_ADDR="") == [200, 200]
        request_without = client.get("/plain/", REMOTE_ADDR=None)
        assert request_without.status_code == 429


@pytest.mark.django_db
def test_a_missing_header_counts_in_one_shared_bucket(client):
    with policies(BY_HEADER):
        assert statuses(client, "/plain/", 2) == [200, 200]
        assert statuses(client, "/plain/", 1, HTTP_X_API_KEY="") == [429]
        assert statuses(client, "/plain/", 2, HTTP_X_API_KEY="k1") == [200, 200]
        assert statuses(client, "/plain/", 1, HTTP_X_API_KEY="k1") == [429]
        huge = "\udcff\x00" + "v" * 60_000  # odd bytes, any size: its own bucket
        assert statuses(client, "/plain/", 3, HTTP_X_API_KEY=huge) == [200, 200, 429]
