"""The operator commands: ratelimit_policies, ratelimit_explain, ratelimit_status,
ratelimit_reset, on the real database and Redis."""

from __future__ import annotations

import io
import json
import uuid

import pytest
import yaml
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from ratelimit_app import limiter
from ratelimit_app.models import Exemption, Policy, Tier
from ratelimit_app.snapshot import store
from ratelimit_app.testing import free_port
from tests.policy_helpers import forget_snapshot

pytestmark = pytest.mark.django_db

CLIENT_IP = "203.0.113.9"


@pytest.fixture(autouse=True)
def fresh_snapshot(redis_client):
    """No snapshot left by another test: the first read publishes this test's rows."""
    forget_snapshot(redis_client)
    yield
    forget_snapshot(redis_client)


def run(*args, **options) -> tuple[str, str]:
    """Run a command; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def fails(*args, **options) -> str:
    """Run a command that must fail; return its error message."""
    with pytest.raises(CommandError) as info:
        run(*args, **options)
    return str(info.value)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def make_policy(name: str, **fields) -> Policy:
    return Policy.objects.create(name=name, **{"rate": "10/m", **fields})


@pytest.fixture
def partners():
    return Group.objects.create(name=unique("partners"))


@pytest.fixture
def policies(partners, django_user_model):
    """Two policies, one with an exemption of each kind and a tier."""
    alice = django_user_model.objects.create_user(unique("alice"))
    login = make_policy(
        "login",
        rate="5/m",
        path="/login/",
        methods="POST",
        priority=10,
        description="Slow down password guessing",
        fail_mode="closed",
    )
    api = make_policy(
        "api",
        rate="100/m",
        burst=20,
        algorithm="token_bucket",
        path="/api/*",
        key="user_or_ip",
        mode="shadow",
    )
    Exemption.objects.create(policy=api, network="198.51.100.0/24")
    Exemption.objects.create(policy=api, user=alice)
    Exemption.objects.create(policy=api, group=partners)
    Exemption.objects.create(policy=api, staff=True)
    Tier.objects.create(policy=api, group=partners, rate="1000/m", burst=50)
    return login, api


def export(fmt="json") -> str:
    return run("ratelimit_policies", "export", "--format", fmt)[0]


def write(tmp_path, data, name="policies.json") -> str:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    elif name.endswith((".yaml", ".yml")):
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))
    return str(path)


def import_(path, *extra) -> str:
    return run("ratelimit_policies", "import", path, *extra)[0]


# -- export --------------------------------------------------------------------------


def test_export_writes_every_policy_with_exemptions_and_tiers(policies, partners):
    _, api = policies
    alice = api.exemptions.get(user__isnull=False).user.username

    document = json.loads(export())

    assert document["format"] == 1
    assert [p["name"] for p in document["policies"]] == ["login", "api"]
    exported_login, exported_api = document["policies"]
    assert exported_login["rate"] == "5/m"
    assert exported_login["methods"] == "POST"
    assert exported_login["fail_mode"] == "closed"
    assert exported_login["exemptions"] == exported_login["tiers"] == []
    assert (exported_api["burst"], exported_api["mode"]) == (20, "shadow")
    assert sorted(exported_api["exemptions"], key=str) == sorted(
        [
            {"network": "198.51.100.0/24"},
            {"user": alice},
            {"group": partners.name},
            {"staff": True},
        ],
        key=str,
    )
    assert exported_api["tiers"] == [
        {"group": partners.name, "rate": "1000/m", "burst": 50}
    ]


def test_export_to_a_yaml_file_prints_a_summary(policies, tmp_path):
    target = tmp_path / "out.yaml"

    out, _ = run("ratelimit_policies", "export", "--output", str(target))

    assert out.strip() == (
        f"Exported 2 policies (4 exemptions, 1 tiers) to {target} as yaml."
    )
    document = yaml.safe_load(target.read_text())
    assert [p["name"] for p in document["policies"]] == ["login", "api"]


def test_export_to_an_unwritable_place_fails_clearly(policies, tmp_path):
    message = fails(
        "ratelimit_policies", "export", "-o", str(tmp_path / "missing" / "x.json")
    )
    assert message.startswith(f"Cannot write {tmp_path / 'missing' / 'x.json'}: ")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_export_wipe_import_export_is_identical(policies, tmp_path, fmt):
    before = export(fmt)
    path = write(tmp_path, before, f"policies.{fmt}")
    Policy.objects.all().delete()
    assert export(fmt) != before

    out = import_(path)

    assert "Imported: 2 created, 0 updated, 0 unchanged." in out
    assert export(fmt) == before
    assert Exemption.objects.count() == 4 and Tier.objects.count() == 1


# -- import --------------------------------------------------------------------------


def test_a_second_import_changes_nothing_and_says_so(policies, tmp_path):
    data = json.loads(export())
    data["policies"][0]["rate"] = "7/m"
    path = write(tmp_path, data)
    assert 'policy "login": updated\n  rate: "5/m" → "7/m"' in import_(path)
    stamp = Policy.objects.get(name="login").updated_at

    out = import_(path)

    assert out.strip() == "No changes: 2 policies unchanged."
    assert Policy.objects.get(name="login").updated_at == stamp
    assert LogEntry.objects.count() == 0


def test_import_creates_and_updates_in_one_go_and_publishes_after_commit(
    policies, tmp_path, django_capture_on_commit_callbacks
):
    data = json.loads(export())
    data["policies"][1]["exemptions"] = [{"network": "192.0.2.0/24"}]
    data["policies"].append({"name": "search", "rate": "30/m", "path": "/search/"})
    path = write(tmp_path, data)
    store.policies()  # the snapshot before

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        out = import_(path)

    assert "Imported: 1 created, 1 updated, 1 unchanged." in out
    assert 'policy "search": created' in out
    assert 'policy "login"' not in out  # unchanged lines only with -v 2
    api = Policy.objects.get(name="api")
    assert list(api.exemptions.values_list("network", flat=True)) == ["192.0.2.0/24"]
    assert api.tiers.count() == 1
    search = Policy.objects.get(name="search")
    assert (search.algorithm, search.key, search.enabled) == ("gcra", "ip", True)
    assert callbacks  # bulk writes send no post_save: the import publishes itself
    assert {p.name for p in store.policies()} >= {"login", "api", "search"}


def test_unchanged_policies_are_listed_with_verbosity_2(policies, tmp_path):
    path = write(tmp_path, export())
    out, _ = run("ratelimit_policies", "import", path, verbosity=2)
    assert 'policy "login": unchanged' in out and 'policy "api": unchanged' in out


def test_dry_run_prints_the_diff_and_writes_nothing(policies, partners, tmp_path):
    data = json.loads(export())
    data["policies"][0] |= {"rate": "10/m", "enabled": False}
    data["policies"][1]["tiers"] = []
    data["policies"].append({"name": "new-one", "rate": "1/s", "path": "/x/"})
    path = write(tmp_path, data)

    out = import_(path, "--dry-run")

    assert out.splitlines() == [
        'policy "login": updated',
        "  enabled: true → false",
        '  rate: "5/m" → "10/m"',
        'policy "api": updated',
        f'  tiers: [{{"group": "{partners.name}", "rate": "1000/m", "burst": 50}}] → []',
        'policy "new-one": created',
        "Dry run: 1 created, 2 updated, 0 unchanged; nothing was written.",
    ]
    assert Policy.objects.get(name="login").rate == "5/m"
    assert not Policy.objects.filter(name="new-one").exists()
    assert Tier.objects.count() == 1


def test_dry_run_lists_unchanged_policies(policies, tmp_path):
    out = import_(write(tmp_path, export()), "--dry-run")
    assert out.splitlines() == [
        'policy "login": unchanged',
        'policy "api": unchanged',
        "Dry run: 0 created, 0 updated, 2 unchanged; nothing was written.",
    ]


def test_import_with_an_actor_records_the_admin_history(policies, tmp_path, admin_user):
    data = json.loads(export())
    data["policies"][0]["rate"] = "6/m"
    data["policies"][1]["exemptions"] = []
    data["policies"].append({"name": "fresh", "rate": "1/s", "path": "/f/"})
    path = write(tmp_path, data)

    import_(path, "--actor", admin_user.username)

    entries = {e.object_repr: e for e in LogEntry.objects.filter(user=admin_user)}
    assert set(entries) == {"login", "api", "fresh"}
    assert entries["fresh"].action_flag == ADDITION
    assert entries["login"].action_flag == CHANGE
    assert entries["login"].get_change_message() == "Changed Rate."
    assert entries["api"].get_change_message() == "Changed Exemptions."


def test_an_unknown_actor_is_refused_before_anything_is_read(tmp_path):
    message = fails("ratelimit_policies", "import", "nope.json", "--actor", "ghost")
    assert message == 'No user with username or id "ghost".'


def test_a_long_import_reports_progress(tmp_path):
    entries = [
        {"name": f"bulk-{i:03}", "rate": "10/m", "path": f"/bulk/{i}/"}
        for i in range(250)
    ]
    path = write(tmp_path, {"policies": entries})

    out, err = run("ratelimit_policies", "import", path)

    assert err.splitlines() == [
        "checked 100/250 policies",
        "checked 200/250 policies",
        "checked 250/250 policies",
        "written 100/250 policies",
        "written 200/250 policies",
        "written 250/250 policies",
    ]
    assert "Imported: 250 created, 0 updated, 0 unchanged." in out
    assert Policy.objects.filter(name__startswith="bulk-").count() == 250


def test_import_reads_yaml_from_the_extension_or_the_format_option(tmp_path):
    text = "policies:\n  - name: yaml-one\n    rate: 3/s\n    path: /y/\n"
    import_(write(tmp_path, text, "p.yml"))
    import_(
        write(tmp_path, text.replace("yaml-one", "yaml-two"), "p.txt"),
        "--format",
        "yaml",
    )
    assert set(Policy.objects.values_list("name", flat=True)) == {
        "yaml-one",
        "yaml-two",
    }


def test_import_reads_standard_input(monkeypatch):
    text = "policies:\n  - name: from-stdin\n    rate: 3/s\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    out = import_("-", "--format", "yaml")
    assert 'policy "from-stdin": created' in out
    assert Policy.objects.filter(name="from-stdin").exists()


# -- import errors: each names the file, the policy and the field; nothing is written


GOOD = {"name": "good", "rate": "10/m", "path": "/good/"}


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {"name": "login", "rate": "10/x"},
            'policy "login": rate "10/x": Invalid rate \'10/x\'',
        ),
        (
            {"name": "login", "rat": "10/m"},
            'policy "login": unknown field "rat"; did you mean "rate"?',
        ),
        ({"name": "login"}, 'policy "login": rate: This field cannot be blank.'),
        (
            {"name": "login", "rate": "10/m", "priority": "high"},
            'policy "login": priority "high": must be an integer',
        ),
        (
            {"name": "login", "rate": "10/m", "enabled": "yes"},
            'policy "login": enabled "yes": must be true or false',
        ),
        (
            {"name": "login", "rate": "10/m", "burst": 0},
            'policy "login": burst 0: burst must be a positive integer, got 0.',
        ),
        (
            {"name": "login", "rate": "10/m", "methods": "GET,FETCH"},
            'policy "login": methods "GET,FETCH": Unknown HTTP method(s): FETCH.',
        ),
        (
            {"name": "login", "rate": "10/m", "path_regex": "(["},
            'policy "login": path_regex "([": This regular expression does not compile',
        ),
        (
            {"name": "login", "rate": "10/m", "key": "cookie:x"},
            'policy "login": key "cookie:x": Unknown key type \'cookie:x\'',
        ),
        (
            {"name": "login", "rate": "10/m", "mode": "loud"},
            'policy "login": mode "loud": Value \'loud\' is not a valid choice.',
        ),
        (
            {"name": "login", "rate": "10/m", "exemptions": [{"network": "10.0.0"}]},
            'policy "login": exemptions[0].network "10.0.0": 10.0.0 is not an IP address',
        ),
        (
            {"name": "login", "rate": "10/m", "exemptions": [{"user": "ghost"}]},
            'policy "login": exemptions[0].user "ghost": no such user',
        ),
        (
            {"name": "login", "rate": "10/m", "exemptions": [{"group": "nobody"}]},
            'policy "login": exemptions[0].group "nobody": no such group',
        ),
        (
            {"name": "login", "rate": "10/m", "exemptions": [{"staff": True, "x": 1}]},
            'policy "login": exemptions[0]: give exactly one of network, user, '
            "group, staff",
        ),
        (
            {"name": "login", "rate": "10/m", "tiers": [{"group": "nobody"}]},
            'policy "login": tiers[0]: give group and rate',
        ),
        ({"rate": "10/m"}, "policies[1]: name: required (a non-empty string)"),
        (["login"], "policies[1]: expected a mapping of fields, found list"),
        (GOOD, 'policy "good": appears twice (entries 0 and 1)'),
    ],
)
def test_a_bad_entry_is_named_and_nothing_is_written(tmp_path, entry, says):
    path = write(tmp_path, {"format": 1, "policies": [GOOD, entry]})

    message = fails("ratelimit_policies", "import", path)

    assert message.startswith("Nothing was imported: ")
    assert f"  {path}: {says}" in message, message
    assert not Policy.objects.exists()


def test_a_bad_tier_rate_is_checked_against_the_policys_algorithm(tmp_path, partners):
    entry = {
        "name": "tiered",
        "rate": "10/m",
        "tiers": [{"group": partners.name, "rate": "5/m", "burst": 0}],
    }
    message = fails("ratelimit_policies", "import", write(tmp_path, [entry]))
    assert 'policy "tiered": tiers[0].burst 0: burst must be a positive' in message


def test_every_problem_is_listed_and_an_update_is_not_half_applied(policies, tmp_path):
    data = json.loads(export())
    data["policies"][0]["rate"] = "1/s"  # valid on its own
    data["policies"][1]["rate"] = "lots"
    data["policies"][1]["cost"] = -1
    path = write(tmp_path, data)

    message = fails("ratelimit_policies", "import", path)

    assert message.startswith("Nothing was imported: 2 problem(s):")
    assert 'policy "api": rate "lots"' in message
    assert 'policy "api": cost -1' in message
    assert Policy.objects.get(name="login").rate == "5/m"


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("broken.json", '{"policies": [\n  {"name": "x",}\n]}', "line 2, column 16: "),
        ("broken.yaml", "policies:\n  - name: [x\n", "line 3, column 1: "),
        ("v2.json", '{"format": 2, "policies": []}', "format 2 is not supported"),
        ("top.json", '"policies"', 'expected a mapping with a "policies" list'),
        ("extra.json", '{"policy": []}', "unknown top-level field(s): policy"),
        ("notalist.json", '{"policies": {}}', '"policies" must be a list'),
    ],
)
def test_a_bad_file_is_reported_with_its_line_or_field(tmp_path, name, text, says):
    path = write(tmp_path, text, name)
    message = fails("ratelimit_policies", "import", path)
    assert f"{path}: {says}" in message, message


def test_a_missing_file_fails_clearly(tmp_path):
    path = tmp_path / "absent.json"
    message = fails("ratelimit_policies", "import", str(path))
    assert message == f"Cannot read {path}: No such file or directory"


def test_the_command_exits_non_zero_from_the_shell(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "{", "bad.json")
    result = subprocess.run(
        [sys.executable, "manage.py", "ratelimit_policies", "import", path],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "line 1, column 2: Expecting property name" in result.stderr


# -- explain --------------------------------------------------------------------------


@pytest.fixture
def api_policies():
    """Around /api/items/: three match (one exempts the client), three do not."""
    exempting = make_policy("exempting", path_regex="^/api/items/", priority=5)
    Exemption.objects.create(policy=exempting, network="203.0.113.0/24")
    by_name = make_policy("by-name", url_name="items", rate="5/m", priority=10)
    shadow = make_policy(
        "glob",
        rate="3/m",
        algorithm="fixed_window",
        mode="shadow",
        priority=20,
        path="/api/*",
    )
    make_policy("elsewhere", path="/other/*", priority=1)
    make_policy("disabled", path="/api/*", enabled=False, priority=2)
    make_policy("posts", path="/api/*", methods="POST", priority=3)
    limiter.hit("by-name", CLIENT_IP, "5/m", cost=2)
    limiter.hit("glob", CLIENT_IP, "3/m", algorithm="fixed_window", cost=2)
    return exempting, by_name, shadow


def test_explain_lists_matching_policies_in_order_with_live_usage(api_policies):
    out, _ = run("ratelimit_explain", "/api/items/?page=2", "--ip", CLIENT_IP)

    lines = out.splitlines()
    assert lines[0] == "Policies matching GET /api/items/, in evaluation order:"
    header = lines[1].split()
    assert header[:7] == ["#", "policy", "source", "mode", "rate", "key", "client"]
    rows = [line.split() for line in lines[3:]]
    assert [r[1] for r in rows] == ["exempting", "by-name", "glob"]
    assert rows[0][-3:] == ["exempt", "-", "-"]
    assert "3 / 5" in lines[4] and "0 s" in lines[4]
    assert "shadow" in lines[5] and "1 / 3" in lines[5]
    assert f"ip {CLIENT_IP}" in lines[4]


def test_explain_as_a_user_by_name_or_id(admin_user):
    make_policy("by-user", key="user", path="/api/*", priority=1)
    staff_free = make_policy("staff-free", path="/api/*", priority=2)
    Exemption.objects.create(policy=staff_free, staff=True)

    by_name, _ = run("ratelimit_explain", "/api/x/", "--user", admin_user.username)
    by_id, _ = run("ratelimit_explain", "/api/x/", "--user", str(admin_user.pk))

    assert by_name == by_id
    assert f"user:{admin_user.pk} ({admin_user.username})" in by_name
    assert by_name.splitlines()[4].split()[-3:] == ["exempt", "-", "-"]


def test_explain_lists_the_views_rate_limit_policy():
    out, _ = run("ratelimit_explain", "/code/")
    assert "code-limited  code" in out and "2 / 2" in out


def test_explain_says_when_nothing_matches(db):
    out, _ = run("ratelimit_explain", "/nowhere/", "--method", "delete")
    assert out.strip() == "No policy matches DELETE /nowhere/."


def test_explain_warns_when_the_request_is_never_counted(api_policies):
    out, _ = run("ratelimit_explain", "/api/items/", "--method", "OPTIONS")
    assert out.startswith("This request is never counted")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["api/items"], 'Give a path starting with /, not "api/items".'),
        (["/", "--method", "FETCH"], 'Unknown method "FETCH": use one of GET, HEAD'),
        (["/", "--ip", "1.2.3"], '--ip: "1.2.3" is not an IP address'),
        (["/", "--user", "ghost"], 'No user with username or id "ghost".'),
    ],
)
def test_explain_refuses_bad_input(db, args, says):
    assert fails("ratelimit_explain", *args).startswith(says)


@pytest.fixture
def redis_down(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.RATELIMIT = {**settings.RATELIMIT, "REDIS_URL": url}


def test_explain_shows_the_table_then_fails_when_redis_is_down(
    api_policies, redis_down
):
    out = io.StringIO()
    with pytest.raises(CommandError, match="Redis did not answer"):
        call_command("ratelimit_explain", "/api/items/", stdout=out)
    assert "by-name" in out.getvalue() and "unknown" in out.getvalue()


# -- status and reset --------------------------------------------------------------


def test_status_says_when_a_policy_is_leased():
    make_policy("leased-login", rate="50/m", algorithm="fixed_window", lease=True)
    out, _ = run("ratelimit_status", "leased-login", CLIENT_IP)
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["rate"] == "50/m (fixed_window, leased)"


def test_status_shows_one_clients_live_state():
    make_policy("login", rate="5/m")
    limiter.hit("login", CLIENT_IP, "5/m", cost=5)

    out, _ = run("ratelimit_status", "login", CLIENT_IP)

    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["policy"] == "login (db, enforce)"
    assert fields["rate"] == "5/m (gcra)"
    assert fields["client"] == f"ip {CLIENT_IP}"
    assert (fields["limit"], fields["remaining"]) == ("5", "0")
    assert fields["reset"].startswith("in ") and fields["retry_after"].endswith(
        "(blocked)"
    )


def test_status_as_json_for_scripts():
    make_policy("login", rate="5/m")
    limiter.hit("login", CLIENT_IP, "5/m", cost=2)

    out, _ = run("ratelimit_status", "login", f"ip:{CLIENT_IP}", json=True)

    data = json.loads(out)
    assert (data["limit"], data["remaining"], data["allowed"]) == (5, 3, True)
    assert data["retry_after"] == 0 and 0 < data["reset"] <= 60
    assert (data["client"], data["exempt"]) == (f"ip {CLIENT_IP}", False)


def test_status_of_a_user_by_name_id_or_user_prefix(django_user_model, partners):
    bob = django_user_model.objects.create_user(unique("bob"))
    bob.groups.add(partners)
    policy = make_policy("per-user", key="user", rate="5/m")
    Tier.objects.create(policy=policy, group=partners, rate="50/m")
    limiter.hit("per-user", f"user:{bob.pk}", "50/m", cost=10)

    outputs = [
        run("ratelimit_status", "per-user", who)[0]
        for who in (bob.username, str(bob.pk), f"user:{bob.pk}")
    ]

    assert outputs[0] == outputs[1] == outputs[2]
    assert f"client       user:{bob.pk} ({bob.username})" in outputs[0]
    assert "remaining    40" in outputs[0]
    assert "(group tier; policy: 5/m) (gcra)" in outputs[0]


def test_status_of_an_anonymous_client_of_a_user_policy():
    make_policy("per-user", key="user_or_ip", rate="5/m")
    limiter.hit("per-user", f"ip:{CLIENT_IP}", "5/m")
    out, _ = run("ratelimit_status", "per-user", CLIENT_IP)
    assert f"client       ip:{CLIENT_IP}" in out and "remaining    4" in out


def test_status_of_a_header_key_takes_the_value_and_hides_it():
    make_policy("by-key", key="header:x-api-key", rate="5/m")
    limiter.hit("by-key", "secret-123", "5/m", cost=3)
    out, _ = run("ratelimit_status", "by-key", "secret-123")
    assert "remaining    2" in out
    assert "secret-123" not in out


def test_status_of_an_exempt_client(api_policies):
    out, _ = run("ratelimit_status", "exempting", CLIENT_IP)
    assert out.splitlines()[-1].split(None, 1) == [
        "exempt",
        "yes: this client is not counted",
    ]


def test_status_of_a_settings_policy(settings):
    settings.RATELIMIT = {
        **settings.RATELIMIT,
        "POLICIES": [{"name": "from-settings", "rate": "4/m", "path": "/s/*"}],
    }
    out, _ = run("ratelimit_status", "from-settings", CLIENT_IP)
    assert "from-settings (settings, enforce)" in out and "remaining    4" in out


def test_an_unknown_policy_lists_close_matches():
    make_policy("login")
    make_policy("logout")
    make_policy("search")
    message = fails("ratelimit_status", "logn", CLIENT_IP)
    assert message == 'Unknown policy "logn". Did you mean: login, logout?'
    message = fails("ratelimit_reset", "zzz", CLIENT_IP, interactive=False)
    assert message.startswith('Unknown policy "zzz". Known policies: ')
    assert "login, logout, search" in message


@pytest.mark.parametrize(
    ("key", "identity", "says"),
    [
        ("ip", "alice", 'policy "p" counts by ip: "alice" is not an IP address'),
        ("user", "ghost", 'No user with username or id "ghost".'),
        ("user", "user:999999", 'No user with username or id "999999".'),
    ],
)
def test_status_refuses_an_identity_the_key_cannot_produce(key, identity, says):
    make_policy("p", key=key)
    assert fails("ratelimit_status", "p", identity).startswith(says)


def test_status_fails_when_redis_is_down(redis_down):
    make_policy("login")
    message = fails("ratelimit_status", "login", CLIENT_IP)
    assert message == (
        "Live usage is unavailable: Redis error: Redis did not answer (a fail mode "
        "answered instead); run manage.py ratelimit_doctor"
    )


def test_reset_without_confirmation_forgets_only_that_client(admin_user):
    make_policy("login", rate="5/m")
    for ip in (CLIENT_IP, "198.51.100.7"):
        limiter.hit("login", ip, "5/m", cost=5)

    out, _ = run(
        "ratelimit_reset", "login", CLIENT_IP, "--yes", "--actor", admin_user.username
    )

    assert out.strip() == f'Reset the counters of ip {CLIENT_IP} for policy "login".'
    assert limiter.peek("login", CLIENT_IP, "5/m").remaining == 5
    assert limiter.peek("login", "198.51.100.7", "5/m").remaining == 0
    entry = LogEntry.objects.get(object_repr="login")
    assert entry.change_message == f"Reset the counters of client ip {CLIENT_IP}."


def test_reset_asks_first(monkeypatch):
    make_policy("login", rate="5/m")
    limiter.hit("login", CLIENT_IP, "5/m", cost=5)
    questions = []

    def answer(reply):
        def ask(question):
            questions.append(question)
            return reply

        return ask

    monkeypatch.setattr("builtins.input", answer("n"))
    out, _ = run("ratelimit_reset", "login", CLIENT_IP)
    assert out.strip() == "Cancelled: nothing was reset."
    assert limiter.peek("login", CLIENT_IP, "5/m").remaining == 0
    assert questions == [
        f"ip {CLIENT_IP} has 0 / 5 left. Reset the counters of ip {CLIENT_IP} "
        'for policy "login"? [y/N] '
    ]

    monkeypatch.setattr("builtins.input", answer("yes"))
    run("ratelimit_reset", "login", CLIENT_IP)
    assert limiter.peek("login", CLIENT_IP, "5/m").remaining == 5
    assert LogEntry.objects.count() == 0  # no --actor: logged, not in the history


def test_reset_of_an_exempt_client_says_so_before_asking(api_policies, monkeypatch):
    questions = []
    monkeypatch.setattr("builtins.input", lambda q: questions.append(q) or "n")
    run("ratelimit_reset", "exempting", CLIENT_IP)
    assert questions[0].startswith(f"ip {CLIENT_IP} is exempt from this policy. ")


def test_reset_without_a_terminal_does_nothing(monkeypatch):
    make_policy("login", rate="5/m")
    limiter.hit("login", CLIENT_IP, "5/m", cost=5)

    def no_terminal(question):
        raise EOFError

    monkeypatch.setattr("builtins.input", no_terminal)
    out, _ = run("ratelimit_reset", "login", CLIENT_IP)
    assert "Cancelled" in out
    assert limiter.peek("login", CLIENT_IP, "5/m").remaining == 0


def test_reset_fails_when_redis_is_down(redis_down):
    make_policy("login")
    message = fails("ratelimit_reset", "login", CLIENT_IP, interactive=False)
    assert "Redis did not answer" in message
