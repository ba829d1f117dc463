"""The per-policy lease flag: model, admin form and script, snapshot, settings,
checks, export and import, explain."""

from __future__ import annotations

import json
import logging

import pytest
from django.contrib.staticfiles import finders
from django.core.checks import run_checks
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from ratelimit_app import enforcement
from ratelimit_app.checks import TAG, Codes
from ratelimit_app.models import Exemption, Policy
from ratelimit_app.policies import PolicySpec, compile_spec
from ratelimit_app.snapshot import decode, policy_by_name, snapshot_keys
from ratelimit_app.types import LEASE_ALGORITHMS
from tests.policy_helpers import forget_snapshot, policies, statuses
from tests.test_admin import (
    change_url,
    explain,
    form_data,
    make_policy,
    model_errors,
)
from tests.test_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    browser,  # noqa: F401  (a fixture)
    log_in,
    wait_for,
)
from tests.test_commands import export, import_, write

ADD = "admin:ratelimit_app_policy_add"
SCRIPT = "ratelimit_app/policy_lease.js"
NOT_LEASABLE = ("leaky_bucket", "sliding_window_log", "sliding_window_counter")
REFUSED = "lease applies to fixed_window, gcra, token_bucket"
needs_browser = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing",
)


@pytest.fixture(autouse=True)
def fresh_snapshot(redis_client):
    """No snapshot left by another test: the first read publishes this test's rows."""
    forget_snapshot(redis_client)
    yield
    forget_snapshot(redis_client)


def stored_lease(redis_client, name: str) -> bool:
    """The policy's lease in the snapshot that other processes read from Redis."""
    specs = decode(redis_client.get(snapshot_keys()[1]))[1]
    return next(s for s in specs if s.name == name).lease


def compiled_lease(name: str) -> bool:
    """Whether the engine rule of the compiled policy ``name`` leases."""
    return policy_by_name(name).rule_spec(frozenset()).lease


# -- compiling --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", sorted(LEASE_ALGORITHMS))
def test_a_leased_policy_compiles_to_a_leasing_rule(algorithm):
    leased = compile_spec(
        PolicySpec(name="p", rate="5/s", algorithm=algorithm, lease=True)
    )
    plain = compile_spec(PolicySpec(name="p", rate="5/s", algorithm=algorithm))
    assert leased.leases and not plain.leases
    assert leased.rule_spec(frozenset()).lease is True
    assert plain.rule_spec(frozenset()).lease is False


@pytest.mark.parametrize("algorithm", NOT_LEASABLE)
def test_compiling_refuses_lease_with_an_algorithm_that_cannot_lease(algorithm):
    with pytest.raises(ValueError, match=REFUSED):
        compile_spec(PolicySpec(name="p", rate="5/s", algorithm=algorithm, lease=True))


def test_a_shadow_policy_compiles_without_its_lease():
    policy = compile_spec(PolicySpec(name="p", rate="5/s", mode="shadow", lease=True))
    rule = policy.rule_spec(frozenset())
    assert (rule.shadow, rule.lease, policy.leases) == (True, False, False)


def test_a_group_tier_keeps_the_policys_lease():
    spec = PolicySpec(
        name="p",
        rate="5/s",
        algorithm="token_bucket",
        lease=True,
        tiers=(("partners", "50/s", None),),
    )
    rule = compile_spec(spec).rule_spec(frozenset({"partners"}))
    assert (rule.rate.limit, rule.lease) == (50, True)


def test_the_snapshot_json_carries_lease():
    spec = PolicySpec(name="p", rate="5/s", lease=True)
    assert spec.to_json()["lease"] is True
    assert PolicySpec.from_dict(spec.to_json(), "db").lease is True
    with pytest.raises(ValueError, match="lease must be True or False"):
        PolicySpec.from_dict({"name": "p", "rate": "5/s", "lease": "yes"}, "db")


# -- settings and system checks ---------------------------------------------------


