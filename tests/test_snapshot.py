"""The policy snapshot: published on change, cached in Redis and per process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from ratelimit_app.models import Policy
from ratelimit_app.snapshot import policy_by_name, snapshot_keys, store
from ratelimit_app.testing import RedisServer
from tests.policy_helpers import policies, statuses

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def stored_policy_names(redis_client) -> list[str]:
    raw = redis_client.get(snapshot_keys()[1])
    return sorted(p["name"] for p in json.loads(raw)["policies"])


def test_a_process_that_finds_no_snapshot_publishes_one(redis_client):
    Policy.objects.create(name="from-db", rate="5/m", path="/x/")
    assert redis_client.get(snapshot_keys()[0]) is None
    assert policy_by_name("from-db").spec.source == "db"
    assert stored_policy_names(redis_client) == ["from-db"]


def test_saves_and_deletes_publish_after_commit(
    redis_client, django_capture_on_commit_callbacks
):
    store.policies()
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(name="published", rate="5/m")
    assert stored_policy_names(redis_client) == ["published"]
    version = redis_client.get(snapshot_keys()[0])
    with django_capture_on_commit_callbacks(execute=True):
        policy.delete()
    assert stored_policy_names(redis_client) == []
    assert redis_client.get(snapshot_keys()[0]) != version


def test_a_corrupt_snapshot_is_rebuilt_from_the_database(client, redis_client, caplog):
    with policies(POLICY_REFRESH_INTERVAL=0):
        Policy.objects.create(name="survivor", rate="1/m", path="/plain/")
        store.policies()
        version_key, data_key = snapshot_keys()
        redis_client.set(data_key, b"\xff{not json")
        redis_client.set(version_key, "tampered")
        with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
            assert statuses(client, "/plain/", 2) == [200, 429]
    assert "corrupt policy snapshot" in caplog.text
    assert stored_policy_names(redis_client) == ["survivor"]


def test_an_invalid_row_is_skipped_and_the_rest_enforced(client, caplog):
    Policy.objects.create(name="good", rate="1/m", path="/plain/")
    Policy.objects.create(name="bad", rate="1/m", path="/api/*")
    Policy.objects.filter(name="bad").update(path_regex="([unclosed")  # skips clean()
    with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
        assert statuses(client, "/plain/", 2) == [200, 429]
        assert statuses(client, "/api/items/", 2) == [200, 200]
    assert "skipping db policy 'bad': path_regex does not compile" in caplog.text


def test_a_settings_entry_with_an_unknown_field_is_skipped(caplog):
    with (
        caplog.at_level(logging.ERROR, logger="ratelimit_app"),
        policies(
            {"name": "typo", "rate": "1/m", "pth": "/x/"},
            {"name": "fine", "rate": "1/m"},
        ),
    ):
        assert policy_by_name("fine") is not None
        assert policy_by_name("typo") is None
    assert "RATELIMIT['POLICIES'][0] is invalid: unknown field(s) pth" in caplog.text


def test_steady_state_needs_no_database_query(client, django_assert_num_queries):
    with policies({"name": "steady", "rate": "100/m", "path": "/plain/"}):
        client.get("/plain/")  # loads the snapshot once
        with django_assert_num_queries(0):
            assert statuses(client, "/plain/", 5) == [200] * 5


def test_the_version_is_read_once_per_interval_and_again_after_a_settings_change(
    monkeypatch,
):
    reads = []
    read_version = store._read_version
    monkeypatch.setattr(
        store, "_read_version", lambda: reads.append(1) or read_version()
    )
    with policies({"name": "fresh", "rate": "1/m"}, POLICY_REFRESH_INTERVAL=60):
        for _ in range(3):
            assert policy_by_name("fresh") is not None
        assert len(reads) == 1
        with policies({"name": "other", "rate": "1/m"}, POLICY_REFRESH_INTERVAL=0):
            for _ in range(2):
                assert policy_by_name("fresh") is None
            assert len(reads) == 3  # a zero interval checks on every read


def test_a_failed_publish_is_retried(django_capture_on_commit_callbacks):
    server = RedisServer().start()
    try:
        with policies(REDIS_URL=server.url, POLICY_REFRESH_INTERVAL=0):
            store.policies()
            server.stop()
            with django_capture_on_commit_callbacks(execute=True):
                Policy.objects.create(name="late", rate="5/m")
            assert store.publish_pending
            assert policy_by_name("late") is not None  # adopted locally anyway
            server = RedisServer(port=server.port).start()
            store.policies()
            assert not store.publish_pending
            client = redis.Redis.from_url(server.url)
            assert stored_policy_names(client) == ["late"]
    finally:
        server.stop()


class CommandLog:
    """Records the commands clients send to a Redis server, through MONITOR.

    Commands run inside scripts show as client type "lua" and are left out.
    """

    MARKER = "ratelimit-test-end-of-log"

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.marker = redis.Redis.from_url(url)
        self.marker.ping()  # connected now, so its handshake is not logged
        self.commands: list[str] = []
        self._monitor = self.client.monitor().__enter__()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        for entry in self._monitor.listen():
            if self.MARKER in entry["command"]:
                return
            if entry.get("client_type") != "lua":
                self.commands.append(entry["command"].split()[0].upper())

    def stop(self) -> list[str]:
        self.marker.echo(self.MARKER)
        self._thread.join(timeout=10)
        self._monitor.__exit__(None, None, None)
        return self.commands


def test_three_policies_cost_one_script_call_per_request(client):
    server = RedisServer().start()
    try:
        entries = [
            {
                "name": f"p{n}",
                "rate": "1000/m",
                "path": "/plain/",
                "algorithm": algorithm,
            }
            for n, algorithm in enumerate(
                ("gcra", "fixed_window", "sliding_window_log")
            )
        ]
        with policies(*entries, REDIS_URL=server.url):
            client.get("/plain/")  # warm up: snapshot loaded, script registered
            log = CommandLog(server.url)
            started = time.monotonic()  # the log's window
            time.sleep(0.2)  # MONITOR is on before the first request
            assert statuses(client, "/plain/", 20) == [200] * 20
            commands = log.stop()
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    # One script call per request: FCALL of the function (Redis 7).
    assert commands.count("FCALL") == 20
    # Besides the decisions, only the snapshot freshness check, at most once a
    # second: one pipelined round trip of two GETs (version key, deny epoch).
    # (Under load the 20 requests can cross a check; the window may hold one
    # more check than its whole seconds.)
    others = [c for c in commands if c != "FCALL"]
    assert set(others) <= {"GET"}
    assert len(others) <= 2 * (int(elapsed) + 1)


def test_an_edit_reaches_another_process_within_a_second(
    django_capture_on_commit_callbacks, tmp_path
):
    with django_capture_on_commit_callbacks(execute=True):
        policy = Policy.objects.create(
            name="cross", rate="100000/h", algorithm="fixed_window", path="/plain/"
        )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "RATELIMIT_TEST_PREFIX": settings.RATELIMIT["KEY_PREFIX"],
        "REDIS_URL": settings.RATELIMIT["REDIS_URL"],
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.second_process", "/plain/", "15"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        with django_capture_on_commit_callbacks(execute=True):
            policy.rate = "1/h"
            policy.save()
        edited = time.time()
        first_block = float(worker.stdout.readline())
    finally:
        worker.kill()
        worker.wait()
    assert 0 <= first_block - edited <= 1.05  # refresh interval 1 s + one 20 ms poll


def test_an_unavailable_database_is_logged_not_a_500(client, caplog, monkeypatch):
    from django.db import DatabaseError

    from ratelimit_app import snapshot

    def broken():
        raise DatabaseError("connection refused")

    # The database is what fails here; Redis holds no snapshot yet.
    monkeypatch.setattr(snapshot, "db_specs", broken)
    with (
        caplog.at_level(logging.ERROR, logger="ratelimit_app"),
        policies({"name": "from-settings", "rate": "1/m", "path": "/plain/"}),
    ):
        assert statuses(client, "/plain/", 2) == [200, 429]
    assert "cannot read policies from the database" in caplog.text
    assert store.publish_pending


# -- a corrupt snapshot in Redis -------------------------------------------------

VALID_POLICY = {"name": "forged", "rate": "1000/m", "path": "/plain/"}
CORRUPT_DATA = {
    "garbage bytes": b"\x00\xff\xfe{not json",
    "empty": b"",
    "a JSON array": b"[]",
    "a JSON string": b'"snapshot"',
    "missing fields": b'{"format": 1}',
    "another format": json.dumps({"format": 99, "token": "t", "policies": []}),
    "policies not a list": b'{"format": 1, "token": "t", "policies": "abc"}',
    "a policy not a dict": b'{"format": 1, "token": "t", "policies": [42]}',
    "a policy with an unknown field": json.dumps(
        {"format": 1, "token": "t", "policies": [{**VALID_POLICY, "x": 1}]}
    ),
    "a policy with wrong types": json.dumps(
        {
            "format": 1,
            "token": "t",
            "policies": [{**VALID_POLICY, "priority": "high", "tiers": 7}],
        }
    ),
    "a token that is not a string": json.dumps(
        {"format": 1, "token": {"a": 1}, "policies": [VALID_POLICY]}
    ),
    "deeply nested": b"[" * 100_000,
    "huge numbers": b'{"format": 1, "token": "t", "policies": [' + b"9" * 5000 + b"]}",
}


def corrupt_and_request(client, redis_client, data=None, version=None):
    """Statuses of two requests to /plain/ (one DB policy of 1/m) after
    replacing the stored snapshot's data or version."""
    Policy.objects.create(name="survivor", rate="1/m", path="/plain/")
    store.policies()
    version_key, data_key = snapshot_keys()
    if data is not None:
        redis_client.set(data_key, data)
        redis_client.set(version_key, "tampered")  # every process reloads
    if version is not None:
        redis_client.set(version_key, version)
    return statuses(client, "/plain/", 2)


