"""Prometheus metrics and the /healthz, /readyz, /metrics HTTP endpoint."""
