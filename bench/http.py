"""Requests/s of one Django view behind each limiter: gunicorn served, wrk driven.

A report, not a timed test: ``python -m bench.http`` prints a markdown table.
One Redis (``REDIS_URL``, else 127.0.0.1:6379, else a private redis-server);
every key under a per-run prefix, deleted at the end.

Method:

* contenders (``bench.http_site``): the same tiny view with no limiter; our
  middleware with 1 and with 3 matching policies (GCRA, key ip) and with 1
  leased policy (GCRA, ``lease`` on, one bucket shared by every request); the
  ceiling of the 3 policies, a bare middleware sending their decision script
  (prepared once, our transport) and nothing else, so the gap between it and
  ours is our Python's and the rest of the gap to the floor is the script's;
  the floor, a middleware doing one bare ``EVALSHA`` of ``return 1``;
  django-ratelimit's ``@ratelimit`` on the django-redis cache;
  django-smart-ratelimit's ``@rate_limit`` on its Redis backend; DRF's
  ``AnonRateThrottle``. Rates are high enough that nothing is denied, so every
  response must be a 200.
* deny storm: our middleware with one policy of 1/h keyed by ip, so wrk's one
  client is denied from its second request on and every measured response
  must be a 429; once with the local deny cache on (the default), once with
  ``DENY_CACHE`` off. Its own table; its ratios are to the same 200 contenders.
* servers: one gunicorn per contender (2 sync workers, loopback port), all
  started once after ``migrate`` into a temporary SQLite file, each checked
  with one request (a 200; ours must list its policies in
  ``RateLimit-Policy``; a storm's second request must be a 429) and warmed up
  with a short load.
* load: ``wrk -tT -cC -dDs --latency`` (else ``ab``; ``apt-get install wrk``
  when neither is there and we are root), one contender at a time, in an
  order rotated every round, so a noisy machine's drifts land on all alike.
* figures: req/s is the median over rounds; the ratios to no limiter and to
  the floor are medians of the per-round ratios (paired within a round);
  p50/p99 latency are medians over rounds of the tool's percentiles.
* Redis calls per request: ``INFO commandstats`` read just before and just
  after each measured load; the deltas of every round, summed, over the
  requests the tool reported. "all" counts every command Redis executed,
  those a Lua script runs and each command of a pipeline included, ``INFO``
  excluded. The counts are the server's, not the contender's: on a shared
  Redis (127.0.0.1:6379, where other work may run) anything else it serves
  meanwhile adds to them; ``--own-redis`` starts a private redis-server.
  Idle servers add next to nothing (a lease's give-back or a storm's last
  usage flush, within a second after their own load).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import redis

from bench.decisions import bench_redis, delete_keys, met, without_password
from bench.http_site import (
    CONTENDERS,
    DJANGO_RATELIMIT,
    DRF_THROTTLE,
    FLOOR,
    NONE,
    OUR_POLICIES,
    OURS_1,
    OURS_3,
    OURS_LEASED,
    PATH,
    RATE,
    SCRIPT_3,
    SMART_RATELIMIT,
    STORM_CACHED,
    STORM_RATE,
    STORM_UNCACHED,
    STORMS,
    key_prefixes,
)
from ratelimit_app.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "bench.http_site.settings"
WORKERS = 2
TARGET = 0.95  # ours with 3 policies, as a share of the floor's req/s
LEASED_TARGET = 0.90  # ours with 1 leased policy, as a share of no limiter's req/s
# The deny storm with the deny cache on: decision scripts per request (each
# worker runs one, at its first denial; the rest are answered locally).
STORM_SCRIPT_TARGET = 0.001
# The commands broken down per request (the decision script, the snapshot
# refresh and the deny cache's epoch read), beside "all".
COUNTED = ("fcall", "evalsha", "eval", "get", "mget")
ALL = "all"

LABELS = {
    NONE: "no limiter",
    OURS_1: "ratelimit_app middleware, 1 policy",
    OURS_3: "ratelimit_app middleware, 3 policies",
    OURS_LEASED: "ratelimit_app middleware, 1 leased policy (one shared bucket)",
    SCRIPT_3: "ceiling: the 3 policies' decision script alone (a bare middleware)",
    FLOOR: "floor: EVALSHA `return 1` middleware",
    DJANGO_RATELIMIT: "django-ratelimit @ratelimit (django-redis cache)",
    SMART_RATELIMIT: "django-smart-ratelimit @rate_limit (redis, fixed_window)",
    DRF_THROTTLE: "DRF AnonRateThrottle (django-redis cache; a list of request times)",
    STORM_CACHED: "ratelimit_app, deny storm, deny cache on",
    STORM_UNCACHED: "ratelimit_app, deny storm, deny cache off",
}
assert set(LABELS) == set(CONTENDERS)


# -- the load tool ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadTool:
    name: str  # "wrk" or "ab"
    path: str
    installed: bool = False  # installed by this run


def find_load_tool(install: bool = True) -> LoadTool | None:
    """wrk, else ab; when neither is on PATH, apt-get install wrk (root only)."""
    for name in ("wrk", "ab"):
        if path := shutil.which(name):
            return LoadTool(name, path)
    if install and apt_install("wrk") and (path := shutil.which("wrk")):
        return LoadTool("wrk", path, installed=True)
    return None


def apt_install(package: str) -> bool:
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    print(f"installing {package} with apt-get", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    install = ["apt-get", "install", "-y", "-q", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, **quiet).returncode == 0:
        return True
    subprocess.run(["apt-get", "update", "-q"], env=env, **quiet)  # stale lists
    return subprocess.run(install, env=env, **quiet).returncode == 0


def tool_version(tool: LoadTool) -> str:
    flag = "-v" if tool.name == "wrk" else "-V"
    run = subprocess.run([tool.path, flag], capture_output=True, text=True)
    first = (run.stdout or run.stderr).strip().splitlines()
    return first[0].partition(" Copyright")[0] if first else tool.name


@dataclass(frozen=True)
class Load:
    """One load run's figures, as the tool reported them."""

    per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def field_of(text: str, pattern: str, default: str | None = None) -> str:
    """The first group of ``pattern`` in a tool's output; an error when missing."""
    match = re.search(pattern, text, re.MULTILINE)
    if match is None and default is None:
        raise ValueError(f"unexpected load tool output (no {pattern!r}):\n{text}")
    return match[1] if match else default


