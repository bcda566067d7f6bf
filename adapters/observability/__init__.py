"""What the worker tells the outside about itself.

The job observers are all here, one module each: ``job_log`` (a line per job, the job's
fields on every line it logs), ``metrics`` (Prometheus counters and durations, and the
live gauges read at scrape time) and ``job_trace`` (a span per job; loaded only when
tracing is on). Their port, ``JobObserver``, is in ``domain.ports``; ``ObserverGroup``
in ``application.observers`` tells each of them in turn. Beside them: the /healthz,
/readyz and /metrics HTTP endpoint and the hub watch.
"""