@pytest.mark.parametrize("data", CORRUPT_DATA.values(), ids=CORRUPT_DATA.keys())
def test_corrupt_snapshot_data_is_rebuilt_never_a_500(
    client, redis_client, caplog, data
):
    with (
        policies(POLICY_REFRESH_INTERVAL=0),
        caplog.at_level(logging.ERROR, logger="ratelimit_app"),
    ):
        assert corrupt_and_request(client, redis_client, data=data) == [200, 429]
        assert policy_by_name("forged") is None
    assert "corrupt policy snapshot" in caplog.text
    assert stored_policy_names(redis_client) == ["survivor"]


@pytest.mark.parametrize(
    "version", [b"\xff\xfe\x00", b"", b"x" * 100_000], ids=["bytes", "empty", "long"]
)
def test_a_garbage_version_token_is_replaced_never_a_500(client, redis_client, version):
    with policies(POLICY_REFRESH_INTERVAL=0):
        assert corrupt_and_request(client, redis_client, version=version) == [
            200,
            429,
        ]
        assert_consistent(redis_client)


def test_a_version_token_that_names_other_data_is_republished(client, redis_client):
    """The version key says one token, the data carries another (a partial
    restore, a hand edit): the process republishes instead of reloading the
    data at every check."""
    with policies(POLICY_REFRESH_INTERVAL=0):
        assert corrupt_and_request(client, redis_client, version="stale") == [200, 429]
        assert_consistent(redis_client)
        token = store.token
        assert statuses(client, "/plain/", 2) == [429, 429]
        assert store.token == token  # settled: no republish at every check


@pytest.mark.parametrize(
    ("index", "logged"),
    [(0, "WRONGTYPE"), (1, "no data string")],
    ids=["version", "data"],
)
def test_a_snapshot_key_of_the_wrong_type_is_replaced(
    client, redis_client, caplog, index, logged
):
    with policies(POLICY_REFRESH_INTERVAL=0):
        Policy.objects.create(name="survivor", rate="1/m", path="/plain/")
        store.policies()
        key = snapshot_keys()[index]
        redis_client.delete(key)
        redis_client.rpush(key, "not", "a", "string")
        if index == 1:
            redis_client.set(snapshot_keys()[0], "tampered")
        with caplog.at_level(logging.ERROR, logger="ratelimit_app"):
            assert statuses(client, "/plain/", 2) == [200, 429]
        assert_consistent(redis_client)
    assert stored_policy_names(redis_client) == ["survivor"]
    assert logged in caplog.text


def assert_consistent(redis_client) -> None:
    version_key, data_key = snapshot_keys()
    stored = json.loads(redis_client.get(data_key))
    assert redis_client.get(version_key).decode() == stored["token"] == store.token
