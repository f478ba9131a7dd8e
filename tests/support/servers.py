"""Fixtures for the fault tests: a restartable OpenBao (Raft storage), a Redis server, bridge processes.

- ``pbao``: one OpenBao with on-disk storage for the session, provisioned like the dev server; tests may stop,
  kill, seal it, and must leave it running (``live_pbao`` restores it before each test).
- ``redis_server``: Debian's ``redis-server`` on a free port (skipped when not installed: ``make sysdeps``).
- ``spawn_bridge``: runs ``python -m bridge serve`` as a real process with the given environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from bridge.config import Settings
from devtools.devvault import free_port, stop_process
from tests.conftest import API_KEYS, TEST_AGENTS
from tests.support.persistent_bao import PersistentBao


@pytest.fixture(scope="session")
def pbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersistentBao]:
    server = PersistentBao(tmp_path_factory.mktemp("pbao"))
    try:
        server.start()
        server.provision(TEST_AGENTS)
        yield server
    finally:
        server.close()


@pytest.fixture
def live_pbao(pbao: PersistentBao) -> Iterator[PersistentBao]:
    """The persistent OpenBao, running and unsealed before and after the test."""
    _restore(pbao)
    yield pbao
    _restore(pbao)


def _restore(server: PersistentBao) -> None:
    if server.process is None or server.process.poll() is not None:
        server.start()
        return
    _status, body = server.api("GET", "sys/seal-status")
    if body.get("sealed"):
        server.unseal()


@pytest.fixture
def pbao_settings(live_pbao: PersistentBao) -> Callable[..., Settings]:
    import json

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "vault_addr": live_pbao.addr,
            "vault_token": live_pbao.root_token,
            "api_keys_json": json.dumps(API_KEYS),
            "rate_limit_requests": 100_000,
            "vault_timeout": 2.0,
            "vault_breaker_threshold": 3,
            "vault_breaker_cooldown": 0.5,
            "ready_probe_interval": 0.1,
        }
        base.update(overrides)
        return Settings.from_env({}, **base)

    return make


# -- Redis -------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make sysdeps installs it)")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- bridge processes ---------------------------------------------------------------------------------


@dataclass
class BridgeProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
        self.log.close()


@pytest.fixture
def spawn_bridge(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    started: list[BridgeProcess] = []

    def spawn(env: dict[str, str], *, wait_ready: bool = True) -> BridgeProcess:
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        full.update({"HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "warning"})
        full.update(env)
        log_path = tmp_path / f"bridge-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by BridgeProcess.stop
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=full, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        bp = BridgeProcess(port, proc, log, log_path)
        started.append(bp)
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bridge exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{bp.url}/healthz", timeout=1) as resp:
                    if resp.status == 200 or not wait_ready:
                        return bp
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bridge did not come up")
            time.sleep(0.05)

    yield spawn
    for bp in started:
        bp.stop()
