"""The policy admin: validation on the form, permissions, actions, history, explain."""

from __future__ import annotations

import html
import json
import uuid

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from ratelimit_app import actions, limiter
from ratelimit_app.models import Exemption, Policy, Tier, validate_network
from ratelimit_app.snapshot import decode, snapshot_keys, store
from ratelimit_app.testing import free_port
from tests.policy_helpers import forget_snapshot

CHANGELIST = "admin:ratelimit_app_policy_changelist"
EXPLAIN = "admin:ratelimit_app_policy_explain"


@pytest.fixture(autouse=True)
def fresh_snapshot(redis_client):
    """No snapshot left by another test: the first read publishes this test's rows."""
    forget_snapshot(redis_client)
    yield
    forget_snapshot(redis_client)


@pytest.fixture
def published(redis_client):
    """The policies in the snapshot stored in Redis, by name."""

    def read() -> dict:
        raw = redis_client.get(snapshot_keys()[1])
        return {} if raw is None else {s.name: s for s in decode(raw)[1]}

    return read


@pytest.fixture
def viewer(client, django_user_model):
    """A staff client with only the view permission on policies."""
    user = django_user_model.objects.create_user(
        f"viewer-{uuid.uuid4().hex[:6]}", password="pw", is_staff=True
    )
    user.user_permissions.add(
        Permission.objects.get(
            codename="view_policy", content_type__app_label="ratelimit_app"
        )
    )
    client.force_login(user)
    return client


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def make_policy(label="p", **fields) -> Policy:
    fields = {"rate": "10/m", "path": "/api/*", **fields}
    return Policy.objects.create(name=unique(label), **fields)


def change_url(policy: Policy) -> str:
    return reverse("admin:ratelimit_app_policy_change", args=[policy.pk])


def form_data(**overrides) -> dict:
    """A complete, valid add/change form, inline management forms included."""
    data = {
        "name": unique("form"),
        "description": "",
        "enabled": "on",
        "mode": "enforce",
        "priority": "100",
        "url_name": "",
        "view": "",
        "path": "/api/*",
        "path_regex": "",
        "methods": "",
        "key": "ip",
        "rate": "10/m",
        "algorithm": "gcra",
        "burst": "",
        "cost": "1",
        "status_code": "429",
        "message": "",
        "fail_mode": "open",
    }
    for prefix in ("exemptions", "tiers"):
        data |= {
            f"{prefix}-TOTAL_FORMS": "0",
            f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0",
            f"{prefix}-MAX_NUM_FORMS": "1000",
        }
    return data | {k: str(v) for k, v in overrides.items()}


def history(policy: Policy) -> list[LogEntry]:
    return list(
        LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(Policy),
            object_id=str(policy.pk),
        )
    )


def run_action(client, action: str, policies) -> object:
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [p.pk for p in policies]},
        follow=True,
    )


# -- pages -----------------------------------------------------------------------


def test_changelist_add_change_and_explain_pages_render(admin_client):
    group = Group.objects.create(name=unique("g"))
    policy = make_policy("render", url_name="items", methods="GET,POST")
    Exemption.objects.create(policy=policy, network="203.0.113.0/24")
    Tier.objects.create(policy=policy, group=group, rate="100/m")

    changelist = admin_client.get(reverse(CHANGELIST))
    assert changelist.status_code == 200
    assert policy.name in changelist.content.decode()
    assert f'href="{reverse(EXPLAIN)}"' in changelist.content.decode()
    assert "url:items | /api/* [GET,POST]" in changelist.content.decode()
    assert (
        admin_client.get(reverse("admin:ratelimit_app_policy_add")).status_code == 200
    )
    change = admin_client.get(change_url(policy))
    assert change.status_code == 200
    assert "203.0.113.0/24" in change.content.decode()
    assert admin_client.get(reverse(EXPLAIN)).status_code == 200


