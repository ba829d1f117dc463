"""manage.py ratelimit_doctor against real Redis servers: ok, warn, fail, unknown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from ratelimit_app import doctor
from ratelimit_app.doctor import FAIL, OK, UNKNOWN, WARN, Fixes
from ratelimit_app.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


def run_doctor(**ratelimit) -> tuple[int, str]:
    """(exit code, output) of the command under these RATELIMIT values."""
    out = StringIO()
    with override_settings(RATELIMIT={**settings.RATELIMIT, **ratelimit}):
        try:
            call_command("ratelimit_doctor", stdout=out, no_color=True)
        except CommandError as exc:
            return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def statuses(output: str) -> dict[str, str]:
    """{check: status} from the command's output."""
    found = {}
    for line in output.splitlines():
        if line.startswith("["):
            status, _, rest = line[1:].partition("] ")
            found[rest.partition(":")[0]] = status
    return found


@pytest.fixture
def admin(private_redis_server):
    client = redis.Redis.from_url(private_redis_server.url)
    yield client
    client.close()


def test_a_healthy_setup_is_all_ok(redis_url):
    code, output = run_doctor(REDIS_URL=redis_url)
    assert code == 0, output
    assert statuses(output) == dict.fromkeys(
        ["connection", "scripting", "eviction", "cluster", "clock", "beat"], OK
    )
    assert "fix:" not in output


@pytest.mark.parametrize(
    "policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru"]
)
def test_an_evicting_policy_warns_with_the_fix(private_redis_server, admin, policy):
    admin.config_set("maxmemory", "100mb")
    admin.config_set("maxmemory-policy", policy)
    code, output = run_doctor(REDIS_URL=private_redis_server.url)
    assert code == 1
    assert statuses(output)["eviction"] == WARN
    assert f"maxmemory-policy {policy}" in output
    assert f"fix: {Fixes.EVICTION}" in output
    says_volatile = "volatile-* policies evict them as readily" in output
    assert says_volatile == policy.startswith("volatile-")


@pytest.mark.parametrize(
    ("maxmemory", "policy"), [("100mb", "noeviction"), ("0", "allkeys-lru")]
)
def test_noeviction_or_no_maxmemory_is_ok(
    private_redis_server, admin, maxmemory, policy
):
    admin.config_set("maxmemory", maxmemory)
    admin.config_set("maxmemory-policy", policy)
    code, output = run_doctor(REDIS_URL=private_redis_server.url)
    assert (code, statuses(output)["eviction"]) == (0, OK), output


def test_a_closed_port_fails_and_skips_the_redis_checks():
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, output = run_doctor(REDIS_URL=url)
    assert code == 2
    assert statuses(output) == {"connection": FAIL, "beat": OK}
    assert f"cannot reach {url}" in output
    assert f"fix: {Fixes.CONNECTION}" in output


def test_the_exit_code_reaches_the_shell():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "manage.py", "ratelimit_doctor"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "[fail] connection" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "1 problem(s) found" in result.stderr
    assert time.monotonic() - started < 30


def test_missing_beat_tasks_warn_naming_them(redis_url):
    with override_settings(CELERY_BEAT_SCHEDULE={}):
        code, output = run_doctor(REDIS_URL=redis_url)
    assert code == 1
    assert statuses(output)["beat"] == WARN
    for task in doctor.BEAT_TASKS:
        assert task in output
    assert f"fix: {Fixes.BEAT}" in output


def test_one_missing_beat_task_is_named_alone(redis_url):
    schedule = {
        name: entry
        for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        if entry["task"] != "ratelimit_app.tasks.prune_usage"
    }
    with override_settings(CELERY_BEAT_SCHEDULE=schedule):
        finding = doctor.check_beat_tasks()
    assert finding.status == WARN
    assert "does not schedule ratelimit_app.tasks.prune_usage:" in finding.message


def test_beat_tasks_are_not_needed_without_usage_counting(redis_url):
    with override_settings(CELERY_BEAT_SCHEDULE={}):
        code, output = run_doctor(REDIS_URL=redis_url, COUNT_USAGE=False)
    assert (code, statuses(output)["beat"]) == (0, OK)


def limited_user(admin, private_redis_server, *rules: str) -> str:
    """The URL of an ACL user with ``rules`` on the private server."""
    admin.acl_setuser("doctor", enabled=True, passwords=["+pw"], keys=["*"])
    admin.execute_command("ACL", "SETUSER", "doctor", "+@all", *rules)
    return f"redis://doctor:pw@127.0.0.1:{private_redis_server.port}/0"


def test_config_get_refused_is_reported_as_could_not_check(admin, private_redis_server):
    url = limited_user(admin, private_redis_server, "-config")
    code, output = run_doctor(REDIS_URL=url)
    assert statuses(output)["eviction"] == UNKNOWN
    assert "could not check: CONFIG GET was refused" in output
    assert f"fix: {Fixes.EVICTION_UNKNOWN}" in output
    assert code == 0  # nothing known to be wrong
    assert "redis://doctor:***@" in output


def test_lua_refused_fails(admin, private_redis_server):
    url = limited_user(admin, private_redis_server, "-@scripting")
    code, output = run_doctor(REDIS_URL=url)
    assert code == 2
    assert statuses(output)["scripting"] == FAIL
    assert f"fix: {Fixes.SCRIPTING}" in output


@pytest.mark.parametrize("offset", [5.0, -5.0])
def test_clock_skew_above_a_second_warns(redis_client, offset):
    finding = doctor.check_clock(redis_client, now=lambda: time.time() + offset)
    assert finding.status == WARN
    # The round trip to Redis (slow on a loaded machine) shifts the reading.
    skew = float(re.search(r"clock is ([-+]?[\d.]+) s", finding.message).group(1))
    assert abs(skew + offset) < 0.5, finding.message
    assert finding.fix == Fixes.CLOCK


def test_a_small_skew_is_ok(redis_client):
    finding = doctor.check_clock(redis_client, now=lambda: time.time() + 0.2)
    assert finding.status == OK


def test_exit_codes():
    def finding(status):
        return doctor.Finding("x", status, "")

    assert doctor.exit_code([finding(OK), finding(UNKNOWN)]) == 0
    assert doctor.exit_code([finding(OK), finding(WARN)]) == 1
    assert doctor.exit_code([finding(WARN), finding(FAIL)]) == 2


# -- Redis Cluster -------------------------------------------------------------------


@pytest.fixture
def cluster():
    from tests.topologies import Cluster, TopologyUnavailable

    try:
        started = Cluster().start()
    except TopologyUnavailable as exc:
        pytest.skip(str(exc))
    yield started
    started.stop()


def test_cluster_slot_coverage(cluster):
    from tests.topologies import command

    code, output = run_doctor(REDIS_URL=cluster.url)
    assert code == 0, output
    assert "all 16384 slots served (" in output
    first = cluster.nodes[0]
    command(first, "CLUSTER DELSLOTS", 0, 1, 2)
    code, output = run_doctor(REDIS_URL=cluster.url)
    assert code == 2
    assert statuses(output)["cluster"] == FAIL
    assert f"127.0.0.1:{first.port}: cluster_state fail" in output
    assert f"fix: {Fixes.CLUSTER}" in output
