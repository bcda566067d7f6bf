"""Settings from the environment and ``.env`` (dynaconf), typed, checked once at start-up.

Each setting is declared once, as an attribute of ``Settings``: its variable is the
attribute's name in capitals, with its default, meaning, parser (the check) and, if it
is needed only by one adapter, the condition under which it is required. Adding a
setting is adding one attribute. The container reads the typed attributes; the README
table and ``jobworker settings`` are generated from the same declarations. Every
missing or malformed value is found in one reading, each a ``ConfigurationError``
naming the variable (or the flag that set it); the CLI prints one line for each and
exits 2. A variable that looks like a setting but is none is a warning
(``unknown_variables``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from dynaconf import Dynaconf, ValidationError, Validator

from jobworker.adapters.kafka.settings import parse_brokers
from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import (
    at_most,
    choice,
    duration_at_least,
    non_negative,
    parse_address,
    parse_bool,
    parse_duration,
    parse_int,
    parse_name,
    parse_port,
    parse_size,
    positive,
    readable_file,
    with_unit,
    writable_file,
)
from jobworker.entrypoints.unknown_variables import UnknownVariable, unknown_variables

T = TypeVar("T")

# dynaconf loads ``.env`` into the environment and checks the rules between settings
# (its Validators); it parses no variable itself (no loaders): ours are read as the exact
# strings they are, so unrelated variables (even DYNACONF_*) can never upset parsing, and
# ``KAFKA_GROUP_ID=1.10`` stays the group ``1.10``, not the number 1.1.
_OWN_PREFIX = "JOBWORKER_DYNACONF"

# Where a value in force came from (``jobworker settings``).
DEFAULT, DOTENV, ENVIRONMENT, FLAG, DERIVED = "default", ".env", "environment", "flag", "derived"

# When a setting is needed (dynaconf ``when`` conditions on the parsed values). A choice
# that could not be read holds none of them (dynaconf would take a missing one for any).
KAFKA_SOURCE = Validator("JOB_SOURCE", must_exist=True, eq="kafka")
FILE_SOURCE = Validator("JOB_SOURCE", must_exist=True, eq="file")
GRPC_SINK = Validator("RESULT_SINK", must_exist=True, eq="grpc")
FILE_SINK = Validator("RESULT_SINK", must_exist=True, eq="file")
SASL = KAFKA_SOURCE & Validator(
    "KAFKA_SECURITY_PROTOCOL", must_exist=True, is_in=["SASL_PLAINTEXT", "SASL_SSL"]
)

# A greenlet per pool slot is cheap, but each slot may hold one of the hub's threads
# (DNS look-ups of HTTP jobs) and a connection: past this, run more worker processes.
MAX_POOL_SIZE = 10_000
# Core takes one gRPC message of at most 4 MiB per result; the output shares it with the
# error text, the metadata and the ids, which the worker caps well below this margin.
CORE_MESSAGE_LIMIT = 4 * 1024 * 1024
MAX_OUTPUT_BYTES_FOR_CORE = CORE_MESSAGE_LIMIT - 256 * 1024


class Setting(Generic[T]):
    """One setting, declared as an attribute of ``Settings``; reading it gives its value.

    Use the constructors below (``setting``, ``optional``, ``needed``, ``derived``): they
    give the attribute its type.
    """

    name: str  # the variable: the attribute's name in capitals

    def __init__(
        self,
        default: str | None,
        meaning: str,
        parse: Callable[[str], Any],
        *,
        needed_when: Validator | None = None,
        derive: Callable[[Settings], Any] | None = None,
        empty_means_default: bool = True,
        secret: bool = False,
        may_be_none: bool = False,
        duration: bool = False,
    ) -> None:
        self.default = default
        self.help = meaning
        self.parse = parse
        # Required under this condition (dynaconf checks it); unset otherwise.
        self.needed_when = needed_when
        # The value when unset, computed from other settings (``default`` is then None).
        self.derive = derive
        # Set but empty: for most settings "use the default" (compose files write `X=`);
        # for a name (a topic) it is a slip that would silently use another one.
        self.empty_means_default = empty_means_default
        self.secret = secret
        # Reads as None when unset (typed ``T | None``), even where ``needed_when`` applies.
        self.may_be_none = may_be_none
        # Written with a unit, unless the name says it (``with_unit``).
        self.duration = duration

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = attribute
        self.name = attribute.upper()

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: Settings, owner: type) -> T: ...
    def __get__(self, instance: Settings | None, owner: type) -> Setting[T] | T:
        if instance is None:
            return self
        value: T = instance.value_of(self)
        return value

    def default_text(self) -> str:
        """The default as the README shows it."""
        if self.needed_when is not None:
            return "required"
        return "—" if self.default is None else self.default


def setting(
    default: str,
    meaning: str,
    parse: Callable[[str], T],
    *,
    empty_means_default: bool = True,
) -> Setting[T]:
    """A setting with a default."""
    return Setting(default, meaning, parse, empty_means_default=empty_means_default)


_POSITIVE_DURATION = positive(parse_duration)


def duration(
    default: str,
    meaning: str,
    parse: Callable[[str], float] = _POSITIVE_DURATION,
) -> Setting[float]:
    """A duration in seconds, written with its unit (``500ms``, ``30s``, ``5m``)."""
    return Setting(default, meaning, parse, duration=True)


def optional(
    meaning: str,
    parse: Callable[[str], T],
    *,
    secret: bool = False,
    needed_when: Validator | None = None,
) -> Setting[T | None]:
    """A setting that may be unset (None); if ``needed_when`` holds, it must be set."""
    return Setting(None, meaning, parse, secret=secret, needed_when=needed_when, may_be_none=True)


def needed(
    meaning: str,
    when: Validator,
    parse: Callable[[str], T],
) -> Setting[T]:
    """A setting without a default, required when ``when`` holds (``validate_for_run``)."""
    return Setting(None, meaning, parse, needed_when=when)


def derived(
    meaning: str,
    derive: Callable[[Settings], T],
    parse: Callable[[str], T],
    *,
    empty_means_default: bool = True,
) -> Setting[T]:
    """A setting that, when unset, is computed from others (``meaning`` says how)."""
    return Setting(None, meaning, parse, derive=derive, empty_means_default=empty_means_default)


def _brokers(text: str) -> list[str]:
    return list(parse_brokers(text))


def _upper_choice(*allowed: str) -> Callable[[str], str]:
    lower = choice(*allowed)
    return lambda text: lower(text).upper()


def _client_id(s: Settings) -> str:
    return f"jobworker-{s.worker_id}"


def _results_dlq_file(s: Settings) -> str:
    result_file, job_file = s.given(Settings.result_file), s.given(Settings.job_file)
    if s.result_sink == "file" and result_file and result_file != "-":
        return f"{result_file}.refused.jsonl"
    if job_file and job_file != "-":
        return f"{job_file}.refused.jsonl"
    return "refused-results.jsonl"


class ConfigurationErrors(ConfigurationError):  # noqa: N818 - several ConfigurationErrors
    """Several problems found in one reading of the settings; ``errors`` has each.

    Itself the first of them, for whoever handles one ``ConfigurationError``.
    """

    def __init__(self, errors: Sequence[ConfigurationError]) -> None:
        super().__init__(errors[0].variable, errors[0].problem)
        self.errors = list(errors)


@dataclass(frozen=True)
class Origin:
    """Where a raw value came from; ``flag`` is the option that gave it, if one did."""

    source: str
    flag: str | None = None


class Settings:
    """Typed, validated settings; each attribute is one setting, parsed on first use.

    Lazy on purpose: a file-to-file run must not demand Kafka settings. Every value a
    run needs is read by ``validate_for_run`` before anything starts, so a mistake is
    found at start-up, not at the first job.
    """

    # -- where jobs come from and results go ------------------------------------------
    job_source = setting("kafka", "where jobs come from: kafka or file", choice("kafka", "file"))
    job_file = needed(
        "JSON Lines jobs file when JOB_SOURCE=file (`-` = stdin)",
        FILE_SOURCE,
        readable_file("jobs file"),
    )
    result_sink = setting("grpc", "where results go: grpc (Core) or file", choice("grpc", "file"))
    result_file = needed(
        "JSON Lines results file when RESULT_SINK=file (`-` = stdout)",
        FILE_SINK,
        writable_file("results file"),
    )

    # -- Kafka ------------------------------------------------------------------------
    kafka_brokers = needed(
        "comma-separated bootstrap servers (JOB_SOURCE=kafka)", KAFKA_SOURCE, _brokers
    )
    kafka_topic = setting("job_requests", "jobs topic", parse_name, empty_means_default=False)
    kafka_group_id = needed("consumer group (JOB_SOURCE=kafka)", KAFKA_SOURCE, str)
    kafka_dlq_topic = derived(
        "dead-letter topic for poison messages and unreadable batches (`<topic>.dlq`)",
        lambda s: f"{s.kafka_topic}.dlq",
        parse_name,
        empty_means_default=False,
    )
    kafka_results_dlq_topic = derived(
        "dead-letter topic for results Core refused for good (`<topic>.results.dlq`)",
        lambda s: f"{s.kafka_topic}.results.dlq",
        parse_name,
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
        _upper_choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
    )
    kafka_sasl_mechanism = optional(
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL)", str, needed_when=SASL
    )
    kafka_sasl_username = optional("SASL user name", str)
    kafka_sasl_password = optional("SASL password", str, secret=True)
    kafka_ssl_cafile = optional("CA bundle to verify the brokers", str)
    kafka_ssl_certfile = optional("client certificate (mutual TLS)", str)
    kafka_ssl_keyfile = optional("client key (mutual TLS)", str)
    kafka_max_poll_records = setting("500", "records per poll at most", positive(parse_int))
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
    kafka_max_partition_fetch_bytes = setting(
        "1MiB",
        "bytes read ahead per partition at most (memory is about partitions times this)",
        positive(parse_size),
    )
    kafka_fetch_max_bytes = setting("50MiB", "bytes one fetch brings at most", positive(parse_size))
    kafka_isolation_level = setting(
        "read_committed",
        "read_committed (skip aborted transactions) or read_uncommitted",
        choice("read_committed", "read_uncommitted"),
    )
    kafka_unreadable_batches = setting(
        "dead-letter",
        "a batch that cannot be decoded: dead-letter (and move on) or fail (stop the worker)",
        choice("dead-letter", "fail"),
    )
    kafka_ordering = setting(
        "none",
        "none (jobs run in any order), key (jobs with the same record key one at a time, in"
        " offset order) or partition (one job at a time per partition)",
        choice("none", "key", "partition"),
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
        "4", "calls to Core in flight (greenlets sending results)", positive(parse_int)
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
        choice("dead-letter", "hold"),
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
    log_format = setting("json", "json or text", choice("json", "text"))
    log_level = setting(
        "info", "debug, info, warning or error", choice("debug", "info", "warning", "error")
    )
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
    image_input_root = setting("./data/images/in", "image sources must be under this folder", str)
    image_output_root = setting("./data/images/out", "resized images are written under it", str)
    image_max_pixels = setting(
        "40000000", "decompression-bomb limit (source pixels)", positive(parse_int)
    )
    image_max_source_bytes = setting("20MiB", "largest source image", positive(parse_size))
    image_threads = derived(
        "threads for Pillow (CPU count)", lambda _s: os.cpu_count() or 2, positive(parse_int)
    )

    # -- reading ----------------------------------------------------------------------

    def __init__(
        self, values: Mapping[str, Any], origins: Mapping[str, Origin] | None = None
    ) -> None:
        """``values``: raw strings by variable, ours and others (the rest of the
        environment: ``unknown`` lists those that look like a misspelt setting);
        ``origins``: where each came from (the environment, if not said)."""
        self._raw = {k: v for k, v in values.items() if k in _BY_NAME}
        self._origins = dict(origins or {})
        self._cache: dict[str, Any] = {}
        self.unknown: list[UnknownVariable] = unknown_variables(
            {name: self._origins.get(name, Origin(ENVIRONMENT)).source for name in values},
            _BY_NAME,
        )

    @classmethod
    def load(
        cls, dotenv: Path | None = None, flags: Mapping[str, tuple[str, str]] | None = None
    ) -> Settings:
        """Read ``.env`` (from the working directory, or ``dotenv``) under the environment.

        dynaconf loads the ``.env`` file into the environment (variables already set
        win). ``flags`` maps a variable to the option and text given on the command
        line; a flag wins over both.
        """
        if dotenv is not None and not dotenv.is_file():
            raise ConfigurationError("--env-file", f"{dotenv} is not a readable file")
        before = set(os.environ)
        try:
            loader = Dynaconf(
                envvar_prefix=_OWN_PREFIX,
                environments=False,
                load_dotenv=True,
                dotenv_path=str(dotenv) if dotenv else None,
                loaders=[],  # not even its global DYNACONF_* variables
            )
            loader.get(_OWN_PREFIX)  # dynaconf is lazy: this is what reads the file
        except Exception as error:
            raise ConfigurationError(str(dotenv or ".env"), f"cannot be read: {error}") from None
        values = dict(os.environ)
        origins = {name: Origin(ENVIRONMENT if name in before else DOTENV) for name in values}
        for name, (flag, text) in (flags or {}).items():
            values[name] = text
            origins[name] = Origin(FLAG, flag)
        return cls(values, origins)

    def value_of(self, setting: Setting[T]) -> T:
        if setting.name not in self._cache:
            self._cache[setting.name] = self._parse(setting)
        value: T = self._cache[setting.name]
        return value

    def given(self, setting: Setting[T]) -> T | None:
        """The value of a setting that may be required elsewhere, or None if unset."""
        return None if self._is_unset(setting) else self.value_of(setting)

    def origin(self, setting: Setting[Any]) -> str:
        """default, .env, environment, flag (``--x``) or derived."""
        origin = self._origins.get(setting.name)
        if origin is None or self._is_unset(setting):
            return DERIVED if setting.derive is not None else DEFAULT
        return f"{FLAG} {origin.flag}" if origin.flag else origin.source

    def _is_unset(self, setting: Setting[Any]) -> bool:
        raw = self._raw.get(setting.name)
        return raw is None or (not str(raw).strip() and setting.empty_means_default)

    def name_of(self, setting: Setting[Any]) -> str:
        """What an error names: the flag, if one gave the value, else the variable."""
        origin = self._origins.get(setting.name)
        return origin.flag if origin is not None and origin.flag else setting.name

    def _parse(self, setting: Setting[Any]) -> Any:
        raw = self._raw.get(setting.name)
        text = "" if raw is None else str(raw).strip()
        if not text:
            if raw is not None and not setting.empty_means_default:
                raise ConfigurationError(
                    self.name_of(setting),
                    "is set but empty: give a value, or unset it for the default",
                )
            if setting.needed_when is not None and not setting.may_be_none:
                raise ConfigurationError(setting.name, _required(setting))
            if setting.derive is not None:
                return setting.derive(self)
            if setting.default is None:
                return None
            text = setting.default
        if setting.duration:
            text = with_unit(text, setting.name)
        try:
            return setting.parse(text)
        except ValueError as error:
            raise ConfigurationError(self.name_of(setting), str(error)) from None
        except ConfigurationError as error:
            raise ConfigurationError(self.name_of(setting), error.problem) from None

    # -- checking ---------------------------------------------------------------------

    def validate_for_run(self) -> None:
        """Parse every setting this run uses and check the rules between them.

        Raises the ``ConfigurationError`` of the one problem, or ``ConfigurationErrors``
        with every one of several.
        """
        problems = self.problems()
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ConfigurationErrors(problems)

    def problems(self) -> list[ConfigurationError]:
        """Every problem of the settings this run uses, each naming its variable: the
        settings in the table's order, then the rules between them."""
        found: list[ConfigurationError] = []
        unused = self._unused_prefixes()
        present: dict[str, Any] = {}
        wrong: set[str] = set()
        for entry in SETTINGS:
            # Whether a required one is given is dynaconf's check, below. One of an
            # adapter this run does not use is still checked when given: a typo
            # (KAFKA_ORDERING=bogus) would otherwise surface only on the next run.
            needed_or_unused = entry.needed_when is not None or entry.name.startswith(unused)
            if self._is_unset(entry) and needed_or_unused:
                continue
            try:
                value = self.value_of(entry)
            except ConfigurationError as error:
                found.append(error)
                wrong.add(entry.name)
                continue
            if value is not None and not entry.name.startswith(unused):
                present[entry.name] = value
        found += self._broken_rules(present, wrong)
        # A setting derived from a wrong one repeats its problem.
        return list({str(problem): problem for problem in found}.values())

    def _unused_prefixes(self) -> tuple[str, ...]:
        """The adapters' variables this run does not use: Kafka's or Core's."""
        unused = []
        for prefix, selected, wanted in (
            ("KAFKA_", Settings.job_source, "kafka"),
            ("GRPC_", Settings.result_sink, "grpc"),
        ):
            try:
                if self.value_of(selected) != wanted:
                    unused.append(prefix)
            except ConfigurationError:
                pass  # a problem of its own; whether the adapter's are needed is unknown
        return tuple(unused)

    def _broken_rules(
        self, present: Mapping[str, Any], wrong: set[str]
    ) -> list[ConfigurationError]:
        """The rules ``present`` (parsed values) breaks; a ``wrong`` one is not missing."""
        checked = Dynaconf(
            envvar_prefix=_OWN_PREFIX, environments=False, load_dotenv=False, loaders=[]
        )
        for name, value in present.items():
            # Only what the rules compare is handed over as it is (parsed choices and
            # numbers); the rest as "present": dynaconf would read a text such as
            # ``@json {`` as a directive of its own.
            checked.set(name, value if name in _COMPARED else True)
        for name in wrong - _COMPARED:
            checked.set(name, True)
        checked.validators.register(*_RULES)
        broken = []
        try:
            checked.validators.validate_all()
        except ValidationError as error:
            broken = [
                ConfigurationError(validator.names[0], message.partition(": ")[2])
                for validator, message in error.details
            ]
        results_dlq = present.get("KAFKA_RESULTS_DLQ_TOPIC")
        if present.get("JOB_SOURCE") == "kafka" and results_dlq in {
            present.get("KAFKA_TOPIC"),
            present.get("KAFKA_DLQ_TOPIC"),
        } - {None}:
            broken.append(
                ConfigurationError(
                    "KAFKA_RESULTS_DLQ_TOPIC",
                    f"{results_dlq!r} must differ from KAFKA_TOPIC and KAFKA_DLQ_TOPIC",
                )
            )
        return broken

    # -- showing ----------------------------------------------------------------------

    def in_force(self) -> list[tuple[str, str, str]]:
        """(variable, value as text, where it came from) of every setting: a value given
        as it was given, even a wrong one (durations with their unit); secrets masked."""
        return [(entry.name, self._shown(entry), self.origin(entry)) for entry in SETTINGS]

    def _shown(self, setting: Setting[Any]) -> str:
        if not self._is_unset(setting):
            text = str(self._raw[setting.name]).strip()
            if setting.secret:
                return "****"
            return with_unit(text, setting.name) if setting.duration else text or '""'
        try:
            value = self.value_of(setting)
        except ConfigurationError:
            return "—"  # required and missing, or derived from a wrong one
        if value is None:
            return "—"
        return "****" if setting.secret else _as_text(setting, value)


