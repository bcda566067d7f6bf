"""The console's WSGI application: a handful of pages over the ``FleetConsole``.

Read-only unless started with actions allowed: then a replay is a POST that carries the
action token (a form field, or ``Authorization: Bearer``), compared in constant time.
Without a token configured nothing can be changed, whatever a request carries. Every
answer forbids framing and caching, and the pages load nothing from elsewhere.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, PackageLoader, select_autoescape

from jobworker.adapters.web.chart import throughput_svg
from jobworker.application.fleet_console import FleetConsole, ReplayRunning
from jobworker.domain.dead_letters import LetterFilter

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
# A replay form's body is a few fields: anything larger is not one.
MAX_FORM_BYTES = 16 * 1024
_SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_STATIC = {"/console.css": "text/css", "/console.js": "text/javascript"}


class _HttpError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConsoleApp:
    """The pages; ``action_token`` None means read-only (no action is possible)."""

    def __init__(
        self, console: FleetConsole, *, action_token: str | None, title: str = "jobworker"
    ) -> None:
        self._console = console
        self._token = action_token
        self._env = Environment(
            loader=PackageLoader("jobworker.adapters.web", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["utc"] = _utc
        self._env.filters["ago"] = _ago
        self._env.globals.update(title=title, actions_allowed=action_token is not None)
        self._env.globals["quote"] = lambda text: quote(str(text), safe="")
        static = resources.files("jobworker.adapters.web").joinpath("static")
        self._static = {path: static.joinpath(path[1:]).read_bytes() for path in _STATIC}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        try:
            if method == "POST":
                return self._post(path, environ, start_response)
            if method not in {"GET", "HEAD"}:
                raise _HttpError("405 Method Not Allowed", f"{method} is not served here")
            return self._get(path, environ, start_response)
        except _HttpError as error:
            body = self._render("error.html", status=error.status, message=str(error))
            return _send(start_response, error.status, body)

    # -- GET -----------------------------------------------------------------------------

    def _get(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        fixed = self._fixed_answer(path)
        if fixed is not None:
            status, body, kind = fixed
            return _send(start_response, status, body, kind)
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["dlq"] and len(parts) == 2:
            return self._letters_page(parts[1], query, start_response)
        if parts[:1] == ["dlq"] and len(parts) == 4:
            return self._letter_page(parts[1], parts[2], parts[3], start_response)
        if parts[:1] == ["actions"] and len(parts) == 2:
            action = self._console.action(_number(parts[1], "action"))
            if action is None:
                raise _HttpError("404 Not Found", f"no action {parts[1]}")
            return _send(start_response, "200 OK", self._render("action.html", a=action))
        raise _HttpError("404 Not Found", f"no page {path}")

    def _fixed_answer(self, path: str) -> tuple[str, bytes, str] | None:
        """The answer of a path that takes no parameters, or None."""
        if path == "/healthz":
            return "200 OK", b"ok\n", "text/plain"
        if path in self._static:
            return "200 OK", self._static[path], _STATIC[path]
        if path == "/api/overview":
            return "200 OK", _overview_json(self._console), "application/json"
        if path == "/":
            overview = self._console.overview()
            body = self._render(
                "overview.html", o=overview, chart=throughput_svg(overview.throughput)
            )
            return "200 OK", body, "text/html"
        return None

    def _letters_page(
        self, name: str, query: dict[str, str], start_response: StartResponse
    ) -> list[bytes]:
        self._known(name)
        cause = query.get("cause") or None
        topic, letters = self._console.letters(name, LetterFilter(cause=cause))
        counts = self._console.letter_counts(name)
        body = self._render(
            "letters.html", name=name, topic=topic, cause=cause, letters=letters, counts=counts
        )
        return _send(start_response, "200 OK", body)

    def _letter_page(
        self, name: str, partition: str, offset: str, start_response: StartResponse
    ) -> list[bytes]:
        self._known(name)
        letter = self._console.letter(
            name, _number(partition, "partition"), _number(offset, "offset")
        )
        if letter is None:
            raise _HttpError("404 Not Found", f"no letter at {partition}:{offset}")
        content = json.dumps(letter.content, indent=2, ensure_ascii=False, default=str)
        return _send(
            start_response,
            "200 OK",
            self._render("letter.html", name=name, letter=letter, content=content),
        )

    # -- POST (actions) ------------------------------------------------------------------

    def _post(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        form = _form(environ)
        self._authorise(environ, form)
        parts = [p for p in path.split("/") if p]
        if not (parts[:1] == ["dlq"] and len(parts) == 3 and parts[2] == "replay"):
            raise _HttpError("404 Not Found", f"no action at {path}")
        name = parts[1]
        self._known(name)
        which = LetterFilter(
            cause=form.get("cause") or None,
            partition=_number(form["partition"], "partition") if form.get("partition") else None,
            offset=_number(form["offset"], "offset") if form.get("offset") else None,
        )
        if which.offset is not None and which.partition is None:
            raise _HttpError("400 Bad Request", "a letter's offset needs its partition")
        try:
            action = self._console.replay(name, which)
        except ReplayRunning as running:
            raise _HttpError(
                "409 Conflict", f"{running}: see /actions/{running.action.id}"
            ) from None
        start_response("303 See Other", [("Location", f"/actions/{action.id}"), *_SECURITY_HEADERS])
        return [b""]

    def _authorise(self, environ: dict[str, Any], form: dict[str, str]) -> None:
        if self._token is None:
            raise _HttpError(
                "403 Forbidden",
                "this console is read-only: start it with --allow-actions and WEB_ACTION_TOKEN"
                " to replay letters from here",
            )
        given = form.get("token", "")
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Bearer "):
            given = header.removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise _HttpError("403 Forbidden", "wrong or missing action token")

    # -- helpers -------------------------------------------------------------------------

    def _known(self, name: str) -> None:
        if name not in self._console.dead_letter_names():
            raise _HttpError("404 Not Found", f"no dead-letter topic called {name!r} here")

    def _render(self, template: str, **values: Any) -> bytes:
        return self._env.get_template(template).render(**values).encode()


def _send(
    start_response: StartResponse, status: str, body: bytes, kind: str = "text/html"
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", f"{kind}; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *_SECURITY_HEADERS,
        ],
    )
    return [body]


def _form(environ: dict[str, Any]) -> dict[str, str]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise _HttpError("400 Bad Request", "Content-Length is not a number") from None
    if length > MAX_FORM_BYTES:
        raise _HttpError("413 Content Too Large", "a form is a few fields")
    body = environ["wsgi.input"].read(length).decode(errors="replace") if length else ""
    return {k: v[-1] for k, v in parse_qs(body).items()}


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise _HttpError("400 Bad Request", f"{what} {text!r} is not a number")
    return int(text)


def _utc(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _overview_json(console: FleetConsole) -> bytes:
    """The overview's figures for scripts (and tests): what the page shows."""
    o = console.overview()
    return json.dumps(
        {
            "now_ms": o.now_ms,
            "backlog": o.backlog,
            "lag": o.lag,
            "workers": [
                {
                    "worker_id": w.status.worker_id,
                    "state": str(w.state),
                    "age_s": round(w.age_s, 1),
                    "host": w.status.host,
                    "pid": w.status.pid,
                    "partitions": [p.partition for p in w.status.partitions],
                    "jobs_in_flight": w.status.jobs_in_flight,
                }
                for w in o.workers
            ],
            "partitions": [
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "holder": r.holder,
                    "backlog": r.backlog,
                    "lag": r.lag,
                    "committed": r.committed,
                    "end": r.end,
                    "source": r.source,
                }
                for r in o.partitions
            ],
            "failures": [
                {"kind": f.kind, "recent": f.recent, "total": f.total} for f in o.failures
            ],
            "dead_letters": {
                name: {
                    "topic": c.topic,
                    "total": c.total,
                    "by_cause": dict(c.by_cause),
                    "exists": c.exists,
                }
                for name, c in o.letters.items()
            },
            "problems": o.problems,
        }
    ).encode()
