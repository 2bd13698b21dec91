"""A throwaway PostgreSQL 15 server for tests and benchmarks: initdb into a temporary
folder, listen on a free loopback port, remove everything afterwards. PostgreSQL refuses
to run as root, so as root the server runs as the 'postgres' system user."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if not (BIN / "pg_ctl").exists():
        return f"PostgreSQL 15 binaries not found in {BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(database: str = "lightseg"):
    folder = Path(tempfile.mkdtemp(prefix="lightseg-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"

    def run(*args):
        subprocess.run([*prefix, *map(str, args)], check=True, capture_output=True, timeout=120)

    try:
        run(BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        run(BIN / "pg_ctl", "-D", data, "-o", options, "-l", folder / "server.log", "-w", "start")
        run(BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*prefix, str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
