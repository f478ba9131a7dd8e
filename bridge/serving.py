"""Process-level serving concerns: the event loop choice and ``WORKERS=N`` processes sharing one port.

- :func:`new_event_loop`: uvloop when installed (``EVENT_LOOP=auto``, the default) or forced
  (``EVENT_LOOP=uvloop``), else the standard asyncio loop.
- :func:`run_workers`: ``WORKERS=N`` (N > 1) starts N copies of ``vault-mcp-bridge serve`` that all bind the same
  port with ``SO_REUSEPORT`` (the kernel spreads connections across them); the parent only supervises:
  it forwards SIGTERM/SIGINT (and SIGHUP, which reloads ``API_KEYS_FILE``) and exits when the workers have
  exited. State that must be shared between workers (the rate limit) needs ``RATE_LIMIT_BACKEND=redis``, exactly
  as for replicas on several machines.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import structlog

from bridge.config import Settings

log = structlog.get_logger("bridge.serving")

WORKER_ENV = "BRIDGE_WORKER"


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("EVENT_LOOP=uvloop but uvloop is not installed "
                                   "(pip install 'vault-mcp-bridge[fast]')") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def run_workers(settings: Settings) -> int:
    """Supervise ``settings.workers`` worker processes on one SO_REUSEPORT port; returns the exit code."""
    if settings.port == 0:
        print("vault-mcp-bridge: WORKERS > 1 needs a fixed PORT", file=sys.stderr)
        return 2
    env = dict(os.environ, **{WORKER_ENV: "1"})
    children = [subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env)
                for _ in range(settings.workers)]
    log.info("bridge.workers.started", workers=len(children), pids=[c.pid for c in children])
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if settings.api_keys_file:  # SIGHUP reloads API_KEYS_FILE in every worker; the supervisor keeps running
        def reload(signum: int, _frame: FrameType | None) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGHUP, reload)
    # A worker that dies on its own takes the others down too: a supervisor (systemd, k8s) restarts us.
    while not stopping and all(c.poll() is None for c in children):
        time.sleep(0.2)
    if not stopping:
        forward(signal.SIGTERM, None)
    deadline = time.monotonic() + settings.shutdown_grace_seconds + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    codes = [c.returncode for c in children]
    log.info("bridge.workers.stopped", codes=codes)
    return 0 if stopping and all(code in (0, -signal.SIGTERM, -signal.SIGINT) for code in codes) else 1