def test_adding_a_policy_with_inlines_saves_and_publishes(
    admin_client, published, django_capture_on_commit_callbacks
):
    group = Group.objects.create(name=unique("partners"))
    data = form_data(
        **{
            "algorithm": "token_bucket",
            "burst": "20",
            "exemptions-TOTAL_FORMS": "1",
            "exemptions-0-network": "198.51.100.0/24",
            "tiers-TOTAL_FORMS": "1",
            "tiers-0-group": group.pk,
            "tiers-0-rate": "100/m",
            "tiers-0-burst": "50",
        }
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:ratelimit_app_policy_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    spec = published()[data["name"]]
    assert spec.exempt_networks == ("198.51.100.0/24",)
    assert spec.tiers == ((group.name, "100/m", 50),)


# -- validation ------------------------------------------------------------------


def model_errors(**values) -> dict:
    """What the model itself says about these values."""
    try:
        Policy(**{"name": "x", "rate": "10/m", **values}).full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"rate": "lots"}, "rate", "lots"),
        ({"rate": "10/fortnight"}, "rate", "fortnight"),
        ({"path_regex": "^/api/(["}, "path_regex", "does not compile"),
        ({"key": "no_such_module.key_func"}, "key", "not an importable callable"),
        ({"key": "cookie:sid"}, "key", "Unknown key type"),
        ({"algorithm": "fixed_window", "burst": 20}, "burst", "burst applies to"),
        ({"status_code": 600}, "status_code", "between 400 and 599"),
        ({"status_code": 302}, "status_code", "between 400 and 599"),
        ({"methods": "GET,FETCH"}, "methods", "Unknown HTTP method(s): FETCH"),
    ],
)
def test_the_form_refuses_invalid_input_with_the_models_message(
    admin_client, values, field, says
):
    expected = model_errors(**values)[field]
    assert says in " ".join(expected)
    data = form_data(**values)

    response = admin_client.post(reverse("admin:ratelimit_app_policy_add"), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field] == expected
    assert html.escape(expected[0]) in response.content.decode()
    assert not Policy.objects.filter(name=data["name"]).exists()


def test_the_exemption_inline_refuses_a_bad_network(admin_client):
    with pytest.raises(ValidationError) as refused:
        validate_network("203.0.113.0/33")
    data = form_data(
        **{"exemptions-TOTAL_FORMS": "1", "exemptions-0-network": "203.0.113.0/33"}
    )

    response = admin_client.post(reverse("admin:ratelimit_app_policy_add"), data)

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.errors[0]["network"] == refused.value.messages
    assert html.escape(refused.value.messages[0]) in response.content.decode()
    assert not Policy.objects.filter(name=data["name"]).exists()


def test_the_exemption_inline_needs_exactly_one_kind(admin_client):
    data = form_data(
        **{
            "exemptions-TOTAL_FORMS": "1",
            "exemptions-0-network": "203.0.113.7",
            "exemptions-0-staff": "on",
        }
    )
    response = admin_client.post(reverse("admin:ratelimit_app_policy_add"), data)
    assert response.status_code == 200
    assert "Give exactly one of" in response.content.decode()
    assert not Policy.objects.filter(name=data["name"]).exists()


@pytest.mark.parametrize(
    ("tier", "field", "says"),
    [
        ({"rate": "fast"}, "rate", "fast"),
        ({"rate": "10/m", "burst": "20"}, "burst", "burst applies to"),
    ],
)
def test_the_tier_inline_refuses_what_the_engine_would(admin_client, tier, field, says):
    group = Group.objects.create(name=unique("tier"))
    fields = {f"tiers-0-{name}": value for name, value in tier.items()}
    data = form_data(
        algorithm="sliding_window_counter",
        **{"tiers-TOTAL_FORMS": "1", "tiers-0-group": group.pk, **fields},
    )

    response = admin_client.post(reverse("admin:ratelimit_app_policy_add"), data)

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][1].formset
    assert says in " ".join(formset.errors[0][field])
    assert not Policy.objects.filter(name=data["name"]).exists()


# -- permissions -----------------------------------------------------------------