@pytest.mark.django_db
def test_a_settings_policy_leasing_a_sliding_window_is_skipped_with_an_error(caplog):
    entries = (
        {"name": "sliding", "rate": "5/s", "algorithm": "sliding_window_log"},
        {"name": "leased", "rate": "5/s", "algorithm": "fixed_window", "lease": True},
    )
    bad = {**entries[0], "lease": True}
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"), policies(*entries):
        assert compiled_lease("leased") is True
        assert compiled_lease("sliding") is False
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"), policies(bad):
        assert policy_by_name("sliding") is None
    assert f"skipping settings policy 'sliding': {REFUSED}" in caplog.text


@pytest.mark.django_db
def test_a_settings_policy_with_a_lease_that_is_not_a_boolean_is_skipped(caplog):
    entry = {"name": "typed", "rate": "5/s", "lease": "yes"}
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"), policies(entry):
        assert policy_by_name("typed") is None
    assert "RATELIMIT['POLICIES'][0] is invalid: lease must be True" in caplog.text


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"algorithm": "sliding_window_log", "lease": True}, REFUSED),
        ({"algorithm": "leaky_bucket", "lease": True}, REFUSED),
        ({"lease": 1}, "lease must be True or False"),
    ],
)
def test_the_invalid_policy_check_reports_a_bad_lease(settings, entry, problem):
    entries = [{"name": "p", "rate": "5/m", **entry}]
    with override_settings(RATELIMIT={**settings.RATELIMIT, "POLICIES": entries}):
        found = [m for m in run_checks(tags=[TAG]) if m.id == Codes.INVALID_POLICY]
    assert len(found) == 1 and problem in found[0].msg


def test_the_checks_accept_a_leased_policy_in_shadow_mode(settings):
    entries = [{"name": "p", "rate": "5/m", "mode": "shadow", "lease": True}]
    with override_settings(RATELIMIT={**settings.RATELIMIT, "POLICIES": entries}):
        found = run_checks(tags=[TAG])
    assert Codes.INVALID_POLICY not in [m.id for m in found]


# -- the model and the admin --------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm", NOT_LEASABLE)
def test_the_model_refuses_lease_on_the_lease_field(algorithm):
    errors = model_errors(algorithm=algorithm, lease=True)
    assert list(errors) == ["lease"]
    assert REFUSED in errors["lease"][0] and "Turn lease off" in errors["lease"][0]
    assert model_errors(algorithm=algorithm) == {}


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm", sorted(LEASE_ALGORITHMS))
def test_the_model_accepts_lease_where_it_applies(algorithm):
    assert model_errors(algorithm=algorithm, lease=True) == {}
    assert model_errors(algorithm=algorithm, lease=True, mode="shadow") == {}


def test_adding_a_leased_gcra_policy_reaches_the_compiled_snapshot(
    admin_client, redis_client, django_capture_on_commit_callbacks
):
    data = form_data(algorithm="gcra", lease="on")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse(ADD), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Policy.objects.get(name=data["name"]).lease is True
    assert stored_lease(redis_client, data["name"]) is True
    assert compiled_lease(data["name"]) is True


