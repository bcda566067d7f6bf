"""Settings from the environment and ``.env`` (dynaconf), checked once at start-up.

Every setting is declared once in ``SETTINGS`` with its default and meaning; the README
table is generated from the same list (``jobworker settings``). A missing or malformed
value raises ``ConfigurationError`` naming the variable; the CLI prints that one line and
exits 2.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from adapters.kafka.settings import parse_brokers
from domain.errors import ConfigurationError
from entrypoints.config_values import parse_bool, parse_duration, parse_int, parse_size

REQUIRED = "required"
# dynaconf reads only variables with this prefix itself (none are used): ours are read
# raw from the environment, and unrelated variables can never upset its parser.
_OWN_PREFIX = "JOBWORKER_DYNACONF"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: empty / derived; REQUIRED: must be given (when used)
    help: str
    parse: Callable[[str], Any] = str
    # Set but empty: for most settings "use the default" (compose files write `X=`);
    # for a name (a topic) it is a slip that would silently use another one.
    empty_means_default: bool = True


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return value

    return parse


def _positive(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"{text!r} must be greater than zero")
        return value

    return check


def _non_negative(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = parse(text)
        if value < 0:
            raise ValueError(f"{text!r} must not be negative")
        return value

    return check


def _brokers(text: str) -> list[str]:
    return list(parse_brokers(text))


def _at_least(minimum_s: float) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = parse_duration(text)
        if value < minimum_s:
            raise ValueError(f"{text!r} is below the minimum of {minimum_s * 1000:g}ms")
        return value

    return check


def _address(text: str) -> str:
    address = text.strip()
    if "://" in address or address.startswith(("unix:", "dns:")):
        raise ValueError(f"{text!r}: give host:port, without a scheme (TLS is set by GRPC_TLS_*)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{text!r} is not host:port")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return address


def _port(text: str) -> int:
    value = parse_int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r} is not a port: 0 (off) or 1-65535")
    return value


def _at_most(limit: int, why: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        value = parse(text)
        if value > limit:
            raise ValueError(f"{text!r} is above the limit of {limit}: {why}")
        return value

    return check


def _topic(text: str) -> str:
    # Kafka's own rules (length, characters) are checked where the topic is used.
    return text.strip()


# A greenlet per pool slot is cheap, but each slot may hold one of the hub's threads
# (DNS look-ups of HTTP jobs) and a connection: past this, run more worker processes.
MAX_POOL_SIZE = 10_000
# Core takes one gRPC message of at most 4 MiB per result; the output shares it with the
# error text, the metadata and the ids, which the worker caps well below this margin.
CORE_MESSAGE_LIMIT = 4 * 1024 * 1024
MAX_OUTPUT_BYTES_FOR_CORE = CORE_MESSAGE_LIMIT - 256 * 1024


SETTINGS: list[Setting] = [
    Setting("JOB_SOURCE", "kafka", "where jobs come from: kafka or file", _choice("kafka", "file")),
    Setting("JOB_FILE", None, "JSON Lines jobs file when JOB_SOURCE=file (`-` = stdin)"),
    Setting(
        "RESULT_SINK", "grpc", "where results go: grpc (Core) or file", _choice("grpc", "file")
    ),
    Setting("RESULT_FILE", None, "JSON Lines results file when RESULT_SINK=file (`-` = stdout)"),
    Setting(
        "KAFKA_BROKERS", REQUIRED, "comma-separated bootstrap servers (JOB_SOURCE=kafka)", _brokers
    ),
    Setting("KAFKA_TOPIC", "job_requests", "jobs topic", _topic, empty_means_default=False),
    Setting("KAFKA_GROUP_ID", REQUIRED, "consumer group (JOB_SOURCE=kafka)"),
    Setting(
        "KAFKA_DLQ_TOPIC",
        None,
        "dead-letter topic for poison messages and unreadable batches (`<topic>.dlq`)",
        _topic,
        empty_means_default=False,
    ),
    Setting(
        "KAFKA_RESULTS_DLQ_TOPIC",
        None,
        "dead-letter topic for results Core refused for good (`<topic>.results.dlq`)",
        _topic,
        empty_means_default=False,
    ),
    Setting("KAFKA_CLIENT_ID", None, "Kafka client id (`jobworker-<WORKER_ID>`)"),
    Setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        lambda t: _choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")(t).upper(),
    ),
    Setting("KAFKA_SASL_MECHANISM", None, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    Setting("KAFKA_SASL_USERNAME", None, "SASL user name"),
    Setting("KAFKA_SASL_PASSWORD", None, "SASL password"),
    Setting("KAFKA_SSL_CAFILE", None, "CA bundle to verify the brokers"),
    Setting("KAFKA_SSL_CERTFILE", None, "client certificate (mutual TLS)"),
    Setting("KAFKA_SSL_KEYFILE", None, "client key (mutual TLS)"),
    Setting("KAFKA_MAX_POLL_RECORDS", "500", "records per poll at most", _positive(parse_int)),
    Setting("KAFKA_SESSION_TIMEOUT", "45s", "group session timeout", _positive(parse_duration)),
    Setting("KAFKA_MAX_POLL_INTERVAL", "5m", "max.poll.interval.ms", _positive(parse_duration)),
    Setting(
        "KAFKA_MAX_IN_FLIGHT_PER_PARTITION",
        "1000",
        "unfinished jobs per partition before it is paused (bounds redelivery)",
        _positive(parse_int),
    ),
    Setting(
        "KAFKA_COMMIT_INTERVAL",
        "1s",
        "commit done offsets at least this often",
        _positive(parse_duration),
    ),
    Setting(
        "KAFKA_COMMIT_EVERY", "1000", "…or after this many finished jobs", _positive(parse_int)
    ),
    Setting(
        "KAFKA_MAX_PARTITION_FETCH_BYTES",
        "1MiB",
        "bytes read ahead per partition at most (memory is about partitions times this)",
        _positive(parse_size),
    ),
    Setting(
        "KAFKA_FETCH_MAX_BYTES", "50MiB", "bytes one fetch brings at most", _positive(parse_size)
    ),
    Setting(
        "KAFKA_ISOLATION_LEVEL",
        "read_committed",
        "read_committed (skip aborted transactions) or read_uncommitted",
        _choice("read_committed", "read_uncommitted"),
    ),
    Setting(
        "KAFKA_UNREADABLE_BATCHES",
        "dead-letter",
        "a batch that cannot be decoded: dead-letter (and move on) or fail (stop the worker)",
        _choice("dead-letter", "fail"),
    ),
    Setting(
        "KAFKA_ORDERING",
        "none",
        "none (jobs run in any order), key (jobs with the same record key one at a time, in"
        " offset order) or partition (one job at a time per partition)",
        _choice("none", "key", "partition"),
    ),
    Setting(
        "WORKER_POOL_SIZE",
        "10",
        f"concurrent jobs (greenlets), at most {MAX_POOL_SIZE}",
        _at_most(MAX_POOL_SIZE, "run more worker processes instead", _positive(parse_int)),
    ),
    Setting("WORKER_ID", None, "worker id reported with results (`<host>-<pid>`)"),
    Setting(
        "JOBS_QUEUE_SIZE",
        None,
        "jobs buffered ahead of the pool (2x pool size)",
        _positive(parse_int),
    ),
    Setting(
        "RESULTS_QUEUE_SIZE",
        None,
        "results buffered ahead of the sender (2x pool size)",
        _positive(parse_int),
    ),
    Setting(
        "RESULT_SENDERS",
        "4",
        "calls to Core in flight (greenlets sending results)",
        _positive(parse_int),
    ),
    Setting(
        "RESULT_BATCH_SIZE", "100", "results per ReportResults call at most", _positive(parse_int)
    ),
    Setting(
        "RESULT_BATCH_LINGER",
        "5ms",
        "how long a part-filled batch waits for more results (adds up to this latency)",
        _positive(parse_duration),
    ),
    Setting(
        "RESULT_BATCH_MAX_BYTES",
        "3MiB",
        "about how many bytes of results one call carries (below Core's 4 MiB limit)",
        _at_most(
            CORE_MESSAGE_LIMIT - 64 * 1024,
            "Core takes one gRPC message of at most 4 MiB",
            _positive(parse_size),
        ),
    ),
    Setting(
        "RESULT_REFUSED",
        "dead-letter",
        "a result Core refuses for good: dead-letter (then ack the job) or hold (retry for ever)",
        _choice("dead-letter", "hold"),
    ),
    Setting(
        "RESULT_REFUSED_ATTEMPTS",
        "3",
        "times a refused result is offered to Core before it is dead-lettered",
        _positive(parse_int),
    ),
    Setting(
        "RESULTS_DLQ_FILE",
        None,
        "results refused for good when jobs come from a file (`<RESULT_FILE>.refused.jsonl`"
        " with RESULT_SINK=file, else `<JOB_FILE>.refused.jsonl`)",
    ),
    Setting("GRPC_SERVER_ADDRESS", REQUIRED, "Core service host:port (RESULT_SINK=grpc)", _address),
    Setting(
        "GRPC_CALL_TIMEOUT", "5s", "deadline of one ReportResult call", _positive(parse_duration)
    ),
    Setting(
        "GRPC_RETRY_BACKOFF_MAX",
        "10s",
        "longest pause between ReportResult retries",
        _at_least(0.1),
    ),
    Setting("GRPC_TLS_CA_FILE", None, "CA bundle: set to use TLS to Core"),
    Setting("GRPC_TLS_CERT_FILE", None, "client certificate for mutual TLS"),
    Setting("GRPC_TLS_KEY_FILE", None, "client key for mutual TLS"),
    Setting(
        "MAX_JOB_TIMEOUT", "30s", "hard limit per job, retries included", _positive(parse_duration)
    ),
    Setting(
        "MAX_OUTPUT_BYTES",
        "1MiB",
        "larger job outputs end the job FAILED (at most 3840KiB with RESULT_SINK=grpc:"
        " Core's message limit is 4 MiB)",
        _positive(parse_size),
    ),
    Setting(
        "MAX_PAYLOAD_BYTES",
        "1MiB",
        "larger job payloads end the job REJECTED",
        _positive(parse_size),
    ),
    Setting(
        "RETRY_MAX_ATTEMPTS",
        "3",
        "attempts for a retryable failure, the first included",
        _positive(parse_int),
    ),
    Setting(
        "RETRY_BACKOFF_BASE",
        "500ms",
        "first retry pause (doubles, full jitter)",
        _non_negative(parse_duration),
    ),
    Setting("RETRY_BACKOFF_MAX", "30s", "longest retry pause", _non_negative(parse_duration)),
    Setting(
        "SHUTDOWN_TIMEOUT",
        "30s",
        "time to finish in-flight jobs on SIGTERM",
        _positive(parse_duration),
    ),
    Setting("LOG_FORMAT", "json", "json or text", _choice("json", "text")),
    Setting(
        "LOG_LEVEL",
        "info",
        "debug, info, warning or error",
        _choice("debug", "info", "warning", "error"),
    ),
    Setting(
        "METRICS_PORT",
        "0",
        "Prometheus /metrics, /healthz, /readyz port (0 = off)",
        _port,
    ),
    Setting("METRICS_HOST", "0.0.0.0", "address the metrics server listens on"),  # noqa: S104
    Setting(
        "HTTP_ALLOW_PRIVATE_NETWORKS",
        "false",
        "let HTTP jobs reach loopback/private/link-local addresses",
        parse_bool,
    ),
    Setting("HTTP_MAX_RESPONSE_BYTES", "1MiB", "HTTP response body cap", _positive(parse_size)),
    Setting(
        "HTTP_MAX_REDIRECTS", "5", "redirects followed (each re-checked)", _non_negative(parse_int)
    ),
    Setting(
        "HTTP_MAX_TIMEOUT",
        "10s",
        "longest HTTP request, redirects and body included (timeout_ms may shorten it)",
        _positive(parse_duration),
    ),
    Setting("IMAGE_INPUT_ROOT", "./data/images/in", "image sources must be under this folder"),
    Setting("IMAGE_OUTPUT_ROOT", "./data/images/out", "resized images are written under it"),
    Setting(
        "IMAGE_MAX_PIXELS",
        "40000000",
        "decompression-bomb limit (source pixels)",
        _positive(parse_int),
    ),
    Setting("IMAGE_MAX_SOURCE_BYTES", "20MiB", "largest source image", _positive(parse_size)),
    Setting("IMAGE_THREADS", None, "threads for Pillow (CPU count)", _positive(parse_int)),
]
_BY_NAME = {setting.name: setting for setting in SETTINGS}


class Settings:
    """Typed, validated access to the settings; values are parsed on first use.

    Lazy on purpose: a file-to-file run must not demand Kafka settings. Every value a
    run needs is read by ``validate_for_run`` before anything starts, so a mistake is
    found at start-up, not at the first job.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._raw = {k: v for k, v in values.items() if k in _BY_NAME}
        self._cache: dict[str, Any] = {}

    @classmethod
    def load(cls, dotenv: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``.env`` (from the working directory, or ``dotenv``) under the environment.

        dynaconf loads the ``.env`` file into the environment (variables already set win);
        the values are then read as the exact strings they are. dynaconf's own parsing
        would rewrite them (``KAFKA_GROUP_ID=1.10`` is not the group ``1.1``).
        """
        if dotenv is not None and not dotenv.is_file():
            raise ConfigurationError("--env-file", f"{dotenv} is not a readable file")
        try:
            loader = Dynaconf(
                envvar_prefix=_OWN_PREFIX,
                environments=False,
                load_dotenv=True,
                dotenv_path=str(dotenv) if dotenv else None,
            )
            loader.get(_OWN_PREFIX)  # dynaconf is lazy: this is what reads the file
        except Exception as error:
            raise ConfigurationError(str(dotenv or ".env"), f"cannot be read: {error}") from None
        values = {name: os.environ[name] for name in _BY_NAME if name in os.environ}
        values.update({k: v for k, v in (environ or {}).items() if k in _BY_NAME})
        return cls(values)

    def get(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self._parse(_BY_NAME[name])
        return self._cache[name]

    def _parse(self, setting: Setting) -> Any:
        raw = self._raw.get(setting.name)
        text = "" if raw is None else str(raw).strip()
        if not text:
            if raw is not None and not setting.empty_means_default:
                raise ConfigurationError(
                    setting.name, "is set but empty: give a value, or unset it for the default"
                )
            if setting.default == REQUIRED:
                raise ConfigurationError(setting.name, f"is required ({setting.help})")
            if setting.default is None:
                return None
            text = setting.default
        try:
            return setting.parse(text)
        except ValueError as error:
            raise ConfigurationError(setting.name, str(error)) from None
        except ConfigurationError as error:
            raise ConfigurationError(setting.name, error.problem) from None

    # -- derived values ---------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self.get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def dlq_topic(self) -> str:
        return self.get("KAFKA_DLQ_TOPIC") or f"{self.get('KAFKA_TOPIC')}.dlq"

    @property
    def results_dlq_topic(self) -> str:
        return self.get("KAFKA_RESULTS_DLQ_TOPIC") or f"{self.get('KAFKA_TOPIC')}.results.dlq"

    @property
    def results_dlq_file(self) -> str:
        if self.get("RESULTS_DLQ_FILE"):
            return str(self.get("RESULTS_DLQ_FILE"))
        result_file = self.get("RESULT_FILE")
        if self.get("RESULT_SINK") == "file" and result_file and result_file != "-":
            return f"{result_file}.refused.jsonl"
        job_file = self.get("JOB_FILE")
        if job_file and job_file != "-":
            return f"{job_file}.refused.jsonl"
        return "refused-results.jsonl"

    @property
    def kafka_client_id(self) -> str:
        return self.get("KAFKA_CLIENT_ID") or f"jobworker-{self.worker_id}"

    @property
    def jobs_queue_size(self) -> int:
        return int(self.get("JOBS_QUEUE_SIZE") or 2 * self.get("WORKER_POOL_SIZE"))

    @property
    def results_queue_size(self) -> int:
        return int(self.get("RESULTS_QUEUE_SIZE") or 2 * self.get("WORKER_POOL_SIZE"))

    @property
    def image_threads(self) -> int:
        return int(self.get("IMAGE_THREADS") or os.cpu_count() or 2)

    def require_file(self, name: str) -> str:
        value = self.get(name)
        if not value:
            raise ConfigurationError(name, "is required when it is selected as the adapter")
        return str(value)

    def validate_for_run(self) -> None:
        """Parse every setting this run will use; raises on the first bad one."""
        for setting in SETTINGS:
            if setting.name.startswith("KAFKA_") and self.get("JOB_SOURCE") != "kafka":
                continue
            if setting.name.startswith("GRPC_") and self.get("RESULT_SINK") != "grpc":
                continue
            self.get(setting.name)
        if self.get("JOB_SOURCE") == "file":
            self.require_file("JOB_FILE")
        if self.get("RESULT_SINK") == "file":
            self.require_file("RESULT_FILE")
        if self.get("RESULT_SINK") == "grpc" and (
            self.get("MAX_OUTPUT_BYTES") > MAX_OUTPUT_BYTES_FOR_CORE
        ):
            raise ConfigurationError(
                "MAX_OUTPUT_BYTES",
                f"{self.get('MAX_OUTPUT_BYTES')} bytes is more than Core can take: a result"
                f" travels in one gRPC message of at most {CORE_MESSAGE_LIMIT} bytes, so"
                f" outputs may be {MAX_OUTPUT_BYTES_FOR_CORE} bytes (3840KiB) at most",
            )
        if self.get("KAFKA_SECURITY_PROTOCOL") in {"SASL_PLAINTEXT", "SASL_SSL"} and (
            self.get("JOB_SOURCE") == "kafka" and not self.get("KAFKA_SASL_MECHANISM")
        ):
            raise ConfigurationError("KAFKA_SASL_MECHANISM", "is required with SASL security")


def settings_table() -> str:
    """The Markdown table of every setting (README, ``jobworker settings``)."""
    rows = ["| Variable | Meaning | Default |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default if setting.default is not None else "—"
        rows.append(f"| `{setting.name}` | {setting.help} | {default} |")
    return "\n".join(rows)
