from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from jobworker.adapters.kafka.confluent.config import consumer_config
from jobworker.adapters.kafka.modes import Ordering
from jobworker.adapters.kafka.settings import KafkaClientSettings, SecurityProtocol
from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.config_values import parse_duration, parse_size, with_unit
from jobworker.entrypoints.container import kafka_client_settings
from jobworker.entrypoints.settings import (
    FLAG,
    SETTINGS,
    ConfigurationErrors,
    Origin,
    Settings,
    settings_table,
)
from jobworker.entrypoints.settings.modes import JobSourceKind
from jobworker.entrypoints.unknown_variables import OUR_PREFIXES

KAFKA_RUN = {
    "KAFKA_BROKERS": "k1:9092,k2:9092",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "core:50051",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("300000", "'300000' has no unit: write 300000ms (= 5m) or 300000s (units: ms, s, m, h)"),
        ("45000", "'45000' has no unit: write 45000ms (= 45s) or 45000s"),
        ("30", "'30' has no unit: write 30ms or 30s (units: ms, s, m, h)"),
        ("2.5", "'2.5' has no unit"),
    ],
)
def test_a_duration_without_a_unit_is_refused_with_the_units_it_takes(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_duration(text)


def test_a_variable_named_for_its_unit_takes_a_bare_number() -> None:
    assert with_unit("250", "POLL_TIMEOUT_MS") == "250ms"
    assert with_unit("3", "DRAIN_S") == "3s"
    assert with_unit("1m", "DRAIN_S") == "1m"
    assert with_unit("30", "SHUTDOWN_TIMEOUT") == "30"  # left for parse_duration to refuse
    assert with_unit("0", "SHUTDOWN_TIMEOUT") == "0s"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KAFKA_MAX_POLL_INTERVAL", "300000"),
        ("KAFKA_SESSION_TIMEOUT", "45000"),
        ("SHUTDOWN_TIMEOUT", "30"),
        ("RESULT_BATCH_LINGER", "5"),
    ],
)
def test_a_duration_setting_without_a_unit_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"'{value}' has no unit") as caught:
        Settings(KAFKA_RUN | {name: value}).validate_for_run()
    assert caught.value.variable == name


def test_durations_are_shown_with_their_unit() -> None:
    settings = Settings(KAFKA_RUN | {"CORE_START_TIMEOUT": "0", "SHUTDOWN_TIMEOUT": "2m"})
    settings.validate_for_run()
    assert settings.core_start_timeout == 0.0
    rows = {name: value for name, value, _ in settings.in_force()}
    assert rows["CORE_START_TIMEOUT"] == "0s"
    assert rows["SHUTDOWN_TIMEOUT"] == "2m"
    assert rows["MAX_JOB_TIMEOUT"] == "30s"


def test_every_duration_is_declared_as_one_and_its_help_agrees_with_its_unit() -> None:
    for entry in SETTINGS:
        if entry.default is not None and re.fullmatch(r"\d+(ms|s|m|h)", entry.default):
            assert entry.duration, entry.name
        if entry.duration and ".ms" in entry.help:  # names Kafka's property in milliseconds
            assert "written with a unit" in entry.help, entry.name


@pytest.mark.parametrize("text", ["", "fast", "10 parsecs", "-1s", "1d"])
def test_bad_durations_say_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match="write e.g. 500ms, 30s, 2m or 1h"):
        parse_duration(text)


def test_sizes() -> None:
    assert [parse_size(t) for t in ("1024", "1KiB", "2MB", "1MiB")] == [
        1024,
        1024,
        2_000_000,
        1_048_576,
    ]


def test_defaults_match_the_seed() -> None:
    settings = Settings(KAFKA_RUN)
    settings.validate_for_run()
    assert settings.kafka_topic == "job_requests"
    assert settings.worker_pool_size == 10
    assert settings.max_job_timeout == 30.0
    assert settings.log_format == "json"
    assert settings.kafka_brokers == ["k1:9092", "k2:9092"]
    assert settings.kafka_dlq_topic == "job_requests.dlq"
    assert settings.jobs_queue_size == 20


