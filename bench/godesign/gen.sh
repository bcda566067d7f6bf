#!/usr/bin/env bash
# Regenerates pb/*.pb.go from proto/ (the wire contract; never edited for Go's sake).
# protoc is grpcio-tools' in the project's virtualenv; the two Go plugins are installed
# at the versions pinned here into .cache/godesign/bin. Run from anywhere:
#   bench/godesign/gen.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROTOC_GEN_GO=v1.36.12       # = google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC=v1.6.2
BIN="$ROOT/.cache/godesign/bin"
export GOTOOLCHAIN=local GOBIN="$BIN"
go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
# proto/ sets no go_package: the M option maps the file to this module's pb package.
MAP="Mjobworker/v1/jobworker.proto=jobworker/bench/godesign/pb"
PATH="$BIN:$PATH" "$ROOT/.venv/bin/python" -m grpc_tools.protoc \
    -I"$ROOT/proto" \
    --go_out="$HERE/pb" --go_opt=paths=source_relative,"$MAP" \
    --go-grpc_out="$HERE/pb" --go-grpc_opt=paths=source_relative,"$MAP" \
    jobworker/v1/jobworker.proto
# paths=source_relative writes pb/jobworker/v1/; the package is flat.
mv "$HERE"/pb/jobworker/v1/*.go "$HERE/pb/"
rm -r "$HERE/pb/jobworker"
