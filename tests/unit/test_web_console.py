"""The web console over in-memory sources: what its pages show, and that nothing can be
changed without the action token."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest

from jobworker.adapters.memory import (
    InMemoryDeadLetterReader,
    InMemoryGroupProgress,
    InMemoryRecordRepublisher,
    InMemoryReplayCheckpoint,
    InMemoryResultSink,
    InMemoryStatusFeed,
)
from jobworker.adapters.web.app import ConsoleApp
from jobworker.application.dead_letter_service import DeadLetterService
from jobworker.application.fleet_console import FleetConsole
from jobworker.domain.dead_letters import Letter, LetterKind, RecordCopy
from jobworker.domain.fleet import GroupPartition, OwnedPartition, WorkerStatus

NOW_MS = 1_800_000_000_000
TOKEN = "s3cret-token-0123456789"  # noqa: S105 - a test token


def letter(offset: int, cause: str, partition: int = 0) -> Letter:
    job_id = f"job-{partition}-{offset}"
    return Letter(
        topic="jobs.dlq",
        partition=partition,
        offset=offset,
        timestamp_ms=NOW_MS,
        kind=LetterKind.JOB,
        reason=f"{cause} (at {offset})",
        cause=cause,
        size=10,
        source_topic="jobs",
        source_partition=0,
        source_offset=offset,
        job_id=job_id,
        job_type="SLEEP",
        records=(RecordCopy(job_id.encode(), b"{}", (), offset),),
        content={"id": job_id},
    )


@dataclass
class Console:
    feed: InMemoryStatusFeed = field(default_factory=InMemoryStatusFeed)
    group: InMemoryGroupProgress = field(default_factory=InMemoryGroupProgress)
    reader: InMemoryDeadLetterReader = field(
        default_factory=lambda: InMemoryDeadLetterReader("jobs.dlq", {0: []})
    )
    missing: InMemoryDeadLetterReader = field(
        default_factory=lambda: InMemoryDeadLetterReader("jobs.results.dlq", None)
    )
    republisher: InMemoryRecordRepublisher = field(default_factory=InMemoryRecordRepublisher)
    checkpoint: InMemoryReplayCheckpoint = field(default_factory=InMemoryReplayCheckpoint)

    def __post_init__(self) -> None:
        self.console = FleetConsole(
            self.feed,
            self.group,
            {"jobs": self._service, "results": self._missing_service},
            max_replays=3,
            wall_clock_ms=lambda: NOW_MS,
        )

    def _service(self) -> DeadLetterService:
        return DeadLetterService(
            self.reader,
            checkpoint=lambda: self.checkpoint,
            republisher=lambda: self.republisher,
            sink=InMemoryResultSink,
        )

    def _missing_service(self) -> DeadLetterService:
        return DeadLetterService(self.missing)

    def add_letters(self, *letters: Letter) -> None:
        assert self.reader.by_partition is not None
        for one in letters:
            self.reader.by_partition.setdefault(one.partition, []).append(one)

    def read_all(self) -> None:
        self.console.follow_statuses(0)
        self.console.refresh_group()
        self.console.refresh_letters()

    def app(self, token: str | None = None) -> ConsoleApp:
        return ConsoleApp(self.console, action_token=token)


@dataclass
class Answer:
    status: str
    headers: dict[str, str]
    body: str


def call(
    app: ConsoleApp,
    path: str,
    method: str = "GET",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    path, _, query = path.partition("?")
    body = urlencode(form or {}).encode()
    environ.update(
        REQUEST_METHOD=method,
        PATH_INFO=path,
        QUERY_STRING=query,
        CONTENT_LENGTH=str(len(body)),
        CONTENT_TYPE="application/x-www-form-urlencoded",
        **{"wsgi.input": io.BytesIO(body)},
    )
    environ.update(headers or {})
    got: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        got.update(status=status, headers=dict(response_headers))

    chunks: Iterable[bytes] = app(environ, start_response)
    return Answer(got["status"], got["headers"], b"".join(chunks).decode())


def worker(worker_id: str, at_ms: int, *partitions: int, backlog: int = 5) -> WorkerStatus:
    return WorkerStatus(
        worker_id=worker_id,
        at_ms=at_ms,
        interval_s=5.0,
        host="host-a",
        pid=101,
        partitions=tuple(OwnedPartition("jobs", p, backlog, backlog + 10) for p in partitions),
        finished={"SUCCEEDED": 3},
    )


def test_the_fleet_page_shows_each_worker_live_or_stale_and_who_holds_each_partition() -> None:
    setup = Console()
    setup.feed.publish("w-live", worker("w-live", NOW_MS - 1_000, 0))
    setup.feed.publish("w-stale", worker("w-stale", NOW_MS - 60_000, 1))
    setup.group.partitions = [
        GroupPartition("jobs", 0, 0, 100, 80),
        GroupPartition("jobs", 1, 0, 100, 70, finished_beyond=20),
    ]
    setup.read_all()
    page = call(setup.app(), "/")
    assert page.status == "200 OK"
    assert 'data-worker-id="w-live" data-state="live"' in page.body
    assert 'data-worker-id="w-stale" data-state="stale"' in page.body
    overview = json.loads(call(setup.app(), "/api/overview").body)
    rows = {r["partition"]: r for r in overview["partitions"]}
    assert (rows[0]["holder"], rows[0]["backlog"], rows[0]["source"]) == ("w-live", 5, "worker")
    assert (rows[1]["holder"], rows[1]["backlog"], rows[1]["source"]) == (None, 10, "commit")
    assert overview["backlog"] == 15
    assert 'id="backlog-total">15<' in page.body


def test_what_a_worker_reports_is_escaped_not_run() -> None:
    setup = Console()
    setup.feed.publish("<script>x</script>", worker("<script>x</script>", NOW_MS, 0))
    setup.read_all()
    body = call(setup.app(), "/").body
    assert "<script>x</script>" not in body
    assert "&lt;script&gt;x&lt;/script&gt;" in body


def test_dead_letters_are_counted_by_cause_once_each_as_they_come() -> None:
    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"), letter(1, "unknown job type"))
    setup.read_all()
    setup.add_letters(letter(2, "not a JobTask"))
    setup.console.refresh_letters()
    setup.console.refresh_letters()
    counts = json.loads(call(setup.app(), "/api/overview").body)["dead_letters"]
    assert counts["jobs"]["by_cause"] == {"not a JobTask": 2, "unknown job type": 1}
    assert counts["jobs"]["total"] == 3
    assert counts["results"] == {
        "topic": "jobs.results.dlq",
        "total": 0,
        "by_cause": {},
        "exists": False,
    }


def test_the_drill_down_lists_the_letters_of_one_cause_and_shows_one_letter() -> None:
    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"), letter(1, "unknown job type"))
    setup.read_all()
    page = call(setup.app(), "/dlq/jobs?cause=unknown+job+type").body
    assert "/dlq/jobs/0/1" in page
    assert "/dlq/jobs/0/0" not in page
    one = call(setup.app(), "/dlq/jobs/0/1")
    assert one.status == "200 OK"
    assert "unknown job type (at 1)" in one.body
    assert call(setup.app(), "/dlq/jobs/0/9").status == "404 Not Found"
    assert call(setup.app(), "/dlq/nope").status == "404 Not Found"
    assert call(setup.app(), "/dlq/jobs/0/x").status == "400 Bad Request"


def test_a_read_only_console_has_no_replay_button_and_refuses_a_replay_whatever_it_carries() -> (
    None
):
    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"))
    setup.read_all()
    app = setup.app(token=None)
    assert "<form" not in call(app, "/dlq/jobs").body
    refused = call(
        app,
        "/dlq/jobs/replay",
        "POST",
        {"token": TOKEN},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"},
    )
    assert refused.status == "403 Forbidden"
    assert "read-only" in refused.body
    assert setup.console.actions() == []
    assert setup.republisher.sent == []


@pytest.mark.parametrize("given", [None, "", "wrong-token-0123456789", TOKEN + "x"])
def test_a_replay_without_the_right_token_is_refused(given: str | None) -> None:
    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"))
    form = {} if given is None else {"token": given}
    answer = call(setup.app(TOKEN), "/dlq/jobs/replay", "POST", form)
    assert answer.status == "403 Forbidden"
    assert setup.console.actions() == []


def test_a_replay_with_the_token_sends_the_letters_of_its_cause_and_says_how_it_went() -> None:
    import gevent

    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"), letter(1, "unknown job type"))
    setup.read_all()
    app = setup.app(TOKEN)
    assert 'name="token"' in call(app, "/dlq/jobs").body
    answer = call(app, "/dlq/jobs/replay", "POST", {"token": TOKEN, "cause": "unknown job type"})
    assert answer.status == "303 See Other"
    assert answer.headers["Location"] == "/actions/1"
    gevent.sleep(0.1)  # the replay runs on a greenlet of its own
    [(topic, record)] = setup.republisher.sent
    assert (topic, record.key) == ("jobs", b"job-0-1")
    page = call(app, "/actions/1").body
    assert 'data-done="yes"' in page
    assert "1 sent" in page


def test_a_single_letter_is_replayed_by_its_place_with_a_bearer_token() -> None:
    import gevent

    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"), letter(1, "not a JobTask"))
    answer = call(
        setup.app(TOKEN),
        "/dlq/jobs/replay",
        "POST",
        {"partition": "0", "offset": "1"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"},
    )
    assert answer.status == "303 See Other"
    gevent.sleep(0.1)
    assert [record.key for _, record in setup.republisher.sent] == [b"job-0-1"]


def test_every_answer_forbids_framing_and_caching_and_the_page_loads_nothing_from_elsewhere() -> (
    None
):
    setup = Console()
    setup.read_all()
    page = call(setup.app(), "/")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http://" not in page.body and "https://" not in page.body
    assert call(setup.app(), "/console.js").headers["Content-Type"].startswith("text/javascript")
    assert call(setup.app(), "/healthz").body == "ok\n"
    assert call(setup.app(), "/", "DELETE").status == "405 Method Not Allowed"


def test_a_source_that_cannot_be_read_shows_as_a_problem_and_the_last_figures_stay() -> None:
    import gevent

    setup = Console()
    setup.group.partitions = [GroupPartition("jobs", 0, 0, 10, 4)]
    setup.read_all()
    setup.group.fail = "broker away"
    setup.console.start()
    try:
        gevent.sleep(0.05)
        overview = json.loads(call(setup.app(), "/api/overview").body)
    finally:
        setup.console.stop()
    assert overview["problems"]["group offsets"] == "JobWorkerError: broker away"
    assert overview["partitions"][0]["lag"] == 6
    assert setup.feed.closed and setup.group.closed


def test_one_replay_of_a_topic_at_a_time_a_second_is_refused_until_the_first_ends() -> None:
    import gevent

    setup = Console()
    setup.add_letters(letter(0, "not a JobTask"), letter(1, "not a JobTask"))
    app = setup.app(TOKEN)
    form = {"token": TOKEN, "cause": "not a JobTask"}
    assert call(app, "/dlq/jobs/replay", "POST", form).status == "303 See Other"
    second = call(app, "/dlq/jobs/replay", "POST", form)
    assert second.status == "409 Conflict"
    assert "/actions/1" in second.body
    gevent.sleep(0.1)
    assert len(setup.republisher.sent) == 2
    assert call(app, "/dlq/jobs/replay", "POST", form).status == "303 See Other"
    gevent.sleep(0.1)
    assert len(setup.republisher.sent) == 2, "the checkpoint says both were sent"