def test_every_problem_is_found_in_one_reading() -> None:
    settings = Settings({"WORKER_POOL_SIZE": "ten", "KAFKA_MAX_POLL_INTERVAL": "300000"})
    problems = [(p.variable, p.problem) for p in settings.problems()]
    assert [variable for variable, _ in problems] == [
        "KAFKA_MAX_POLL_INTERVAL",
        "WORKER_POOL_SIZE",  # once, though two derived settings read it
        "KAFKA_BROKERS",
        "KAFKA_GROUP_ID",
        "GRPC_SERVER_ADDRESS",
    ]
    with pytest.raises(ConfigurationErrors) as caught:
        settings.validate_for_run()
    assert [(p.variable, p.problem) for p in caught.value.errors] == problems
    assert caught.value.variable == "KAFKA_MAX_POLL_INTERVAL"  # to a handler of one, the first


def test_a_wrong_value_of_a_required_setting_is_not_also_missing(tmp_path: Path) -> None:
    run = {"JOB_SOURCE": "file", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    settings = Settings(run | {"JOB_FILE": str(tmp_path / "nope.jsonl")})
    assert [p.variable for p in settings.problems()] == ["JOB_FILE"]
    by_flag = {"JOB_SOURCE": Origin(FLAG, "--jobs"), "JOB_FILE": Origin(FLAG, "--jobs")}
    flagged = Settings(run | {"JOB_FILE": str(tmp_path / "nope.jsonl")}, by_flag)
    assert [p.variable for p in flagged.problems()] == ["--jobs"]


def test_a_wrong_source_hides_no_other_problem() -> None:
    settings = Settings({"JOB_SOURCE": "redis", "KAFKA_ORDERING": "bogus"})
    assert [p.variable for p in settings.problems()] == [
        "JOB_SOURCE",
        "KAFKA_ORDERING",
        "GRPC_SERVER_ADDRESS",
    ]


def test_the_table_shows_wrong_values_as_given_and_secrets_masked() -> None:
    settings = Settings({"WORKER_POOL_SIZE": "ten", "KAFKA_SASL_PASSWORD": "hunter2"})
    rows = {name: value for name, value, _ in settings.in_force()}
    assert rows["WORKER_POOL_SIZE"] == "ten"
    assert rows["JOBS_QUEUE_SIZE"] == "—"  # derived from the wrong one
    assert rows["KAFKA_BROKERS"] == "—"
    assert rows["KAFKA_SASL_PASSWORD"] == "****"  # noqa: S105 - the mask, not a password


@pytest.mark.parametrize("missing", ["KAFKA_BROKERS", "KAFKA_GROUP_ID", "GRPC_SERVER_ADDRESS"])
def test_a_missing_required_setting_is_named(missing: str) -> None:
    values = {k: v for k, v in KAFKA_RUN.items() if k != missing}
    with pytest.raises(ConfigurationError) as caught:
        Settings(values).validate_for_run()
    assert caught.value.variable == missing
    assert str(caught.value).startswith(f"{missing}: is required")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_JOB_TIMEOUT", "soon", "'soon' is not a duration"),
        ("WORKER_POOL_SIZE", "0", "must be greater than zero"),
        ("WORKER_POOL_SIZE", "ten", "'ten' is not a whole number"),
        ("LOG_FORMAT", "xml", "not one of json, text"),
        ("KAFKA_BROKERS", "localhost", "'localhost' is not a host:port address"),
        ("GRPC_SERVER_ADDRESS", "core", "'core' is not host:port"),
        ("HTTP_ALLOW_PRIVATE_NETWORKS", "maybe", "not a boolean"),
        ("JOB_SOURCE", "redis", "not one of kafka, file"),
        ("METRICS_PORT", "70000", "'70000' is not a port: 0 .off. or 1-65535"),
        ("METRICS_PORT", "-1", "is not a port"),
        ("WORKER_POOL_SIZE", "10000000", "above the limit of 10000: run more worker processes"),
        ("GRPC_SERVER_ADDRESS", "http://127.0.0.1:50051", "without a scheme"),
        ("GRPC_SERVER_ADDRESS", "127.0.0.1:0", "the port must be 1-65535"),
        ("GRPC_SERVER_ADDRESS", "core:99999", "the port must be 1-65535"),
        ("KAFKA_TOPIC", "", "is set but empty"),
        ("KAFKA_TOPIC", "   ", "is set but empty"),
        ("KAFKA_DLQ_TOPIC", "", "is set but empty"),
        ("KAFKA_RESULTS_DLQ_TOPIC", "", "is set but empty"),
        ("KAFKA_ISOLATION_LEVEL", "serializable", "not one of read_committed, read_uncommitted"),
        ("KAFKA_UNREADABLE_BATCHES", "skip", "not one of dead-letter, fail"),
        ("RESULT_REFUSED", "drop", "not one of dead-letter, hold"),
        ("MAX_OUTPUT_BYTES", "8MiB", "more than Core can take"),
        ("RESULT_BATCH_SIZE", "0", "must be greater than zero"),
        ("RESULT_BATCH_SIZE", "-5", "must be greater than zero"),
        ("RESULT_BATCH_LINGER", "0ms", "must be greater than zero"),
        ("RESULT_BATCH_MAX_BYTES", "0", "must be greater than zero"),
        ("RESULT_BATCH_MAX_BYTES", "8MiB", "above the limit of .* 4 MiB"),
        ("RESULT_SENDERS", "0", "must be greater than zero"),
        ("STATUS_INTERVAL", "500ms", "below the minimum of 1s"),
        ("KAFKA_STATUS_TOPIC", "job_requests.dlq", "must differ from KAFKA_TOPIC"),
    ],
)
def test_a_malformed_setting_is_named_with_the_problem(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Settings(KAFKA_RUN | {name: value}).validate_for_run()
    assert caught.value.variable == name


def test_an_empty_value_of_an_ordinary_setting_means_its_default() -> None:
    settings = Settings(KAFKA_RUN | {"LOG_LEVEL": "", "WORKER_POOL_SIZE": " "})
    settings.validate_for_run()
    assert settings.log_level == "info"
    assert settings.worker_pool_size == 10


def test_valid_edge_values_are_accepted() -> None:
    settings = Settings(
        KAFKA_RUN
        | {
            "METRICS_PORT": "65535",
            "WORKER_POOL_SIZE": "10000",
            "GRPC_SERVER_ADDRESS": "[::1]:50051",
            "MAX_OUTPUT_BYTES": "3840KiB",
        }
    )
    settings.validate_for_run()
    assert settings.grpc_server_address == "[::1]:50051"
    assert settings.kafka_results_dlq_topic == "job_requests.results.dlq"
    assert settings.kafka_isolation_level == "read_committed"


def test_outputs_above_cores_limit_are_fine_when_results_go_to_a_file() -> None:
    settings = Settings(
        {"JOB_SOURCE": "file", "JOB_FILE": "-", "RESULT_SINK": "file", "RESULT_FILE": "r.jsonl"}
        | {"MAX_OUTPUT_BYTES": "8MiB"}
    )
    settings.validate_for_run()
    assert settings.results_dlq_file == "r.jsonl.refused.jsonl"


def test_file_runs_need_no_kafka_or_core_settings() -> None:
    settings = Settings(
        {"JOB_SOURCE": "file", "JOB_FILE": "-", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    )
    settings.validate_for_run()


def test_a_selected_file_adapter_needs_its_file() -> None:
    with pytest.raises(ConfigurationError, match="JOB_FILE: is required"):
        Settings(KAFKA_RUN | {"JOB_SOURCE": "file"}).validate_for_run()


@pytest.fixture
def dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Writes a ``.env`` file; its variables are unset now and again after the test:
    python-dotenv writes them into os.environ, and they must not reach later tests (nor
    the environment of the CLI they start)."""

    def write(text: str) -> Path:
        for line in text.splitlines():
            name = line.partition("=")[0]
            monkeypatch.setenv(name, "")  # delenv alone records nothing for an unset one
            monkeypatch.delenv(name)
        path = tmp_path / ".env"
        path.write_text(text)
        return path

    return write


def test_dotenv_is_read_and_the_environment_wins(
    dotenv: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = dotenv("KAFKA_TOPIC=from_dotenv\nWORKER_POOL_SIZE=3\n")
    monkeypatch.setenv("WORKER_POOL_SIZE", "7")
    settings = Settings.load(dotenv=env_file)
    assert settings.kafka_topic == "from_dotenv"
    assert settings.worker_pool_size == 7


def test_the_table_lists_every_setting() -> None:
    table = settings_table()
    assert all(f"`{s.name}`" in table for s in SETTINGS)


def test_values_are_taken_exactly_as_written(
    dotenv: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = dotenv("KAFKA_GROUP_ID=1.10\nKAFKA_SASL_PASSWORD=true\n")
    monkeypatch.setenv("UNRELATED_VARIABLE", "@json {")  # must not matter to us
    settings = Settings.load(dotenv=env_file)
    assert settings.kafka_group_id == "1.10"
    assert settings.kafka_sasl_password == "true"  # noqa: S105 - the text, not a bool


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--env-file: .*nope.env is not a readable file"):
        Settings.load(dotenv=tmp_path / "nope.env")


def test_the_readme_table_is_the_settings_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, (
        "README's configuration table is stale: paste `jobworker settings`"
    )


def test_settings_are_typed_attributes_declared_once() -> None:
    settings = Settings(KAFKA_RUN | {"WORKER_POOL_SIZE": "7", "KAFKA_COMMIT_INTERVAL": "250ms"})
    settings.validate_for_run()
    assert settings.worker_pool_size == 7
    assert settings.kafka_commit_interval == 0.25
    assert settings.jobs_queue_size == settings.results_queue_size == 14
    assert not hasattr(settings, "get"), "the container reads attributes, not string keys"
    names = [entry.name for entry in SETTINGS]
    assert len(names) == len(set(names))
    assert all(entry.attribute.upper() == entry.name for entry in SETTINGS)


def test_the_dead_letter_topics_are_derived_once_from_the_jobs_topic() -> None:
    settings = Settings(KAFKA_RUN | {"KAFKA_TOPIC": "orders"})
    assert settings.kafka_dlq_topic == "orders.dlq"
    assert settings.kafka_results_dlq_topic == "orders.results.dlq"
    assert settings.kafka_status_topic == "orders.status"
    chosen = Settings(KAFKA_RUN | {"KAFKA_DLQ_TOPIC": "poison"})
    assert chosen.kafka_dlq_topic == "poison"


def test_status_records_are_every_5s_and_0_turns_them_off() -> None:
    assert Settings(KAFKA_RUN).status_interval == 5.0
    off = Settings(KAFKA_RUN | {"STATUS_INTERVAL": "0"})
    off.validate_for_run()
    assert off.status_interval == 0.0


def test_the_results_dead_letter_topic_must_differ_from_the_others() -> None:
    with pytest.raises(ConfigurationError, match="must differ from KAFKA_TOPIC") as caught:
        Settings(KAFKA_RUN | {"KAFKA_RESULTS_DLQ_TOPIC": "job_requests.dlq"}).validate_for_run()
    assert caught.value.variable == "KAFKA_RESULTS_DLQ_TOPIC"


@pytest.mark.parametrize(
    ("protocol", "needed"), [("SASL_SSL", True), ("sasl_plaintext", True), ("SSL", False)]
)
def test_a_sasl_mechanism_is_required_with_sasl_only(protocol: str, needed: bool) -> None:
    settings = Settings(KAFKA_RUN | {"KAFKA_SECURITY_PROTOCOL": protocol})
    if needed:
        with pytest.raises(ConfigurationError, match="KAFKA_SASL_MECHANISM: is required"):
            settings.validate_for_run()
    else:
        settings.validate_for_run()


def test_a_jobs_file_that_cannot_be_read_is_a_configuration_error(tmp_path: Path) -> None:
    run = {"JOB_SOURCE": "file", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    with pytest.raises(ConfigurationError, match="JOB_FILE: cannot read jobs file .*nope.jsonl"):
        Settings(run | {"JOB_FILE": str(tmp_path / "nope.jsonl")}).validate_for_run()
    with pytest.raises(ConfigurationError, match="Is a directory"):
        Settings(run | {"JOB_FILE": str(tmp_path)}).validate_for_run()


def test_each_value_says_where_it_came_from(
    dotenv: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = dotenv("KAFKA_TOPIC=from_dotenv\nLOG_LEVEL=debug\n")
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setenv("WORKER_POOL_SIZE", "55")
    monkeypatch.setenv("LOG_LEVEL", "warning")  # the environment wins over .env
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    settings = Settings.load(dotenv=env_file, flags={"LOG_FORMAT": ("--log-format", "text")})
    rows = {name: (value, source) for name, value, source in settings.in_force()}
    assert rows["KAFKA_TOPIC"] == ("from_dotenv", ".env")
    assert rows["WORKER_POOL_SIZE"] == ("55", "environment")
    assert rows["LOG_LEVEL"] == ("warning", "environment")
    assert rows["LOG_FORMAT"] == ("text", "flag --log-format")
    assert rows["MAX_JOB_TIMEOUT"] == ("30s", "default")
    assert rows["JOBS_QUEUE_SIZE"] == ("110", "derived")
    assert rows["KAFKA_SASL_PASSWORD"] == ("****", "environment")
    assert "hunter2" not in repr(settings.in_force())


def test_a_flag_wins_and_its_error_names_the_flag() -> None:
    settings = Settings.load(flags={"WORKER_POOL_SIZE": ("--concurrency", "3")})
    assert settings.worker_pool_size == 3
    bad = Settings.load(flags={"WORKER_POOL_SIZE": ("--concurrency", "-1")})
    with pytest.raises(ConfigurationError, match="must be greater than zero") as caught:
        _ = bad.worker_pool_size
    assert caught.value.variable == "--concurrency"


def test_unrelated_variables_never_upset_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNACONF_WEIRD", "@json {")
    monkeypatch.setenv("JOBWORKER_DYNACONF_X", "@int nope")
    monkeypatch.setenv("SOMETHING", "@format {this.nope}")
    assert Settings.load(flags={}).log_level in {"debug", "info", "warning", "error"}


def test_values_that_look_like_dynaconf_directives_are_plain_text() -> None:
    settings = Settings(
        KAFKA_RUN | {"KAFKA_GROUP_ID": "@json {", "KAFKA_CLIENT_ID": "@format {this.x}"}
    )
    settings.validate_for_run()
    assert settings.kafka_group_id == "@json {"
    assert settings.kafka_client_id == "@format {this.x}"


@pytest.mark.parametrize(
    ("name", "value"), [("KAFKA_ORDERING", "bogus"), ("GRPC_CALL_TIMEOUT", "soon")]
)
def test_a_malformed_value_is_named_even_when_this_run_does_not_use_it(
    tmp_path: Path, name: str, value: str
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("")
    file_run = {"JOB_SOURCE": "file", "JOB_FILE": str(jobs), "RESULT_SINK": "file"}
    file_run["RESULT_FILE"] = str(tmp_path / "results.jsonl")
    with pytest.raises(ConfigurationError, match=name):
        Settings(file_run | {name: value}).validate_for_run()
    Settings(file_run).validate_for_run()  # and without it the same run is fine


# -- variables that look like settings but are none ------------------------------------


def test_a_misspelt_variable_is_named_with_the_nearest_setting(
    dotenv: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = dotenv("KAFKA_GROUPID=g\n")
    monkeypatch.setenv("WORKER_POOLSIZE", "4")
    settings = Settings.load(dotenv=env_file)
    assert [str(unknown) for unknown in settings.unknown] == [
        "KAFKA_GROUPID (in .env) is not a setting; did you mean KAFKA_GROUP_ID?",
        "WORKER_POOLSIZE is not a setting; did you mean WORKER_POOL_SIZE?",
    ]
    assert settings.worker_pool_size == 10  # a warning: nothing else changes


def test_a_variable_like_no_setting_is_named_alone() -> None:
    [unknown] = Settings({"RETRY_ZZZ": "1"}).unknown
    assert str(unknown) == "RETRY_ZZZ is not a setting; see `jobworker settings`"


@pytest.mark.parametrize(
    "name",
    [
        "KAFKA_BOOTSTRAP_SERVERS",  # the tests' broker
        "KAFKA_PORT",  # tools/kafka, and a Kubernetes service link
        "KAFKA_HEAP_OPTS",  # Kafka's scripts
        "CORE_SERVICE_HOST",  # Kubernetes service links
        "CORE_PORT_50051_TCP_ADDR",
        "GRPC_VERBOSITY",  # gRPC's core library
        "GRPC_PYTHON_BUILD_WITH_CYTHON",
        "HTTP_PROXY",  # requests
        "JOB_NAME",  # Jenkins
        "OTEL_SERVICE_NAME",  # OpenTelemetry's, not our prefix
        "SOMETHING_ELSE",
        "worker_pool_size",  # not how a setting is spelt
        "WORKER_POOL_SIZE",
    ],
)
def test_others_variables_and_our_settings_are_no_warning(name: str) -> None:
    assert Settings({name: "x"}).unknown == []


def test_every_setting_has_one_of_the_prefixes_checked_for_misspellings() -> None:
    assert all(entry.name.startswith(OUR_PREFIXES) for entry in SETTINGS)


# -- one place checks them: the adapters take the values as valid -----------------------


def test_modes_are_enums_equal_to_their_words() -> None:
    settings = Settings(KAFKA_RUN | {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_ORDERING": "KEY"})
    settings.validate_for_run()
    assert settings.kafka_security_protocol is SecurityProtocol.SSL
    assert settings.kafka_security_protocol == "SSL"
    assert settings.kafka_ordering is Ordering.KEY
    assert settings.job_source is JobSourceKind.KAFKA
    assert settings.log_format == "json"


def test_the_kafka_clients_defaults_agree_with_the_settings() -> None:
    settings = Settings(KAFKA_RUN)
    client = KafkaClientSettings(["k1:9092"])
    assert client.security_protocol == settings.kafka_security_protocol
    assert client.session_timeout_ms == settings.kafka_session_timeout * 1000
    assert client.max_poll_interval_ms == settings.kafka_max_poll_interval * 1000
    assert client.max_poll_records == settings.kafka_max_poll_records
    assert client.isolation_level == settings.kafka_isolation_level
    assert client.max_partition_fetch_bytes == settings.kafka_max_partition_fetch_bytes
    assert client.fetch_max_bytes == settings.kafka_fetch_max_bytes
    assert client.fetch_max_wait_ms == settings.kafka_fetch_max_wait * 1000


def test_a_fetch_waits_at_the_broker_as_long_as_set_with_either_client() -> None:
    # One fetch is out to a broker at a time: Kafka's 500 ms held back partitions with
    # records behind caught-up ones (adapters/kafka/settings.py).
    default = kafka_client_settings(Settings(KAFKA_RUN))
    assert default.consumer_kwargs()["fetch_max_wait_ms"] == 100
    chosen = kafka_client_settings(Settings(KAFKA_RUN | {"KAFKA_FETCH_MAX_WAIT": "1s"}))
    assert chosen.consumer_kwargs()["fetch_max_wait_ms"] == 1_000
    assert consumer_config(chosen, "g")["fetch.wait.max.ms"] == 1_000


def test_with_confluent_a_fetch_brings_less_of_a_partition_unless_set() -> None:
    # librdkafka holds each record apart: see adapters/kafka/confluent/config.py.
    confluent = Settings(KAFKA_RUN | {"KAFKA_CLIENT": "confluent"})
    assert confluent.kafka_max_partition_fetch_bytes == 65_536
    chosen = Settings(
        KAFKA_RUN | {"KAFKA_CLIENT": "confluent", "KAFKA_MAX_PARTITION_FETCH_BYTES": "2MiB"}
    )
    assert chosen.kafka_max_partition_fetch_bytes == 2_097_152


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_needs_its_mechanism_and_credentials(protocol: str) -> None:
    settings = Settings(KAFKA_RUN | {"KAFKA_SECURITY_PROTOCOL": protocol})
    assert [str(p) for p in settings.problems()] == [
        "KAFKA_SASL_MECHANISM: is required (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL))",
        f"KAFKA_SASL_USERNAME: is required by {protocol}",
        f"KAFKA_SASL_PASSWORD: is required by {protocol}",
    ]


def test_an_unknown_sasl_mechanism_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'SCRAM' is not one of plain, scram-sha-256"):
        Settings(KAFKA_RUN | {"KAFKA_SASL_MECHANISM": "SCRAM"}).validate_for_run()


def test_a_missing_tls_file_is_a_configuration_error_not_a_connection_retry(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    settings = Settings(KAFKA_RUN | {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(ca)})
    [missing] = settings.problems()
    assert missing.variable == "KAFKA_SSL_CAFILE"
    assert missing.problem == f"cannot use {str(ca)!r}: No such file or directory"
    ca.write_text("not a certificate\n")
    [unusable] = Settings(KAFKA_RUN | {"KAFKA_SSL_CAFILE": str(ca)}).problems()[:1]
    assert unusable.variable == "KAFKA_SSL_CAFILE"
    assert "no PEM certificates" in unusable.problem


def test_tls_files_need_a_tls_protocol_and_a_key_its_certificate(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("not a key\n")
    settings = Settings(KAFKA_RUN | {"KAFKA_SSL_KEYFILE": str(key)})
    assert [str(p) for p in settings.problems()] == [
        "KAFKA_SSL_CERTFILE: is required with KAFKA_SSL_KEYFILE"
    ]
    cert = tmp_path / "client.pem"
    cert.write_text("not a certificate\n")
    settings = Settings(KAFKA_RUN | {"KAFKA_SSL_CERTFILE": str(cert)})
    assert [p.variable for p in settings.problems()] == [
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SSL_CERTFILE",
    ]
    assert "is PLAINTEXT, so the KAFKA_SSL_* files would be ignored" in str(settings.problems()[0])
    assert "no usable certificate and private key" in str(settings.problems()[1])


@pytest.mark.parametrize(
    ("values", "variable", "message"),
    [
        ({"KAFKA_TOPIC": "jobs and more"}, "KAFKA_TOPIC", "is illegal, it contains a character"),
        ({"KAFKA_DLQ_TOPIC": ".."}, "KAFKA_DLQ_TOPIC", 'cannot be "." or ".."'),
        ({"KAFKA_DLQ_TOPIC": "job_requests"}, "KAFKA_DLQ_TOPIC", "must differ from KAFKA_TOPIC"),
    ],
)
def test_topics_follow_kafkas_rules(values: dict[str, str], variable: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        Settings(KAFKA_RUN | values).validate_for_run()
    assert caught.value.variable == variable


def test_submit_checks_what_a_kafka_client_takes_whatever_the_source() -> None:
    file_run = {"JOB_SOURCE": "file", "KAFKA_BROKERS": "k1:9092"}
    Settings(file_run).validate_for_submit()  # no group, no Core: submit needs neither
    secured = Settings(file_run | {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    with pytest.raises(ConfigurationErrors) as caught:
        secured.validate_for_submit()
    assert [p.variable for p in caught.value.errors] == [
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
    ]


def test_a_client_key_that_asks_for_a_password_is_named(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    from cryptography.hazmat.primitives import serialization

    leaf = trustme.CA().issue_cert("worker")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "client.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (tmp_path / "client.key").write_bytes(encrypted)
    files = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CERTFILE": str(tmp_path / "client.pem"),
        "KAFKA_SSL_KEYFILE": str(tmp_path / "client.key"),
    }
    [problem] = Settings(KAFKA_RUN | files).problems()
    assert problem.variable == "KAFKA_SSL_KEYFILE"
    assert "the private key is encrypted; give an unencrypted key" in problem.problem
    (tmp_path / "client.key").write_bytes(leaf.private_key_pem.bytes())
    assert Settings(KAFKA_RUN | files).problems() == []
