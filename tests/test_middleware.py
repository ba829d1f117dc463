"""RateLimitMiddleware end to end: Django test client, real Redis, real database."""

from __future__ import annotations

import logging
import math

import pytest
from django.contrib.auth.models import Group

from ratelimit_app.headers import add_missing, whole_seconds
from ratelimit_app.models import Exemption, Policy, Tier
from ratelimit_app.signals import rate_limited
from ratelimit_app.snapshot import policy_by_name
from tests.policy_helpers import policies, statuses

pytestmark = pytest.mark.django_db


def test_a_path_glob_policy_blocks_after_its_limit(client):
    with policies({"name": "glob", "rate": "2/m", "path": "/api/*"}):
        assert statuses(client, "/api/items/", 2) == [200, 200]
        assert statuses(client, "/api/items/7/", 1) == [429]  # * spans "/"
        assert statuses(client, "/plain/", 3) == [200, 200, 200]


@pytest.mark.parametrize(
    "matcher",
    [
        {"url_name": "item"},
        {"view": "tests.views.plain"},
        {"path": "/api/items/*/"},
        {"path_regex": r"^/api/items/\d+/$"},
    ],
)
def test_each_route_matcher(client, matcher):
    with policies({"name": "matcher", "rate": "1/m", **matcher}):
        assert statuses(client, "/api/items/3/", 2) == [200, 429]


def test_a_database_policy_applies_to_a_path_already_seen_unmatched(
    client, django_capture_on_commit_callbacks
):
    """Route matches are remembered per snapshot: a new one is matched afresh."""
    with policies({"name": "elsewhere", "rate": "5/m", "path": "/api/*"}):
        assert statuses(client, "/plain/", 2) == [200, 200]
        assert "RateLimit" not in client.get("/plain/").headers
        with django_capture_on_commit_callbacks(execute=True):
            Policy.objects.create(name="late", rate="1/m", path="/plain/")
        assert statuses(client, "/plain/", 2) == [200, 429]
        assert statuses(client, "/api/items/", 1) == [200]


def test_a_route_matcher_sees_each_method_and_very_long_paths(client):
    long_path = "/api/" + "x" * 600 + "/"
    with policies(
        {"name": "posts", "rate": "1/m", "path": "/api/*", "methods": "POST"},
        {"name": "wide", "rate": "2/m", "path_regex": "^/api/x+/$"},
    ):
        assert statuses(client, long_path, 3) == [404, 404, 429]  # no such view
        assert client.post("/api/items/").status_code == 200
        assert client.post("/api/items/").status_code == 429
        assert "RateLimit" not in client.get("/api/items/").headers  # a GET


def test_url_name_and_path_matchers_together(client):
    """A snapshot with a url_name matcher resolves each request."""
    with policies(
        {"name": "named", "rate": "1/m", "url_name": "item"},
        {"name": "glob", "rate": "5/m", "path": "/api/*"},
    ):
        assert statuses(client, "/api/items/3/", 2) == [200, 429]
        response = client.get("/api/items/")
        assert response.headers["RateLimit-Policy"] == '"glob";q=5;w=60'


def test_the_url_name_matcher_does_not_match_other_names(client):
    with policies({"name": "named", "rate": "1/m", "url_name": "item"}):
        assert statuses(client, "/api/items/", 3) == [200, 200, 200]


def test_method_filters(client):
    with policies(
        {"name": "posts", "rate": "1/m", "path": "/plain/", "methods": "POST"}
    ):
        assert statuses(client, "/plain/", 3) == [200, 200, 200]
        assert [client.post("/plain/").status_code for _ in range(2)] == [200, 429]


def test_every_matching_policy_applies_and_nothing_is_consumed_when_one_blocks(client):
    with policies(
        {"name": "wide", "rate": "10/m", "path": "/*", "priority": 20},
        {"name": "narrow", "rate": "1/m", "path": "/plain/", "priority": 10},
    ):
        assert statuses(client, "/plain/", 3) == [200, 429, 429]
        response = client.get("/api/items/")
        # "wide" counted once (the first request), not for the blocked ones.
        assert response.headers["RateLimit"] == '"wide";r=8;t=12'


def test_priority_orders_the_headers(client):
    with policies(
        {"name": "second", "rate": "5/m", "path": "/plain/", "priority": 2},
        {"name": "first", "rate": "9/m", "path": "/plain/", "priority": 1},
    ):
        response = client.get("/plain/")
    assert response.headers["RateLimit-Policy"] == '"first";q=9;w=60, "second";q=5;w=60'


def test_disabled_policies_do_not_apply(client):
    with policies({"name": "off", "rate": "1/m", "path": "/plain/", "enabled": False}):
        assert statuses(client, "/plain/", 3) == [200, 200, 200]


