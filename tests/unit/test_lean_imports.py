"""The CLI imports structlog, dynaconf and dependency-injector without extras the worker
never uses (entrypoints/lean_imports.py); whoever needs one later still gets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jobworker.entrypoints.lean_imports import UNUSED_EXTRAS


def test_a_run_loads_none_of_the_unused_extras_and_a_later_import_still_works(
    tmp_path: Path,
) -> None:
    code = (
        "import sys\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from jobworker.entrypoints.lean_imports import import_without_unused_extras\n"
        "import_without_unused_extras()\n"
        "import jobworker.entrypoints.commands, jobworker.entrypoints.worker\n"
        "from jobworker.entrypoints.settings import Settings\n"
        "settings = Settings.load()\n"
        "settings.validate_for_run()\n"
        f"loaded = [m for m in {UNUSED_EXTRAS!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "import jinja2\n"  # jobworker web's pages
        "assert jinja2.Environment\n"
    )
    settings = {"KAFKA_BROKERS": "k:9092", "KAFKA_GROUP_ID": "g", "GRPC_SERVER_ADDRESS": "c:1"}
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=tmp_path, env=os.environ | settings
    )
