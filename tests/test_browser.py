"""The usage dashboard in a real browser: headless Chromium driven by Selenium."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as loaded
from selenium.webdriver.support.ui import Select, WebDriverWait

from ratelimit_app import dashboard
from ratelimit_app.models import UsageMinute

# Debian's chromium and chromium-driver packages (.ci/run installs them).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Screenshots land here (git-ignored), to look at after a run.
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

NOW = datetime(2026, 5, 17, 12, 34, 56, tzinfo=UTC)
CURRENT_MINUTE = NOW.replace(second=0)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason=(
            f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        ),
    ),
]


@pytest.fixture
def browser(monkeypatch):
    # Both paths are given, so Selenium Manager never runs; offline in case.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,2200",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def seeded(transactional_db, monkeypatch):
    """Minute rows of one policy at a fixed "now": {minute: (allowed, blocked,
    shadow_blocked)}, plus another policy's rows the page must leave out."""
    monkeypatch.setattr(dashboard, "clock", lambda: NOW)
    policy = f"api-{uuid.uuid4().hex[:6]}"
    counts = {
        CURRENT_MINUTE: (40, 7, 3),
        CURRENT_MINUTE - timedelta(minutes=1): (25, 0, 5),
        CURRENT_MINUTE - timedelta(minutes=30): (12, 12, 0),
        CURRENT_MINUTE - timedelta(minutes=59): (1, 2, 1),  # the first bar
        CURRENT_MINUTE - timedelta(minutes=60): (99, 99, 99),  # before the hour
    }
    for minute, (allowed, blocked, shadow) in counts.items():
        UsageMinute.objects.create(
            policy=policy,
            minute=minute,
            allowed=allowed,
            blocked=blocked,
            shadow_blocked=shadow,
            cost=allowed,
        )
    UsageMinute.objects.create(policy="other", minute=CURRENT_MINUTE, allowed=500)
    return policy, counts


def wait_for(browser, selector: str):
    """The element once the page showing it has loaded (clicks do not wait)."""
    return WebDriverWait(browser, 15).until(
        loaded.presence_of_element_located((By.CSS_SELECTOR, selector))
    )


def log_in(browser, live_server, django_user_model, next_url: str) -> None:
    username = f"admin-{uuid.uuid4().hex[:6]}"
    django_user_model.objects.create_superuser(username, password="pw-browser-1")
    browser.get(f"{live_server.url}/admin/login/?next={next_url}")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys("pw-browser-1")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, "#user-tools")  # logged in: the login page has none


def test_the_dashboard_draws_the_seeded_counts(
    browser, live_server, django_user_model, seeded, tmp_path
):
    policy, counts = seeded
    log_in(browser, live_server, django_user_model, "/admin/")
    browser.get(f"{live_server.url}/admin/ratelimit_app/policy/")
    wait_for(browser, "#usage-dashboard-link").click()
    Select(wait_for(browser, "#id_policy")).select_by_value(policy)
    browser.find_element(By.CSS_SELECTOR, "#dashboard_filter [type=submit]").click()
    wait_for(browser, f'#range-hour[data-policy="{policy}"]')

    groups = browser.find_elements(By.CSS_SELECTOR, "#range-hour g.bucket")
    assert len(groups) == 60
    drawn = {}
    for group in groups:
        values = tuple(
            int(group.get_attribute(f"data-{name}"))
            for name in ("allowed", "blocked", "shadow-blocked")
        )
        if any(values):
            drawn[datetime.fromisoformat(group.get_attribute("data-period"))] = values
    in_range = {m: v for m, v in counts.items() if m > NOW - timedelta(hours=1)}
    assert drawn == in_range

    current = groups[-1]
    title = current.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert title == (
        "2026-05-17 12:34 UTC: allowed 40, blocked 7, would block (shadow) 3"
    )
    for series in ("allowed", "blocked", "shadow-blocked"):  # really painted
        assert current.find_element(By.CLASS_NAME, series).size["height"] > 0
    empty = groups[-3]
    assert empty.find_element(By.CLASS_NAME, "allowed").size["height"] == 0

    totals = {
        r.get_attribute("data-range"): int(r.get_attribute("data-allowed"))
        for r in browser.find_elements(By.CSS_SELECTOR, "section.usage-range")
    }
    hour_total = sum(v[0] for v in in_range.values())
    day_total = sum(v[0] for v in counts.values())
    assert totals == {"hour": hour_total, "day": day_total, "month": day_total}

    # Everything the page loaded came from the app itself: no CDN, no network.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(url.startswith(live_server.url) for url in resources), resources
    assert any(url.endswith("/ratelimit_app/dashboard.css") for url in resources)

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    OUTPUT.mkdir(exist_ok=True)
    shutil.copy(screenshot, OUTPUT / "dashboard.png")
