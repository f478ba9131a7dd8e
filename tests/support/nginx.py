"""Debian's nginx in the foreground for a test: a private prefix, temp dirs and pid file in the test's directory,
the given ``http { … }`` body, started and waited for, stopped after."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
"""The nginx binary, or ``None`` (tests that need it skip: ``make sysdeps`` installs it)."""
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


@asynccontextmanager
async def running_nginx(work: Path, http: str, listen: int, *, worker_connections: int = 64
                        ) -> AsyncIterator[asyncio.subprocess.Process]:
    """nginx with ``http`` as the body of its ``http`` block, running from ``work`` until the block ends; entered
    once ``127.0.0.1:listen`` accepts connections (an nginx that exits first fails the test with its stderr)."""
    assert NGINX is not None
    for sub in TEMP_DIRS:
        (work / sub).mkdir(parents=True, exist_ok=True)
        (work / sub).chmod(0o777)  # nginx's workers run as nobody when the tests run as root
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
{http}
}}
""")
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf), "-g", "daemon off;",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", listen)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if proc.returncode is not None:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"nginx exited: {err.decode()}") from None
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), timeout=15)
