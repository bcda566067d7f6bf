"""Every setting, declared once: its variable, default, meaning, parser (the check) and,
if only one adapter needs it, when it is required (the rules between settings are in
``rules``).

Adding a setting is adding one attribute to ``Settings``. The container reads the typed
attributes and hands them to the adapters, which take them as valid; the README table
and ``jobworker settings`` are generated from the same declarations.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from jobworker.adapters.executors.http_headers import HEADER_NAME, RESERVED_HEADERS
from jobworker.adapters.kafka.confluent.config import CONFLUENT_MAX_PARTITION_FETCH_BYTES
from jobworker.adapters.kafka.modes import KafkaClient, Ordering, UnreadableBatches
from jobworker.adapters.kafka.settings import (
    MAX_PARTITION_FETCH_BYTES,
    IsolationLevel,
    SaslMechanism,
    SecurityProtocol,
    parse_brokers,
    parse_topic,
)
from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import (
    at_most,
    duration_at_least,
    non_negative,
    one_of,
    parse_address,
    parse_bool,
    parse_duration,
    parse_int,
    parse_port,
    parse_size,
    positive,
    readable_file,
    writable_file,
)
from jobworker.entrypoints.settings.declaration import (
    Setting,
    derived,
    duration,
    needed,
    optional,
    setting,
)
from jobworker.entrypoints.settings.kafka_tls import ca_bundle, readable_pem
from jobworker.entrypoints.settings.limits import parse_limits
from jobworker.entrypoints.settings.modes import (
    JobSourceKind,
    LogFormat,
    LogLevel,
    RefusedResults,
    ResultSinkKind,
)
from jobworker.entrypoints.settings.reading import SettingValues, raise_problems
from jobworker.entrypoints.settings.rules import (
    CORE_MESSAGE_LIMIT,
    FILE_SINK,
    FILE_SOURCE,
    GRPC_SINK,
    KAFKA_SOURCE,
    SASL,
    broken_rules,
)
from jobworker.entrypoints.settings.table import markdown_table

# A greenlet per pool slot is cheap, but each slot may hold one of the hub's threads
# (DNS look-ups of HTTP jobs) and a connection: past this, run more worker processes.
MAX_POOL_SIZE = 10_000


def _brokers(text: str) -> list[str]:
    return list(parse_brokers(text))


def idempotency_header(text: str) -> str:
    """A header name, or "" for ``none``."""
    name = text.strip()
    if name.lower() == "none":
        return ""
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a header name (letters, digits, -; or none)")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{name!r} is a header HTTP itself needs; name another, or none")
    return name


def _client_id(s: Settings) -> str:
    return f"jobworker-{s.worker_id}"


def _results_dlq_file(s: Settings) -> str:
    result_file, job_file = s.given(Settings.result_file), s.given(Settings.job_file)
    if s.result_sink is ResultSinkKind.FILE and result_file and result_file != "-":
        return f"{result_file}.refused.jsonl"
    if job_file and job_file != "-":
        return f"{job_file}.refused.jsonl"
    return "refused-results.jsonl"


def _action_token(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters (`openssl rand -hex 16` makes one)")
    return text


def _status_interval(text: str) -> float:
    """0 (no status records), or at least a second: each record is a write to Kafka."""
    value = parse_duration(text)
    if 0 < value < 1.0:
        raise ValueError(f"{text!r} is below the minimum of 1s (0 turns status records off)")
    return value


class Settings(SettingValues):
    """Every setting, typed: reading an attribute gives its parsed value (see
    ``SettingValues``)."""

    # -- where jobs come from and results go ------------------------------------------
    job_source = setting("kafka", "where jobs come from: kafka or file", one_of(JobSourceKind))
    job_file = needed(
        "JSON Lines jobs file when JOB_SOURCE=file (`-` = stdin)",
        FILE_SOURCE,
        readable_file("jobs file"),
    )
    result_sink = setting("grpc", "where results go: grpc (Core) or file", one_of(ResultSinkKind))
    result_file = needed(
        "JSON Lines results file when RESULT_SINK=file (`-` = stdout)",
        FILE_SINK,
        writable_file("results file"),
    )

    # -- Kafka ------------------------------------------------------------------------
    kafka_brokers = needed(
        "comma-separated bootstrap servers (JOB_SOURCE=kafka)", KAFKA_SOURCE, _brokers
    )
    kafka_topic = setting("job_requests", "jobs topic", parse_topic, empty_means_default=False)
    kafka_group_id = needed("consumer group (JOB_SOURCE=kafka)", KAFKA_SOURCE, str)
    kafka_client = setting(
        "kafka-python",
        "the job source's Kafka client: kafka-python, or confluent (confluent-kafka,"
        ' librdkafka; docs/operations.md, "Choosing the Kafka client")',
        one_of(KafkaClient),
    )
    kafka_dlq_topic = derived(
        "dead-letter topic for poison messages and unreadable batches (`<topic>.dlq`)",
        lambda s: f"{s.kafka_topic}.dlq",
        parse_topic,
        empty_means_default=False,
    )
    kafka_results_dlq_topic = derived(
        "dead-letter topic for results Core refused for good (`<topic>.results.dlq`)",
        lambda s: f"{s.kafka_topic}.results.dlq",
        parse_topic,
        empty_means_default=False,
    )
    kafka_status_topic = derived(
        "compacted topic of the workers' status records, keyed by worker id"
        " (`<topic>.status`; docs/operations.md)",
        lambda s: f"{s.kafka_topic}.status",
        parse_topic,
        empty_means_default=False,
    )
    kafka_client_id = derived(
        "Kafka client id (`jobworker-<WORKER_ID>`)",
        _client_id,
        str,
    )
    kafka_security_protocol = setting(
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        one_of(SecurityProtocol),
    )
    kafka_sasl_mechanism = optional(
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL)",
        one_of(SaslMechanism),
        needed_when=SASL,
    )
    kafka_sasl_username = optional("SASL user name", str)
    kafka_sasl_password = optional("SASL password", str, secret=True)
    kafka_ssl_cafile = optional("CA bundle to verify the brokers", ca_bundle)
    kafka_ssl_certfile = optional("client certificate (mutual TLS)", readable_pem)
    kafka_ssl_keyfile = optional("client key (mutual TLS)", readable_pem)
    kafka_max_poll_records = setting(
        "500",
        "records per poll at most; also how many jobs the source reads ahead of the jobs"
        " queue, waiting decoded for room",
        positive(parse_int),
    )
    kafka_session_timeout = duration(
        "45s",
        "the broker drops this worker from the group after no heartbeat for this long"
        " (Kafka's session.timeout.ms, written with a unit: 45s or 45000ms)",
    )
    kafka_max_poll_interval = duration(
        "5m",
        "the group drops this worker when it has not polled for this long"
        " (Kafka's max.poll.interval.ms, written with a unit: 5m or 300000ms)",
    )
    kafka_max_in_flight_per_partition = setting(
        "1000",
        "unfinished jobs per partition before it is paused (bounds redelivery)",
        positive(parse_int),
    )
    # Short, so that finished work is on record soon after Core took it (a crash then
    # redoes little); a commit is sent only when something moved.
    kafka_commit_interval = duration(
        "100ms",
        "commit done offsets at least this often",
    )
    kafka_commit_every = setting("1000", "…or after this many finished jobs", positive(parse_int))
    kafka_max_partition_fetch_bytes = derived(
        "bytes one fetch brings of a partition at most (kafka-python's memory is about"
        " partitions times this): 256KiB, or 64KiB with KAFKA_CLIENT=confluent, whose"
        " librdkafka holds each record apart",
        lambda s: (
            CONFLUENT_MAX_PARTITION_FETCH_BYTES
            if s.kafka_client == KafkaClient.CONFLUENT
            else MAX_PARTITION_FETCH_BYTES
        ),
        positive(parse_size),
    )
    kafka_fetch_max_bytes = setting("50MiB", "bytes one fetch brings at most", positive(parse_size))
    # Short: a client has one fetch out to a broker at a time, so a fetch waiting for
    # partitions with nothing new holds back those with records (docs/operations.md).
    kafka_fetch_max_wait = duration(
        "100ms",
        "how long a fetch may wait at the broker for new records before it answers"
        " (Kafka's fetch.max.wait.ms, 500ms there; written with a unit: 100ms or 1s)",
    )
    kafka_isolation_level = setting(
        "read_committed",
        "read_committed (skip aborted transactions) or read_uncommitted",
        one_of(IsolationLevel),
    )
    kafka_unreadable_batches = setting(
        "dead-letter",
        "a batch that cannot be decoded: dead-letter (and move on) or fail (stop the worker)",
        one_of(UnreadableBatches),
    )
    kafka_ordering = setting(
        "none",
        "none (jobs run in any order), key (jobs with the same record key one at a time, in"
        " offset order) or partition (one job at a time per partition)",
        one_of(Ordering),
    )

    dlq_max_replays = setting(
        "3",
        "`jobworker dlq replay` skips a job's letter replayed this many times already"
        " (it came back each time), unless --force",
        positive(parse_int),
    )

    web_host = setting(
        "127.0.0.1",
        "address `jobworker web` listens on (loopback: reach it through a tunnel or a"
        " port-forward; 0.0.0.0 in a pod behind a Service)",
        str,
    )
    web_port = setting("8088", "port `jobworker web` listens on", parse_port)
    web_action_token = optional(
        "token a replay button of `jobworker web --allow-actions` asks for (at least 16"
        " characters); without it the console cannot change anything",
        _action_token,
        secret=True,
    )

    limits = setting(
        "",
        "bounds per job type and HTTP host, each per worker process:"
        " `HTTP=500/s; host:api.example.com=50 concurrent,100/s` (README); none by default",
        parse_limits,
    )

    # -- the worker -------------------------------------------------------------------
    worker_pool_size = setting(
        "10",
        f"concurrent jobs (greenlets), at most {MAX_POOL_SIZE}",
        at_most(MAX_POOL_SIZE, "run more worker processes instead", positive(parse_int)),
    )
    worker_processes = setting(
        "1",
        "worker processes in one consumer group, each with its own pool (one core each)",
        at_most(256, "run more machines instead", positive(parse_int)),
    )
    worker_id = derived(
        "worker id reported with results (`<host>-<pid>`)",
        lambda _s: f"{socket.gethostname()}-{os.getpid()}",
        str,
    )
    jobs_queue_size = derived(
        "jobs buffered ahead of the pool (2x pool size)",
        lambda s: 2 * s.worker_pool_size,
        positive(parse_int),
    )
    results_queue_size = derived(
        "results buffered ahead of the sender (2x pool size)",
        lambda s: 2 * s.worker_pool_size,
        positive(parse_int),
    )
    result_senders = setting(
        "4",
        "greenlets sending results: ReportResults calls in flight (to a Core with only"
        " ReportResult, each sends its batch as calls all in flight, 64 at most in all)",
        positive(parse_int),
    )
    result_batch_size = setting(
        "100", "results per ReportResults call at most", positive(parse_int)
    )
    result_batch_linger = duration(
        "5ms",
        "how long a part-filled batch waits for more results (adds up to this latency)",
    )
    result_batch_max_bytes = setting(
        "3MiB",
        "about how many bytes of results one call carries (below Core's 4 MiB limit)",
        at_most(
            CORE_MESSAGE_LIMIT - 64 * 1024,
            "Core takes one gRPC message of at most 4 MiB",
            positive(parse_size),
        ),
    )
    result_refused = setting(
        "dead-letter",
        "a result Core refuses for good: dead-letter (then ack the job) or hold (retry for ever)",
        one_of(RefusedResults),
    )
    result_refused_attempts = setting(
        "3",
        "times a refused result is offered to Core before it is dead-lettered",
        positive(parse_int),
    )
    results_dlq_file = derived(
        "results refused for good when jobs come from a file (`<RESULT_FILE>.refused.jsonl`"
        " with RESULT_SINK=file, else `<JOB_FILE>.refused.jsonl`)",
        _results_dlq_file,
        str,
    )

    # -- Core (gRPC) ------------------------------------------------------------------
    grpc_server_address = needed(
        "Core service host:port (RESULT_SINK=grpc)", GRPC_SINK, parse_address
    )
    grpc_call_timeout = duration("5s", "deadline of one ReportResult call")
    core_start_timeout = duration(
        "30s",
        "at start, wait this long for Core to answer before taking any job, then exit 69"
        " (0 = start at once and hold results until Core answers)",
        non_negative(parse_duration),
    )
    grpc_retry_backoff_max = duration(
        "10s", "longest pause between ReportResult retries", duration_at_least(0.1)
    )
    grpc_tls_ca_file = optional("CA bundle: set to use TLS to Core", str)
    grpc_tls_cert_file = optional("client certificate for mutual TLS", str)
    grpc_tls_key_file = optional("client key for mutual TLS", str)

    # -- jobs -------------------------------------------------------------------------
    max_job_timeout = duration(
        "30s",
        "hard limit per job, retries included",
    )
    max_output_bytes = setting(
        "1MiB",
        "larger job outputs end the job FAILED (at most 3840KiB with RESULT_SINK=grpc:"
        " Core's message limit is 4 MiB)",
        positive(parse_size),
    )
    max_payload_bytes = setting(
        "1MiB", "larger job payloads end the job REJECTED", positive(parse_size)
    )
    retry_max_attempts = setting(
        "3", "attempts for a retryable failure, the first included", positive(parse_int)
    )
    retry_backoff_base = duration(
        "500ms", "first retry pause (doubles, full jitter)", non_negative(parse_duration)
    )
    retry_backoff_max = duration("30s", "longest retry pause", non_negative(parse_duration))
    shutdown_timeout = duration(
        "30s",
        "time to finish in-flight jobs on SIGTERM",
    )

    # -- logs and metrics -------------------------------------------------------------
    log_format = setting("json", "json or text", one_of(LogFormat))
    log_level = setting("info", "debug, info, warning or error", one_of(LogLevel))
    metrics_port = setting("0", "Prometheus /metrics, /healthz, /readyz port (0 = off)", parse_port)
    metrics_host = setting("0.0.0.0", "address the metrics server listens on", str)  # noqa: S104
    readiness_broker_timeout = duration(
        "15s",
        "/readyz fails when the broker has not answered for this long (asked every 5s)",
        duration_at_least(6.0),
    )
    readiness_requires_core = setting(
        "false",
        "/readyz also fails while Core is unreachable (shown, not required, by default)",
        parse_bool,
    )
    liveness_max_blocked = duration(
        "10s",
        "/healthz fails while the event loop has been blocked for longer than this",
        duration_at_least(1.0),
    )

    status_interval = duration(
        "5s",
        "how often each worker publishes its status record to KAFKA_STATUS_TOPIC"
        " (JOB_SOURCE=kafka; 0 = off)",
        _status_interval,
    )

    # -- executors --------------------------------------------------------------------
    http_allow_private_networks = setting(
        "false", "let HTTP jobs reach loopback/private/link-local addresses", parse_bool
    )
    http_max_response_bytes = setting("1MiB", "HTTP response body cap", positive(parse_size))
    http_max_redirects = setting(
        "5", "redirects followed (each re-checked)", non_negative(parse_int)
    )
    http_max_timeout = duration(
        "10s",
        "longest HTTP request, redirects and body included (timeout_ms may shorten it)",
    )
    http_breaker_failures = setting(
        "5",
        "an HTTP host's circuit breaker opens after this many failed calls in a row"
        " (connection errors, timeouts, 5xx); 0: no breaker",
        non_negative(parse_int),
    )
    http_breaker_cooldown = duration(
        "10s", "an open breaker holds its host's jobs this long, then lets one probe call go"
    )
    http_idempotency_header = setting(
        "Idempotency-Key",
        "header that carries the job id on every HTTP request, so a target can drop a"
        " redelivered job's repeat; `none`: no such header",
        idempotency_header,
    )
    image_input_root = setting("./data/images/in", "image sources must be under this folder", str)
    image_output_root = setting("./data/images/out", "resized images are written under it", str)
    image_max_pixels = setting(
        "40000000", "decompression-bomb limit (source pixels)", positive(parse_int)
    )
    image_max_source_bytes = setting("20MiB", "largest source image", positive(parse_size))
    image_threads = derived(
        "threads for Pillow (CPU count)", lambda _s: os.cpu_count() or 2, positive(parse_int)
    )

    def validate_for_submit(self) -> None:
        """Check what ``submit`` uses: the topic and a Kafka client's settings, as a run
        from Kafka would take them (it sends to Kafka whatever JOB_SOURCE says)."""
        problems = self.problems({"JOB_SOURCE": JobSourceKind.KAFKA})
        raise_problems([p for p in problems if p.variable in KAFKA_CLIENT])

    def validate_for_dead_letters(self, *, replay: bool) -> None:
        """Check what ``jobworker dlq`` uses: a Kafka client's settings and the
        dead-letter topics; to replay, also the checkpoint's group (KAFKA_GROUP_ID) and
        Core's address, as a run from Kafka to Core would take them."""
        chosen = {"JOB_SOURCE": JobSourceKind.KAFKA, "RESULT_SINK": ResultSinkKind.GRPC}
        used = KAFKA_CLIENT | DEAD_LETTERS | (REPLAY if replay else frozenset())
        raise_problems(
            [
                p
                for p in self.problems(chosen)
                if p.variable in used or (replay and p.variable.startswith(("GRPC_", "CORE_")))
            ]
        )

    def validate_for_web(self, *, actions: bool) -> None:
        """Check what ``jobworker web`` uses: a Kafka client's settings, the topics it
        shows (jobs, status, dead letters), the group whose progress it shows, and its
        address; with actions, also what replay uses and the action token."""
        chosen = {"JOB_SOURCE": JobSourceKind.KAFKA, "RESULT_SINK": ResultSinkKind.GRPC}
        used = KAFKA_CLIENT | DEAD_LETTERS | REPLAY | WEB
        problems = [
            p
            for p in self.problems(chosen)
            if p.variable in used
            or (
                actions
                and p.variable.startswith(("GRPC_", "CORE_"))
                # Without Core's address, job letters replay all the same; a result
                # letter's replay says what is missing.
                and not self.is_unset(Settings.grpc_server_address)
            )
        ]
        if actions and not problems and self.web_action_token is None:
            problems.append(
                ConfigurationError(
                    Settings.web_action_token.name,
                    "--allow-actions needs a token for the replay buttons to ask for: set"
                    " WEB_ACTION_TOKEN (at least 16 characters; `openssl rand -hex 16`)",
                )
            )
        raise_problems(problems)

    def unused_prefixes(self, chosen: Mapping[str, Any]) -> tuple[str, ...]:
        """The adapters' variables this run does not use: Kafka's or Core's."""
        unused = []
        selectors: tuple[tuple[str, Setting[Any], str], ...] = (
            ("KAFKA_", Settings.job_source, JobSourceKind.KAFKA),
            ("GRPC_", Settings.result_sink, ResultSinkKind.GRPC),
        )
        for prefix, selected, wanted in selectors:
            try:
                value = chosen.get(selected.name) or self.value_of(selected)
            except ConfigurationError:
                continue  # a problem of its own; whether the adapter's are needed is unknown
            if value != wanted:
                unused.append(prefix)
        return tuple(unused)

    def broken_rules(self, present: Mapping[str, Any], wrong: set[str]) -> list[ConfigurationError]:
        """The rules between settings (``rules``) that ``present`` breaks."""
        return broken_rules(self.config, self.declared, present, wrong)