def parse_wrk(text: str) -> Load:
    percentiles = {
        q: float(value) * _UNIT_MS[unit]
        for q, value, unit in re.findall(
            r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE
        )
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return Load(
        float(field_of(text, r"^Requests/sec:\s+([\d.]+)")),
        percentiles.get("50", float("nan")),
        percentiles.get("99", float("nan")),
        int(field_of(text, r"(\d+) requests in")),
        int(field_of(text, r"Non-2xx or 3xx responses:\s+(\d+)", "0")),
        sum(map(int, errors.groups())) if errors else 0,
    )


def parse_ab(text: str) -> Load:
    return Load(
        float(field_of(text, r"^Requests per second:\s+([\d.]+)")),
        float(field_of(text, r"^\s+50%\s+(\d+)")),
        float(field_of(text, r"^\s+99%\s+(\d+)")),
        int(field_of(text, r"^Complete requests:\s+(\d+)")),
        int(field_of(text, r"^Non-2xx responses:\s+(\d+)", "0")),
        int(field_of(text, r"^Failed requests:\s+(\d+)", "0")),
    )


def run_load(tool: LoadTool, url: str, args: argparse.Namespace, seconds: int) -> Load:
    if tool.name == "wrk":
        command = [tool.path, f"-t{args.threads}", f"-c{args.connections}"]
        command += [f"-d{seconds}s", "--latency", "--timeout", "10s", url]
    else:  # -t before -n: ab's -t resets the request count to 50000
        command = [tool.path, "-q", "-t", str(seconds), "-n", "100000000"]
        command += ["-c", str(args.connections), "-s", "10", url]
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stdout}{run.stderr}")
    return parse_wrk(run.stdout) if tool.name == "wrk" else parse_ab(run.stdout)


