"""Real servers for the tests: an `mlflow server` process on loopback, and a private, throwaway PostgreSQL cluster
behind it (the README's team setup), each started in a temporary folder and stopped afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

NO_POSTGRES = (
    "PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin "
    "(Debian: apt-get install postgresql)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path, backend_uri: str) -> Iterator[str]:
    """`mlflow server` on a free 127.0.0.1 port over `backend_uri`, artifacts proxied into `root`; yields its URL."""
    port = free_port()
    log = root / "server.log"
    proc = subprocess.Popen(
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
            backend_uri,
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _healthy(uri), proc, 90, log, "mlflow server")
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _healthy(uri: str) -> bool:
    try:
        return requests.get(uri + "/health", timeout=1).ok
    except requests.RequestException:
        return False


def _wait_until(ready, proc: subprocess.Popen, limit: float, log: Path, what: str) -> None:
    deadline = time.time() + limit
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: Debian keeps them off PATH, in /usr/lib/postgresql/VERSION/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Cluster:
    port: int

    def database(self, name: str) -> str:
        """Creates database `name`; returns its SQLAlchemy URL. The driver is named: SQLAlchemy 2.1 reads a bare
        `postgresql://` as psycopg 3, 2.0 as psycopg2."""
        # CREATE DATABASE refuses to run inside a transaction
        self._query("postgres", f'CREATE DATABASE "{name}"', autocommit=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def tables(self, database: str) -> set[str]:
        rows = self._query(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}

    def _query(self, database: str, sql: str, autocommit: bool = False) -> list[tuple]:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        try:
            con.autocommit = autocommit
            with con.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else []
        finally:
            con.close()


@contextmanager
def postgres_cluster(bin_dir: Path) -> Iterator[Cluster]:
    """A fresh cluster (initdb) served on a free 127.0.0.1 port, no Unix socket, trust authentication (loopback,
    gone afterwards). PostgreSQL refuses to run as root: as root, it runs as the `postgres` user (Debian's
    package makes one) or `nobody`, in a folder of its own under the system temp dir (pytest's are 0700)."""
    import psycopg2

    as_user: dict = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="recipe-runner-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, log = root / "data", root / "postgres.log"
    try:
        init = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            cwd=root,
            capture_output=True,
            text=True,
            **as_user,
        )
        if init.returncode:
            raise RuntimeError("initdb failed:\n" + init.stdout[-2000:] + init.stderr[-2000:])
        port = free_port()
        # fsync=off: a throwaway cluster; what other sessions see after a commit does not depend on it
        proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
            ],
            cwd=root,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            **as_user,
        )

        def accepts() -> bool:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
                return True
            except psycopg2.OperationalError:
                return False

        try:
            _wait_until(accepts, proc, 60, log, "PostgreSQL")
            yield Cluster(port)
        finally:
            # SIGINT: PostgreSQL's fast shutdown (ends the sessions, no waiting for clients)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
