"""Liveness that a blocked gevent hub cannot fake: a heartbeat and a stand-in thread.

The probe server is a greenlet on the hub it reports on: while code that never yields
holds the hub, it cannot answer at all, and the moment the hub is free again it would
answer 200 as if nothing happened. So a heartbeat greenlet stamps the time on every
turn of the hub, and a native thread (not a greenlet: it runs while the hub is held)
watches the stamp. Once the stamp is older than ``max_blocked_s`` the thread takes the
probe server's listening socket and answers every request itself with 503 and how long
the hub has been held, until the hub turns again. One port, one set of paths, and an
answer within the bound instead of a connection that hangs until the probe times out.
"""

from __future__ import annotations

import _socket
import json
import os
import time

import gevent
import structlog
from gevent import monkey

log = structlog.get_logger(__name__)

# The thread and its waits must be the real ones, not gevent's (after patch_all those
# would be greenlets and hub waits, held up by the very block they must report).
_start_native_thread = monkey.get_original("_thread", "start_new_thread")
_native_select = monkey.get_original("select", "select")
_native_sleep = monkey.get_original("time", "sleep")

_BEAT_S = 0.25
_ANSWER_TIMEOUT_S = 2.0


class HubHeartbeat:
    """Stamps ``time.monotonic()`` from a greenlet every quarter second.

    A beat that comes more than ``warn_after_s`` late logs how long the hub was held
    (from the hub, once it turns again: the stand-in thread does not log).
    """

    def __init__(self, warn_after_s: float = 1.0) -> None:
        self.stamp = time.monotonic()
        self._warn_after_s = warn_after_s
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self.stamp = time.monotonic()
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)

    def blocked_for(self) -> float:
        """Seconds since the hub last ran the heartbeat (about 0 while it turns freely)."""
        return max(0.0, time.monotonic() - self.stamp - _BEAT_S)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            late_s = now - self.stamp - _BEAT_S
            self.stamp = now
            if late_s > self._warn_after_s:
                log.warning(
                    "the event loop was blocked; nothing else ran meanwhile",
                    blocked_s=round(late_s, 1),
                )
            gevent.sleep(_BEAT_S)


class BlockedHubStandIn:
    """A native thread answering 503 on ``listener_fd`` while the hub is blocked too long."""

    def __init__(
        self,
        listener_fd: int,
        heartbeat: HubHeartbeat,
        max_blocked_s: float,
    ) -> None:
        # A duplicate of the server's listening socket: same queue of connections, and
        # closing ours later leaves the server's open.
        self._listener = _socket.socket(fileno=os.dup(listener_fd))
        self._heartbeat = heartbeat
        self._max_blocked_s = max_blocked_s
        self._stopped = False
        self.answered = 0

    def start(self) -> None:
        _start_native_thread(self._run, ())

    def stop(self) -> None:
        self._stopped = True

    def _run(self) -> None:
        try:
            while not self._stopped:
                blocked_s = self._heartbeat.blocked_for()
                if blocked_s <= self._max_blocked_s:
                    _native_sleep(_BEAT_S)
                    continue
                readable, _, _ = _native_select([self._listener], [], [], _BEAT_S)
                # Asked again: the hub may have turned while this thread waited.
                blocked_s = self._heartbeat.blocked_for()
                if readable and not self._stopped and blocked_s > self._max_blocked_s:
                    self._answer_one(blocked_s)
        finally:
            self._listener.close()

    def _answer_one(self, blocked_s: float) -> None:
        try:
            # The listening socket is non-blocking (gevent's): the hub may win the race.
            fd, _ = self._listener._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        connection = _socket.socket(fileno=fd)
        try:
            connection.settimeout(_ANSWER_TIMEOUT_S)
            connection.recv(8192)  # the request: whatever the path, the answer is the same
            body = json.dumps(
                {
                    "status": "failed",
                    "reason": f"the event loop has been blocked for {blocked_s:.1f} s"
                    f" (more than {self._max_blocked_s:g} s)",
                }
            ).encode()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            connection.sendall(head + body)
            self.answered += 1
        except OSError:
            pass  # the prober went away: nothing to tell it
        finally:
            connection.close()
