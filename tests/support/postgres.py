"""A throw-away PostgreSQL server for the tests: Debian's binaries, a temporary cluster, a free 127.0.0.1 port.

Debian installs the server outside ``PATH`` (``/usr/lib/postgresql/<major>/bin/{initdb,postgres,pg_isready}``),
so the binaries are looked up there first (highest major version), then on ``PATH``. PostgreSQL refuses to run
as root: when the suite runs as root (as CI does), ``initdb`` and ``postgres`` run as the ``postgres`` system
user (Debian's package creates it; ``nobody`` otherwise) in a temporary directory that user owns, made outside
pytest's ``0700`` temp root so that user can reach it. Host connections need a password (``scram-sha-256``),
so a test that logs in with a credential Vault made really checks that credential; the superuser's password
is random per server. Durability is off (``fsync``, ``full_page_writes``, ``synchronous_commit``): a test
cluster is thrown away, and start-up stays around a second.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from devtools.devvault import die_with_parent, free_port

BINARIES = ("initdb", "postgres", "pg_isready")
SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``postgres`` and ``pg_isready`` (Debian's layout first), or ``None``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                        reverse=True)
    found = shutil.which("postgres")
    if found:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if all(os.access(Path(candidate) / name, os.X_OK) for name in BINARIES):
            return Path(candidate)
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: ourselves unless we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


@dataclass
class PostgresServer:
    """One running cluster; ``dsn()`` for the superuser, ``vault_connection_url`` for Vault's database engine."""

    bindir: Path
    port: int
    workdir: Path
    password: str = field(repr=False)
    process: subprocess.Popen[bytes] | None = None
    user: pwd.struct_passwd | None = None

    host = "127.0.0.1"

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def dsn(self, user: str = SUPERUSER, password: str | None = None, database: str = "postgres") -> str:
        """A libpq URL (asyncpg accepts it). Never logged: it holds a password."""
        from urllib.parse import quote

        pw = self.password if password is None and user == SUPERUSER else (password or "")
        return f"postgresql://{quote(user, safe='')}:{quote(pw, safe='')}@{self.host}:{self.port}/{database}"

    @property
    def vault_connection_url(self) -> str:
        """The templated URL Vault's ``postgresql-database-plugin`` connects with (credentials in their own
        fields, never in the URL)."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@{self.host}:{self.port}/postgres?sslmode=disable"

    def _popen(self, argv: list[str], out: IO[bytes], *, server: bool = False) -> subprocess.Popen[bytes]:
        """Run a PostgreSQL binary as :attr:`user` (when we are root) with a minimal environment."""
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
        uid = gid = None
        if self.user is not None:
            uid, gid = self.user.pw_uid, self.user.pw_gid
        return subprocess.Popen(argv, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, user=uid, group=gid,
                                extra_groups=[] if uid is not None else None, start_new_session=server,
                                preexec_fn=die_with_parent() if server else None)

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> None:
        self._chown(self.workdir)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            with self.log_path.open("ab") as out:
                proc = self._popen([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                                    f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                                    "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"], out)
                if proc.wait(timeout=120) != 0:
                    raise RuntimeError(f"initdb failed; see {self.log_path}")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, wait: float = 60.0) -> None:
        out = self.log_path.open("ab")
        try:
            self.process = self._popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                 "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.workdir}",
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                 "-c", "max_connections=100", "-c", "log_min_messages=warning"], out, server=True)
        finally:
            out.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see {self.log_path}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                                    "-t", "1"], check=False, stdin=subprocess.DEVNULL, timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections within {wait:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, stop cleanly), SIGKILL if it hangs."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_postgres(bindir: Path) -> PostgresServer:
    """initdb a fresh cluster in a new temporary directory and start it; the caller ``close()``s it."""
    user = _run_as()
    # not under pytest's temp root: that is 0700 and owned by the suite's user, which ``postgres`` cannot enter
    workdir = Path(tempfile.mkdtemp(prefix="vmb-pg-"))
    server = PostgresServer(bindir=bindir, port=free_port(), workdir=workdir, password=secrets.token_urlsafe(18),
                            user=user)
    try:
        server.init()
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (skipped, with the reason, when the binaries are absent)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin or on PATH "
                    "(make sysdeps installs Debian's postgresql)")
    server = start_postgres(bindir)
    try:
        yield server
    finally:
        server.close()


async def make_login_role(server: PostgresServer, *, createrole: bool = False) -> tuple[str, str]:
    """A fresh login role (``CREATEROLE`` if asked: what Vault's database engine logs in with) and its
    password, made with the superuser."""
    import asyncpg

    name = "t_" + secrets.token_hex(6)
    password = secrets.token_urlsafe(18)
    conn = await asyncpg.connect(server.dsn(), timeout=30)
    try:
        extra = " CREATEROLE" if createrole else ""
        await conn.execute(f"CREATE ROLE \"{name}\" WITH LOGIN{extra} PASSWORD '{password}'")
    finally:
        await conn.close()
    return name, password


async def can_login(server: PostgresServer, user: str, password: str) -> bool:
    """Whether ``user`` can log in with ``password`` right now (runs ``SELECT 1``)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(server.dsn(user, password), timeout=30)
    except (asyncpg.PostgresError, OSError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()
