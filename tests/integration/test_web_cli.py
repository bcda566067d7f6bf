"""`jobworker web` as a user starts it: what it refuses before serving anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.test_cli import jobworker
from tests.support.processes import worker_env

pytestmark = pytest.mark.integration

KAFKA = {"KAFKA_BROKERS": "127.0.0.1:9", "KAFKA_GROUP_ID": "g"}


def test_allow_actions_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    done = jobworker("web", "--allow-actions", env=worker_env(**KAFKA), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: WEB_ACTION_TOKEN: --allow-actions needs a token for"
        " the replay buttons to ask for: set WEB_ACTION_TOKEN (at least 16 characters;"
        " `openssl rand -hex 16`)"
    ]


def test_a_short_token_is_refused_and_never_printed(tmp_path: Path) -> None:
    env = worker_env(**KAFKA, WEB_ACTION_TOKEN="tooshort123")  # noqa: S106 - a test value
    done = jobworker("web", "--allow-actions", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "WEB_ACTION_TOKEN" in done.stderr
    assert "at least 16 characters" in done.stderr
    assert "tooshort123" not in done.stderr + done.stdout


def test_the_group_whose_progress_it_shows_is_required(tmp_path: Path) -> None:
    done = jobworker("web", env=worker_env(KAFKA_BROKERS="127.0.0.1:9"), cwd=tmp_path)
    assert done.returncode == 2
    assert "KAFKA_GROUP_ID: is required" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = jobworker("web", "--port", str(port), env=worker_env(**KAFKA), cwd=tmp_path)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (WEB_HOST, WEB_PORT)" in done.stderr
    assert "Traceback" not in done.stderr
