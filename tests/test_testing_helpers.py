"""The helpers in ratelimit_app.testing that projects use in their own tests."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import RequestFactory, TestCase, override_settings

from ratelimit_app import conf
from ratelimit_app.snapshot import snapshot_keys
from ratelimit_app.testing import (
    limits_disabled,
    override_policy,
    reset_all,
    reset_counters,
)
from tests.policy_helpers import policies, statuses

pytestmark = pytest.mark.django_db

PLAIN = {"name": "plain-limited", "rate": "2/m", "path": "/plain/"}


@pytest.fixture(autouse=True)
def own_prefix(key_prefix):
    """Counters of this test only (the fixture deletes them afterwards)."""
    with override_settings(RATELIMIT={**settings.RATELIMIT, "KEY_PREFIX": key_prefix}):
        yield key_prefix


# -- limits_disabled ------------------------------------------------------------


def test_limits_disabled_lets_a_limited_view_pass(client, own_prefix):
    assert statuses(client, "/code/", 3) == [200, 200, 429]
    with limits_disabled():
        assert statuses(client, "/code/", 3) == [200, 200, 200]
        assert conf.get("KEY_PREFIX") == own_prefix  # the other keys are kept
    assert statuses(client, "/code/", 1) == [429]


def test_limits_disabled_covers_middleware_policies(client):
    with policies(PLAIN), limits_disabled():
        assert statuses(client, "/plain/", 4) == [200, 200, 200, 200]


@limits_disabled()
def test_limits_disabled_as_a_decorator(client):
    assert statuses(client, "/code/", 4) == [200, 200, 200, 200]


@limits_disabled()
async def test_limits_disabled_on_an_async_test(async_client):
    codes = [(await async_client.get("/async-code/")).status_code for _ in range(3)]
    assert codes == [200, 200, 200]


@limits_disabled()
class LimitsDisabledOnATestCase(TestCase):
    def test_every_request_passes(self):
        codes = [self.client.get("/code/").status_code for _ in range(4)]
        self.assertEqual(codes, [200, 200, 200, 200])


# -- override_policy ----------------------------------------------------------------


def test_override_policy_changes_a_settings_policy_rate(client):
    with policies(PLAIN):
        with override_policy("plain-limited", rate="4/m"):
            assert statuses(client, "/plain/", 5) == [200, 200, 200, 200, 429]
        # Back to 2/m; the counters are kept (keys name the policy, not the rate).
        assert statuses(client, "/plain/", 1) == [429]


def test_override_policy_changes_a_code_default_and_keeps_its_other_fields(client):
    with override_policy("code-limited", rate="3/m"):
        assert statuses(client, "/code/", 4) == [200, 200, 200, 429]
    with override_policy("failed-logins", rate="1/m"):
        (entry,) = settings.RATELIMIT["POLICIES"]
        assert entry["methods"] == "POST"  # from @rate_limit(methods=["POST"])
        assert client.post("/login/", {"password": "wrong"}).status_code == 401
        assert client.post("/login/", {"password": "wrong"}).status_code == 429


def test_override_policy_can_add_a_routed_policy(client):
    with override_policy("fresh", rate="1/m", path="/plain/"):
        assert statuses(client, "/plain/", 2) == [200, 429]
    assert statuses(client, "/plain/", 2) == [200, 200]


def test_override_policy_refuses_invalid_fields_on_entry():
    before = settings.RATELIMIT
    with (
        pytest.raises(ValueError, match=r"override_policy.*Invalid rate 'often'"),
        override_policy("plain-limited", rate="often", path="/plain/"),
    ):
        pass
    with pytest.raises(ValueError, match="missing required field"):
        override_policy("no-rate", path="/plain/").enable()
    assert before == settings.RATELIMIT


def test_override_policy_and_limits_disabled_nest(client):
    with override_policy("fresh", rate="1/m", path="/plain/"):
        with limits_disabled():
            assert statuses(client, "/plain/", 2) == [200, 200]
        assert statuses(client, "/plain/", 2) == [200, 429]


@override_policy("code-limited", rate="1/m")
def test_override_policy_as_a_decorator(client):
    assert statuses(client, "/code/", 2) == [200, 429]


# -- reset_counters and reset_all -----------------------------------------------------


def test_reset_counters_lets_a_blocked_client_pass(client):
    assert statuses(client, "/code/", 3) == [200, 200, 429]
    reset_counters("code-limited", "127.0.0.1")
    assert statuses(client, "/code/", 3) == [200, 200, 429]


def test_reset_counters_with_a_request_uses_the_policys_key(client):
    with policies(PLAIN):
        assert statuses(client, "/plain/", 3) == [200, 200, 429]
        reset_counters("plain-limited", RequestFactory().get("/plain/"))
        assert statuses(client, "/plain/", 1) == [200]


def test_reset_counters_for_a_signed_in_user(client):
    user = get_user_model().objects.create_user("ada", password="pw")
    client.force_login(user)
    by_user = {"name": "by-user", "rate": "1/m", "path": "/plain/", "key": "user"}
    with policies(by_user):
        assert statuses(client, "/plain/", 2) == [200, 429]
        reset_counters("by-user", "127.0.0.1")  # not this client's identity
        assert statuses(client, "/plain/", 1) == [429]
        reset_counters("by-user", f"user:{user.pk}")
        assert statuses(client, "/plain/", 1) == [200]


def test_reset_counters_by_request_needs_a_policy_in_force():
    with pytest.raises(LookupError, match="no policy named 'nope'"):
        reset_counters("nope", RequestFactory().get("/"))


def test_reset_all_deletes_every_counter_and_keeps_the_policy_snapshot(
    client, redis_client
):
    with policies(PLAIN):
        assert statuses(client, "/plain/", 3) == [200, 200, 429]
        assert statuses(client, "/code/", 3) == [200, 200, 429]
        version_key, _ = snapshot_keys()
        assert reset_all() >= 2
        assert redis_client.exists(version_key)
        assert statuses(client, "/plain/", 1) == [200]
        assert statuses(client, "/code/", 1) == [200]


def test_reset_all_leaves_other_prefixes_alone(client, redis_client, own_prefix):
    other = f"{own_prefix}other:"
    redis_client.set(other + "x", 1, ex=60)
    assert statuses(client, "/code/", 3) == [200, 200, 429]
    assert reset_all(prefix=own_prefix[:4] + "*") == 0  # a prefix is not a glob
    assert statuses(client, "/code/", 1) == [429]
    reset_all(prefix=conf.key_prefix())
    assert redis_client.get(other + "x") == b"1"
    assert statuses(client, "/code/", 1) == [200]
