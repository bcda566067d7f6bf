"""``jobworker web``: the fleet console, served until SIGINT or SIGTERM.

Wires the console's sources (the status topic, the group's offsets, the two dead-letter
topics) to the pages, and serves them with gevent's WSGI server on WEB_HOST:WEB_PORT
(loopback by default).
"""

from __future__ import annotations

import signal
import sys

import gevent
import structlog
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from jobworker.adapters.kafka.group_progress import KafkaGroupProgress
from jobworker.adapters.kafka.status_feed import KafkaStatusFeed
from jobworker.adapters.web.app import ConsoleApp
from jobworker.application.dead_letter_service import DeadLetterService
from jobworker.application.fleet_console import FleetConsole
from jobworker.domain.errors import ConfigurationError
from jobworker.domain.ports import ResultSink
from jobworker.entrypoints.container import kafka_client_settings
from jobworker.entrypoints.dlq import core_opener, replay_container
from jobworker.entrypoints.exit_codes import UsageError
from jobworker.entrypoints.logging_setup import flush_logs
from jobworker.entrypoints.settings import Settings

log = structlog.get_logger("jobworker.web")


def serve_console(settings: Settings, *, allow_actions: bool) -> int:
    """Serve the console until a signal; 0 then. Settings are validated already."""
    container = replay_container(settings)
    client = kafka_client_settings(settings)
    open_core = core_opener(settings, container)

    def core() -> ResultSink:
        if settings.grpc_server_address is None:
            raise ConfigurationError(
                Settings.grpc_server_address.name,
                "is not set: result letters go back to Core, so the console needs Core's"
                " address to replay them",
            )
        return open_core()

    def dead_letters(topic: str, variable: str) -> DeadLetterService:
        service: DeadLetterService = container.dead_letters(
            topic=topic, variable=variable, sink=core
        )
        return service

    # Kafka is reached from the console's greenlets, once it serves: a broker that does
    # not answer (or refuses) shows on the page, and the console keeps trying.
    console = FleetConsole(
        KafkaStatusFeed(client, settings.kafka_status_topic),
        KafkaGroupProgress(client, settings.kafka_topic, settings.kafka_group_id),
        {
            "jobs": lambda: dead_letters(settings.kafka_dlq_topic, "KAFKA_DLQ_TOPIC"),
            "results": lambda: dead_letters(
                settings.kafka_results_dlq_topic, "KAFKA_RESULTS_DLQ_TOPIC"
            ),
        },
        settings.dlq_max_replays,
    )
    app = ConsoleApp(
        console,
        action_token=settings.web_action_token if allow_actions else None,
        title=f"jobworker · {settings.kafka_topic}",
    )
    server = WSGIServer((settings.web_host, settings.web_port), app, log=None)
    try:
        server.start()
    except OSError as error:
        raise UsageError(
            f"cannot listen on {settings.web_host}:{settings.web_port} (WEB_HOST, WEB_PORT):"
            f" {error.strerror or error}"
        ) from None
    console.start()
    url = f"http://{settings.web_host}:{server.server_port}/"
    mode = "replay buttons on (WEB_ACTION_TOKEN)" if allow_actions else "read-only"
    log.info("web console serving", url=url, mode=mode, group=settings.kafka_group_id)
    flush_logs()
    print(f"jobworker web: {url} ({mode}); Ctrl-C stops it", file=sys.stderr, flush=True)
    stopping = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stopping.set)
    stopping.wait()
    log.info("web console stopping")
    server.stop(timeout=2)
    console.stop()
    container.shutdown_resources()
    return 0