SETTINGS: list[Setting[Any]] = Settings.declared


# What ``submit`` reads: the jobs topic and what every Kafka client takes
# (``container.kafka_client_settings``).
KAFKA_CLIENT = frozenset(
    entry.name
    for entry in (
        Settings.kafka_topic,
        Settings.kafka_brokers,
        Settings.kafka_client_id,
        Settings.kafka_security_protocol,
        Settings.kafka_sasl_mechanism,
        Settings.kafka_sasl_username,
        Settings.kafka_sasl_password,
        Settings.kafka_ssl_cafile,
        Settings.kafka_ssl_certfile,
        Settings.kafka_ssl_keyfile,
        Settings.kafka_session_timeout,
        Settings.kafka_max_poll_records,
        Settings.kafka_max_poll_interval,
        Settings.kafka_isolation_level,
        Settings.kafka_max_partition_fetch_bytes,
        Settings.kafka_fetch_max_bytes,
        Settings.kafka_fetch_max_wait,
    )
)


# What ``dlq`` reads besides KAFKA_CLIENT, and what ``dlq replay`` reads besides those.
DEAD_LETTERS = frozenset(
    entry.name
    for entry in (
        Settings.kafka_dlq_topic,
        Settings.kafka_results_dlq_topic,
        Settings.log_level,
        Settings.log_format,
    )
)
REPLAY = frozenset(entry.name for entry in (Settings.kafka_group_id, Settings.dlq_max_replays))
WEB = frozenset(
    entry.name
    for entry in (
        Settings.kafka_status_topic,
        Settings.web_host,
        Settings.web_port,
        Settings.web_action_token,
    )
)


def settings_table() -> str:
    """The Markdown table of every setting and its default (README, ``settings --defaults``)."""
    return markdown_table(SETTINGS)
