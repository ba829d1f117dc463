"""`make lb-demo`: two gunicorn instances behind nginx share one limit of 100 a day.

Starts two gunicorn instances of the demo (2 sync workers each) on free
loopback ports, nginx in front of them on ``LB_PORT`` (default 9000) with a
config generated into a temporary directory, and sends ``ab -n 1000 -c 100``
to ``/demo-service/hello``. That path is limited by the settings policy
``demo-service`` (``DEMO_SERVICE_RATE``, default ``100/d`` per client IP), so
exactly 100 responses must be 200 and the other 900 429, served by both
instances: each instance's own gunicorn access log gives its counts.

Every run starts from zero: a fresh SQLite file and a key prefix of its own
(``RATELIMIT_KEY_PREFIX``) on ``REDIS_URL``, else 127.0.0.1:6379, else an
embedded redis-server; its keys are deleted at the end. nginx and ab come from
Debian's ``nginx`` and ``apache2-utils`` (installed with apt-get when missing
and run as root). Without nginx (``--balancer client``, or when it cannot be
installed) the client alternates between the two ports itself, with 100
threads. Every process is stopped by its PID, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.http import apt_install
from ratelimit_app.backends.topology import client_from_url
from ratelimit_app.testing import (
    RedisServer,
    embedded_redis_binary,
    find_redis_url,
    free_port,
    redis_answers,
)

ROOT = Path(__file__).resolve().parent.parent
PATH = "/demo-service/hello"
RATE = "100/d"
LIMIT = 100
REQUESTS = 1000
CONCURRENCY = 100
WORKERS = 2  # gunicorn sync workers per instance
# One access log line per request: status and path.
ACCESS_FORMAT = "%(s)s %(U)s"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format lb '$status $upstream_addr $request_uri';
    access_log {dir}/nginx-access.log lb;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream demo {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://demo;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def stop_process(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM by PID (gunicorn and nginx masters stop their workers), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


@dataclass
class Instance:
    """One gunicorn serving the demo; its access log counts what it answered."""

    name: str
    port: int
    dir: Path
    process: subprocess.Popen | None = None

    @property
    def access_log(self) -> Path:
        return self.dir / f"{self.name}-access.log"

    @property
    def error_log(self) -> Path:
        return self.dir / f"{self.name}-error.log"

    def start(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT)]
        command += ["--workers", str(WORKERS), "--bind", f"127.0.0.1:{self.port}"]
        command += ["--access-logfile", str(self.access_log)]
        command += ["--access-logformat", ACCESS_FORMAT]
        command += ["--error-logfile", str(self.error_log), "--log-level", "warning"]
        command += ["demo_project.wsgi"]
        env = {**env, "DEMO_INSTANCE": self.name}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll the (unlimited) index page until it answers 200."""
        wait_for_http(self.port, "/", self.process, self.error_log, timeout)

    def statuses(self) -> Counter[int]:
        """Statuses of the answers to PATH, from the access log."""
        counts: Counter[int] = Counter()
        with contextlib.suppress(OSError):
            for line in self.access_log.read_text().splitlines():
                status, _, path = line.partition(" ")
                if path == PATH:
                    counts[int(status)] += 1
        return counts

    def stop(self) -> None:
        stop_process(self.process)


