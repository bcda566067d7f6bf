"""The checkout has no symlinks: it must work where links do not (Windows without
developer mode, some archive tools). The import package is made by the build instead
(pyproject.toml's package-dir, setup.py)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Made by tools, never committed (.gitignore).
_NOT_OURS = {".git", ".venv", ".cache", "build", "dist", ".mypy_cache", ".ruff_cache"}


def test_the_checkout_holds_no_symlinks() -> None:
    links = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _NOT_OURS and not d.endswith(".egg-info")]
        links += [
            str(path.relative_to(ROOT))
            for path in (Path(folder) / name for name in dirs + files)
            if path.is_symlink()
        ]
    assert links == []


def test_every_layer_module_is_importable_under_jobworker() -> None:
    for layer in ("domain", "application", "adapters", "entrypoints"):
        package = importlib.import_module(f"jobworker.{layer}")
        # The installed package's folder holds the same modules as the source folder.
        installed = {p.name for p in Path(package.__file__).parent.iterdir() if p.suffix == ".py"}
        source = {p.name for p in (ROOT / layer).iterdir() if p.suffix == ".py"}
        assert installed == source, layer
