from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from jobworker.application.registry import PLUGIN_GROUP, ExecutorRegistry, PluginLoadError
from jobworker.domain.errors import DuplicateExecutor, UnknownJobType
from jobworker.domain.model import Job


class EchoExecutor:
    def execute(self, job: Job) -> str:
        return job.payload


def test_lookup_by_type() -> None:
    echo = EchoExecutor()
    registry = ExecutorRegistry({"ECHO": echo})
    assert registry.get("ECHO") is echo
    assert registry.job_types() == ["ECHO"]


def test_unknown_type_names_the_type() -> None:
    with pytest.raises(UnknownJobType, match="unknown job type 'NOPE'"):
        ExecutorRegistry().get("NOPE")


def test_a_duplicate_registration_is_refused_with_both_names() -> None:
    registry = ExecutorRegistry({"ECHO": EchoExecutor()})
    with pytest.raises(DuplicateExecutor, match=r"'ECHO' already has an executor \(EchoExecutor\)"):
        registry.register("ECHO", EchoExecutor())


def _entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=PLUGIN_GROUP)


def test_plugins_register_under_their_entry_point_name() -> None:
    registry = ExecutorRegistry()
    added = registry.discover_plugins([_entry_point("ECHO", f"{__name__}:EchoExecutor")])
    assert added == ["ECHO"]
    assert registry.get("ECHO").execute(Job(id="1", type="ECHO", payload="hi")) == "hi"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no_such_module_xyz:Thing", "cannot be imported"),
        (f"{__name__}:_NOT_CALLABLE", "is not callable"),
        (f"{__name__}:_no_execute", "has no execute"),
        (f"{__name__}:_explodes", "failed to start: boom"),
    ],
)
def test_a_broken_plugin_is_named_in_the_error(value: str, message: str) -> None:
    with pytest.raises(PluginLoadError, match=message) as caught:
        ExecutorRegistry().discover_plugins([_entry_point("BROKEN", value)])
    assert "'BROKEN'" in str(caught.value)


_NOT_CALLABLE = 42


def _no_execute() -> object:
    return object()


def _explodes() -> object:
    raise RuntimeError("boom")


def test_installed_distributions_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed plugin is just a distribution whose metadata names the group: make
    # one on sys.path, exactly as `pip install` would leave it.
    (tmp_path / "echo_plugin.py").write_text(
        "class Echo:\n    def execute(self, job):\n        return 'plugin:' + job.payload\n"
    )
    dist_info = tmp_path / "echo_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nECHO = echo_plugin:Echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ExecutorRegistry()
    assert "ECHO" in registry.discover_plugins()
    assert registry.get("ECHO").execute(Job(id="1", type="ECHO", payload="x")) == "plugin:x"
    sys.modules.pop("echo_plugin", None)