def wait_for_http(
    port: int, path: str, process: subprocess.Popen, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = None
        with contextlib.suppress(OSError):
            status = get_status(port, path)
        if status == 200:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            what = "exited" if process.poll() is not None else f"answered {status}"
            raise RuntimeError(
                f"{' '.join(map(str, process.args[:4]))}... on port {port} {what}; "
                f"its log:\n{log_tail(log)}"
            )
        time.sleep(0.1)


def get_status(port: int, path: str, timeout: float = 30.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class Nginx:
    """nginx in the foreground with a generated config, stopped by its PID."""

    binary: str
    port: int
    upstreams: Sequence[int]
    dir: Path
    process: subprocess.Popen | None = None

    @property
    def error_log(self) -> Path:
        return self.dir / "nginx-error.log"

    def config(self) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.upstreams)
        return NGINX_CONF.format(dir=self.dir, servers=servers, port=self.port)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        # -e: the error log before the config is read (not /var/log/nginx).
        command = [self.binary, "-p", str(self.dir), "-c", str(conf)]
        command += ["-e", str(self.error_log)]
        self.process = subprocess.Popen(command, cwd=self.dir)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for_http(self.port, "/", self.process, self.error_log, timeout)

    def stop(self) -> None:
        stop_process(self.process)


# -- load ------------------------------------------------------------------------


def find_tool(command: str, package: str, install: bool) -> str | None:
    """``command`` from PATH (and /usr/sbin), else apt-get install ``package``."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(command, path=path)
    if found is None and install and apt_install(package):
        found = shutil.which(command, path=path)
    return found


def run_ab(ab: str, url: str, requests: int, concurrency: int) -> Counter[str]:
    """``ab -n -c``; its own tally: complete requests and non-2xx among them."""
    command = [ab, "-q", "-n", str(requests), "-c", str(concurrency), "-s", "30", url]
    print("$", " ".join(command[0:1] + command[2:]))
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"ab failed:\n{run.stdout}{run.stderr}")
    complete = int(re.search(r"^Complete requests:\s+(\d+)", run.stdout, re.M)[1])
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", run.stdout, re.M)
    non_2xx = int(non_2xx[1]) if non_2xx else 0
    return Counter({"2xx": complete - non_2xx, "non-2xx": non_2xx})


def run_threads(ports: Sequence[int], requests: int, concurrency: int) -> Counter[str]:
    """The client balances: request i goes to ports[i % len(ports)]."""

    def one(number: int) -> int:
        return get_status(ports[number % len(ports)], PATH)

    print(
        f"client: {requests} requests, {concurrency} threads, alternating ports "
        + ", ".join(map(str, ports))
    )
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        statuses = Counter(pool.map(one, range(requests)))
    finally:  # on Ctrl-C, drop the requests not sent yet
        pool.shutdown(cancel_futures=True)
    return Counter({str(status): count for status, count in statuses.items()})


# -- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    balancer: str  # "nginx" or "client"
    client: Counter[str]  # what the load tool saw
    instances: dict[str, Counter[int]] = field(default_factory=dict)

    @property
    def total(self) -> Counter[int]:
        return sum(self.instances.values(), Counter())

    def problems(self, requests: int, limit: int = LIMIT) -> list[str]:
        found = []
        total = self.total
        if total[200] != limit or total[429] != requests - limit:
            found.append(
                f"expected {limit} x 200 and {requests - limit} x 429, got "
                f"{dict(sorted(total.items()))}"
            )
        idle = [name for name, counts in self.instances.items() if not counts]
        if idle:
            found.append(f"no request served by {', '.join(idle)}")
        return found

    def table(self) -> str:
        rows = ["instance   200   429  other", "-" * 27]
        for name, counts in [*self.instances.items(), ("total", self.total)]:
            other = sum(n for status, n in counts.items() if status not in (200, 429))
            rows.append(f"{name:<8} {counts[200]:>5} {counts[429]:>5} {other:>6}")
        return "\n".join(rows)


def migrate(env: dict[str, str]) -> None:
    command = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{run.stdout}{run.stderr}")


def delete_keys(url: str, prefix: str) -> None:
    client = client_from_url(url)  # a cluster client scans every primary
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def run(
    redis_url: str,
    *,
    balancer: str = "auto",
    lb_port: int | None = None,
    requests: int = REQUESTS,
    concurrency: int = CONCURRENCY,
    install: bool = True,
    workdir: Path | None = None,
    limiter_url: str | None = None,
) -> Result:
    """One demo run: fresh database and key prefix, two instances, the load.

    ``limiter_url`` puts the limiter on another Redis than the cache (e.g. a
    ``redis+cluster://`` URL, as docker-compose's cluster profile does).
    """
    limiter_url = limiter_url or redis_url
    nginx = None if balancer == "client" else find_tool("nginx", "nginx", install)
    ab = find_tool("ab", "apache2-utils", install) if nginx else None
    if balancer == "nginx" and not (nginx and ab):
        raise RuntimeError("nginx or ab not found and not installable (apt-get)")
    prefix = f"lbdemo-{uuid.uuid4().hex[:12]}:"
    with tempfile.TemporaryDirectory(prefix="ratelimit-lb-demo-") as tmp:
        dir = Path(workdir or tmp)
        dir.chmod(0o755)  # nginx workers run as nobody when we are root
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo_project.settings",
            "DJANGO_DEBUG": "0",
            "REDIS_URL": redis_url,
            "RATELIMIT_REDIS_URL": limiter_url,
            "RATELIMIT_KEY_PREFIX": prefix,
            "RATELIMIT_TRUSTED_PROXIES": "0",
            "DEMO_SERVICE_RATE": RATE,
            "SQLITE_PATH": str(dir / "db.sqlite3"),
        }
        env.pop("DATABASE_URL", None)  # a fresh SQLite file, never a shared DB
        migrate(env)
        instances = [Instance(f"web{n}", free_port(), dir) for n in (1, 2)]
        ports = [instance.port for instance in instances]
        try:
            for instance in instances:
                instance.start(env)
            for instance in instances:
                instance.wait_ready()
            print(
                f"instances: {', '.join(f'{i.name} 127.0.0.1:{i.port}' for i in instances)}"
                f" (limiter on {limiter_url}, key prefix {prefix})"
            )
            if nginx and ab:
                client = run_behind_nginx(
                    nginx, ab, ports, lb_port, dir, requests, concurrency
                )
                used = "nginx"
            else:
                client = run_threads(ports, requests, concurrency)
                used = "client"
        finally:
            for instance in instances:
                instance.stop()
            delete_keys(limiter_url, prefix)
        result = Result(used, client, {i.name: i.statuses() for i in instances})
    return result


def run_behind_nginx(
    binary: str,
    ab: str,
    ports: Sequence[int],
    lb_port: int | None,
    dir: Path,
    requests: int,
    concurrency: int,
) -> Counter[str]:
    port = lb_port or int(os.environ.get("LB_PORT") or 9000)
    nginx = Nginx(binary, port, ports, dir / "nginx")
    try:
        nginx.start()
        nginx.wait_ready()
        print(f"nginx: http://127.0.0.1:{port}/ -> ports {', '.join(map(str, ports))}")
        return run_ab(ab, f"http://127.0.0.1:{port}{PATH}", requests, concurrency)
    finally:
        nginx.stop()


# -- command line -------------------------------------------------------------------


@contextlib.contextmanager
def demo_redis() -> Iterator[str]:
    """REDIS_URL, else 127.0.0.1:6379, else an embedded redis-server for the run."""
    url = find_redis_url()
    if url:
        if not redis_answers(url, timeout=2):
            sys.exit(f"REDIS_URL={url} does not answer PING: start Redis or unset it.")
        yield url
        return
    server = RedisServer(binary=shutil.which("redis-server") or embedded_redis_binary())
    try:
        yield server.start().url
    finally:
        server.stop()


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the demo as cleanly as Ctrl-C does."""
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--balancer",
        choices=("auto", "nginx", "client"),
        default="auto",
        help="auto: nginx + ab when installed or installable, else the client",
    )
    parser.add_argument("--lb-port", type=int, help="nginx's port (LB_PORT, 9000)")
    parser.add_argument(
        "--limiter-url",
        help="the limiter's Redis (RATELIMIT_REDIS_URL), e.g. redis+cluster://...; "
        "default: the demo's Redis",
    )
    parser.add_argument("-n", "--requests", type=int, default=REQUESTS)
    parser.add_argument("-c", "--concurrency", type=int, default=CONCURRENCY)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: Callable = print) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with demo_redis() as url:
            result = run(
                url,
                balancer=options.balancer,
                lb_port=options.lb_port,
                requests=options.requests,
                concurrency=options.concurrency,
                limiter_url=options.limiter_url
                or os.environ.get("RATELIMIT_REDIS_URL"),
            )
    except KeyboardInterrupt:
        out("interrupted: every process stopped")
        return 130
    out(f"load tool ({result.balancer}): {dict(result.client)}")
    out(result.table())
    problems = result.problems(options.requests)
    for problem in problems:
        out(f"FAIL: {problem}")
    if not problems:
        out(
            f"OK: exactly {LIMIT} of {options.requests} allowed ({RATE} per IP), "
            "the rest 429, served by both instances through one Redis"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
