"""A throwaway PostgreSQL cluster for the tests and the benchmarks: Debian's server binaries
(the `postgresql` package; `make debs` installs it), initdb into a temp folder as an
unprivileged user (the server refuses to run as root: under root the folder is handed to
`nobody` and the processes run as it through setpriv), listening on 127.0.0.1 only, no Unix
socket. One per test session (tests/conftest.py `pg_cluster`); each test takes a database of its
own (`new_database`).

fsync is off by default: the tests kill processes, never the machine, and a killed server's
writes are in the page cache either way. `PgCluster(fsync=True)` (the benchmarks) syncs every
commit as a production server does."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "carecard"
START_TIMEOUT_S = 60.0


def server_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/N/bin with initdb and postgres."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed (/usr/lib/postgresql/N/bin/postgres): "
                           "install Debian's `postgresql` package (`make debs`)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.bin = server_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="carecard-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> "PgCluster":
        log = self.root / "initdb.log"
        with open(log, "wb") as out:
            subprocess.run([*self._prefix, str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                            "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
                           check=True, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        self.process = subprocess.Popen(
            [*self._prefix, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", f"fsync={'on' if self.fsync else 'off'}",
             "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "wb"), cwd=self.root)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT_S:g} s")
                time.sleep(0.05)

    def new_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
