#!/usr/bin/env bash
# Does what the Dockerfile's build stage does, without Docker: the locked runtime
# dependencies and the project as a wheel into a clean virtualenv (uv sync --locked
# --no-dev --no-editable), then runs the installed `jobworker` for --help and a short
# file-to-file job run. CI runs it (make package-check, which supplies UV).
set -euo pipefail
cd "$(dirname "$0")/.."
UV="$(realpath "${UV:-.cache/uv/bin/uv}")"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

UV_PROJECT_ENVIRONMENT="$work/venv" UV_PYTHON="$PYTHON" UV_PYTHON_DOWNLOADS=never \
  "$UV" sync --quiet --locked --no-dev --no-editable

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
# The web console's pages are package data, not modules: render one from the wheel.
venv/bin/python - <<'PY'
from jobworker.adapters.memory import InMemoryGroupProgress, InMemoryStatusFeed
from jobworker.adapters.web.app import ConsoleApp
from jobworker.application.fleet_console import FleetConsole

app = ConsoleApp(FleetConsole(InMemoryStatusFeed(), InMemoryGroupProgress(), {}, 3), action_token=None)
answers = []
body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda s, h: answers.append(s)))
assert answers == ["200 OK"] and b'id="backlog-total"' in body, (answers, body[:200])
css = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/console.css"}, lambda s, h: None))
assert css.startswith(b"body"), css[:80]
PY
for dev_only in pytest pip setuptools; do
  if venv/bin/python -c "import $dev_only" 2>/dev/null; then
    echo "package check: $dev_only is in the runtime install; the image would carry it" >&2
    exit 1
  fi
done
if ! (cd "$OLDPWD" && UV_PROJECT_ENVIRONMENT="$work/venv" UV_PYTHON="$PYTHON" \
      "$UV" sync --quiet --locked --no-dev --no-editable --check); then
  echo "package check: the runtime install differs from uv.lock" >&2
  exit 1
fi
echo "package check: installs exactly the locked runtime versions, no pip, runs jobs"
