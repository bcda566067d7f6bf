"""Variables that look like settings but are none: ``WORKER_POOLSIZE=4`` would otherwise
be ignored without a word, and the worker run with 10.

A variable counts when it starts with one of our prefixes (every setting starts with
one), is no setting, and is not one that others read under the same prefix: the
local broker's tools, Kafka's own scripts, gRPC's core library, CI servers, Kubernetes'
service links (a Service named ``kafka`` or ``core`` puts ``KAFKA_PORT``,
``CORE_SERVICE_HOST`` … into every pod of its namespace). It is a warning, never an
error: the variable may be meant for something else.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("jobworker")

# Set by the ``--processes`` supervisor for its children: they read the same environment
# and .env as the parent, which has already warned of what is in them.
WARNED_BY_PARENT = "JOBWORKER_UNKNOWN_VARIABLES_WARNED"

OUR_PREFIXES = (
    "CORE_",
    "DLQ_",
    "GRPC_",
    "HTTP_",
    "IMAGE_",
    "JOB_",
    "JOBS_",
    "KAFKA_",
    "LIMITS",
    "LIVENESS_",
    "LOG_",
    "MAX_",
    "METRICS_",
    "READINESS_",
    "RESULT_",
    "RESULTS_",
    "RETRY_",
    "SHUTDOWN_",
    "STATUS_",
    "WEB_",
    "WORKER_",
)

_OTHERS = frozenset(
    {
        # the tests, the demo and tools/kafka (README, "Local Kafka")
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_DOCKER_PULL_TIMEOUT_S",
        "KAFKA_START_TIMEOUT_S",
        "KAFKA_TEST_IMAGE",
        # Apache Kafka's own scripts (the *_OPTS are matched below)
        "KAFKA_CLUSTER_ID",
        "KAFKA_DEBUG",
        "KAFKA_HOME",
        # gRPC's core library (the GRPC_PYTHON_*, GRPC_XDS_* … are matched below)
        "GRPC_ABORT_ON_LEAKS",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "GRPC_DNS_RESOLVER",
        "GRPC_ENABLE_FORK_SUPPORT",
        "GRPC_EXPERIMENTS",
        "GRPC_NOT_USE_SYSTEM_SSL_ROOTS",
        "GRPC_POLL_STRATEGY",
        "GRPC_SSL_CIPHER_SUITES",
        "GRPC_STACKTRACE_MINLOGLEVEL",
        "GRPC_TRACE",
        "GRPC_VERBOSITY",
        # requests, for HTTP jobs
        "HTTP_PROXY",
        # Jenkins, and Kubernetes' indexed Jobs
        "JOB_BASE_NAME",
        "JOB_COMPLETION_INDEX",
        "JOB_DISPLAY_URL",
        "JOB_NAME",
        "JOB_URL",
    }
)
_OTHERS_PATTERN = re.compile(
    r"^KAFKA_\w*OPTS$"  # KAFKA_OPTS, KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS …
    r"|^GRPC_(PYTHON|GO|XDS|EXPERIMENTAL|CLIENT_CHANNEL)_"
    # Kubernetes service links: <SERVICE>_SERVICE_HOST, _SERVICE_PORT[_<NAME>],
    # _PORT, _PORT_<n>_<PROTO>[_ADDR|_PORT|_PROTO]; also KAFKA_PORT of tools/kafka.
    r"|_SERVICE_(HOST|PORT)(_\w+)?$|_PORT(_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)?$"
)


@dataclass(frozen=True)
class UnknownVariable:
    """A variable with our prefix that no setting reads."""

    name: str
    source: str  # environment or .env
    nearest: str | None  # the setting it is most like, if one is like it at all

    def __str__(self) -> str:
        where = "" if self.source == "environment" else f" (in {self.source})"
        guess = f"did you mean {self.nearest}?" if self.nearest else "see `jobworker settings`"
        return f"{self.name}{where} is not a setting; {guess}"


def unknown_variables(given: Mapping[str, str], settings: Collection[str]) -> list[UnknownVariable]:
    """The variables of ``given`` (name → where it came from) that look like one of
    ``settings`` but are none, sorted by name."""
    return [
        UnknownVariable(
            name, source, next(iter(difflib.get_close_matches(name, settings, 1)), None)
        )
        for name, source in sorted(given.items())
        if _looks_like_ours(name) and name not in settings
    ]


def _looks_like_ours(name: str) -> bool:
    return (
        name.startswith(OUR_PREFIXES)
        and name.isupper()
        and name not in _OTHERS
        and not _OTHERS_PATTERN.search(name)
    )


def log_unknown_variables(unknown: Iterable[UnknownVariable]) -> None:
    """A warning line each, unless this is a ``--processes`` child (WARNED_BY_PARENT)."""
    if os.environ.get(WARNED_BY_PARENT):
        return
    for variable in unknown:
        log.warning(str(variable), variable=variable.name, nearest=variable.nearest)
