#!/usr/bin/env bash
# Does what the Dockerfile's build stage does, without Docker: build the wheel, install
# it into a clean virtualenv (runtime dependencies only), then run the installed
# `jobworker` for --help and a short file-to-file job run. CI runs it (make package-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" wheel -q --no-deps --wheel-dir "$work/wheels" .
"$work/venv/bin/pip" install -q --find-links "$work/wheels" jobworker

# Run from an empty folder so nothing of the source tree can be imported by accident.
cd "$work"
venv/bin/jobworker --help > /dev/null
venv/bin/python - <<'PY'
import base64, io, json
from PIL import Image

png = io.BytesIO()
Image.new("RGB", (32, 16), "teal").save(png, format="PNG")
source = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
jobs = [
    {"id": "pkg-1", "type": "SLEEP", "payload": {"ms": 5}},
    {"id": "pkg-2", "type": "IMAGE_RESIZE", "payload": {"source": source, "width": 8,
     "height": 4, "mode": "exact", "format": "PNG", "destination": "x.png"}},
]
with open("jobs.jsonl", "w") as out:
    out.writelines(json.dumps(job) + "\n" for job in jobs)
PY
IMAGE_OUTPUT_ROOT="$work/out" IMAGE_INPUT_ROOT="$work" LOG_FORMAT=json \
  venv/bin/jobworker run --jobs jobs.jsonl --results results.jsonl 2> run.log
if [ "$(grep -c '"status": "SUCCEEDED"' results.jsonl)" != 2 ]; then
  echo "package check: the installed wheel did not run both jobs" >&2
  cat results.jsonl run.log >&2
  exit 1
fi
if venv/bin/python -c 'import pytest' 2>/dev/null; then
  echo "package check: a dev dependency leaked into the runtime install" >&2
  exit 1
fi
echo "package check: wheel builds, installs clean, runs jobs"
