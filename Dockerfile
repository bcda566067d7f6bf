# syntax=docker/dockerfile:1
# Build stage: a wheel of jobworker and its runtime dependencies in a virtualenv.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/jobworker
COPY pyproject.toml README.md ./
COPY domain/ domain/
COPY application/ application/
COPY adapters/ adapters/
COPY entrypoints/ entrypoints/
COPY jobworker/ jobworker/
RUN /opt/jobworker/bin/pip wheel --wheel-dir /wheels . \
 && /opt/jobworker/bin/pip install --no-index --find-links /wheels jobworker \
 && /opt/jobworker/bin/jobworker --help > /dev/null

# Final stage: the virtualenv only (no compilers, no sources, no dev tools), non-root.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/jobworker/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin jobworker \
 && mkdir -p /var/lib/jobworker \
 && chown 10001:10001 /var/lib/jobworker
COPY --from=build /opt/jobworker /opt/jobworker
USER 10001:10001
WORKDIR /var/lib/jobworker
# 9100: /metrics, /healthz, /readyz when METRICS_PORT=9100; 50051: `jobworker core`.
EXPOSE 9100 50051
ENTRYPOINT ["jobworker"]
CMD ["run"]
