#!/usr/bin/env bash
# Runs a command with a Kafka broker available:
#   - KAFKA_BOOTSTRAP_SERVERS already set: use that broker;
#   - a Docker engine answers and has (or can pull) apache/kafka:<version of pom.xml>: the
#     tests start their own (testcontainers);
#   - otherwise: start a local broker (broker.sh), export KAFKA_BOOTSTRAP_SERVERS, run the
#     command, and stop the broker again, unless it was already running before.
# A Docker engine that answers but cannot supply the image counts as no Docker: the
# testcontainers would fail to start, so the jar broker is used and one line says why.
# Environment: KAFKA_DOCKER_PULL_TIMEOUT_S (120), and broker.sh's.
# Exits with the command's exit code.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
IMAGE="apache/kafka:$KAFKA_VERSION"

if (($# == 0)); then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    exec "$@"
fi

docker_supplies_image() {
    docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
    timeout "${KAFKA_DOCKER_PULL_TIMEOUT_S:-120}" docker pull -q "$IMAGE" >/dev/null 2>&1
}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    if docker_supplies_image; then
        exec "$@"
    fi
    echo "with-broker.sh: Docker answers but cannot supply $IMAGE: using the jar broker instead" >&2
fi

# The port named, so that the `down` below stops the broker started here and no other
# (broker.sh down without KAFKA_PORT stops every broker of its state directory).
export KAFKA_PORT="${KAFKA_PORT:-19092}"
started_here=true
if "$HERE/broker.sh" status >/dev/null 2>&1; then
    started_here=false
fi
bootstrap_line="$("$HERE/broker.sh" up)"
export KAFKA_BOOTSTRAP_SERVERS="${bootstrap_line#export KAFKA_BROKERS=}"

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
