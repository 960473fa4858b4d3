"""A local `mlflow server` for one run, in front of a local sqlite store: parallel stages (Ray tasks) write
through it, since one sqlite file takes one writer at a time ("database is locked").

The server uses the same sqlite file and keeps artifacts where the local store puts them (`./mlruns`, served by
no proxy), so the store reads the same afterwards with or without a server: a later sequential run reuses what
the parallel one made.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 120


class LocalServerError(RuntimeError):
    pass


def needs_server(uri: str) -> bool:
    """Whether `uri` is a store that cannot take concurrent writers but a local server can front: a sqlite file."""
    return uri.startswith("sqlite:")


def is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri and not uri.startswith(("sqlite:", "databricks"))


class LocalServer:
    """`mlflow server` on a free 127.0.0.1 port, backed by `backend_uri`; `stop()` ends it."""

    def __init__(self, backend_uri: str, artifact_root: Path | None = None):
        self.backend_uri = backend_uri
        self.artifact_root = artifact_root or Path.cwd() / "mlruns"  # where MLflow's local sqlite store puts them
        self.uri = ""
        self._proc: subprocess.Popen | None = None
        self._log = Path(tempfile.mkdtemp(prefix="recipe-runner-server-")) / "server.log"

    def start(self) -> str:
        port = _free_port()
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                self.backend_uri,
                "--default-artifact-root",
                self.artifact_root.as_uri(),
                "--no-serve-artifacts",
                "--workers",
                "1",
            ],
            stdout=open(self._log, "w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # the job runner (GenAI jobs, its own worker processes) is not needed to log runs
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_new_session=True,  # Ctrl-C reaches the driver, which stops the server after its stages
        )
        self.uri = f"http://127.0.0.1:{port}"
        import requests

        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise LocalServerError(f"mlflow server for {self.backend_uri} exited:\n{self._tail()}")
            try:
                if requests.get(self.uri + "/health", timeout=1).ok:
                    return self.uri
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise LocalServerError(
            f"mlflow server for {self.backend_uri} did not answer in {START_TIMEOUT_S} s:\n{self._tail()}"
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # its own process group: the server and any worker process it forked
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=30)
        self._proc = None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _tail(self) -> str:
        try:
            return self._log.read_text()[-3000:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
