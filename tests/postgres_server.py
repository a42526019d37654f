"""A throwaway PostgreSQL server for tests: its own data dir, a unix socket and a free
127.0.0.1 port, stopped when the session ends.

PostgreSQL refuses to run as root; under root (CI) the server runs as the ``postgres`` user
(``runuser``), in a temporary directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    dbname: str = "postgres"

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (None: PostgreSQL is not installed)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="audiences-pg-"))
    prefix: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        user = "postgres"
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, log, port = root / "data", root / "server.log", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8")
    options = f"-h 127.0.0.1 -p {port} -k {root} -F -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user=user)
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
