"""The rules between settings: when a setting is required, what the Kafka client's
security needs, Core's message limit, and the topics and TLS files that must agree.

dynaconf's Validators check them on the parsed values; the few that compare two values
in a way a Validator cannot say are plain code below them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.loaders.base import SourceMetadata

from jobworker.adapters.kafka.settings import SecurityProtocol
from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.settings.declaration import Setting
from jobworker.entrypoints.settings.kafka_tls import key_pair_problem

# When a setting is needed (dynaconf ``when`` conditions on the parsed values). A choice
# that could not be read holds none of them (dynaconf would take a missing one for any).
KAFKA_SOURCE = Validator("JOB_SOURCE", must_exist=True, eq="kafka")
FILE_SOURCE = Validator("JOB_SOURCE", must_exist=True, eq="file")
GRPC_SINK = Validator("RESULT_SINK", must_exist=True, eq="grpc")
FILE_SINK = Validator("RESULT_SINK", must_exist=True, eq="file")
_SASL_PROTOCOLS = [p for p in SecurityProtocol if p.uses_sasl]
SASL = KAFKA_SOURCE & Validator("KAFKA_SECURITY_PROTOCOL", must_exist=True, is_in=_SASL_PROTOCOLS)

# Core takes one gRPC message of at most 4 MiB per result; the output shares it with the
# error text, the metadata and the ids, which the worker caps well below this margin.
CORE_MESSAGE_LIMIT = 4 * 1024 * 1024
MAX_OUTPUT_BYTES_FOR_CORE = CORE_MESSAGE_LIMIT - 256 * 1024

_TLS_FILES = Validator("KAFKA_SSL_CAFILE", must_exist=True) | Validator(
    "KAFKA_SSL_CERTFILE", must_exist=True
)
_TLS_PROTOCOLS = [p for p in SecurityProtocol if p.uses_tls]

_BETWEEN: list[Validator] = [
    *(
        Validator(
            credential,
            must_exist=True,
            when=KAFKA_SOURCE & Validator("KAFKA_SECURITY_PROTOCOL", must_exist=True, eq=protocol),
            messages={"must_exist_true": f"{{name}}: is required by {protocol}"},
        )
        for protocol in _SASL_PROTOCOLS
        for credential in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
    ),
    Validator(
        "KAFKA_SSL_CERTFILE",
        must_exist=True,
        when=KAFKA_SOURCE & Validator("KAFKA_SSL_KEYFILE", must_exist=True),
        messages={"must_exist_true": "{name}: is required with KAFKA_SSL_KEYFILE"},
    ),
    Validator(
        "KAFKA_SECURITY_PROTOCOL",
        is_in=_TLS_PROTOCOLS,
        when=KAFKA_SOURCE & _TLS_FILES,
        messages={
            "operations": "{name}: is {value}, so the KAFKA_SSL_* files would be ignored"
            " (use SSL or SASL_SSL)"
        },
    ),
    Validator(
        "MAX_OUTPUT_BYTES",
        lte=MAX_OUTPUT_BYTES_FOR_CORE,
        when=GRPC_SINK,
        messages={
            "operations": "{name}: {value} bytes is more than Core can take: a result travels"
            f" in one gRPC message of at most {CORE_MESSAGE_LIMIT} bytes, so outputs may be"
            f" {MAX_OUTPUT_BYTES_FOR_CORE} bytes (3840KiB) at most"
        },
    ),
]

# The settings whose values the rules compare (all parsed: choices and a size). A wrong
# one is no value to compare: it is left out, so that no condition on it holds; any other
# wrong one stays as given, so that it is not also missing.
_COMPARED = {"JOB_SOURCE", "RESULT_SINK", "KAFKA_SECURITY_PROTOCOL", "MAX_OUTPUT_BYTES"}
# Parsed values, as dynaconf records them beside the ones given.
_PARSED = SourceMetadata("parsed", "declarations")


def broken_rules(
    config: Dynaconf,
    declared: Iterable[Setting[Any]],
    present: Mapping[str, Any],
    wrong: set[str],
) -> list[ConfigurationError]:
    """The rules ``present`` (parsed values) breaks, checked on ``config`` (the dynaconf
    instance that holds the values given); a ``wrong`` one is not missing."""
    for entry in declared:
        if entry.name in present:
            config.set(entry.name, present[entry.name], loader_identifier=_PARSED, tomlfy=False)
        elif entry.name not in wrong or entry.name in _COMPARED:
            # Unset, blank, of an adapter this run does not use, or a wrong one the
            # rules would compare: absent (the record of what was given stays).
            config.unset(entry.name)
    config.validators.register(*_required(declared), *_BETWEEN)
    broken = []
    try:
        config.validators.validate_all()
    except ValidationError as error:
        broken = [
            ConfigurationError(validator.names[0], message.partition(": ")[2])
            for validator, message in error.details
        ]
    if present.get("JOB_SOURCE") == "kafka":
        broken += _kafka_rules(present, wrong)
    return broken


def _required(declared: Iterable[Setting[Any]]) -> list[Validator]:
    return [
        Validator(
            entry.name,
            must_exist=True,
            when=entry.needed_when,
            messages={"must_exist_true": f"{{name}}: {entry.required()}"},
        )
        for entry in declared
        if entry.needed_when is not None
    ]


def _kafka_rules(present: Mapping[str, Any], wrong: set[str]) -> list[ConfigurationError]:
    broken = []
    topic, dlq = present.get("KAFKA_TOPIC"), present.get("KAFKA_DLQ_TOPIC")
    if dlq is not None and dlq == topic:
        broken.append(ConfigurationError("KAFKA_DLQ_TOPIC", "must differ from KAFKA_TOPIC"))
    results_dlq = present.get("KAFKA_RESULTS_DLQ_TOPIC")
    if results_dlq in {topic, dlq} - {None}:
        broken.append(
            ConfigurationError(
                "KAFKA_RESULTS_DLQ_TOPIC",
                f"{results_dlq!r} must differ from KAFKA_TOPIC and KAFKA_DLQ_TOPIC",
            )
        )
    status = present.get("KAFKA_STATUS_TOPIC")
    if status in {topic, dlq, results_dlq} - {None}:
        broken.append(
            ConfigurationError(
                "KAFKA_STATUS_TOPIC",
                f"{status!r} must differ from KAFKA_TOPIC and the dead-letter topics",
            )
        )
    certfile, keyfile = present.get("KAFKA_SSL_CERTFILE"), present.get("KAFKA_SSL_KEYFILE")
    readable = not {"KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"} & wrong
    if certfile is not None and readable and (problem := key_pair_problem(certfile, keyfile)):
        broken.append(problem)
    return broken