def test_the_global_switch_turns_limits_off(client):
    with policies({"name": "on", "rate": "1/m", "path": "/plain/"}, ENABLED=False):
        assert statuses(client, "/plain/", 3) == [200, 200, 200]


def test_options_and_exempt_paths_are_not_counted(client):
    with policies(
        {"name": "all", "rate": "1/m", "path": "/*"}, EXEMPT_PATHS=["/health/"]
    ):
        assert statuses(client, "/health/", 3) == [200, 200, 200]
        assert [client.options("/plain/").status_code for _ in range(3)] == [200] * 3
        assert statuses(client, "/plain/", 2) == [200, 429]


def test_shadow_mode_never_blocks_but_reports(client, caplog):
    received = []

    def listener(sender, request, decision, shadow, **kwargs):
        received.append((sender, shadow, decision.allowed))

    rate_limited.connect(listener)
    try:
        with (
            policies(
                {"name": "watch", "rate": "1/m", "path": "/plain/", "mode": "shadow"}
            ),
            caplog.at_level(logging.INFO, logger="ratelimit_app"),
        ):
            responses = [client.get("/plain/") for _ in range(3)]
    finally:
        rate_limited.disconnect(listener)
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "RateLimit" not in responses[2].headers  # shadow policies stay silent
    outcome = responses[2].wsgi_request.ratelimit
    assert [(d.allowed, d.shadow) for d in outcome.decisions] == [(False, True)]
    assert received == [("watch", True, False), ("watch", True, False)]
    assert "would block GET by policy 'watch'" in caplog.text


def test_blocks_send_the_rate_limited_signal(client):
    received = []

    def listener(sender, request, decision, shadow, **kwargs):
        received.append((sender, shadow))

    rate_limited.connect(listener)
    try:
        with policies({"name": "signal", "rate": "1/m", "path": "/plain/"}):
            statuses(client, "/plain/", 2)
    finally:
        rate_limited.disconnect(listener)
    assert received == [("signal", False)]


# -- key types ------------------------------------------------------------------


def test_ip_key_counts_each_address(client):
    with policies({"name": "by-ip", "rate": "1/m", "path": "/plain/", "key": "ip"}):
        assert statuses(client, "/plain/", 2, REMOTE_ADDR="192.0.2.1") == [200, 429]
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="192.0.2.2") == [200]


def test_ipv6_clients_are_grouped_by_64(client):
    with policies({"name": "v6", "rate": "1/m", "path": "/plain/"}):
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="2001:db8::1") == [200]
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="2001:db8::ffff") == [429]
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="2001:db8:0:1::1") == [200]


@pytest.mark.parametrize("key", ["user", "user_or_ip"])
def test_user_keys_count_users_and_fall_back_to_the_ip(client, django_user_model, key):
    alice = django_user_model.objects.create_user("alice", password="pw")
    bob = django_user_model.objects.create_user("bob", password="pw")
    with policies({"name": f"by-{key}", "rate": "1/m", "path": "/plain/", "key": key}):
        client.force_login(alice)
        assert statuses(client, "/plain/", 2) == [200, 429]
        client.force_login(bob)
        assert statuses(client, "/plain/", 1) == [200]
        client.logout()
        assert statuses(client, "/plain/", 2) == [200, 429]  # anonymous: by IP


def test_header_key_and_a_missing_header_shares_one_bucket(client):
    with policies(
        {
            "name": "by-header",
            "rate": "1/m",
            "path": "/plain/",
            "key": "header:x-api-key",
        }
    ):
        assert statuses(client, "/plain/", 2, HTTP_X_API_KEY="a") == [200, 429]
        assert statuses(client, "/plain/", 1, HTTP_X_API_KEY="b") == [200]
        assert statuses(client, "/plain/", 1) == [200]
        assert statuses(client, "/plain/", 1, REMOTE_ADDR="192.0.2.9") == [429]


def test_get_and_post_parameter_keys(client):
    with policies(
        {
            "name": "by-get",
            "rate": "1/m",
            "path": "/plain/",
            "key": "get:q",
            "methods": "GET",
        },
        {
            "name": "by-post",
            "rate": "1/m",
            "path": "/plain/",
            "key": "post:u",
            "methods": "POST",
        },
    ):
        assert [client.get("/plain/", {"q": x}).status_code for x in "aab"] == [
            200,
            429,
            200,
        ]
        posts = [client.post("/plain/", {"u": x}).status_code for x in "xxy"]
        assert posts == [200, 429, 200]


def test_an_unparsable_body_counts_as_missing_not_as_an_error(client):
    with policies(
        {"name": "bad-body", "rate": "1/m", "path": "/plain/", "key": "post:u"}
    ):
        bad = {"content_type": "multipart/form-data; boundary=x", "data": b"garbage"}
        assert [client.post("/plain/", **bad).status_code for _ in range(2)] == [
            200,
            429,
        ]


