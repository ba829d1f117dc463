"""The usage dashboard: stats.series, the SVG charts, the admin page and its access."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from ratelimit_app import aggregation, charts, dashboard, stats, usage
from ratelimit_app.models import Policy, UsageMinute

pytestmark = pytest.mark.django_db

DASHBOARD = "admin:ratelimit_app_policy_dashboard"
# Mid-hour, mid-minute: every range has a partly elapsed current period.
NOW = datetime(2026, 5, 17, 12, 34, 56, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
HOSTILE = '<script>alert("x")</script>&"\'|lögin'


# -- helpers ---------------------------------------------------------------------


class Usage:
    """Minute rows written as the drain writes them, and the truth they hold."""

    def __init__(self) -> None:
        self.minutes: dict[tuple[str, datetime], list[int]] = defaultdict(
            lambda: [0] * len(usage.COUNTS)
        )

    def add(self, policy: str, minute: datetime, *counts: int) -> None:
        values = self.minutes[(policy, minute)]
        for i, count in enumerate(counts):
            values[i] += count
        UsageMinute.objects.update_or_create(
            policy=policy,
            minute=minute,
            defaults={
                **dict(zip(usage.COUNTS, values, strict=True)),
                "rolled_up": False,
            },
        )

    def expected(self, policy: str | None, since: datetime, until: datetime):
        """The counts recorded in [since, until), from the seeds alone."""
        sums = [0] * len(usage.COUNTS)
        for (name, minute), values in self.minutes.items():
            if (policy is None or name == policy) and since <= minute < until:
                sums = [a + b for a, b in zip(sums, values, strict=True)]
        return dict(zip(usage.COUNTS, sums, strict=True))


def seed_across_boundaries(seeds: Usage, policy: str) -> None:
    """Rows on both sides of every range's edges, in every table, as the
    roll-up and prune leave them at NOW."""
    current_minute = NOW.replace(second=0)
    current_hour = current_minute.replace(minute=0)
    today = current_hour.replace(hour=0)
    moments = [
        current_minute,  # the current minute, hour and day
        current_minute + MINUTE,  # the future: in no range
        current_minute - 59 * MINUTE,  # the last hour's first minute
        current_minute - 60 * MINUTE,  # just before it
        current_hour - 23 * HOUR,  # the last 24 hours' first hour
        current_hour - 23 * HOUR - MINUTE,  # just before it
        current_hour - 23 * HOUR + 59 * MINUTE,
        today - 29 * DAY,  # the last 30 days' first day (hour rows)
        today - 29 * DAY - MINUTE,  # just before it
        today - 10 * DAY + 13 * HOUR + 7 * MINUTE,
        today - 3 * DAY + 11 * HOUR,  # about the minute retention's edge
        today - 2 * DAY - MINUTE,
        today - 40 * DAY,  # day rows only
    ]
    for i, moment in enumerate(moments, start=1):
        seeds.add(policy, moment, 10 * i, i, i % 3, 10 * i)
    aggregation.rollup_usage()
    aggregation.prune_usage(now=NOW)


def bars(html: str) -> dict[str, dict]:
    """Per range: the section's attributes and its bars' numbers."""
    parser = ChartParser()
    parser.feed(html)
    return parser.ranges


class ChartParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ranges: dict[str, dict] = {}
        self.current: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-range" in attrs:
            self.current = {"attrs": attrs, "bars": []}
            self.ranges[attrs["data-range"]] = self.current
        elif tag == "g" and attrs.get("class") == "bucket":
            self.current["bars"].append(
                {
                    "start": datetime.fromisoformat(attrs["data-period"]),
                    "allowed": int(attrs["data-allowed"]),
                    "blocked": int(attrs["data-blocked"]),
                    "shadow_blocked": int(attrs["data-shadow-blocked"]),
                }
            )


def drawn_totals(chart: dict) -> dict[str, int]:
    names = ("allowed", "blocked", "shadow_blocked")
    return {name: sum(bar[name] for bar in chart["bars"]) for name in names}


def without_cost(counts: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in counts.items() if name != "cost"}


def window(chart: dict) -> tuple[datetime, datetime]:
    attrs = chart["attrs"]
    return (
        datetime.fromisoformat(attrs["data-since"]),
        datetime.fromisoformat(attrs["data-until"]),
    )


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fixed_now(monkeypatch):
    monkeypatch.setattr(dashboard, "clock", lambda: NOW)
    return NOW


@pytest.fixture
def staff(client, django_user_model):
    """A staff client with only the view permissions of the usage tables."""
    user = django_user_model.objects.create_user(
        unique("staff"), password="pw", is_staff=True
    )
    for model in ("usageminute", "usagehour", "usageday"):
        user.user_permissions.add(
            Permission.objects.get(
                codename=f"view_{model}", content_type__app_label="ratelimit_app"
            )
        )
    client.force_login(user)
    return client


@pytest.fixture
def superuser(client, django_user_model):
    user = django_user_model.objects.create_superuser(unique("root"), password="pw")
    client.force_login(user)
    return client


# -- stats.series ------------------------------------------------------------------


RETENTIONS = [
    pytest.param({}, id="default-retention"),
    pytest.param(
        {"USAGE_MINUTE_RETENTION": 2 * 86400, "USAGE_HOUR_RETENTION": 5 * 86400},
        id="short-retention-reads-day-rows",
    ),
    pytest.param({"USAGE_MINUTE_RETENTION": None}, id="minutes-kept-forever"),
]


@pytest.fixture(params=RETENTIONS)
def retention(request, settings):
    settings.RATELIMIT = {**settings.RATELIMIT, **request.param}


@pytest.mark.parametrize("chart_range", dashboard.RANGES, ids=lambda r: r.slug)
def test_series_adds_up_to_totals_and_to_what_was_recorded(chart_range, retention):
    seeds, policy = Usage(), unique("api")
    seed_across_boundaries(seeds, policy)
    seeds.add(unique("other"), NOW.replace(second=0), 1000, 1000, 1000, 1000)
    since, until = chart_range.window(NOW)
    buckets = stats.series(policy, chart_range.period, since, until, now=NOW)

    assert len(buckets) == chart_range.length
    assert [b.start for b in buckets] == [
        since + i * aggregation.PERIOD_LENGTHS[chart_range.period]
        for i in range(chart_range.length)
    ]
    drawn = {name: sum(b.counts[name] for b in buckets) for name in usage.COUNTS}
    assert drawn == stats.totals(policy, since, until, now=NOW)
    assert drawn == seeds.expected(policy, since, until)
    assert any(drawn.values())


def test_series_puts_each_row_in_its_bucket():
    seeds, policy = Usage(), unique("api")
    seed_across_boundaries(seeds, policy)
    since, until = dashboard.RANGES[1].window(NOW)  # by hour
    for bucket in stats.series(policy, "hour", since, until, now=NOW):
        assert bucket.counts == seeds.expected(
            policy, bucket.start, bucket.start + HOUR
        )


def test_series_of_all_policies_sums_them():
    seeds = Usage()
    names = [unique("a"), unique("b")]
    for i, name in enumerate(names, start=1):
        seeds.add(name, NOW.replace(second=0), i, 2 * i, 3 * i, 4 * i)
    since, until = dashboard.RANGES[0].window(NOW)
    last = stats.series(None, "minute", since, until, now=NOW)[-1]
    assert last.counts == seeds.expected(None, since, until)
    assert last.counts == {"allowed": 3, "blocked": 6, "shadow_blocked": 9, "cost": 12}


def test_series_without_rows_is_all_zero():
    since, until = dashboard.RANGES[2].window(NOW)
    buckets = stats.series(unique("nothing"), "day", since, until, now=NOW)
    assert len(buckets) == 30
    assert all(b.counts == dict.fromkeys(usage.COUNTS, 0) for b in buckets)


def test_windows_end_after_the_current_period_on_its_boundaries():
    assert [r.window(NOW) for r in dashboard.RANGES] == [
        (
            datetime(2026, 5, 17, 11, 35, tzinfo=UTC),
            datetime(2026, 5, 17, 12, 35, tzinfo=UTC),
        ),
        (datetime(2026, 5, 16, 13, tzinfo=UTC), datetime(2026, 5, 17, 13, tzinfo=UTC)),
        (datetime(2026, 4, 18, tzinfo=UTC), datetime(2026, 5, 18, tzinfo=UTC)),
    ]


# -- the SVG charts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (3, 3), (7, 8), (9, 10), (11, 20), (201, 300), (999, 1000)],
)
def test_nice_ceiling(value, ceiling):
    assert charts.nice_ceiling(value) == ceiling


def test_a_chart_has_one_group_per_bucket_with_its_numbers_and_no_resources():
    buckets = [
        stats.Bucket(
            NOW.replace(second=0) + i * MINUTE,
            dict(zip(usage.COUNTS, [i, 2 * i, 3, 0], strict=True)),
        )
        for i in range(4)
    ]
    svg = str(charts.bar_chart(buckets, dashboard.RANGES[0].axis, HOSTILE))
    parsed = bars(f'<section data-range="x">{svg}</section>')["x"]["bars"]
    assert parsed == [{"start": b.start, **without_cost(b.counts)} for b in buckets]
    assert "<script" not in svg
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "href" not in svg
    assert "style" not in svg  # no inline styles: dashboard.css has them
    assert "12:37 UTC: allowed 3, blocked 6, would block (shadow) 3" in svg


# -- the admin page ------------------------------------------------------------------


def test_anonymous_and_non_staff_users_are_sent_to_the_login(client, django_user_model):
    url = reverse(DASHBOARD)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    user = django_user_model.objects.create_user(unique("user"), password="pw")
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_the_usage_permissions_is_refused(client, django_user_model):
    user = django_user_model.objects.create_user(
        unique("staff"), password="pw", is_staff=True
    )
    client.force_login(user)
    assert client.get(reverse(DASHBOARD)).status_code == 403


@pytest.mark.parametrize("chart_range", dashboard.RANGES, ids=lambda r: r.slug)
def test_the_bars_drawn_equal_stats_totals(staff, fixed_now, chart_range):
    seeds, policy = Usage(), unique("api")
    seed_across_boundaries(seeds, policy)
    seeds.add(unique("other"), NOW.replace(second=0), 1000, 1000, 1000, 1000)

    response = staff.get(reverse(DASHBOARD), {"policy": policy})

    assert response.status_code == 200
    chart = bars(response.content.decode())[chart_range.slug]
    since, until = window(chart)
    assert (since, until) == chart_range.window(NOW)
    assert len(chart["bars"]) == chart_range.length
    expected = without_cost(stats.totals(policy, since, until, now=NOW))
    assert drawn_totals(chart) == expected
    assert expected == without_cost(seeds.expected(policy, since, until))
    assert any(expected.values())
    attrs = chart["attrs"]
    assert [
        int(attrs[f"data-{n}"]) for n in ("allowed", "blocked", "shadow-blocked")
    ] == list(expected.values())


def test_all_policies_is_the_default(staff, fixed_now):
    seeds = Usage()
    for name in (unique("a"), unique("b")):
        seeds.add(name, NOW.replace(second=0), 5, 1, 2, 5)
    response = staff.get(reverse(DASHBOARD))
    chart = bars(response.content.decode())["hour"]
    since, until = window(chart)
    # Other tests' rows may share the database: compare with every policy's.
    everyone = stats.series(None, "minute", since, until, now=NOW)
    assert drawn_totals(chart) == without_cost(
        {n: sum(b.counts[n] for b in everyone) for n in usage.COUNTS}
    )
    assert drawn_totals(chart)["allowed"] >= 10


def test_an_empty_dashboard_draws_zero_bars(staff, fixed_now):
    policy = Policy.objects.create(name=unique("quiet"), rate="10/m")
    response = staff.get(reverse(DASHBOARD), {"policy": policy.name})
    assert response.status_code == 200
    ranges = bars(response.content.decode())
    assert [len(ranges[r.slug]["bars"]) for r in dashboard.RANGES] == [60, 24, 30]
    for chart in ranges.values():
        assert drawn_totals(chart) == {"allowed": 0, "blocked": 0, "shadow_blocked": 0}
    assert (
        reverse("admin:ratelimit_app_policy_change", args=[policy.pk]).encode()
        in response.content
    )


def test_hostile_policy_names_are_escaped(staff, fixed_now):
    seeds = Usage()
    seeds.add(HOSTILE, NOW.replace(second=0), 7, 3, 1, 7)
    response = staff.get(reverse(DASHBOARD), {"policy": HOSTILE})
    assert response.status_code == 200
    content = response.content.decode()
    assert '<script>alert("x")</script>' not in content
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in content
    chart = bars(content)["hour"]
    assert chart["attrs"]["data-policy"] == HOSTILE
    assert drawn_totals(chart) == {"allowed": 7, "blocked": 3, "shadow_blocked": 1}


@pytest.mark.parametrize(
    "value",
    [
        "no-such-policy",
        '"><script>alert(1)</script>',
        "\x00",
        "x" * 70000,
        "' OR 1=1 --",
        "../../etc/passwd",
    ],
)
def test_an_unknown_policy_shows_all_policies_and_never_fails(staff, fixed_now, value):
    response = staff.get(reverse(DASHBOARD), {"policy": value})
    assert response.status_code == 200
    content = response.content.decode()
    assert 'id="unknown-policy"' in content
    assert "<script>alert(1)</script>" not in content
    assert len(content) < 200_000  # the echoed name is truncated
    assert bars(content)["hour"]["attrs"]["data-policy"] == ""


def test_the_policy_pages_link_to_the_dashboard(superuser):
    policy = Policy.objects.create(name=unique("linked"), rate="10/m")
    changelist = superuser.get(reverse("admin:ratelimit_app_policy_changelist"))
    assert reverse(DASHBOARD).encode() in changelist.content
    change = superuser.get(
        reverse("admin:ratelimit_app_policy_change", args=[policy.pk])
    )
    assert f"{reverse(DASHBOARD)}?policy={policy.name}".encode() in change.content


def test_no_dashboard_link_without_the_usage_permissions(client, django_user_model):
    user = django_user_model.objects.create_user(
        unique("viewer"), password="pw", is_staff=True
    )
    user.user_permissions.add(
        Permission.objects.get(
            codename="view_policy", content_type__app_label="ratelimit_app"
        )
    )
    client.force_login(user)
    response = client.get(reverse("admin:ratelimit_app_policy_changelist"))
    assert response.status_code == 200
    assert b'id="usage-dashboard-link"' not in response.content


# -- distinct clients and top offenders ----------------------------------------------


class SectionParser(HTMLParser):
    """Distinct-client bars per range, and offender rows per table."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[str, list[tuple[datetime, int]]] = {}
        self.offenders: dict[str, list[tuple[str, int]]] = {}
        self.current: list | None = None
        self.row: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("id", "").startswith("clients-"):
            self.current = self.clients[attrs["data-range"]] = []
        elif tag == "g" and attrs.get("class") == "bucket clients":
            start = datetime.fromisoformat(attrs["data-period"])
            self.current.append((start, int(attrs["data-clients"])))
        elif tag == "table" and attrs.get("class") == "offenders":
            self.current = self.offenders[attrs["id"].split("-", 1)[1]] = []
        elif tag == "tr" and attrs.get("class") == "offender":
            self.row = {"blocked": int(attrs["data-blocked"]), "label": ""}
            self.current.append(self.row)

    def handle_endtag(self, tag):
        if tag == "td" and self.row is not None and "done" not in self.row:
            self.row["done"] = True  # the first cell holds the label

    def handle_data(self, data):
        if self.row is not None and "done" not in self.row:
            self.row["label"] += data


