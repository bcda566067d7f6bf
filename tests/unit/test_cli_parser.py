"""The argument parser: every option explained, flags mapped to their settings."""

from __future__ import annotations

import argparse

import pytest

from jobworker.entrypoints.commands import SETTING_FLAGS, build_parser, load_settings


def _commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Every command by name, those under another too (``dlq ls``)."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for name, command in sub.choices.items():
        found[name] = command
        if any(isinstance(a, argparse._SubParsersAction) for a in command._actions):
            found |= {f"{name} {inner}": each for inner, each in _commands(command).items()}
    return found


def test_every_option_of_every_command_has_help() -> None:
    for name, command in _commands().items():
        for action in command._actions:
            assert action.help, f"jobworker {name} {'/'.join(action.option_strings)}: no help"


def test_each_setting_flag_names_its_variable() -> None:
    run = _commands()["run"]
    for names, entry, _metavar in SETTING_FLAGS:
        action = next(a for a in run._actions if names[-1] in a.option_strings)
        assert entry.name in str(action.help)


def test_flags_become_settings_that_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_POOL_SIZE", "3")
    monkeypatch.setenv("LOG_FORMAT", "json")
    args = build_parser().parse_args(["run", "-c", "7", "--log-format", "text", "--jobs", "-"])
    settings = load_settings(args)
    assert settings.worker_pool_size == 7
    assert settings.log_format == "text"
    assert settings.job_source == "file"
    assert settings.job_file == "-"
    assert settings.origin(type(settings).worker_pool_size) == "flag --concurrency"


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # The supervisor strips `--processes` from its children's arguments: an abbreviation
    # it would not strip must not start a supervisor in every child.
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", "--proc", "2"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --proc 2" in capsys.readouterr().err