def test_a_viewer_sees_but_cannot_edit(viewer):
    policy = make_policy("view-only", rate="5/m")

    page = viewer.get(change_url(policy))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()

    refused = viewer.post(change_url(policy), form_data(name=policy.name, rate="9/m"))
    assert refused.status_code == 403
    add = viewer.post(reverse("admin:ratelimit_app_policy_add"), form_data())
    assert add.status_code == 403
    policy.refresh_from_db()
    assert policy.rate == "5/m"


def test_a_viewer_cannot_run_actions(viewer):
    policy = make_policy("no-actions", enabled=True)

    changelist = viewer.get(reverse(CHANGELIST))
    assert changelist.context["action_form"] is None
    for action in ("disable", "switch_to_shadow", "reset_counters"):
        run_action(viewer, action, [policy])

    policy.refresh_from_db()
    assert (policy.enabled, policy.mode) == (True, "enforce")
    assert history(policy) == []


def test_a_viewer_cannot_save_the_changelist(viewer):
    policy = make_policy("no-list-edit")
    data = changelist_form(policy, mode="shadow", enabled=True)
    assert viewer.post(reverse(CHANGELIST), data).status_code == 403
    policy.refresh_from_db()
    assert policy.mode == "enforce"


# -- actions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "field", "before", "after"),
    [
        ("enable", "enabled", False, True),
        ("disable", "enabled", True, False),
        ("switch_to_shadow", "mode", "enforce", "shadow"),
        ("switch_to_enforce", "mode", "shadow", "enforce"),
    ],
)
def test_actions_change_rows_publish_and_log(
    admin_client,
    published,
    django_capture_on_commit_callbacks,
    action,
    field,
    before,
    after,
):
    changing = [make_policy(action, **{field: before}) for _ in range(2)]
    unchanged = make_policy(action, **{field: after})
    store.publish()
    assert {getattr(published()[p.name], field) for p in changing} == {before}

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin_client, action, [*changing, unchanged])

    assert response.status_code == 200
    for policy in [*changing, unchanged]:
        policy.refresh_from_db()
        assert getattr(policy, field) == after
        assert getattr(published()[policy.name], field) == after
    label = actions.field_label(field)
    for policy in changing:
        (entry,) = history(policy)
        assert (entry.action_flag, entry.user.username) == (CHANGE, "admin")
        assert json.loads(entry.change_message) == [{"changed": {"fields": [label]}}]
        assert entry.get_change_message() == f"Changed {label}."
    assert history(unchanged) == []
    messages = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("2 policies") for m in messages)


def test_helpers_report_how_many_rows_changed(admin_user):
    policy = make_policy("helper", mode="enforce")
    queryset = Policy.objects.filter(pk=policy.pk)
    assert actions.set_mode(queryset, "shadow", admin_user) == 1
    assert actions.set_mode(queryset, "shadow", admin_user) == 0
    with pytest.raises(ValueError):
        actions.set_mode(queryset, "loud", admin_user)


def test_reset_counters_forgets_every_client_of_the_selected_policies(admin_client):
    target = make_policy("reset", rate="5/m")
    lookalike = make_policy(target.name, rate="5/m")  # its name extends target's
    clients = ["198.51.100.1", "198.51.100.2", "2001:db8::/64"]
    for name in (target.name, lookalike.name):
        for identity in clients:
            limiter.hit(name, identity, "5/m", cost=3)
    limiter.hit(target.name, clients[0], "5/m", algorithm="fixed_window", cost=2)

    response = run_action(admin_client, "reset_counters", [target])

    assert response.status_code == 200
    for identity in clients:
        assert limiter.peek(target.name, identity, "5/m").remaining == 5
        assert limiter.peek(lookalike.name, identity, "5/m").remaining == 2
    fixed = limiter.peek(target.name, clients[0], "5/m", algorithm="fixed_window")
    assert fixed.remaining == 5
    (entry,) = history(target)
    assert entry.change_message == ("Reset the counters of every client (4 deleted).")
    assert history(lookalike) == []
    assert "4 counters deleted." in [str(m) for m in response.context["messages"]]