def sections(content: str) -> SectionParser:
    parser = SectionParser()
    parser.feed(content)
    return parser


def test_distinct_clients_drawn_equal_stats(staff, fixed_now):
    from ratelimit_app.models import UsageDay, UsageHour

    policy = unique("api")
    minute, hour = NOW.replace(second=0), NOW.replace(minute=0, second=0)
    day = hour.replace(hour=0)
    UsageMinute.objects.create(policy=policy, minute=minute, distinct_clients=7)
    UsageMinute.objects.create(
        policy=policy, minute=minute - 5 * MINUTE, distinct_clients=3
    )
    UsageHour.objects.create(policy=policy, hour=hour, distinct_clients=9)
    UsageHour.objects.create(policy=policy, hour=hour - 5 * HOUR, distinct_clients=4)
    UsageDay.objects.create(policy=policy, day=day, distinct_clients=12)

    response = staff.get(reverse(DASHBOARD), {"policy": policy})

    drawn = sections(response.content.decode()).clients
    for chart_range in dashboard.RANGES:
        since, until = chart_range.window(NOW)
        expected = stats.distinct_clients(policy, chart_range.period, since, until)
        assert drawn[chart_range.slug] == [(p.start, p.clients) for p in expected]
        assert len(expected) == chart_range.length
    assert dict(drawn["hour"])[minute] == 7
    assert dict(drawn["day"])[hour - 5 * HOUR] == 4
    assert dict(drawn["month"])[day] == 12


