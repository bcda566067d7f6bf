"""Tools only the fault scenarios need: a private broker to restart, probes into a
running worker (memory, metrics), and poison inputs."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import threading
import urllib.request
import zlib
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import ROOT, free_port

BROKER_SCRIPT = ROOT / "tools" / "kafka" / "broker.sh"
MIB = 1024 * 1024


# -- a broker of our own ---------------------------------------------------------------


class PrivateBroker:
    """A single-node Kafka from ``tools/kafka/broker.sh`` on its own ports and state.

    For scenarios that stop the broker: the shared one serves other tests at the same
    time. ``down`` then ``up`` restarts it on the same port with the same data.
    """

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port_pair()
        self.state_dir = state_dir
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = state_dir / f"broker-{self.port}" / "kafka.log"

    def up(self, timeout_s: float = 180) -> None:
        self._run("up", timeout_s)

    def down(self, timeout_s: float = 60) -> None:
        self._run("down", timeout_s)

    def _run(self, command: str, timeout_s: float) -> None:
        env = os.environ | {
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "JOBWORKER_KAFKA_STATE": str(self.state_dir),
        }
        done = subprocess.run(
            [str(BROKER_SCRIPT), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"broker.sh {command} failed ({done.returncode}):\n{done.stderr}")

    def __enter__(self) -> PrivateBroker:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()


def free_port_pair() -> int:
    """A free port whose successor is free too (the broker's controller listens there)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


# -- probes into a running worker ------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape_metric(port: int, sample_name: str) -> float:
    """The sum of every sample called ``sample_name`` (all label sets) on ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    )


def metrics_answer(port: int) -> bool:
    try:
        scrape_metric(port, "jobworker_jobs_consumed_total")
    except OSError:
        return False
    return True


# -- poison inputs ---------------------------------------------------------------------


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers on them:
    an HTTP target that hangs. Connections are held until ``close``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def png_bytes(width: int = 1, height: int = 1) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def decompression_bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (IHDR rewritten, CRC fixed)."""
    data = bytearray(png_bytes())
    # Signature (8) | IHDR length (4) | b"IHDR" (4) | width, height (4 + 4) | ... | CRC
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)
