"""``make run``'s demo mTLS agent: the bridge trusts a proxy on loopback only with the proxy secret, and the
``curl`` line the banner prints works as printed (run with ``sh``, the way a user pastes it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from bridge.app import create_app
from bridge.config import Settings
from devtools.devvault import demo_mtls

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def run(command: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, ["/bin/sh", "-c", command], capture_output=True, text=True,
                                   timeout=30, check=False)


async def test_banner_curl_line_works(tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]],
                                      make_settings: Callable[..., Settings]) -> None:
    mtls = demo_mtls(tmp_path / "run dir")  # a space in the path: the line quotes it
    for path in (mtls.secret_file, mtls.cert_header_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    server = await aiohttp_server(create_app(make_settings(env=mtls.env)))
    base = f"http://127.0.0.1:{server.port}"
    line = mtls.curl(base)
    done = await run(line)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert (body["subject"], body["auth_method"]) == ("agent_mtls", "mtls")
    # without the proxy secret the same headers are nobody
    forged = await run(line.replace("X-Proxy-Secret", "X-Not-The-Proxy-Secret"))
    assert json.loads(forged.stdout)["error"]["code"] == "unauthenticated"


def test_make_run_uses_it() -> None:
    source = (ROOT / "scripts" / "dev_run.py").read_text()
    assert "demo_mtls(" in source
    assert "mtls.curl(base)" in source
    assert "X-SSL-Client-S-DN" not in source
