"""A real OpenBao with on-disk (Raft) storage that tests can stop, start, seal and unseal (data survives restarts).

Unlike the session's dev server (in memory, always unsealed), this one runs ``bao server -config`` with
``storage "file"``; :func:`PersistentBao.start` initialises it once (one unseal key) and unseals it on every
start. All on 127.0.0.1 with a free port that stays the same across restarts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devtools.devvault import find_bao, free_port, provision_demo_sync, stop_process


def _http(method: str, url: str, body: Any = None, token: str | None = None,
          timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, (json.loads(raw) if raw else {})


@dataclass
class PersistentBao:
    workdir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    root_token: str = ""
    unseal_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, dict[str, Any]]:
        return _http(method, f"{self.addr}/v1/{path}", body, token if token is not None else self.root_token)

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "bao.hcl"
        cfg.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "node1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{self.cluster_port}"\n'
            'ui = false\nlog_level = "warn"\n'
        )
        return cfg

    def start(self, *, unseal: bool = True, wait: float = 20.0) -> None:
        """Start the server (init it the first time) and unseal it."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already running")
        cfg = self._write_config()
        if self._log is None:
            self._log = open(self.workdir / "bao.log", "ab")  # noqa: SIM115 - closed in close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        self.process = subprocess.Popen([find_bao(), "server", f"-config={cfg}"], stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + wait
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited with {self.process.returncode}; see {self.workdir / 'bao.log'}")
            try:
                status, body = _http("GET", f"{self.addr}/v1/sys/seal-status", timeout=0.5)
                if status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bao did not come up in time")
            time.sleep(0.05)
        if not body.get("initialized"):
            status, init = _http("PUT", f"{self.addr}/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1},
                                 timeout=60)
            assert status == 200, init
            self.root_token = init["root_token"]
            self.unseal_key = (init.get("keys_base64") or init["keys"])[0]
        if unseal:
            self.unseal()

    def unseal(self, wait: float = 10.0) -> None:
        status, body = _http("PUT", f"{self.addr}/v1/sys/unseal", {"key": self.unseal_key})
        assert status == 200, body
        assert not body.get("sealed"), body
        deadline = time.monotonic() + wait
        streak = 0
        while time.monotonic() < deadline:
            # Active and serving: a fresh Raft node answers sys/mounts before it has won its election, then
            # briefly "local node not active". Wait for health 200 (active), leader is_self and mounts, three
            # times in a row.
            health, _ = self.api("GET", "sys/health")
            _, leader = self.api("GET", "sys/leader")
            mounts, _ = self.api("GET", "sys/mounts")
            if health == 200 and leader.get("is_self") and mounts == 200:
                streak += 1
                if streak >= 3:
                    return
            else:
                streak = 0
            time.sleep(0.05)
        raise RuntimeError("bao did not become active after unseal")

    def seal(self) -> None:
        status, body = self.api("PUT", "sys/seal")
        assert status == 204, body

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``); its data stays on disk."""
        stop_process(self.process, sig=signal.SIGKILL if kill else signal.SIGTERM)

    def close(self) -> None:
        self.stop(kill=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def provision(self, agents: list[str]) -> None:
        """kv-v2 at ``secret/``, transit and the agent policies (idempotent)."""
        provision_demo_sync(self.addr, self.root_token, agents)

    def approle(self, name: str, policies: list[str], *, token_ttl: str = "1h") -> tuple[str, str]:
        """Enable AppRole if needed, create role ``name``; returns (role_id, secret_id)."""
        status, auths = self.api("GET", "sys/auth")
        if "approle/" not in (auths.get("data") or auths):
            status, body = self.api("POST", "sys/auth/approle", {"type": "approle"})
            assert status == 204, body
        status, body = self.api("POST", f"auth/approle/role/{name}",
                                {"token_policies": policies, "token_ttl": token_ttl, "token_max_ttl": "4h"})
        assert status == 204, body
        _, rid = self.api("GET", f"auth/approle/role/{name}/role-id")
        _, sid = self.api("POST", f"auth/approle/role/{name}/secret-id", {})
        return rid["data"]["role_id"], sid["data"]["secret_id"]
