"""@rate_limit on function, class-based and async views."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from ratelimit_app.decorators import rate_limit
from tests.policy_helpers import policies, statuses

pytestmark = pytest.mark.django_db


def test_a_code_policy_blocks_after_its_rate(client):
    assert statuses(client, "/code/", 3) == [200, 200, 429]


def test_a_named_policy_comes_from_settings(client):
    assert statuses(client, "/named/", 3) == [200, 200, 200]  # no such policy yet
    with policies({"name": "named-policy", "rate": "1/m"}):
        assert statuses(client, "/named/", 2) == [200, 429]


def test_a_disabled_policy_lets_requests_through(client):
    with policies({"name": "code-limited", "rate": "1/m", "enabled": False}):
        assert statuses(client, "/code/", 3) == [200, 200, 200]


def test_block_false_only_annotates(client):
    bodies = [client.get("/annotate/").json()["allowed"] for _ in range(3)]
    assert bodies == [[True], [True], [False]]


def test_class_based_views_are_limited(client):
    assert statuses(client, "/class/", 3) == [200, 200, 429]


def test_count_when_counts_only_failures(client):
    def login(password):
        return client.post("/login/", {"password": password}).status_code

    assert [login("right") for _ in range(4)] == [200] * 4  # successes are free
    assert [login("wrong") for _ in range(2)] == [401, 401]
    assert login("right") == 429  # two failures used the budget


def test_count_when_ignores_other_methods(client):
    assert [client.get("/login/").status_code for _ in range(3)] == [401] * 3


def test_a_callable_cost(client):
    assert client.get("/costly/", {"n": 7}).status_code == 200
    assert client.get("/costly/", {"n": 4}).status_code == 429
    assert client.get("/costly/", {"n": 3}).status_code == 200


def test_the_middleware_and_the_decorator_count_a_request_once(client):
    with policies({"name": "code-limited", "rate": "2/m", "path": "/code/"}):
        assert statuses(client, "/code/", 3) == [200, 200, 429]


def test_a_decorator_without_name_or_rate_is_refused():
    with pytest.raises(ImproperlyConfigured, match="needs a policy name"):
        rate_limit()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": "5/parsec"}, "Invalid rate '5/parsec'"),
        ({"rate": "5/m", "key": "cookie:x"}, "Unknown key type"),
        ({"rate": "5/m", "algorithm": "fixed_window", "burst": 9}, "burst applies"),
    ],
)
def test_a_bad_code_policy_fails_at_import_time(kwargs, message):
    with pytest.raises(ImproperlyConfigured, match=message):

        @rate_limit(name="broken", **kwargs)
        def view(request):
            return None


async def test_async_views_are_limited(async_client):
    codes = [(await async_client.get("/async-code/")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_a_code_policy_can_lease_and_still_admits_exactly_its_rate(rf, caplog):
    from ratelimit_app import leases
    from ratelimit_app.snapshot import get_policies

    leases.table.clear()

    @rate_limit(rate="3/m", name="code-leased", algorithm="fixed_window", lease=True)
    def view(request):
        from django.http import HttpResponse

        return HttpResponse("ok")

    (policy,) = [p for p in get_policies() if p.name == "code-leased"]
    assert policy.leases and policy.rule_spec(frozenset()).lease
    codes = [view(rf.get("/anything/")).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    leases.table.clear()


def test_a_code_policy_leasing_where_it_cannot_fails_at_import():
    with pytest.raises(ImproperlyConfigured, match="lease applies to fixed_window"):

        @rate_limit(rate="3/m", name="code-bad", algorithm="leaky_bucket", lease=True)
        def view(request):
            return None