@pytest.mark.parametrize(
    ("key", "counted"),
    [
        ("{s17}:AAAAAAAAAAAAAAAAAAAAAA:login:gcra", True),
        ("{s1023}:AAAAAAAAAAAAAAAAAAAAAA:login:swl", True),
        ("{s17}:AAAAAAAAAAAAAAAAAAAAAA:login-2:gcra", False),
        ("{s17}:AAAAAAAAAAAAAAAAAAAAAA:login:stats", False),
        ("{s17}:AAAAAAAAAAAAAAAAAAAAAA:x:login:gcra", False),
        ("{policies}:data", False),
    ],
)
def test_only_the_policys_state_keys_are_reset(key, counted):
    prefix = "rl:1:"
    assert actions.is_counter_key(prefix + key, prefix, "login") is counted
    assert not actions.is_counter_key("other:1:" + key, prefix, "login")


# -- list_editable -----------------------------------------------------------------


def changelist_form(policy: Policy, *, mode: str, enabled: bool) -> dict:
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "form-0-id": str(policy.pk),
        "form-0-mode": mode,
        "_save": "Save",
    }
    if enabled:
        data["form-0-enabled"] = "on"
    return data


def test_the_changelist_saves_mode_and_enabled_into_history(
    admin_client, published, django_capture_on_commit_callbacks
):
    policy = make_policy("list-edit", mode="enforce", enabled=True)
    url = f"{reverse(CHANGELIST)}?q={policy.name}"

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            url, changelist_form(policy, mode="shadow", enabled=False)
        )

    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.mode, policy.enabled) == ("shadow", False)
    spec = published()[policy.name]
    assert (spec.mode, spec.enabled) == ("shadow", False)
    (entry,) = history(policy)
    assert entry.get_change_message() == "Changed Enabled and Mode."


def test_the_history_page_shows_bulk_changes(admin_client):
    policy = make_policy("history", enabled=False)
    run_action(admin_client, "enable", [policy])
    page = admin_client.get(
        reverse("admin:ratelimit_app_policy_history", args=[policy.pk])
    )
    assert page.status_code == 200
    assert "Changed Enabled." in page.content.decode()


# -- explain -------------------------------------------------------------------------

CLIENT_IP = "203.0.113.9"


def explain(client, **fields):
    query = {"path": "/api/items/", "method": "GET", "ip": CLIENT_IP, **fields}
    return client.get(reverse(EXPLAIN), query)


@pytest.fixture
def api_policies():
    """Policies around /api/items/: three match (one exempts the client), three not."""
    exempting = make_policy("regex", path="", path_regex="^/api/items/", priority=5)
    Exemption.objects.create(policy=exempting, network="203.0.113.0/24")
    by_name = make_policy("by-name", path="", url_name="items", rate="5/m", priority=10)
    shadow = make_policy(
        "glob", rate="3/m", algorithm="fixed_window", mode="shadow", priority=20
    )
    make_policy("elsewhere", path="/other/*", priority=1)
    make_policy("disabled", enabled=False, priority=2)
    make_policy("posts", methods="POST", priority=3)
    return exempting, by_name, shadow


def consume(policies, ip=CLIENT_IP, cost=2) -> None:
    """Use ``cost`` units of each api_policies policy for one client."""
    _, by_name, shadow = policies
    limiter.hit(by_name.name, ip, "5/m", cost=cost)
    limiter.hit(shadow.name, ip, "3/m", algorithm="fixed_window", cost=cost)