# -- the servers ---------------------------------------------------------------------


@dataclass
class Server:
    """One contender's gunicorn and its measurements."""

    contender: str
    port: int
    log: Path
    process: subprocess.Popen | None = None
    loads: list[Load] = field(default_factory=list)
    commands: list[Counter] = field(default_factory=list)  # per load, by command

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "gunicorn", "--chdir", str(ROOT)]
        command += ["--workers", str(WORKERS), "--worker-class", "sync"]
        command += ["--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        command += ["bench.http_site.wsgi"]
        env = {**env, "BENCH_HTTP_CONTENDER": self.contender}
        # gunicorn's log and Django's errors both go to stderr: the log file.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        """SIGTERM to the master (it stops its workers), SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        return "(no log)"

    def status(self) -> int:
        """The status of one more request."""
        try:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def first_response(self, timeout: float = 60.0) -> http.client.HTTPResponse:
        """Poll until the server answers; its first answer must be a 200."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return urllib.request.urlopen(self.url, timeout=10)
            except urllib.error.HTTPError as exc:
                raise RuntimeError(self.failure(f"answered {exc.code}")) from exc
            except OSError:  # refused or reset: not listening yet
                if self.process.poll() is not None:
                    raise RuntimeError(self.failure("exited")) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(self.failure("did not answer")) from None
                time.sleep(0.1)

    def failure(self, what: str) -> str:
        return f"gunicorn for {self.contender} {what}; its log:\n{self.log_tail()}"


def check_first_response(server: Server) -> None:
    """A 200, and ours lists every policy that should match; then a storm's
    client is over its limit: its next request must be a 429."""
    with server.first_response() as response:
        policy_header = response.headers.get("RateLimit-Policy", "")
    expected = OUR_POLICIES.get(server.contender, 0)
    listed = len([item for item in policy_header.split(",") if item.strip()])
    if listed != expected:
        raise RuntimeError(
            f"{server.contender}: RateLimit-Policy lists {listed} policies, "
            f"expected {expected}: {policy_header!r}"
        )
    if server.contender in STORMS and (status := server.status()) != 429:
        raise RuntimeError(server.failure(f"answered {status} over its limit"))


def migrate(env: dict[str, str]) -> None:
    """The tables our policy snapshot reads once per process."""
    command = [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{run.stdout}{run.stderr}")


@contextlib.contextmanager
def running_servers(url: str, prefix: str, workdir: Path) -> Iterator[list[Server]]:
    """Every contender's gunicorn, answering; all stopped (by PID) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_HTTP_")}
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS,
        REDIS_URL=url,
        BENCH_HTTP_PREFIX=prefix,
        BENCH_HTTP_DB=str(workdir / "db.sqlite3"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    migrate(env)
    servers = [
        Server(name, free_port(), workdir / f"{name}.log") for name in CONTENDERS
    ]
    try:
        for server in servers:
            server.start(env)
        for server in servers:
            check_first_response(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- measurement -----------------------------------------------------------------------


def rotated(items: Sequence, shift: int) -> list:
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def command_calls(client: redis.Redis) -> Counter:
    """Calls so far per command (``get``, ``evalsha``, ...), from INFO commandstats."""
    stats = client.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
    )


def calls_between(before: Counter, after: Counter) -> Counter:
    """The commands run between two readings, the readings' own INFO excluded."""
    delta = after - before
    delta.pop("info", None)
    return delta


def measured_load(
    server: Server, tool: LoadTool, args: argparse.Namespace, client: redis.Redis
) -> None:
    """One load of the round, and the Redis commands run meanwhile."""
    before = command_calls(client)
    server.loads.append(run_load(tool, server.url, args, args.duration))
    server.commands.append(calls_between(before, command_calls(client)))


def measure(
    servers: Sequence[Server],
    tool: LoadTool,
    args: argparse.Namespace,
    client: redis.Redis,
) -> None:
    """Warm every server up, then the rounds."""
    started = time.monotonic()
    for server in servers:
        run_load(tool, server.url, args, args.warmup)
    for number in range(args.rounds):
        for server in rotated(servers, number):
            measured_load(server, tool, args, client)
        elapsed = time.monotonic() - started
        print(
            f"round {number + 1}/{args.rounds} done, {elapsed:.0f} s", file=sys.stderr
        )


def keys_written(client: redis.Redis, prefix: str) -> dict[str, int]:
    """How many keys each stateful contender left under its own prefix."""
    return {
        name: sum(1 for _ in client.scan_iter(match=f"{p}*", count=1000))
        for name, p in key_prefixes(prefix).items()
    }


@dataclass(frozen=True)
class Result:
    contender: str
    per_second: float
    vs_none: float
    vs_floor: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int = 0
    calls: dict[str, float] = field(default_factory=dict)  # per request, by command

    @property
    def as_expected(self) -> bool:
        """Every response a 200, or for a storm every one not (wrk and ab count
        non-2xx responses whatever their status: the storm's 429 is checked
        before the load, and ``server_errors`` looks for 500s)."""
        return self.non_2xx == (self.requests if self.contender in STORMS else 0)


def paired_ratio(server: Server, base: Server) -> float:
    """Median over rounds of the per-round ratio of req/s."""
    pairs = zip(server.loads, base.loads, strict=True)
    return statistics.median(s.per_second / b.per_second for s, b in pairs)


def calls_per_request(server: Server) -> dict[str, float]:
    """The commands of ``COUNTED`` and all of them, per request, over every round."""
    total = sum(server.commands, Counter())
    requests = sum(load.requests for load in server.loads)
    counts = {name: total[name] for name in COUNTED} | {ALL: total.total()}
    return {name: count / max(requests, 1) for name, count in counts.items()}


def summarize(servers: Sequence[Server]) -> list[Result]:
    by_name = {server.contender: server for server in servers}
    return [
        Result(
            server.contender,
            statistics.median(load.per_second for load in server.loads),
            paired_ratio(server, by_name[NONE]),
            paired_ratio(server, by_name[FLOOR]),
            statistics.median(load.p50_ms for load in server.loads),
            statistics.median(load.p99_ms for load in server.loads),
            sum(load.non_2xx for load in server.loads),
            sum(load.socket_errors for load in server.loads),
            sum(load.requests for load in server.loads),
            calls_per_request(server),
        )
        for server in servers
    ]


# -- report ---------------------------------------------------------------------------

HEADER = (
    "| contender | req/s | vs no limiter | vs floor | p50 ms | p99 ms "
    "| Redis calls/request |\n"
    "|---|---:|---:|---:|---:|---:|---:|"
)
STORM_HEADER = (
    f"| deny storm: one client over {STORM_RATE} | req/s | vs no limiter "
    "| vs floor | p50 ms | p99 ms | 429s | Redis calls/request |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|"
)
CALLS_HEADER = (
    "| Redis commands per request | FCALL | EVALSHA | EVAL | GET | MGET | all |\n"
    "|---|---:|---:|---:|---:|---:|"
)
# The rows of the commands table: one policy plain and leased, and the storm.
BROKEN_DOWN = (OURS_1, OURS_LEASED, STORM_CACHED, STORM_UNCACHED)


def label_of(result: Result) -> str:
    """The contender's label, flagged when its responses were not as expected."""
    label = LABELS[result.contender]
    if not result.as_expected:
        label += f" ({result.non_2xx} of {result.requests} non-2xx responses!)"
    if result.socket_errors:
        label += f" ({result.socket_errors} socket errors)"
    return label


def table_row(result: Result) -> str:
    return (
        f"| {label_of(result)} | {result.per_second:,.0f} | {result.vs_none:.2f} "
        f"| {result.vs_floor:.2f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
        f"| {result.calls[ALL]:.4f} |"
    )


def storm_row(result: Result) -> str:
    # Rounded down: 100% only when every response was a 429.
    share = math.floor(1000 * result.non_2xx / max(result.requests, 1)) / 10
    return (
        f"| {label_of(result)} | {result.per_second:,.0f} | {result.vs_none:.2f} "
        f"| {result.vs_floor:.2f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
        f"| {share:g}% | {result.calls[ALL]:.4f} |"
    )


def calls_row(result: Result) -> str:
    figures = " | ".join(f"{result.calls[name]:.4f}" for name in (*COUNTED, ALL))
    return f"| {LABELS[result.contender]} | {figures} |"


def tables(results: Sequence[Result]) -> list[str]:
    """Throughput, the deny storm, and the Redis commands broken down."""
    by_name = {result.contender: result for result in results}
    plain = [result for result in results if result.contender not in STORMS]
    return [
        HEADER,
        *map(table_row, plain),
        "",
        STORM_HEADER,
        *(storm_row(by_name[name]) for name in STORMS),
        "",
        CALLS_HEADER,
        *(calls_row(by_name[name]) for name in BROKEN_DOWN),
    ]


def script_calls(result: Result) -> float:
    """Decision scripts per request: FCALL (Redis 7), EVALSHA or EVAL."""
    return sum(result.calls[name] for name in ("fcall", "evalsha", "eval"))


def summary(results: Sequence[Result]) -> list[str]:
    by_name = {result.contender: result for result in results}
    ours, leased = by_name[OURS_3], by_name[OURS_LEASED]
    cached, uncached = by_name[STORM_CACHED], by_name[STORM_UNCACHED]
    scripts = script_calls(cached)
    ceiling = by_name[SCRIPT_3]
    return [
        f"- ratelimit_app, 3 matching policies: {ours.vs_floor:.2f} of the floor "
        f"(target {TARGET:.2f} {met(ours.vs_floor >= TARGET)}), "
        f"{ours.vs_none:.2f} of no limiter; their decision script alone "
        f"(the ceiling for any Python around it): {ceiling.vs_floor:.2f} of the "
        f"floor, so ours reaches {ours.vs_floor / ceiling.vs_floor:.2f} of that",
        f"- ratelimit_app, 1 leased policy: {leased.vs_none:.2f} of no limiter "
        f"(target {LEASED_TARGET:.2f} {met(leased.vs_none >= LEASED_TARGET)}), "
        f"{leased.vs_floor:.2f} of the floor; {script_calls(leased):.4f} "
        f"decision scripts per request",
        f"- deny storm, deny cache on: {scripts:.4f} decision scripts per request "
        f"(target <= {STORM_SCRIPT_TARGET} {met(scripts <= STORM_SCRIPT_TARGET)}), "
        f"{cached.calls[ALL]:.4f} Redis commands per request in all (about "
        f"{cached.calls[ALL] * cached.per_second:.0f}/s: each worker's snapshot "
        f"refresh and usage flush, once a second); deny cache off: "
        f"{script_calls(uncached):.2f} decision scripts and {uncached.calls[ALL]:.2f} "
        f"commands per request; req/s on/off {cached.per_second:,.0f}/"
        f"{uncached.per_second:,.0f}",
        f"- peers, of the floor: django-ratelimit "
        f"{by_name[DJANGO_RATELIMIT].vs_floor:.2f}, django-smart-ratelimit "
        f"{by_name[SMART_RATELIMIT].vs_floor:.2f}, DRF throttling "
        f"{by_name[DRF_THROTTLE].vs_floor:.2f}",
    ]


def environment(
    client: redis.Redis,
    url: str,
    tool: LoadTool,
    args: argparse.Namespace,
    loadavg: tuple[float, float],
) -> list[str]:
    info = client.info("server")
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python"
    load = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
        if tool.name == "wrk"
        else f"ab -c{args.connections} -t{args.duration}"
    )
    return [
        f"Redis {info['redis_version']} at {without_password(url)}; "
        f"Python {platform.python_version()}; Django {version('django')}; "
        f"gunicorn {version('gunicorn')} ({WORKERS} sync workers); "
        f"redis-py {redis.__version__} ({parser} parser); {tool_version(tool)}; "
        f"{os.cpu_count()} CPUs, all on loopback; 1-minute load average "
        f"{loadavg[0]:.1f} before, {loadavg[1]:.1f} after the run",
        f"{args.rounds} rounds of `{load}` per contender, order rotated every "
        f"round, warm-up {args.warmup} s each; rate {RATE} everywhere (never denies) "
        f"but the deny storm's {STORM_RATE}",
        "req/s: median over rounds; ratios: medians of per-round ratios; "
        "p50/p99: medians over rounds of the tool's percentiles; Redis "
        "calls/request: INFO commandstats deltas over the measured loads, every "
        "command Redis ran (a script's and a pipeline's each count) over the "
        "requests" + ("" if args.own_redis else " (a shared Redis: others' too)"),
    ]


def render(
    results: Sequence[Result], intro: Sequence[str], notes: Sequence[str]
) -> str:
    lines = [*intro, "", *tables(results), ""]
    lines += summary(results)
    lines += [f"- note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load")
    parser.add_argument("--warmup", type=int, default=2, help="seconds per server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--markdown-out", type=Path, default=None)
    parser.add_argument(
        "--own-redis",
        action="store_true",
        help="a private redis-server, so INFO commandstats counts this run alone",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1, 1
    if min(args.rounds, args.duration, args.warmup, args.threads) < 1:
        parser.error("--rounds, --duration, --warmup and --threads must be >= 1")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def server_errors(servers: Sequence[Server]) -> list[str]:
    """The contenders whose log holds a Django error (a 500 counts as non-2xx
    just like a 429, so the storm's count alone would not tell)."""
    return [
        server.contender
        for server in servers
        if "Internal Server Error" in server.log.read_text(errors="replace")
    ]


def run(url: str, tool: LoadTool, args: argparse.Namespace) -> tuple[str, bool]:
    """The report, and whether every response was as expected (200s; 429s for
    the deny storm)."""
    prefix = f"rlbench-http-{secrets.token_hex(4)}"
    client = redis.Redis.from_url(url)
    notes, loadavg_before = [], os.getloadavg()[0]
    if tool.installed:
        notes.append(f"{tool.name} was installed with apt-get by this run")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="rlbench-http-") as workdir,
            running_servers(url, prefix, Path(workdir)) as servers,
        ):
            measure(servers, tool, args, client)
            broken = server_errors(servers)
        if broken:
            notes.append(f"server errors (500s) in the logs of: {', '.join(broken)}")
        written = keys_written(client, prefix)
        idle = [name for name, count in written.items() if not count]
        if idle:
            raise RuntimeError(f"no Redis keys written by: {', '.join(idle)}")
        results = summarize(servers)
        loadavg = (loadavg_before, os.getloadavg()[0])
        intro = environment(client, url, tool, args, loadavg)
        report = render(results, intro, notes)
        return report, not broken and all(r.as_expected for r in results)
    finally:
        delete_keys(client, prefix)
        client.close()


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A private redis-server for the run, stopped (by its PID) at the end."""
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tool = find_load_tool()
    if tool is None:
        print("neither wrk nor ab found (and apt-get not usable)", file=sys.stderr)
        return 2
    with own_redis() if args.own_redis else bench_redis() as url:
        report, all_ok = run(url, tool, args)
    print(report, end="")
    if args.markdown_out:
        args.markdown_out.write_text(report, encoding="utf-8")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