def test_changing_lease_on_and_off_reaches_the_compiled_snapshot(
    admin_client, django_capture_on_commit_callbacks
):
    policy = make_policy("change", algorithm="gcra")
    assert compiled_lease(policy.name) is False
    data = form_data(name=policy.name, algorithm="gcra", lease="on")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(change_url(policy), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert compiled_lease(policy.name) is True

    del data["lease"]  # an unticked checkbox is not sent
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(change_url(policy), data)
    policy.refresh_from_db()
    assert policy.lease is False
    assert compiled_lease(policy.name) is False


def test_the_admin_refuses_lease_on_a_leaky_bucket_on_the_lease_field(admin_client):
    data = form_data(algorithm="leaky_bucket", lease="on")

    response = admin_client.post(reverse(ADD), data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["lease"]
    assert REFUSED in errors["lease"][0]
    assert not Policy.objects.filter(name=data["name"]).exists()


def test_a_leased_shadow_policy_is_saved_and_compiled_without_the_lease(
    admin_client, django_capture_on_commit_callbacks
):
    data = form_data(algorithm="token_bucket", mode="shadow", lease="on")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse(ADD), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Policy.objects.get(name=data["name"]).lease is True  # kept for enforce
    assert compiled_lease(data["name"]) is False


@pytest.mark.django_db
def test_a_row_that_skipped_clean_is_skipped_with_an_error(caplog):
    policy = make_policy("unclean", algorithm="leaky_bucket")
    Policy.objects.filter(pk=policy.pk).update(lease=True)  # skips clean()
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
        assert policy_by_name(policy.name) is None
    assert f"skipping db policy '{policy.name}': {REFUSED}" in caplog.text


def test_the_change_page_has_the_lease_field_and_its_script(admin_client):
    policy = make_policy("page", algorithm="token_bucket", lease=True)

    content = admin_client.get(change_url(policy)).content.decode()

    assert f'<script src="/static/{SCRIPT}"></script>' in content
    assert 'class="form-row field-lease' in content
    assert 'data-algorithms="fixed_window gcra token_bucket"' in content
    assert 'id="id_lease" checked>' in content
    assert finders.find(SCRIPT) is not None


def test_the_changelist_shows_and_filters_by_lease(admin_client):
    leased = make_policy("leased", lease=True)
    plain = make_policy("plain")
    changelist = reverse("admin:ratelimit_app_policy_changelist")

    content = admin_client.get(changelist, {"lease__exact": "1"}).content.decode()

    assert leased.name in content and plain.name not in content
    assert 'column-lease">' in content


@pytest.mark.django_db
def test_a_leased_admin_policy_is_enforced_at_its_limit(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        policy = make_policy(
            "plain", rate="3/m", algorithm="fixed_window", lease=True, path="/plain/"
        )
    assert compiled_lease(policy.name) is True

    assert statuses(client, "/plain/", 5) == [200, 200, 200, 429, 429]


@pytest.mark.django_db
def test_a_plain_leased_policy_admits_from_its_lease_without_building_rules(
    client, django_capture_on_commit_callbacks, monkeypatch
):
    with django_capture_on_commit_callbacks(execute=True):
        policy = make_policy("hot", rate="1000/h", lease=True, path="/plain/")
    built = []
    build_rules = enforcement.build_rules
    monkeypatch.setattr(
        enforcement,
        "build_rules",
        lambda *args: built.append(1) or build_rules(*args),
    )
    responses = [client.get("/plain/") for _ in range(40)]
    assert [r.status_code for r in responses] == [200] * 40
    # Only the requests that asked Redis for a grant built their rules.
    assert 1 <= len(built) <= 8
    last = responses[-1]
    assert last["RateLimit-Policy"] == f'"{policy.name}";q=1000;w=3600'
    assert last["RateLimit"].startswith(f'"{policy.name}";r=')
    assert last.wsgi_request.ratelimit.decisions[0].allowed


@pytest.mark.django_db
def test_an_exempt_client_of_a_leased_policy_stays_exempt(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        policy = make_policy(
            "hot-exempt", rate="2/m", algorithm="fixed_window", lease=True
        )
        policy.path = "/plain/"
        policy.save()
        Exemption.objects.create(policy=policy, network="203.0.113.0/24")
    exempt = {"REMOTE_ADDR": "203.0.113.9"}
    assert statuses(client, "/plain/", 4, **exempt) == [200] * 4
    assert statuses(client, "/plain/", 3) == [200, 200, 429]


# -- export and import ------------------------------------------------------------


@pytest.mark.django_db
def test_export_and_import_round_trip_lease(tmp_path):
    make_policy("leased", algorithm="fixed_window", lease=True)
    make_policy("plain")
    exported = export()
    by_name = {p["name"]: p for p in json.loads(exported)["policies"]}
    assert [p["lease"] for p in by_name.values()].count(True) == 1
    Policy.objects.all().delete()

    import_(write(tmp_path, exported))

    assert dict(Policy.objects.values_list("name", "lease")) == {
        name: entry["lease"] for name, entry in by_name.items()
    }
    assert export() == exported


@pytest.mark.django_db
def test_import_updates_lease_and_a_file_without_it_turns_it_off(tmp_path):
    name = make_policy("flip", algorithm="gcra").name
    entry = {"name": name, "rate": "10/m", "algorithm": "gcra", "lease": True}

    out = import_(write(tmp_path, {"format": 1, "policies": [entry]}))
    assert "1 updated" in out
    assert Policy.objects.get(name=name).lease is True

    del entry["lease"]  # a file from before lease existed: fields take defaults
    import_(write(tmp_path, {"format": 1, "policies": [entry]}))
    assert Policy.objects.get(name=name).lease is False


@pytest.mark.django_db
def test_import_refuses_a_lease_that_cannot_apply_and_writes_nothing(tmp_path):
    entry = {"name": "meter", "rate": "10/m", "algorithm": "leaky_bucket"}
    path = write(tmp_path, {"format": 1, "policies": [{**entry, "lease": True}]})
    with pytest.raises(CommandError) as info:
        import_(path)
    assert f'policy "meter": lease true: {REFUSED}' in str(info.value)
    path = write(tmp_path, {"format": 1, "policies": [{**entry, "lease": "on"}]})
    with pytest.raises(CommandError, match='lease "on": must be true or false'):
        import_(path)
    assert not Policy.objects.filter(name="meter").exists()


# -- explain ---------------------------------------------------------------------------


def test_explain_says_which_policies_lease(admin_client):
    leased = make_policy("leased", algorithm="gcra", lease=True, priority=1)
    shadow = make_policy("shadow", lease=True, mode="shadow", priority=2)
    plain = make_policy("plain", algorithm="fixed_window", priority=3)

    response = explain(admin_client)

    algorithms = {r.policy.name: r.algorithm for r in response.context["rows"]}
    assert algorithms == {
        leased.name: "gcra, leased",
        shadow.name: "gcra",
        plain.name: "fixed_window",
    }
    assert "10/m (gcra, leased)" in response.content.decode()


# -- the form's script, in a real browser -----------------------------------------


@pytest.mark.browser
@needs_browser
def test_the_lease_row_shows_only_for_algorithms_that_can_lease(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    transactional_db,
):
    log_in(browser, live_server, django_user_model, "/admin/")
    browser.get(f"{live_server.url}{reverse(ADD)}")
    algorithm = Select(wait_for(browser, "#id_algorithm"))
    row = browser.find_element(By.CSS_SELECTOR, ".form-row.field-lease")
    lease = browser.find_element(By.ID, "id_lease")

    shown = {}
    for value in ("gcra", "leaky_bucket", "fixed_window", "sliding_window_log"):
        algorithm.select_by_value(value)
        shown[value] = row.is_displayed()
    assert shown == {
        "gcra": True,  # the default: shown on load
        "leaky_bucket": False,
        "fixed_window": True,
        "sliding_window_log": False,
    }

    algorithm.select_by_value("token_bucket")
    lease.click()
    algorithm.select_by_value("leaky_bucket")
    assert row.is_displayed()  # ticked: stays, so it can be unticked
    lease.click()
    algorithm.select_by_value("sliding_window_counter")
    assert not row.is_displayed()


@pytest.mark.browser
@needs_browser
def test_the_lease_row_starts_hidden_for_a_saved_policy_that_cannot_lease(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    transactional_db,
):
    policy = make_policy("meter", algorithm="leaky_bucket")
    log_in(browser, live_server, django_user_model, "/admin/")
    browser.get(f"{live_server.url}{change_url(policy)}")
    wait_for(browser, "#id_algorithm")
    row = browser.find_element(By.CSS_SELECTOR, ".form-row.field-lease")
    assert not row.is_displayed()
    Select(browser.find_element(By.ID, "id_algorithm")).select_by_value("gcra")
    assert row.is_displayed()