def test_explain_lists_matching_policies_in_priority_order_with_live_usage(
    admin_client, api_policies
):
    exempting, by_name, shadow = api_policies
    consume(api_policies)

    response = explain(admin_client)

    assert response.status_code == 200
    rows = response.context["rows"]
    assert [r.policy.name for r in rows] == [exempting.name, by_name.name, shadow.name]
    assert [r.exempt for r in rows] == [True, False, False]
    assert rows[0].usage is None
    assert [r.policy.spec.source for r in rows] == ["db", "db", "db"]
    assert [r.client for r in rows] == [f"ip {CLIENT_IP}"] * 3
    usage = rows[1].usage
    assert (usage.remaining, usage.limit, usage.retry_after) == (3, 5, 0)
    assert 0 < usage.reset_after <= 60
    assert (rows[2].policy.spec.mode, rows[2].usage.remaining) == ("shadow", 1)
    content = response.content.decode()
    positions = [content.index(f'data-policy="{r.policy.name}"') for r in rows]
    assert positions == sorted(positions)
    assert "3 / 5" in content and "yes: not counted" in content


def test_explain_resets_one_clients_counters_of_one_policy(admin_client, api_policies):
    _, by_name, shadow = api_policies
    for ip in (CLIENT_IP, "198.51.100.7"):
        consume(api_policies, ip)
    page = explain(admin_client)
    assert page.content.decode().count("Reset this client's counters") == 3

    response = admin_client.post(
        reverse(EXPLAIN),
        {
            "path": "/api/items/",
            "method": "GET",
            "ip": CLIENT_IP,
            "username": "",
            "policy": by_name.name,
        },
        follow=True,
    )

    assert response.status_code == 200
    assert response.redirect_chain[-1][0].startswith(reverse(EXPLAIN) + "?path=")
    assert limiter.peek(by_name.name, CLIENT_IP, "5/m").remaining == 5
    assert limiter.peek(by_name.name, "198.51.100.7", "5/m").remaining == 3
    fixed = limiter.peek(shadow.name, CLIENT_IP, "3/m", algorithm="fixed_window")
    assert fixed.remaining == 1
    (entry,) = history(by_name)
    assert entry.change_message == f"Reset the counters of client ip {CLIENT_IP}."
    assert f"Reset the counters of ip {CLIENT_IP} for policy {by_name.name}." in [
        str(m) for m in response.context["messages"]
    ]
    assert response.context["rows"][1].usage.remaining == 5


def test_explain_reset_is_refused_without_the_change_permission(viewer, api_policies):
    _, by_name, _ = api_policies
    consume(api_policies, cost=1)
    page = explain(viewer)
    assert page.status_code == 200
    assert "Reset this client" not in page.content.decode()

    data = {"path": "/api/items/", "method": "GET", "ip": CLIENT_IP}
    response = viewer.post(reverse(EXPLAIN), {**data, "policy": by_name.name})

    assert response.status_code == 403
    assert limiter.peek(by_name.name, CLIENT_IP, "5/m").remaining == 4
    assert history(by_name) == []


def test_explain_reset_needs_the_csrf_token(admin_user, api_policies):
    _, by_name, _ = api_policies
    consume(api_policies)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    data = {"path": "/api/items/", "method": "GET", "ip": CLIENT_IP}
    response = client.post(reverse(EXPLAIN), {**data, "policy": by_name.name})
    assert response.status_code == 403
    assert limiter.peek(by_name.name, CLIENT_IP, "5/m").remaining == 3


def test_explain_says_when_redis_is_down_instead_of_a_fail_modes_numbers(
    admin_client, api_policies, settings
):
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": url}

    response = explain(admin_client)

    assert response.context["redis_error"].startswith("Redis did not answer")
    assert all(row.usage is None for row in response.context["rows"])
    assert "Live usage is unavailable" in response.content.decode()


def test_explain_is_for_staff_only(client, db):
    response = client.get(reverse(EXPLAIN))
    assert response.status_code == 302
    assert "/admin/login/" in response.url


def test_explain_counts_a_user_by_name_and_applies_staff_exemptions(
    admin_client, admin_user
):
    by_user = make_policy("by-user", key="user", priority=1)
    staff_free = make_policy("staff-free", priority=2)
    Exemption.objects.create(policy=staff_free, staff=True)

    response = explain(admin_client, username=admin_user.username)

    rows = {r.policy.name: r for r in response.context["rows"]}
    assert rows[by_user.name].client == f"user:{admin_user.pk} (admin)"
    assert not rows[by_user.name].exempt
    assert rows[staff_free.name].exempt
    anonymous = explain(admin_client).context["rows"]
    assert [r.client for r in anonymous] == [f"ip:{CLIENT_IP}", f"ip {CLIENT_IP}"]