def test_session_key(client):
    with policies(
        {"name": "by-session", "rate": "1/m", "path": "/plain/", "key": "session"}
    ):
        session = client.session
        session["seen"] = True
        session.save()
        assert statuses(client, "/plain/", 2) == [200, 429]


def test_a_dotted_path_key(client):
    with policies(
        {
            "name": "by-tenant",
            "rate": "1/m",
            "path": "/plain/",
            "key": "tests.views.user_tier_key",
        }
    ):
        assert statuses(client, "/plain/", 2, HTTP_X_TENANT="t1") == [200, 429]
        assert statuses(client, "/plain/", 1, HTTP_X_TENANT="t2") == [200]


# -- sources, exemptions, tiers -------------------------------------------------


def test_settings_override_code_and_the_database_overrides_both(
    client, django_capture_on_commit_callbacks
):
    def effective():
        policy = policy_by_name("code-limited")
        return policy.spec.source, policy.spec.rate

    assert effective() == ("code", "2/m")
    assert statuses(client, "/code/", 3) == [200, 200, 429]
    with policies({"name": "code-limited", "rate": "3/m", "algorithm": "fixed_window"}):
        assert effective() == ("settings", "3/m")
        assert statuses(client, "/code/", 4) == [200, 200, 200, 429]
        with django_capture_on_commit_callbacks(execute=True):
            Policy.objects.create(
                name="code-limited", rate="5/m", algorithm="fixed_window"
            )
        assert effective() == ("db", "5/m")
        assert statuses(client, "/code/", 3) == [200, 200, 429]  # 3 used of 5


def test_exemptions_by_network_staff_user_and_group(
    client, django_user_model, django_capture_on_commit_callbacks
):
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    member = django_user_model.objects.create_user("member", password="pw")
    partners = Group.objects.create(name="partners")
    member.groups.add(partners)
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(name="exempting", rate="1/m", path="/plain/")
        Exemption.objects.create(policy=policy, network="198.51.100.0/24")
        Exemption.objects.create(policy=policy, staff=True)
        Exemption.objects.create(policy=policy, group=partners)
    assert statuses(client, "/plain/", 3, REMOTE_ADDR="198.51.100.7") == [200] * 3
    client.force_login(staff)
    assert statuses(client, "/plain/", 3) == [200] * 3
    client.force_login(member)
    assert statuses(client, "/plain/", 3) == [200] * 3
    client.logout()
    assert statuses(client, "/plain/", 2) == [200, 429]


def test_a_tier_gives_group_members_their_own_rate(
    client, django_user_model, django_capture_on_commit_callbacks
):
    gold = Group.objects.create(name="gold")
    rich = django_user_model.objects.create_user("rich", password="pw")
    rich.groups.add(gold)
    poor = django_user_model.objects.create_user("poor", password="pw")
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(
            name="tiered", rate="1/m", path="/plain/", key="user"
        )
        Tier.objects.create(policy=policy, group=gold, rate="3/2m")
    client.force_login(rich)
    assert client.get("/plain/").headers["RateLimit-Policy"] == '"tiered";q=3;w=120'
    assert statuses(client, "/plain/", 3) == [200, 200, 429]
    client.force_login(poor)
    assert statuses(client, "/plain/", 2) == [200, 429]


# -- responses --------------------------------------------------------------------


def test_headers_are_byte_exact(client):
    with policies(
        {"name": "api", "rate": "2/m", "path": "/plain/", "algorithm": "token_bucket"},
        {
            "name": "daily",
            "rate": "100/d",
            "path": "/plain/",
            "algorithm": "sliding_window_log",
            "priority": 200,
        },
    ):
        first = client.get("/plain/")
        client.get("/plain/")
        blocked = client.get("/plain/")
    assert first.headers["RateLimit-Policy"] == '"api";q=2;w=60, "daily";q=100;w=86400'
    assert first.headers["RateLimit"] == '"api";r=1;t=30, "daily";r=99;t=86400'
    assert "Retry-After" not in first.headers
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"] == "30"
    assert blocked.headers["RateLimit"] == '"api";r=0;t=60, "daily";r=98;t=86400'
    assert "X-RateLimit-Limit" not in blocked.headers


def test_a_header_the_view_sets_itself_is_kept_whatever_its_case(client):
    with policies({"name": "own", "rate": "2/m", "path": "/own-header/"}):
        response = client.get("/own-header/")
    assert response.headers["RateLimit"] == '"upstream";r=5;t=1'
    assert response.headers["RateLimit-Policy"] == '"own";q=2;w=60'
    # Written into the header store as Django writes it: serialised as named.
    serialized = response.serialize_headers().decode()
    assert 'RateLimit-Policy: "own";q=2;w=60' in serialized.splitlines()
    assert 'ratelimit: "upstream";r=5;t=1' in serialized.splitlines()


