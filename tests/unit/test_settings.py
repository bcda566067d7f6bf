from __future__ import annotations

from pathlib import Path

import pytest

from domain.errors import ConfigurationError
from entrypoints.config_values import parse_duration, parse_size
from entrypoints.settings import SETTINGS, Settings, settings_table

KAFKA_RUN = {
    "KAFKA_BROKERS": "k1:9092,k2:9092",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "core:50051",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("7", 7.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


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
    assert settings.get("KAFKA_TOPIC") == "job_requests"
    assert settings.get("WORKER_POOL_SIZE") == 10
    assert settings.get("MAX_JOB_TIMEOUT") == 30.0
    assert settings.get("LOG_FORMAT") == "json"
    assert settings.get("KAFKA_BROKERS") == ["k1:9092", "k2:9092"]
    assert settings.dlq_topic == "job_requests.dlq"
    assert settings.jobs_queue_size == 20


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
    ],
)
def test_a_malformed_setting_is_named_with_the_problem(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Settings(KAFKA_RUN | {name: value}).validate_for_run()
    assert caught.value.variable == name


def test_an_empty_value_of_an_ordinary_setting_means_its_default() -> None:
    settings = Settings(KAFKA_RUN | {"LOG_LEVEL": "", "WORKER_POOL_SIZE": " "})
    settings.validate_for_run()
    assert settings.get("LOG_LEVEL") == "info"
    assert settings.get("WORKER_POOL_SIZE") == 10


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
    assert settings.get("GRPC_SERVER_ADDRESS") == "[::1]:50051"
    assert settings.results_dlq_topic == "job_requests.results.dlq"
    assert settings.get("KAFKA_ISOLATION_LEVEL") == "read_committed"


def test_outputs_above_cores_limit_are_fine_when_results_go_to_a_file() -> None:
    settings = Settings(
        {"JOB_SOURCE": "file", "JOB_FILE": "j", "RESULT_SINK": "file", "RESULT_FILE": "r.jsonl"}
        | {"MAX_OUTPUT_BYTES": "8MiB"}
    )
    settings.validate_for_run()
    assert settings.results_dlq_file == "r.jsonl.refused.jsonl"


def test_file_runs_need_no_kafka_or_core_settings() -> None:
    settings = Settings(
        {"JOB_SOURCE": "file", "JOB_FILE": "jobs.jsonl", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    )
    settings.validate_for_run()


def test_a_selected_file_adapter_needs_its_file() -> None:
    with pytest.raises(ConfigurationError, match="JOB_FILE: is required"):
        Settings(KAFKA_RUN | {"JOB_SOURCE": "file"}).validate_for_run()


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("KAFKA_TOPIC=from_dotenv\nWORKER_POOL_SIZE=3\n")
    # python-dotenv writes into os.environ; monkeypatch removes it again afterwards.
    monkeypatch.delenv("KAFKA_TOPIC", raising=False)
    monkeypatch.setenv("WORKER_POOL_SIZE", "7")
    settings = Settings.load(dotenv=dotenv)
    assert settings.get("KAFKA_TOPIC") == "from_dotenv"
    assert settings.get("WORKER_POOL_SIZE") == 7


def test_the_table_lists_every_setting() -> None:
    table = settings_table()
    assert all(f"`{s.name}`" in table for s in SETTINGS)


def test_values_are_taken_exactly_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("KAFKA_GROUP_ID=1.10\nKAFKA_SASL_PASSWORD=true\n")
    monkeypatch.delenv("KAFKA_GROUP_ID", raising=False)
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("UNRELATED_VARIABLE", "@json {")  # must not matter to us
    settings = Settings.load(dotenv=dotenv)
    assert settings.get("KAFKA_GROUP_ID") == "1.10"
    assert settings.get("KAFKA_SASL_PASSWORD") == "true"


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--env-file: .*nope.env is not a readable file"):
        Settings.load(dotenv=tmp_path / "nope.env")


def test_the_readme_table_is_the_settings_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, (
        "README's configuration table is stale: paste `jobworker settings`"
    )
