"""Generate the protobuf/gRPC Python code and its .pyi stubs from proto/.

Usage: python tools/gen_proto.py TARGET_DIR

Writes TARGET_DIR/jobworker/v1/*.py(i). The import root is mapped so the generated
modules import each other as ``jobworker.adapters.proto.jobworker.v1...``; the protobuf package
(``jobworker.v1``) and so the wire format are unchanged by that mapping.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
IMPORT_ROOT = "jobworker/adapters/proto"


def main(target: Path) -> int:
    # protoc finds the mypy-protobuf plugins on PATH; they live beside this Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    sources = sorted(p.relative_to(PROTO_DIR) for p in PROTO_DIR.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{IMPORT_ROOT}={PROTO_DIR}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(f"{IMPORT_ROOT}/{s}" for s in sources),
        ]
        if protoc.main(args) != 0:
            return 1
        generated = Path(tmp) / IMPORT_ROOT / "jobworker"
        for folder in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
            (folder / "__init__.py").touch()
        shutil.rmtree(target / "jobworker", ignore_errors=True)
        shutil.copytree(generated, target / "jobworker")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
