"""A throwaway PostgreSQL server (initdb into a temp dir, a free port, fsync off), for the fleet
tests and benchmarks/fleet_ingest.py. As root it runs as the `postgres` account (PostgreSQL
refuses root)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgefleet.net import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_binary(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (apt-get install postgresql)")
    return found


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """Yields postgresql://postgres@127.0.0.1:<port> (trust auth); stopped and deleted afterwards."""
    # Outside pytest's temp tree: pytest keeps that tree private to root (0700), which the
    # `postgres` account could not enter.
    root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        as_user + [pg_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run(
        as_user
        + [pg_binary("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [pg_binary("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """Creates the empty database `name` on `server` (a postgresql:// URL as above); returns its URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(
        server.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return f"{server}/{name}"
