"""bench.http serves the view behind every contender and reports each one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.http import (
    ALL,
    LABELS,
    Load,
    Server,
    calls_between,
    calls_per_request,
    command_calls,
    find_load_tool,
    render,
    summarize,
)
from bench.http_site import (
    CONTENDERS,
    DJANGO_RATELIMIT,
    DRF_THROTTLE,
    FLOOR,
    NONE,
    OURS_1,
    OURS_3,
    OURS_LEASED,
    SCRIPT_3,
    SMART_RATELIMIT,
    STORM_CACHED,
    STORM_UNCACHED,
    STORMS,
)
from tests.bench_runs import run_bench


def table_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


def row_of(rows: list[str], contender: str, after: str = "") -> list[str]:
    """The cells of the first row of ``contender`` after the header ``after``."""
    start = next(i for i, row in enumerate(rows) if row.startswith(after))
    label = f"| {LABELS[contender]}"
    row = next(row for row in rows[start:] if row.startswith(label))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_commands_between_two_readings_count_each_call_once(private_redis):
    client = private_redis
    before = command_calls(client)
    client.set("k", "1")
    client.mget("k", "other")
    client.eval("return redis.call('GET', KEYS[1])", 1, "k")
    pipe = client.pipeline(transaction=False)
    pipe.get("k").get("k").execute()
    delta = calls_between(before, command_calls(client))
    # A script's own commands count, and every command of a pipeline; the
    # readings' INFO does not.
    assert delta == Counter(set=1, mget=1, eval=1, get=3)


def test_no_commands_between_two_readings_is_empty(private_redis):
    before = command_calls(private_redis)
    assert calls_between(before, command_calls(private_redis)) == Counter()


def load(per_second: float, requests: int, non_2xx: int = 0) -> Load:
    return Load(per_second, 1.0, 2.0, requests, non_2xx, 0)


def test_calls_per_request_pool_every_round():
    server = Server(OURS_LEASED, 0, Path("unused.log"))
    server.loads = [load(100, 1000), load(100, 3000)]
    server.commands = [Counter(evalsha=4, get=8), Counter(evalsha=4, pexpire=20)]
    assert calls_per_request(server) == {
        "fcall": 0.0,
        "evalsha": 0.002,
        "eval": 0.0,
        "get": 0.002,
        "mget": 0.0,
        ALL: 0.009,
    }


# Two rounds per contender: (req/s, requests, non-2xx, commands) per round.
ROUNDS = {
    NONE: [(1000, 5000, 0, {}), (1000, 5000, 0, {})],
    FLOOR: [(500, 2500, 0, {"evalsha": 2500}), (500, 2500, 0, {"evalsha": 2500})],
    OURS_1: [(400, 2000, 0, {"evalsha": 2000, "get": 2000, "time": 2000})] * 2,
    OURS_3: [(300, 1500, 0, {"evalsha": 1500})] * 2,
    SCRIPT_3: [(330, 1650, 0, {"evalsha": 1650})] * 2,
    OURS_LEASED: [(950, 5000, 0, {"evalsha": 20, "get": 10})] * 2,
    DJANGO_RATELIMIT: [(300, 1500, 0, {"eval": 1500})] * 2,
    SMART_RATELIMIT: [(300, 1500, 0, {"eval": 1500})] * 2,
    DRF_THROTTLE: [(200, 1000, 3, {"get": 1000, "set": 1000})] * 2,
    STORM_CACHED: [(800, 4000, 4000, {"get": 8, "hincrby": 12})] * 2,
    STORM_UNCACHED: [(450, 2000, 1990, {"evalsha": 2000})] * 2,
}


def measured_servers() -> list[Server]:
    servers = []
    for contender in CONTENDERS:
        server = Server(contender, 0, Path("unused.log"))
        for per_second, requests, non_2xx, commands in ROUNDS[contender]:
            server.loads.append(load(per_second, requests, non_2xx))
            server.commands.append(Counter(commands))
        servers.append(server)
    return servers


def test_the_report_tables_add_redis_calls_and_the_deny_storm():
    results = summarize(measured_servers())
    rows = table_rows(render(results, ["intro"], []))
    assert rows[0].endswith("| p99 ms | Redis calls/request |")
    cells = ["400", "0.40", "0.80", "1.00", "2.00", "3.0000"]
    assert row_of(rows, OURS_1) == [LABELS[OURS_1], *cells]
    assert row_of(rows, OURS_LEASED)[2:4] == ["0.95", "1.90"]
    assert row_of(rows, OURS_LEASED)[-1] == "0.0060"
    # The storm has its own table: the share of 429s beside the calls.
    storm = "| deny storm"
    assert row_of(rows, STORM_CACHED, storm)[1:4] == ["800", "0.80", "1.60"]
    assert row_of(rows, STORM_CACHED, storm)[-2:] == ["100%", "0.0050"]
    broken_down = "| Redis commands per request |"
    assert row_of(rows, STORM_UNCACHED, broken_down)[1:] == [
        "0.0000",  # FCALL (these loads ran EVALSHA)
        "1.0000",
        "0.0000",
        "0.0000",
        "0.0000",
        "1.0000",
    ]
    first_table = rows[: next(i for i, row in enumerate(rows) if row.startswith(storm))]
    assert len(first_table) == 1 + len(CONTENDERS) - len(STORMS)


def test_unexpected_responses_are_flagged_per_contender():
    results = {r.contender: r for r in summarize(measured_servers())}
    assert results[STORM_CACHED].as_expected  # all 429s
    assert results[NONE].as_expected  # all 200s
    assert not results[DRF_THROTTLE].as_expected  # 3 non-2xx
    assert not results[STORM_UNCACHED].as_expected  # 10 of 2000 not denied
    rows = table_rows(render(list(results.values()), ["intro"], []))
    assert row_of(rows, DRF_THROTTLE)[0].endswith("(6 of 2000 non-2xx responses!)")
    storm = row_of(rows, STORM_UNCACHED, "| deny storm")
    assert storm[0].endswith("(3980 of 4000 non-2xx responses!)")
    assert storm[-2] == "99.5%"  # never rounded up to 100%


def test_the_summary_states_the_leasing_and_storm_targets():
    report = render(summarize(measured_servers()), ["intro"], [])
    assert "1 leased policy: 0.95 of no limiter (target 0.90 met)" in report
    assert "deny cache on: 0.0000 decision scripts per request" in report
    assert "(target <= 0.001 met)" in report
    assert "deny cache off: 1.00 decision scripts" in report
    # Ours (300/s) and its script alone (330/s), against the floor (500/s).
    assert "3 matching policies: 0.60 of the floor (target 0.95 MISSED)" in report
    assert "script alone (the ceiling for any Python around it): 0.66" in report
    assert "so ours reaches 0.91 of that" in report


# About 35 s alone, with both cores saturated by wrk and 20 gunicorn workers.
@pytest.mark.slow
def test_quick_run_reports_every_contender(redis_url, tmp_path):
    if find_load_tool(install=True) is None:
        pytest.skip("neither wrk nor ab is on PATH, and apt-get cannot install wrk")
    out = tmp_path / "http.md"
    # A private Redis: the other tests' commands would count in its figures.
    result = run_bench(
        "bench.http", redis_url, "--own-redis", "--markdown-out", str(out)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    for label in LABELS.values():
        assert any(row.startswith(f"| {label} |") for row in rows), (label, rows)
    assert table_rows(out.read_text(encoding="utf-8")) == rows
    # Every storm response a 429; with the deny cache, no script per request.
    assert row_of(rows, STORM_CACHED, "| deny storm")[-2] == "100%"
    assert row_of(rows, STORM_UNCACHED, "| deny storm")[-2] == "100%"
    scripts = {  # FCALL + EVALSHA columns
        name: sum(float(x) for x in row_of(rows, name, "| Redis commands per")[1:3])
        for name in STORMS
    }
    assert scripts[STORM_CACHED] < 0.001 and scripts[STORM_UNCACHED] >= 0.99
