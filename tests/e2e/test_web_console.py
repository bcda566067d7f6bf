"""`jobworker web` in a real browser (headless Chromium): workers appear, one killed with
SIGKILL goes stale within three status intervals, the backlog goes down to nothing, dead
letters are counted and replayed from the page with the token, and not without it.

Screenshots of each step go to .cache/test-artifacts/web-console/ (TEST_ARTIFACTS_DIR).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from jobworker.adapters.core.process import CoreProcess
from tests.support.browser import artifacts_dir, headless_chromium
from tests.support.e2e import publish, results_in_core, sleep_jobs, worker_settings
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import WorkerProcess, free_port, log_tail
from tests.support.waiting import wait_until

INTERVAL_S = 2.0
TOKEN = "web-console-test-token-0123"  # noqa: S105 - a test's token
JOBS = 200
POISON = 3
TIMEOUT_S = 90


def overview(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}api/overview", timeout=5) as answer:  # noqa: S310 - loopback
        return dict(json.loads(answer.read()))


def post(url: str, form: dict[str, str]) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{url}dlq/jobs/replay", data=urllib.parse.urlencode(form).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def shown(browser: webdriver.Chrome, element_id: str) -> int:
    """The number the page shows in ``element_id`` (-1 while the page swaps it)."""
    try:
        return int(browser.find_element(By.ID, element_id).text)
    except (StaleElementReferenceException, NoSuchElementException, ValueError):
        return -1


def row_state(browser: webdriver.Chrome, worker_id: str) -> str | None:
    try:
        rows = browser.find_elements(By.CSS_SELECTOR, f'tr.worker[data-worker-id="{worker_id}"]')
        return rows[0].get_attribute("data-state") if rows else None
    except StaleElementReferenceException:
        return None


def until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> bool:
    return wait_until(condition, timeout_s, interval_s=0.2)


def test_the_console_shows_the_fleet_live_in_a_browser(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, tmp_path: Path, report: Report
) -> None:
    topic, group = create_topic(kafka_servers, 4), unique_name("group")
    jobs = sleep_jobs(JOBS, ms=200, prefix="web")
    publish(kafka_servers, topic, jobs)
    settings = worker_settings(
        kafka_servers,
        topic,
        group,
        core.address,
        STATUS_INTERVAL=f"{INTERVAL_S:g}s",
        WORKER_POOL_SIZE="2",
        KAFKA_SESSION_TIMEOUT="6s",
    )
    start_worker("web-a", settings)
    killed = start_worker("web-b", settings)
    port = free_port()
    console = WorkerProcess(
        {
            "KAFKA_BROKERS": kafka_servers,
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP_ID": group,
            "WEB_PORT": str(port),
            "WEB_ACTION_TOKEN": TOKEN,
        },
        tmp_path / "console.log",
        args=("web", "--allow-actions"),
    ).start()
    url = f"http://127.0.0.1:{port}/"
    shots = artifacts_dir("web-console")
    try:
        with headless_chromium() as browser:
            assert until(lambda: console.process.poll() is not None or _loads(browser, url))
            assert console.process.poll() is None, log_tail(console)

            # Both workers appear, live; the backlog is there and goes down.
            assert until(
                lambda: row_state(browser, "web-a") == row_state(browser, "web-b") == "live"
            )
            first_backlog = shown(browser, "backlog-total")
            browser.save_screenshot(shots / "01-two-workers-live.png")
            assert first_backlog > 0
            assert until(lambda: 0 < shown(browser, "backlog-total") < first_backlog)
            browser.save_screenshot(shots / "02-backlog-going-down.png")

            # One killed outright goes stale within three status intervals.
            killed.signal(signal.SIGKILL)
            killed.wait(10)
            killed_at = time.monotonic()
            assert until(lambda: row_state(browser, "web-b") == "stale", 3 * INTERVAL_S + 5)
            stale_after_s = time.monotonic() - killed_at
            browser.save_screenshot(shots / "03-killed-worker-stale.png")
            report(f"web console: SIGKILLed worker shown stale after {stale_after_s:.1f} s")
            assert stale_after_s <= 3 * INTERVAL_S + 1.0  # + the page's one-second refresh
            assert row_state(browser, "web-a") == "live"

            # Every job finished: the backlog shown is none, as Core's count says.
            assert until(lambda: results_in_core(core.db_path, [j.id for j in jobs]) == _ids(jobs))
            assert until(lambda: shown(browser, "backlog-total") == 0)
            browser.save_screenshot(shots / "04-backlog-done.png")

            # Poison records are dead-lettered and counted by reason.
            _publish_poison(kafka_servers, topic, POISON)
            assert until(lambda: shown(browser, "dlq-total-jobs") == POISON)
            browser.save_screenshot(shots / "05-dead-letters-counted.png")
            counts = overview(url)["dead_letters"]["jobs"]["by_cause"]
            assert sum(counts.values()) == POISON
            [cause] = counts

            # No token, no replay; the page's button with the token replays them.
            assert post(url, {"cause": cause}) == 403
            assert post(url, {"cause": cause, "token": "wrong-token-0123456789"}) == 403
            browser.get(f"{url}dlq/jobs")
            form = browser.find_element(By.CSS_SELECTOR, "form.replay")
            form.find_element(By.NAME, "token").send_keys(TOKEN)
            form.find_element(By.CSS_SELECTOR, "button").click()
            assert until(lambda: _attribute(browser, "action-state", "data-done") == "yes", 30)
            browser.save_screenshot(shots / "06-replayed-from-the-page.png")
            assert f"{POISON} sent" in browser.find_element(By.ID, "action-state").text
    finally:
        console.ensure_stopped()
    assert not list(tmp_path.glob("*.png"))  # screenshots are kept with the artifacts
    report(f"web console screenshots: {shots}")


def _loads(browser: webdriver.Chrome, url: str) -> bool:
    try:
        browser.get(url)
    except Exception:  # not listening yet
        return False
    return bool(browser.find_elements(By.ID, "backlog-total"))


def _attribute(browser: webdriver.Chrome, element_id: str, name: str) -> str | None:
    try:
        return browser.find_element(By.ID, element_id).get_attribute(name)
    except (StaleElementReferenceException, NoSuchElementException):
        return None


def _ids(jobs: list[Any]) -> frozenset[str]:
    return frozenset(job.id for job in jobs)


def _publish_poison(servers: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=servers)
    try:
        for i in range(count):
            producer.send(topic, key=f"poison-{i}".encode(), value=b"\xffnot a JobTask")
        producer.flush(30)
    finally:
        producer.close()


@pytest.fixture(autouse=True)
def _say_where_the_screenshots_are() -> None:
    artifacts_dir("web-console")
