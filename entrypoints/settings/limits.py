"""``LIMITS``: bounds on what jobs call, per job type and per HTTP host.

    LIMITS="HTTP=500/s; host:api.example.com=50 concurrent,100/s; IMAGE_RESIZE=8 concurrent"

Entries are separated by ``;``. Each names a job type (as in ``JobTask.Type``) or an HTTP
host (``host:<name>``, without a port: every port of it counts), then ``=`` and one or
both of ``<N> concurrent`` and ``<N>/s`` (or ``<N>/m``, per minute). Each bound holds
per worker process.
"""

from __future__ import annotations

import re

from jobworker.domain.limits import HOST_PREFIX, TargetLimit

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m)")
_CONCURRENT = re.compile(r"(\d+)\s+concurrent")
_JOB_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")


def parse_limits(text: str) -> tuple[TargetLimit, ...]:
    """The limits ``text`` declares; ValueError naming the entry that is wrong."""
    limits: dict[str, TargetLimit] = {}
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        key, sep, bounds = entry.partition("=")
        if not sep:
            raise ValueError(f"{entry!r} is not KEY=BOUNDS (HTTP=100/s)")
        key = _key(key.strip())
        if key in limits:
            raise ValueError(f"{key} is limited twice")
        limits[key] = _limit(key, bounds, entry)
    return tuple(limits.values())


def _key(key: str) -> str:
    if key.lower().startswith(HOST_PREFIX):
        host = key[len(HOST_PREFIX) :].strip().lower()
        if not _HOST.fullmatch(host):
            raise ValueError(f"{key!r} does not name a host (host:api.example.com, no port)")
        # As a URL's host reads to the executors (urlsplit's hostname): no IPv6 brackets.
        return HOST_PREFIX + host.removeprefix("[").removesuffix("]")
    if not _JOB_TYPE.fullmatch(key.upper()):
        raise ValueError(f"{key!r} is neither a job type (HTTP) nor host:<name>")
    return key.upper()


def _limit(key: str, bounds: str, entry: str) -> TargetLimit:
    concurrent: int | None = None
    per_second: float | None = None
    for bound in (part.strip().lower() for part in bounds.split(",")):
        if rate := _RATE.fullmatch(bound):
            if per_second is not None:
                raise ValueError(f"{entry!r} gives two rates")
            per_second = float(rate[1]) / (60.0 if rate[2] == "m" else 1.0)
            if per_second <= 0:
                raise ValueError(f"{entry!r}: a rate must be greater than zero")
        elif count := _CONCURRENT.fullmatch(bound):
            if concurrent is not None:
                raise ValueError(f"{entry!r} gives two concurrency bounds")
            concurrent = int(count[1])
            if concurrent < 1:
                raise ValueError(f"{entry!r}: concurrency must be at least 1")
        else:
            raise ValueError(
                f"{entry!r}: {bound!r} is neither '<N> concurrent' nor '<N>/s' (or '<N>/m')"
            )
    return TargetLimit(key, concurrent, per_second)
