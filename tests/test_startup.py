"""Starting the service: ``python main.py``, ``python -m bridge`` and ``vault-mcp-bridge [serve]`` all serve
(a subprocess on a free port answers /healthz, then stops cleanly on SIGTERM); a bad setting stops start-up
with one line naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devtools.devvault import DevVault, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

COMMANDS = {
    "python main.py": [sys.executable, "main.py"],
    "python -m bridge": [sys.executable, "-m", "bridge"],
    "vault-mcp-bridge serve": [str(BIN / "vault-mcp-bridge"), "serve"],
    "vault-mcp-bridge": [str(BIN / "vault-mcp-bridge")],
}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus every bridge setting, plus ``extra``."""
    from bridge.config import Settings

    names = {n.upper() for n in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def wait_healthz(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                assert resp.status == 200
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("no answer on /healthz")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["python main.py", "python -m bridge", "vault-mcp-bridge serve"])
def test_each_command_serves(name: str, bao: DevVault) -> None:
    port = free_port()
    env = clean_env(PORT=str(port), HOST="127.0.0.1", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token,
                    LOG_LEVEL="warning", API_KEYS_JSON=json.dumps({"startup-test-key-" + "k" * 16: "alice"}))
    proc = subprocess.Popen(COMMANDS[name], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = wait_healthz(port, proc)
        assert body["status"] == "ok"
        assert body["vault"]["reachable"] is True
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=5)
            raise
    assert proc.returncode == 0, err.decode()
    assert bao.root_token.encode() not in err


@pytest.mark.integration
def test_a_leftover_vault_http_client_is_ignored_with_one_warning(bao: DevVault) -> None:
    """``VAULT_HTTP_CLIENT`` is gone (README, Upgrading): set to any value it still starts, and says once that
    the setting is ignored."""
    port = free_port()
    env = clean_env(PORT=str(port), HOST="127.0.0.1", VAULT_ADDR=bao.addr, VAULT_TOKEN=bao.root_token,
                    LOG_LEVEL="warning", VAULT_HTTP_CLIENT="lean",
                    API_KEYS_JSON=json.dumps({"startup-test-key-" + "k" * 16: "alice"}))
    proc = subprocess.Popen(COMMANDS["python -m bridge"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert wait_healthz(port, proc)["status"] == "ok"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    ignored = [line for line in map(json.loads, out.decode().splitlines())
               if line.get("event") == "config.setting_ignored"]
    assert [(line["setting"], line["level"]) for line in ignored] == [("VAULT_HTTP_CLIENT", "warning")]
    assert "aiohttp" in ignored[0]["reason"]


def test_serves_while_vault_is_unreachable() -> None:
    port = free_port()
    env = clean_env(PORT=str(port), VAULT_ADDR=f"http://127.0.0.1:{free_port()}", VAULT_TOKEN="s.x",
                    LOG_LEVEL="error", JWT_HS256_SECRET="startup-test-secret-" + "s" * 16)
    proc = subprocess.Popen(COMMANDS["python -m bridge"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        body = wait_healthz(port, proc)
        assert body["status"] == "degraded"
        assert body["vault"]["reachable"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.parametrize(("name", "var", "value"), [
    ("vault-mcp-bridge", "PORT", "not-a-port"),  # no sub-command: serve is the default
    ("vault-mcp-bridge serve", "VAULT_TIMEOUT", "soon"),
    ("python -m bridge", "API_KEYS_JSON", '{"short": "alice"}'),
    ("python main.py", "MTLS_TRUSTED_PROXIES", "10.0.0.0/8,nope"),
])  # (every variable's validation is covered in-process by tests/test_config.py)
def test_bad_setting_stops_startup_with_one_line(name: str, var: str, value: str) -> None:
    port = free_port()
    proc = subprocess.run(COMMANDS[name], cwd=ROOT, env=clean_env(**{"PORT": str(port), var: value}),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert var in lines[0]
    assert "invalid setting" in lines[0]
    assert proc.stdout == ""  # nothing started, nothing logged