def _required(setting: Setting[Any]) -> str:
    return f"is required ({setting.help})"


def _as_text(setting: Setting[Any], value: Any) -> str:
    if setting.default is not None and setting.derive is None:
        return setting.default  # as written in the declaration (``1s``, not 1.0)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


SETTINGS: list[Setting[Any]] = [v for v in vars(Settings).values() if isinstance(v, Setting)]
_BY_NAME = {entry.name: entry for entry in SETTINGS}

# The rules between settings that dynaconf checks on the parsed values: what a selected
# adapter needs, and Core's message limit.
_RULES: list[Validator] = [
    Validator(
        entry.name,
        must_exist=True,
        when=entry.needed_when,
        messages={"must_exist_true": f"{{name}}: {_required(entry)}"},
    )
    for entry in SETTINGS
    if entry.needed_when is not None
] + [
    Validator(
        "MAX_OUTPUT_BYTES",
        lte=MAX_OUTPUT_BYTES_FOR_CORE,
        when=GRPC_SINK,
        messages={
            "operations": "{name}: {value} bytes is more than Core can take: a result travels"
            f" in one gRPC message of at most {CORE_MESSAGE_LIMIT} bytes, so outputs may be"
            f" {MAX_OUTPUT_BYTES_FOR_CORE} bytes (3840KiB) at most"
        },
    )
]


# The settings whose values the rules above compare (all parsed: choices and a size).
_COMPARED = {"JOB_SOURCE", "RESULT_SINK", "KAFKA_SECURITY_PROTOCOL", "MAX_OUTPUT_BYTES"}


def settings_table() -> str:
    """The Markdown table of every setting and its default (README, ``settings --defaults``)."""
    rows = ["| Variable | Meaning | Default |", "|---|---|---|"]
    for entry in SETTINGS:
        rows.append(f"| `{entry.name}` | {entry.help} | {entry.default_text()} |")
    return "\n".join(rows)
