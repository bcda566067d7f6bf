#!/usr/bin/env bash
# Runs a command with a Kafka broker available:
#   - KAFKA_BOOTSTRAP_SERVERS already set: use that broker;
#   - a Docker engine answers: the tests start their own (testcontainers);
#   - otherwise: start a local broker (broker.sh), export KAFKA_BOOTSTRAP_SERVERS, run the
#     command, and stop the broker again, unless it was already running before.
# Exits with the command's exit code.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if (($# == 0)); then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    exec "$@"
fi

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    exec "$@"
fi

started_here=true
if "$HERE/broker.sh" status >/dev/null 2>&1; then
    started_here=false
fi
bootstrap_line="$("$HERE/broker.sh" up)"
export KAFKA_BOOTSTRAP_SERVERS="${bootstrap_line#KAFKA_BOOTSTRAP_SERVERS=}"

if $started_here; then
    trap '"$HERE/broker.sh" down' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi

set +e
"$@"
status=$?
set -e
exit "$status"