def test_explain_hides_secret_identities(admin_client):
    make_policy("api-key", key="header:x-api-key")
    (row,) = explain(admin_client).context["rows"]
    assert row.client.startswith("no header:x-api-key value")


def test_explain_reports_an_unknown_user_on_the_form(admin_client):
    response = explain(admin_client, username="nobody-" + uuid.uuid4().hex[:6])
    assert response.status_code == 200
    assert response.context["form"].errors["username"] == ["There is no such user."]
    assert "rows" not in response.context


def test_explain_reset_of_a_settings_policy_is_logged_without_a_row(
    admin_client, settings
):
    name = unique("from-settings")
    settings.RATELIMIT = {
        **settings.RATELIMIT,
        "POLICIES": [{"name": name, "rate": "4/m", "path": "/api/*"}],
    }
    limiter.hit(name, CLIENT_IP, "4/m", cost=4)
    (row,) = explain(admin_client).context["rows"]
    assert (row.policy.spec.source, row.usage.remaining, row.pk) == (
        "settings",
        0,
        None,
    )

    data = {"path": "/api/items/", "method": "GET", "ip": CLIENT_IP, "policy": name}
    admin_client.post(reverse(EXPLAIN), data)

    assert limiter.peek(name, CLIENT_IP, "4/m").remaining == 4
    entry = LogEntry.objects.get(object_repr=name)
    assert (entry.object_id, entry.content_type.model) == (None, "policy")


def test_explain_lists_the_views_rate_limit_policy(admin_client):
    response = explain(admin_client, path="/code/")
    rows = response.context["rows"]
    assert [(r.policy.name, r.policy.spec.source) for r in rows] == [
        ("code-limited", "code")
    ]
    assert rows[0].usage.remaining == 2


def test_explain_lists_a_class_based_views_policy(admin_client):
    rows = explain(admin_client, path="/class/").context["rows"]
    assert [r.policy.name for r in rows] == ["class-based"]


@pytest.mark.parametrize("model", ["usageminute", "usagehour", "usageday"])
def test_usage_tables_are_listed_read_only(admin_client, model):
    from datetime import UTC, datetime

    from ratelimit_app.models import UsageDay, UsageHour, UsageMinute

    models = {"usageminute": UsageMinute, "usagehour": UsageHour, "usageday": UsageDay}
    usage_model = models[model]
    usage_model.objects.create(
        policy="listed",
        **{usage_model.period: datetime(2026, 11, 23, tzinfo=UTC)},
        allowed=7,
        blocked=3,
    )
    listing = admin_client.get(reverse(f"admin:ratelimit_app_{model}_changelist"))
    assert listing.status_code == 200
    assert b"listed" in listing.content
    assert (
        admin_client.get(reverse(f"admin:ratelimit_app_{model}_add")).status_code == 403
    )


def test_top_offenders_are_listed_read_only_with_safe_names(admin_client):
    from datetime import UTC, datetime

    from ratelimit_app.models import UsageOffender

    hour = datetime(2026, 11, 23, 10, tzinfo=UTC)
    UsageOffender.objects.create(
        policy="api", hour=hour, identity="A" * 22, label="203.0.113.x", blocked=9
    )
    UsageOffender.objects.create(policy="api", hour=hour, identity="Zq" * 11, blocked=4)
    listing = admin_client.get(reverse("admin:ratelimit_app_usageoffender_changelist"))
    assert listing.status_code == 200
    assert b"203.0.113.x" in listing.content
    assert b"#ZqZqZqZq" in listing.content  # no label: the start of the hash
    assert b"Client" in listing.content  # the column's name
    add = admin_client.get(reverse("admin:ratelimit_app_usageoffender_add"))
    assert add.status_code == 403