def test_headers_objects_other_than_djangos_get_them_through_their_own_api():
    theirs = {"RateLimit": "theirs"}
    add_missing(theirs, {"RateLimit": "ours", "RateLimit-Policy": '"p";q=1;w=1'})
    assert theirs == {"RateLimit": "theirs", "RateLimit-Policy": '"p";q=1;w=1'}


def test_legacy_headers_behind_a_setting(client):
    with policies(
        {
            "name": "legacy",
            "rate": "2/m",
            "path": "/plain/",
            "algorithm": "token_bucket",
        },
        LEGACY_HEADERS=True,
    ):
        response = client.get("/plain/")
    assert (
        response.headers["X-RateLimit-Limit"],
        response.headers["X-RateLimit-Remaining"],
        response.headers["X-RateLimit-Reset"],
    ) == ("2", "1", "30")


def test_json_clients_get_a_json_429(client):
    with policies(
        {
            "name": "json",
            "rate": "1/m",
            "path": "/plain/",
            "algorithm": "fixed_window",
            "message": "Easy there",
        }
    ):
        client.get("/plain/")
        response = client.get("/plain/", HTTP_ACCEPT="application/json")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["detail"] == "Easy there" and body["policy"] == "json"
    assert body["retry_after"] == int(response["Retry-After"]) >= 1


def test_browsers_get_an_html_429_with_the_policy_status(client):
    with policies(
        {"name": "html", "rate": "1/m", "path": "/plain/", "status_code": 503}
    ):
        client.get("/plain/")
        response = client.get("/plain/", HTTP_ACCEPT="text/html,*/*")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert b"<h1>Rate limit exceeded</h1>" in response.content
    assert b"try again in 60 seconds" in response.content


def test_a_custom_view_renders_blocks(client):
    with policies(
        {"name": "teapot", "rate": "1/m", "path": "/plain/"},
        VIEW="tests.views.custom_blocked",
    ):
        client.get("/plain/")
        response = client.get("/plain/")
    assert (response.status_code, response.content) == (418, b"slow down: teapot")
    assert response.headers["Retry-After"] == "60"


def test_a_cost_above_the_capacity_has_no_retry_after(client):
    with policies({"name": "huge", "rate": "2/m", "path": "/plain/", "cost": 3}):
        response = client.get("/plain/")
    assert response.status_code == 429 and "Retry-After" not in response.headers


# -- async -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_async_views_go_through_the_async_middleware(async_client):
    with policies({"name": "async-glob", "rate": "2/m", "path": "/async/"}):
        codes = [(await async_client.get("/async/")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


@pytest.mark.django_db(transaction=True)
async def test_async_middleware_reads_the_user_in_a_thread(
    async_client, django_user_model
):
    from asgiref.sync import sync_to_async

    user = await sync_to_async(django_user_model.objects.create_user)(
        "asyncuser", password="pw"
    )
    await async_client.aforce_login(user)
    with policies(
        {"name": "async-user", "rate": "1/m", "path": "/async/", "key": "user"}
    ):
        codes = [(await async_client.get("/async/")).status_code for _ in range(2)]
    assert codes == [200, 429]


def test_an_exemption_for_one_address_matches_that_client_not_its_group(
    client, django_capture_on_commit_callbacks
):
    """Clients are counted per /64 (IPv6), but an exemption names an address."""
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(name="one-host", rate="1/m", path="/plain/")
        Exemption.objects.create(policy=policy, network="2001:db8::5")
    exempt = {"REMOTE_ADDR": "2001:db8::5"}
    neighbour = {"REMOTE_ADDR": "2001:db8::6"}  # same /64, not exempt
    assert statuses(client, "/plain/", 3, **exempt) == [200] * 3
    assert statuses(client, "/plain/", 2, **neighbour) == [200, 429]


@pytest.mark.parametrize(
    ("seconds", "whole"),
    [
        (0, 0),
        (0.0004, 0),  # under half a millisecond: float noise, not time
        (0.0005, 1),  # half a millisecond and more: a millisecond to wait
        (0.001, 1),
        (1.0, 1),
        (1.0000000001, 1),
        (2.9999999, 3),
        (1.001, 2),
        (16.4, 17),
        (3600, 3600),
    ],
)
def test_whole_seconds_round_up_from_the_nearest_millisecond(seconds, whole):
    assert whole_seconds(seconds) == whole


def test_whole_seconds_of_every_millisecond_is_its_ceiling_in_seconds():
    """Reset and retry times are whole milliseconds divided by 1000."""
    for ms in range(0, 200_000, 7):
        assert whole_seconds(ms / 1000) == math.ceil(ms / 1000), ms
