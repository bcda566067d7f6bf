"""``jobworker submit`` to Kafka: key = job id, value = JobTask, with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

from jobworker.adapters.kafka.publisher import KafkaJobPublisher, PublishFailed
from jobworker.domain.errors import AccessRefused, ConfigurationError, JobWorkerError
from jobworker.domain.model import Job
from jobworker.entrypoints.container import connecting_to_kafka, kafka_client_settings
from jobworker.entrypoints.exit_codes import UsageError
from jobworker.entrypoints.settings import Settings

# Wait for the broker's acknowledgements in batches, so a failure is reported close to
# where it happened and memory stays flat for files of any size.
_FLUSH_EVERY = 5_000


def submit_to_kafka(settings: Settings, jobs: Iterable[Job], total: int | None) -> int:
    settings.validate_for_submit()
    topic = settings.kafka_topic
    with connecting_to_kafka(settings):
        publisher = KafkaJobPublisher(kafka_client_settings(settings), topic)
    sent = 0
    progress = tqdm(total=total, unit="job", file=sys.stderr, disable=None, desc=topic)
    try:
        for job in jobs:
            publisher.publish(job)
            sent += 1
            progress.update()
            if sent % _FLUSH_EVERY == 0:
                publisher.flush()
        publisher.flush()
    except PublishFailed as error:
        raise JobWorkerError(f"Kafka refused jobs: {error}") from None
    except (ConfigurationError, AccessRefused):
        raise
    except (ValueError, JobWorkerError) as error:
        # The jobs before the bad one are on the topic already: say how many, so a
        # re-run after the fix can skip them instead of submitting them twice.
        raise UsageError(f"{error}; {sent} job(s) before it were submitted") from None
    finally:
        progress.close()
        publisher.close()
    return sent
