"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it.

``setup`` decides from the environment and imports nothing of the SDK; ``headers``
picks the W3C trace context off Kafka records. The rest loads only when tracing is on,
as does the job observer, which lives with the others in ``observability.job_trace``.
"""
