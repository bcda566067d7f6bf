#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) on 127.0.0.1 for tests and the demo, run from the
# published jars: needs only java and mvn, no Docker and no Kafka download.
#
#   tools/kafka/broker.sh up       start (or reuse a healthy) broker; prints `export KAFKA_BROKERS=…`
#   tools/kafka/broker.sh down     stop it (SIGTERM, then SIGKILL); without KAFKA_PORT, every
#                                  broker started from the state directory, whatever its port
#   tools/kafka/broker.sh status   exit 0 and print the same line when it is healthy
#   tools/kafka/broker.sh jars     gather the jars (once) and print their folder
#
# stdout is only that one line, so `eval "$(tools/kafka/broker.sh up)"` (or `make kafka-up`)
# points the worker at the broker; progress goes to stderr.
#
# Environment: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# JOBWORKER_CACHE (~/.cache/jobworker: the jars), JOBWORKER_KAFKA_STATE (<repo>/.cache/kafka:
# data, logs, pid), KAFKA_JVM_OPTS (heap and GC), KAFKA_START_TIMEOUT_S (90).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
LIBS="${JOBWORKER_CACHE:-$HOME/.cache/jobworker}/kafka-$KAFKA_VERSION/libs"
# One folder per port below it: broker-<port>/ holds a broker's data, log and pid file.
STATE_ROOT="${JOBWORKER_KAFKA_STATE:-$REPO/.cache/kafka}"
START_TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-90}"
JVM_OPTS="${KAFKA_JVM_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC}"
# Any fixed base64 UUID will do: the cluster lives and dies with this state directory.
CLUSTER_ID="am9id29ya2VyLWthZmthLQ"

use_port() {
    PORT="$1"
    CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
    STATE="$STATE_ROOT/broker-$PORT"
    PID_FILE="$STATE/kafka.pid"
    LOG_FILE="$STATE/kafka.log"
    CONFIG="$STATE/server.properties"
    BOOTSTRAP="127.0.0.1:$PORT"
}
use_port "${KAFKA_PORT:-19092}"

say() { echo "broker.sh: $*" >&2; }

# The worker reads KAFKA_BROKERS; with-broker.sh parses this same line.
announce() { echo "export KAFKA_BROKERS=$BOOTSTRAP"; }

port_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

our_pid() {
    # The pid from the pid file, only while that process is alive and is our java.
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

serves_metadata() {
    # An admin request (metadata lookup + DescribeConfigs) proves the broker is up, not
    # only that something listens on the port.
    timeout 30 java -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
        -Dlog4j2.configurationFile="$HERE/log4j2-tools.properties" \
        kafka.admin.ConfigCommand --bootstrap-server "$BOOTSTRAP" \
        --describe --entity-type brokers --entity-name 1 >/dev/null 2>&1
}

healthy() {
    port_answers "$PORT" && serves_metadata
}

gather_jars() {
    [[ -f "$LIBS/.complete" ]] && return 0
    command -v mvn >/dev/null || { say "mvn not found: install Maven (and Java 17+)"; exit 1; }
    say "gathering Kafka $KAFKA_VERSION jars into $LIBS (once)"
    local staging="$LIBS.tmp.$$"
    rm -rf "$staging"
    mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$staging" -DincludeScope=runtime >&2
    rm -rf "$LIBS"
    mv "$staging" "$LIBS"
    touch "$LIBS/.complete"
}

write_config() {
    mkdir -p "$STATE/data"
    {
        echo "# Written by tools/kafka/broker.sh; rewritten on every start."
        cat "$HERE/single-node.properties"
        cat <<EOF
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$STATE/data
auto.create.topics.enable=true
offsets.topic.num.partitions=6
EOF
    } >"$CONFIG"
}

start() {
    command -v java >/dev/null || { say "java not found: install Java 17+ (and Maven)"; exit 1; }
    gather_jars
    write_config
    # Static voters and a fixed cluster id make formatting idempotent and let the
    # ports change between runs without touching the stored metadata.
    java -Xmx256m -cp "$LIBS/*" -Dlog4j2.configurationFile="$HERE/log4j2-tools.properties" \
        kafka.tools.StorageTool format --ignore-formatted -t "$CLUSTER_ID" -c "$CONFIG" >/dev/null
    : >"$LOG_FILE"
    # shellcheck disable=SC2086 # JVM_OPTS is a list of flags
    setsid java $JVM_OPTS -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -Dkafka.logs.dir="$STATE" \
        -cp "$LIBS/*" kafka.Kafka "$CONFIG" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    echo $! >"$PID_FILE"
    local pid=$! deadline=$((SECONDS + START_TIMEOUT_S))
    say "starting Kafka $KAFKA_VERSION (pid $pid, log $LOG_FILE)"
    until port_answers "$PORT" && serves_metadata; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "the broker exited during start-up; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            say "the broker did not serve metadata within ${START_TIMEOUT_S}s; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            stop || true
            exit 1
        fi
        sleep 1
    done
    say "ready after $((SECONDS - deadline + START_TIMEOUT_S))s"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PID_FILE"
        return 1
    fi
    say "stopping Kafka on $BOOTSTRAP (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still running after 30s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
}

running_ports() {
    # The ports of the brokers started from STATE_ROOT that are running now.
    local dir
    for dir in "$STATE_ROOT"/broker-*; do
        [[ -f "$dir/kafka.pid" ]] || continue
        (use_port "${dir##*/broker-}" && our_pid >/dev/null) && echo "${dir##*/broker-}"
    done
    return 0
}

down() {
    if [[ -n "${KAFKA_PORT:-}" ]]; then
        locked stop && return 0
        local others
        others="$(running_ports | paste -sd, -)"
        say "no broker started from $STATE_ROOT runs on port $PORT${others:+ (it has one on port(s) $others: without KAFKA_PORT, down stops every one)}"
        return 0
    fi
    # No port given: the broker(s) this state directory started, on whichever port,
    # rather than a silent no-op when `make kafka-up` had KAFKA_PORT and this has not.
    local port stopped=0
    for port in $(running_ports); do
        (use_port "$port" && locked stop) && stopped=$((stopped + 1))
    done
    ((stopped > 0)) || say "no broker started from $STATE_ROOT is running"
}

up() {
    if our_pid >/dev/null; then
        if healthy; then
            say "reusing the broker already running (pid $(our_pid))"
            announce
            return 0
        fi
        say "the running broker is not healthy: restarting it"
        stop || true
    elif port_answers "$PORT"; then
        if serves_metadata; then
            say "a Kafka broker not started from $STATE answers on $BOOTSTRAP: using it"
            announce
            return 0
        fi
        say "port $PORT is taken by something that is not Kafka: set KAFKA_PORT"
        exit 1
    fi
    if port_answers "$CONTROLLER_PORT"; then
        say "controller port $CONTROLLER_PORT is taken: set KAFKA_CONTROLLER_PORT"
        exit 1
    fi
    start
    announce
}

status() {
    if healthy; then
        announce
        return 0
    fi
    say "no healthy broker on $BOOTSTRAP"
    return 1
}

locked() {
    # One state directory, one broker: concurrent up/down calls take turns.
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9
    "$@"
}

case "${1:-}" in
up) locked up ;;
down) down ;;
status) status ;;
jars) gather_jars && echo "$LIBS" ;;
*)
    echo "usage: $0 up|down|status|jars" >&2
    exit 2
    ;;
esac
