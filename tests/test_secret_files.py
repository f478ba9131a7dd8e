"""Secrets from files, and start-up refusing a configuration in which no request could ever succeed (issue 10,
"Keys and secrets from files, changed without a restart"). ``API_KEYS_FILE`` reloading:
tests/auth/test_key_reload.py."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ConfigError, Settings
from devtools.devvault import DevVault, free_port
from tests.test_startup import ROOT, clean_env, wait_healthz

SECRET_FILE_FORMS = {  # = bridge.config.SECRET_FILE_FORMS (checked below)
    "vault_token": "vault_token_file",
    "jwt_hs256_secret": "jwt_hs256_secret_file",
    "mcp_session_secret": "mcp_session_secret_file",
    "admin_api_keys": "admin_api_keys_file",
    "mtls_proxy_secret": "mtls_proxy_secret_file",
    "api_keys_json": "api_keys_file",
    "vault_wrapped_secret_id": "vault_wrapped_secret_id_file",
    "redis_url": "redis_url_file",
    "intake_secret": "intake_secret_file",
}

VALUES = {
    "vault_token": "s.token-from-a-file-0123456789",
    "jwt_hs256_secret": "jwt-secret-from-a-file-" + "j" * 16,
    "mcp_session_secret": "session-secret-from-a-file-" + "m" * 8,
    "mtls_proxy_secret": "proxy-secret-from-a-file-" + "p" * 16,
    "vault_wrapped_secret_id": "s.wrapping-token-from-a-file",
    "redis_url": "redis://:redis-password-from-a-file@127.0.0.1:6379/0",
    "intake_secret": "intake-secret-from-a-file-" + "i" * 16,
}


def secret_value(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    if name == "admin_api_keys":
        return [k.get_secret_value() for k in value]
    if name == "api_keys_json":
        return {k: v.agent for k, v in value.items()}
    return value.get_secret_value()


def test_the_list_of_file_forms() -> None:
    from bridge import config

    assert config.SECRET_FILE_FORMS == SECRET_FILE_FORMS
    secrets = {n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert secrets - set(SECRET_FILE_FORMS) == {"vault_secret_id"}  # VAULT_SECRET_ID_FILE: read at every login


@pytest.mark.parametrize("name", list(SECRET_FILE_FORMS))
def test_every_secret_has_a_file_form(tmp_path: Path, name: str) -> None:
    file_var = SECRET_FILE_FORMS[name].upper()
    path = tmp_path / "secret"
    expected: Any
    if name == "admin_api_keys":
        content, expected = "admin-key-one-" + "a" * 12 + "\nadmin-key-two-" + "b" * 12 + "\n", [
            "admin-key-one-" + "a" * 12, "admin-key-two-" + "b" * 12]
    elif name == "api_keys_json":
        key = "file-api-key-" + "k" * 16
        content, expected = json.dumps({key: "alice"}) + "\n", {key: "alice"}
    else:
        content, expected = VALUES[name] + "\r\n", VALUES[name]  # a trailing line break is not part of it
    path.write_text(content)
    settings = Settings.from_env({file_var: str(path)})
    assert secret_value(settings, name) == expected
    text = repr(settings) + str(settings)
    for secret in ([expected] if isinstance(expected, str) else list(expected)):
        assert secret not in text

    plain = name.upper()
    with pytest.raises(ConfigError) as info:  # both forms: refused
        Settings.from_env({file_var: str(path), plain: content.strip()})
    assert str(info.value) == f"invalid setting {file_var}: set only one of {plain} and {file_var}"
    with pytest.raises(ConfigError, match=rf"^invalid setting {file_var}: cannot read .*missing"):
        Settings.from_env({file_var: str(tmp_path / "missing")})


@pytest.mark.parametrize("name", ["vault_token", "jwt_hs256_secret", "mcp_session_secret", "mtls_proxy_secret"])
def test_an_empty_or_too_short_secret_file_is_refused(tmp_path: Path, name: str) -> None:
    file_var = SECRET_FILE_FORMS[name].upper()
    path = tmp_path / "secret"
    path.write_text("\n")
    with pytest.raises(ConfigError, match=rf"^invalid setting {file_var}: .* is empty"):
        Settings.from_env({file_var: str(path)})
    if name != "vault_token":
        path.write_text("short\n")
        with pytest.raises(ConfigError, match=rf"^invalid setting {name.upper()}: must be at least"):
            Settings.from_env({file_var: str(path)})


def test_vault_secret_id_file_keeps_its_meaning(tmp_path: Path) -> None:
    """``VAULT_SECRET_ID_FILE`` (older) is read at every AppRole login, not at start-up; both forms refused."""
    path = tmp_path / "secret-id"
    with pytest.raises(ConfigError, match="set only one of VAULT_SECRET_ID, VAULT_SECRET_ID_FILE"):
        Settings.from_env({"VAULT_ROLE_ID": "r", "VAULT_SECRET_ID": "s", "VAULT_SECRET_ID_FILE": str(path)})


# --- start-up refuses what could never serve a request ---

@pytest.mark.parametrize(("env", "reason"), [
    ({}, "no Vault credential"),
    ({"API_KEYS_JSON": json.dumps({"k" * 24: "alice"})}, "no Vault credential"),
    ({"VAULT_TOKEN": "s.x"}, "no identity method has a key"),
    ({"VAULT_TOKEN": "s.x", "AUTH_API_KEY_ENABLED": "false", "API_KEYS_JSON": json.dumps({"k" * 24: "alice"})},
     "no identity method has a key"),
    ({"VAULT_TOKEN": "s.x", "JWT_HS256_SECRET": "s" * 32, "JWT_ALGORITHMS": "RS256"},
     "no identity method has a key"),
    ({"VAULT_TOKEN": "s.x", "JWT_HS256_SECRET": "s" * 32, "AUTH_JWT_ENABLED": "false"},
     "no identity method has a key"),
])
def test_unusable_configurations(env: dict[str, str], reason: str) -> None:
    problem = Settings.from_env(env).unusable_reason()
    assert problem is not None
    assert problem.startswith(reason)


@pytest.mark.parametrize("env", [
    {"VAULT_TOKEN": "s.x", "API_KEYS_JSON": json.dumps({"k" * 24: "alice"})},
    {"VAULT_TOKEN": "s.x", "API_KEYS_JSON": json.dumps({"sha256:" + "a" * 64: "alice"})},
    {"VAULT_TOKEN": "s.x", "API_KEYS_FILE": "<empty file>"},  # keys may be added while running
    {"VAULT_ROLE_ID": "r", "VAULT_SECRET_ID": "s", "JWT_HS256_SECRET": "s" * 32},
    {"VAULT_TOKEN": "s.x", "JWT_JWKS_URL": "https://idp.example/jwks", "JWT_ISSUER": "i", "JWT_AUDIENCE": "a"},
    {"VAULT_TOKEN": "s.x", "AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32",
     "MTLS_PROXY_SECRET": "p" * 32},
])
def test_usable_configurations(env: dict[str, str], tmp_path: Path) -> None:
    if env.get("API_KEYS_FILE"):
        empty = tmp_path / "keys.json"
        empty.write_text("{}")
        env = {**env, "API_KEYS_FILE": str(empty)}
    assert Settings.from_env(env).unusable_reason() is None


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "serve"], cwd=ROOT, env=clean_env(**env),
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("env", "needle"), [
    ({"API_KEYS_JSON": json.dumps({"k" * 24: "alice"})}, "no Vault credential"),
    ({"VAULT_TOKEN": "s.x"}, "no identity method has a key"),
    ({"VAULT_TOKEN": "s.x", "AUTH_MTLS_ENABLED": "true", "MTLS_PROXY_SECRET": "p" * 32},
     "invalid setting MTLS_TRUSTED_PROXIES"),
    ({"VAULT_TOKEN_FILE": "/nonexistent"}, "invalid setting VAULT_TOKEN_FILE"),
])  # (each setting's own check is covered in-process above and in tests/auth/)
def test_start_up_stops_with_one_line(env: dict[str, str], needle: str) -> None:
    proc = run_serve({"PORT": str(free_port()), **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert proc.stdout == ""
    assert "p" * 32 not in proc.stderr


@pytest.mark.integration
def test_serving_from_secret_files_only(bao: DevVault, tmp_path: Path) -> None:
    """A bridge configured the Docker/Kubernetes way: every secret a file, none in the environment."""
    files = {"VAULT_TOKEN_FILE": bao.root_token + "\n",
             "API_KEYS_FILE": json.dumps({"files-only-key-" + "f" * 16: "alice"}),
             "JWT_HS256_SECRET_FILE": VALUES["jwt_hs256_secret"] + "\n",
             "MCP_SESSION_SECRET_FILE": VALUES["mcp_session_secret"] + "\n",
             "ADMIN_API_KEYS_FILE": "files-only-admin-key-" + "a" * 8 + "\n",
             "MTLS_PROXY_SECRET_FILE": VALUES["mtls_proxy_secret"] + "\n"}
    env = {"PORT": str(free_port()), "HOST": "127.0.0.1", "VAULT_ADDR": bao.addr, "LOG_LEVEL": "warning",
           "AUTH_MTLS_ENABLED": "true", "MTLS_TRUSTED_PROXIES": "127.0.0.1/32",
           "STATUS_ALLOWED_NETWORKS": "192.0.2.0/24"}  # /status only with the admin key from its file
    for var, content in files.items():
        path = tmp_path / var.lower()
        path.write_text(content)
        path.chmod(0o600)
        env[var] = str(path)
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], cwd=ROOT, env=clean_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(env["PORT"])
        assert wait_healthz(port, proc)["vault"]["reachable"] is True
        request = urllib.request.Request(f"http://127.0.0.1:{port}/secrets/files/one", method="PUT",
                                         data=json.dumps({"data": {"a": 1}}).encode(),
                                         headers={"X-API-Key": "files-only-key-" + "f" * 16,
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200  # the Vault token from its file works
        request = urllib.request.Request(f"http://127.0.0.1:{port}/status",
                                         headers={"X-API-Key": "files-only-admin-key-" + "a" * 8})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    secrets = [bao.root_token, "files-only-key-" + "f" * 16, "files-only-admin-key-" + "a" * 8, *VALUES.values()]
    for secret in secrets:
        assert secret.encode() not in out + err
