"""A throwaway PostgreSQL server on loopback, for the store tests (and .ci/run).

    server = PostgresServer.start()      # initdb + pg_ctl in a temp dir, a free port on 127.0.0.1
    url = server.new_database("t1")      # postgresql+psycopg://demix@127.0.0.1:PORT/t1
    server.stop()

Run as root (CI containers), the server runs as the `postgres` user, since PostgreSQL refuses
to run as root. `python tests/_postgres.py start|stop DIR` does the same from a shell.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def find_bin_dir() -> Path | None:
    """Directory holding initdb and pg_ctl (PATH first, then Debian's /usr/lib/postgresql/*/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").is_file():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path, port: int, bin_dir: Path) -> None:
        self.root, self.port, self.bin_dir = root, port, bin_dir

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *cmd: str) -> None:
        args = [str(self.bin_dir / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, text=True)

    @classmethod
    def start(cls, root: str | Path | None = None) -> PostgresServer:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        root = Path(root) if root else Path(tempfile.mkdtemp(prefix="demix-pg-"))
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = cls(root, _free_port(), bin_dir)
        server._run("initdb", "-D", str(server.data), "-U", "demix", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        server._run("pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-o", opts, "-w", "start")
        (root / "port").write_text(str(server.port))
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://demix@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self, remove: bool = True) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            if remove:
                shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(PostgresServer.start(where).url())
    elif action == "stop":
        bin_dir = find_bin_dir()
        PostgresServer(where, int((where / "port").read_text()), bin_dir).stop()
