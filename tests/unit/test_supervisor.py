"""The supervisor's small decisions: what each child is given, and how a death is told."""

from __future__ import annotations

import signal

from jobworker.entrypoints.supervisor import child_arguments, describe_exit


def test_children_get_the_parents_arguments_without_processes() -> None:
    argv = ["run", "--processes", "4", "--env-file", "prod.env", "--processes=3", "-c", "7"]
    assert child_arguments(argv) == ["run", "--env-file", "prod.env", "-c", "7"]


def test_a_death_is_told_by_exit_code_or_signal_name() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "signal SIGSEGV"
