"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

Binaries are looked for, in order: ``$KESTREAM_TEST_PG_BIN``; ``pg_ctl`` on ``PATH`` (with
``initdb`` beside it); ``/usr/lib/postgresql/<version>/bin`` (Debian's packages, newest first);
the ``pgserver`` wheel from PyPI, which ships PostgreSQL 16 binaries (x86_64 and arm64 Linux,
macOS). Only its binaries are used, started the same way, because ``pgserver``'s own start-up
adds a system user when run as root.

PostgreSQL refuses to run as root. When the tests run as root (CI containers), the server runs as
an unprivileged account (``postgres`` if it exists, else ``nobody``) in a directory made for it.

No PostgreSQL at all is a test failure with instructions, never a silent skip: the Postgres
backend of the execution index must be tested wherever the suite runs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_START_TIMEOUT_S = 60
_ACCOUNTS = ("postgres", "nobody")
HOW_TO_GET_POSTGRES = (
    "no PostgreSQL binaries found for the execution index's Postgres tests: install the "
    "test extra (it brings the `pgserver` wheel), or Debian's `postgresql` package, or point "
    "KESTREAM_TEST_PG_BIN at a directory holding initdb, pg_ctl and postgres"
)


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def find_postgres_bin() -> Path | None:
    """A directory with ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates: list[Path] = []
    if os.environ.get("KESTREAM_TEST_PG_BIN"):
        candidates.append(Path(os.environ["KESTREAM_TEST_PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates.extend(Path(p) for p in debian)
    with contextlib.suppress(ImportError):
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    return next((c for c in candidates if _complete(c)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as, when this process is root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in _ACCOUNTS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"running as root and none of the accounts {_ACCOUNTS} exists")


@dataclass(frozen=True)
class PostgresServer:
    """A running server: connect as ``postgres`` (trust auth) on 127.0.0.1:``port``."""

    port: int
    directory: Path
    #: ``pg_ctl`` with its data directory: ``("stop", "-m", "fast")``, ``("start",)``...
    control: Callable[..., None] = field(default=lambda *args: None, compare=False, repr=False)

    def stop(self) -> None:
        """Stop the server as an administrator would (its clients' connections are cut)."""
        self.control("stop", "-m", "fast", "-w")

    def start(self) -> None:
        """Start it again on the same port and data."""
        self.control("start", "-w")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """Start PostgreSQL from ``bin_dir`` in a temporary directory; stop and remove it after."""
    account = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="kestream-pg-"))
    data = directory / "data"
    log = directory / "server.log"
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    uid, gid = (account.pw_uid, account.pw_gid) if account else (None, None)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    port = _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=env,
            timeout=_START_TIMEOUT_S,
            cwd=directory,
            check=False,
            user=uid,
            group=gid,
        )
        if done.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{server_log}"
            )

    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    initdb = ["-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]
    run(str(bin_dir / "initdb"), *initdb, "--no-sync")
    wait = ["-w", "-t", str(_START_TIMEOUT_S)]

    def control(*args: str) -> None:
        ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
        run(*ctl, "-t", str(_START_TIMEOUT_S), *args)

    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, *wait, "start")
    try:
        yield PostgresServer(port, directory, control)
    finally:
        with contextlib.suppress(Exception):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session (per xdist worker); fails if none can run."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.fail(HOW_TO_GET_POSTGRES, pytrace=False)
    started = time.monotonic()
    with postgres_server(bin_dir) as server:
        print(
            f"\nPostgreSQL from {bin_dir} on port {server.port} in "
            f"{time.monotonic() - started:.1f} s"
        )
        yield server