def test_distinct_clients_need_one_policy(staff, fixed_now):
    content = staff.get(reverse(DASHBOARD)).content.decode()
    assert 'id="clients-choose-policy"' in content
    assert sections(content).clients == {}


def test_top_offenders_listed_equal_stats_and_labels_are_escaped(staff, fixed_now):
    from ratelimit_app.models import UsageOffender

    policy = unique("login")
    hour = NOW.replace(minute=0, second=0)
    rows = [
        ("A" * 22, "203.0.113.x", hour, 40),
        ("B" * 22, "user <b>7</b>", hour - 3 * HOUR, 25),
        ("A" * 22, "203.0.113.x", hour - 2 * DAY, 100),  # only in 30 days
        ("C" * 22, "", hour - 40 * DAY, 999),  # in no range
    ]
    for identity, label, start, blocked in rows:
        UsageOffender.objects.create(
            policy=policy, hour=start, identity=identity, label=label, blocked=blocked
        )

    content = staff.get(reverse(DASHBOARD), {"policy": policy}).content.decode()

    listed = sections(content).offenders
    for chart_range in dashboard.RANGES:
        if chart_range.slug not in dashboard.OFFENDER_RANGES:
            continue
        since, until = chart_range.window(NOW)
        expected = stats.top_offenders(policy, since, until, limit=10)
        assert [(r["label"], r["blocked"]) for r in listed[chart_range.slug]] == [
            (o.label, o.blocked) for o in expected
        ]
    assert [(r["label"], r["blocked"]) for r in listed["day"]] == [
        ("203.0.113.x", 40),
        ("user <b>7</b>", 25),
    ]
    assert [r["blocked"] for r in listed["month"]] == [140, 25]
    assert "user <b>7</b>" not in content
    assert "user &lt;b&gt;7&lt;/b&gt;" in content
