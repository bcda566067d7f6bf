#!/usr/bin/env bash
# Builds bench/godesign (the original Go design, for bench/vs_go.py) into .cache/godesign/
# with the machine's Go toolchain, only when its sources changed since the last build.
# Prints nothing when the binaries are current.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SOURCES="$ROOT/bench/godesign"
OUT="$ROOT/.cache/godesign"
STAMP="$OUT/.sources"

if ! command -v go >/dev/null; then
    echo "build_godesign.sh: no Go toolchain on PATH (bench/vs_go.py needs one to build bench/godesign)" >&2
    exit 2
fi
# The sources' digest, with the toolchain's version: a new Go rebuilds too.
digest="$( { go version; cd "$SOURCES" && find . -name '*.go' -o -name go.mod -o -name go.sum \
    | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$OUT/worker" && -x "$OUT/core" && "$(cat "$STAMP" 2>/dev/null)" == "$digest" ]]; then
    exit 0
fi
mkdir -p "$OUT"
echo "building bench/godesign with $(go version | cut -d' ' -f3) into .cache/godesign" >&2
# GOTOOLCHAIN=local: the toolchain installed, never another downloaded; -mod=readonly:
# exactly the versions go.mod and go.sum pin.
(cd "$SOURCES" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -o "$OUT/" ./cmd/...)
echo "$digest" >"$STAMP"
