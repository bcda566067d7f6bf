# syntax=docker/dockerfile:1
# Build stage: jobworker and its runtime dependencies in a virtualenv, exactly as uv.lock
# pins them (hashes checked). tools/check_package.sh runs these same steps without Docker.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/jobworker UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
WORKDIR /src
# uv itself, pinned by hash: the one tool installed before the lock can be read.
COPY tools/uv-requirements.txt tools/
RUN python -m venv /opt/uv \
 && /opt/uv/bin/pip install --require-hashes -r tools/uv-requirements.txt
# The locked runtime dependencies first: this layer changes only with the lock.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY domain/ domain/
COPY application/ application/
COPY adapters/ adapters/
COPY entrypoints/ entrypoints/
COPY package/ package/
COPY setup.py ./
# The project as a wheel (not editable: the sources stay behind in this stage). A uv
# virtualenv has no pip or setuptools, and --no-dev keeps the locked pip out.
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable \
 && /opt/jobworker/bin/jobworker --help > /dev/null

# Final stage: the virtualenv only (no compilers, no sources, no pip, no dev tools), run
# as user and group 10001, both named, so files it writes show an owner.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/jobworker/bin:$PATH PYTHONUNBUFFERED=1 LOG_FORMAT=json
RUN groupadd --system --gid 10001 jobworker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin jobworker \
 && mkdir -p /var/lib/jobworker \
 && chown 10001:10001 /var/lib/jobworker
COPY --from=build /opt/jobworker /opt/jobworker
USER 10001:10001
WORKDIR /var/lib/jobworker
# 9100: /metrics, /healthz, /readyz when METRICS_PORT=9100; 50051: `jobworker core`;
# 8088: `jobworker web` (with WEB_HOST=0.0.0.0: it listens on loopback by default).
EXPOSE 9100 50051 8088
ENTRYPOINT ["jobworker"]
CMD ["run"]
