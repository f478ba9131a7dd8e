"""Settings: every issue-2 variable, its default, its parsing, and one clear line naming a bad variable."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, get_args

import pytest

from bridge.config import (
    TRANSIT_KEY_TYPES,
    ConfigError,
    Settings,
    ignored_settings,
    parse_api_keys,
    parse_duration,
    parse_list,
)
from bridge.models import KeyType
from bridge.ratelimit import Quota

# Issue 2's variables and their documented defaults (the names existing users already have).
DEFAULTS: dict[str, Any] = {
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_NAMESPACE": "",
    "VAULT_TOKEN": None,
    "VAULT_ROLE_ID": "",
    "VAULT_SECRET_ID": None,
    "VAULT_CACERT": "",
    "VAULT_TIMEOUT": 10.0,
    "KV_MOUNT": "secret",
    "DEFAULT_PREFIX": "mcp",
    "AUTH_API_KEY_ENABLED": True,
    "AUTH_JWT_ENABLED": True,
    "AUTH_MTLS_ENABLED": False,
    "API_KEYS_JSON": {},
    "JWT_HS256_SECRET": None,
    "JWT_ISSUER": "",
    "JWT_AUDIENCE": "",
    "JWT_DEFAULT_SCOPES": ["read", "list"],
    "MTLS_VERIFY_HEADER": "x-ssl-client-verify",
    "MTLS_CERT_HEADER": "x-ssl-client-cert",
    "MTLS_TRUSTED_PROXIES": [],  # no default since issue 9: header identity names its proxy
    "MTLS_PROXY_SECRET": None,
    "API_KEYS_FILE": "",
    "JWT_MAX_TTL": 86400.0,
    "AUTH_FAILURE_LIMIT": 30,
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_REQUESTS": 600,  # 60 until issue 10: a fleet's agents run into 60 within their first minute
    "RATE_LIMIT_WINDOW_SECONDS": 60.0,
    "RATE_LIMIT_BURST": None,  # = RATE_LIMIT_REQUESTS
    "RATE_LIMIT_MAX_AGENTS": 100_000,
    # issue 9, "One agent cannot take Vault from everyone"
    "TRANSIT_MAX_BATCH": 100,
    "TRANSIT_ALLOWED_KEY_TYPES": ["aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256", "rsa-2048", "hmac"],
    "TRANSIT_MAX_KEYS_PER_AGENT": 25,
    "AGENT_MAX_INFLIGHT": 16,
    "AGENT_INFLIGHT_WAIT": 1.0,
    "HOST": "127.0.0.1",
    "PORT": 8089,
    "LOG_LEVEL": "info",
    "LOG_FORMAT": "json",
    "RELOAD": False,
    "MAX_BODY_BYTES": 1024 * 1024,
}


@pytest.mark.parametrize(("var", "default"), list(DEFAULTS.items()))
def test_default(var: str, default: Any) -> None:
    assert getattr(Settings.from_env({}), var.lower()) == default


def test_every_variable_is_read_from_its_upper_case_name(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "VAULT_ADDR": "https://vault.example:8200/", "VAULT_NAMESPACE": "team1", "VAULT_TOKEN": "s.tok",
        "VAULT_CACERT": str(ca), "VAULT_TIMEOUT": "2m", "KV_MOUNT": "/kv/", "DEFAULT_PREFIX": "agents",
        "AUTH_API_KEY_ENABLED": "false", "AUTH_JWT_ENABLED": "0", "AUTH_MTLS_ENABLED": "yes",
        "API_KEYS_JSON": '{"k-1234567890123456789012": "alice"}', "JWT_HS256_SECRET": "sekrit-" + "s" * 25,
        "JWT_ISSUER": "https://iss", "JWT_AUDIENCE": "bridge", "JWT_DEFAULT_SCOPES": "read, write ,",
        "MTLS_CERT_HEADER": "x-cert", "MTLS_PROXY_SECRET": "proxy-" + "p" * 26,
        "MTLS_VERIFY_HEADER": "x-verify", "MTLS_TRUSTED_PROXIES": "10.0.0.0/8,::1",
        "RATE_LIMIT_ENABLED": "off", "RATE_LIMIT_REQUESTS": "5", "RATE_LIMIT_WINDOW_SECONDS": "90s",
        "HOST": "0.0.0.0", "PORT": "9000", "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "Console", "RELOAD": "true",
        "MAX_BODY_BYTES": "2048",
    }
    s = Settings.from_env(env)
    assert s.vault_addr == "https://vault.example:8200"
    assert s.vault_namespace == "team1"
    assert s.vault_token is not None
    assert s.vault_token.get_secret_value() == "s.tok"
    assert s.vault_cacert == str(ca)
    assert s.vault_timeout == 120.0
    assert s.kv_mount == "kv"
    assert s.default_prefix == "agents"
    assert (s.auth_api_key_enabled, s.auth_jwt_enabled, s.auth_mtls_enabled) == (False, False, True)
    assert s.api_keys_json["k-1234567890123456789012"].agent == "alice"
    assert s.jwt_hs256_secret is not None
    assert s.jwt_hs256_secret.get_secret_value() == "sekrit-" + "s" * 25
    assert (s.jwt_issuer, s.jwt_audience) == ("https://iss", "bridge")
    assert s.jwt_default_scopes == ["read", "write"]
    assert (s.mtls_cert_header, s.mtls_verify_header) == ("x-cert", "x-verify")
    assert s.mtls_proxy_secret is not None
    assert s.mtls_proxy_secret.get_secret_value() == "proxy-" + "p" * 26
    assert s.mtls_trusted_proxies == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert (s.rate_limit_enabled, s.rate_limit_requests, s.rate_limit_window_seconds) == (False, 5, 90.0)
    assert (s.host, s.port, s.log_level, s.log_format, s.reload) == ("0.0.0.0", 9000, "debug", "console", True)
    assert s.max_body_bytes == 2048


def test_approle_settings() -> None:
    s = Settings.from_env({"VAULT_ROLE_ID": "rid", "VAULT_SECRET_ID": "sid"})
    assert s.vault_role_id
    assert s.vault_secret_id is not None
    assert s.vault_secret_id.get_secret_value() == "sid"
    assert not Settings.from_env({"VAULT_TOKEN": "t"}).vault_role_id


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({"VAULT_TOKEN": "s.very-secret-token", "VAULT_SECRET_ID": "sid-secret",
                           "VAULT_ROLE_ID": "r", "JWT_HS256_SECRET": "jwt-secret-value-" + "j" * 16,
                           "API_KEYS_JSON": '{"api-key-secret-1-abcdefghijk": "alice"}',
                           "MTLS_PROXY_SECRET": "proxy-secret-value-" + "p" * 16})
    text = repr(s) + str(s)
    for secret in ("s.very-secret-token", "sid-secret", "jwt-secret-value", "api-key-secret-1", "proxy-secret-value"):
        assert secret not in text


def test_empty_variable_means_default() -> None:
    assert Settings.from_env({"PORT": "", "KV_MOUNT": ""}).port == 8089


@pytest.mark.parametrize(("raw", "seconds"), [
    ("90s", 90.0), ("2m", 120.0), ("30", 30.0), (" 1h ", 3600.0), ("500ms", 0.5), ("1.5", 1.5), ("1d", 86400.0),
    (7, 7.0), (2.5, 2.5),
])
def test_parse_duration(raw: Any, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["abc", "10x", "-5", "", "1 2", True, "5s5"])
def test_parse_duration_rejects(raw: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_parse_list() -> None:
    assert parse_list("a, b,,c ,") == ["a", "b", "c"]
    assert parse_list("") == []
    assert parse_list(["x", " ", "y "]) == ["x", "y"]


def test_api_keys_both_forms() -> None:
    a, b = "key-" + "a" * 20, "key-" + "b" * 20
    keys = parse_api_keys(f'{{"{a}": "alice", "{b}": {{"agent": "bob", "scopes": ["read"]}}}}')
    assert keys[a].agent == "alice"
    assert keys[a].scopes == ("read", "write", "delete", "list")
    assert keys[b].agent == "bob"
    assert keys[b].scopes == ("read",)
    assert parse_api_keys("  ") == {}
    digest = hashlib.sha256(b"k").hexdigest()
    assert parse_api_keys(f'{{"sha256:{digest}": "carol"}}')[f"sha256:{digest}"].agent == "carol"


@pytest.mark.parametrize(("var", "value"), [
    ("PORT", "abc"),
    ("PORT", "70000"),
    ("VAULT_TIMEOUT", "soon"),
    ("VAULT_ADDR", "ftp://vault:8200"),
    ("VAULT_ADDR", "http://vault:8200/v1/secret"),
    ("VAULT_ADDR", "http://vault:8200\n"),
    ("VAULT_CACERT", "/nonexistent/ca.pem"),
    ("KV_MOUNT", "se cret"),
    ("DEFAULT_PREFIX", "MCP"),
    ("DEFAULT_PREFIX", "mcp\n"),
    ("DEFAULT_PREFIX", "a.b"),
    ("AUTH_JWT_ENABLED", "maybe"),
    ("API_KEYS_JSON", "{not json"),
    ("API_KEYS_JSON", '["k"]'),
    ("API_KEYS_JSON", '{"short": "alice"}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-a": "alice"}'),  # 23 characters
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": {"agent": "a", "scopes": ["admin"]}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": {"scopes": ["read"]}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": 5}'),
    ("ADMIN_API_KEYS", "admin-key-aaaaaaaa-aaaa"),  # 23 characters
    ("API_KEYS_JSON", '{"sha256:nothex-nothex": "alice"}'),
    ("JWT_DEFAULT_SCOPES", "read,admin"),
    ("MTLS_TRUSTED_PROXIES", "10.0.0.0/8,not-a-cidr"),
    ("RATE_LIMIT_REQUESTS", "0"),
    ("RATE_LIMIT_WINDOW_SECONDS", "0"),
    ("RATE_LIMIT_BURST", "0"),
    ("RATE_LIMIT_MAX_AGENTS", "0"),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": '
                      '{"agent": "a", "rate_limit": {"requests": 0, "window_seconds": 60}}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": '
                      '{"agent": "a", "rate_limit": {"requests": 5}}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": '
                      '{"agent": "a", "rate_limit": {"requests": 5, "window_seconds": "x"}}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": '
                      '{"agent": "a", "rate_limit": {"requests": 5, "window_seconds": 1, '
                      '"burst": 0}}}'),
    ("API_KEYS_JSON", '{"key-aaaaaaaa-aaaaaaaa-aaaa": '
                      '{"agent": "a", "rate_limit": {"requests": 5, "window_seconds": 1, '
                      '"cost": 2}}}'),
    ("TRANSIT_MAX_BATCH", "0"),
    ("TRANSIT_MAX_BATCH", "1001"),
    ("TRANSIT_ALLOWED_KEY_TYPES", "aes256-gcm96,rsa-8192"),
    ("TRANSIT_ALLOWED_KEY_TYPES", ","),
    ("TRANSIT_MAX_KEYS_PER_AGENT", "-1"),
    ("AGENT_MAX_INFLIGHT", "-1"),
    ("AGENT_INFLIGHT_WAIT", "soon"),
    ("LOG_LEVEL", "loud"),
    ("LOG_FORMAT", "xml"),
    ("MAX_BODY_BYTES", "10"),
    ("RELOAD", "perhaps"),
])
def test_bad_value_names_the_variable_in_one_line(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    message = str(info.value)
    assert message.startswith(f"invalid setting {var}: ")
    assert "\n" not in message
    if var in ("API_KEYS_JSON",):
        assert "key-aaaaaaaa" not in message  # never echo an API key
    if var == "ADMIN_API_KEYS":
        assert "admin-key" not in message


def test_an_api_key_may_carry_its_own_rate_limit() -> None:
    keys = parse_api_keys(
        '{"key-aaaaaaaaaaaaaaaaaaaaaaaa": {"agent": "a",'
        ' "rate_limit": {"requests": 30, "window_seconds": "1m", "burst": 5}},'
        ' "key-bbbbbbbbbbbbbbbbbbbbbbbb": {"agent": "b", "rate_limit": {"requests": 30, "window_seconds": 60}},'
        ' "key-cccccccccccccccccccccccc": "c"}')
    own = keys["key-aaaaaaaaaaaaaaaaaaaaaaaa"].rate_limit
    assert own is not None
    assert own.quota() == Quota(30, 60.0, 5)
    no_burst = keys["key-bbbbbbbbbbbbbbbbbbbbbbbb"].rate_limit
    assert no_burst is not None
    assert no_burst.quota() == Quota(30, 60.0, 30)  # its own requests, not RATE_LIMIT_BURST
    assert keys["key-cccccccccccccccccccccccc"].rate_limit is None


def test_default_quota_and_burst() -> None:
    assert Settings.from_env({}).rate_limit_quota == Quota(600, 60.0, 600)
    assert Settings.from_env({"RATE_LIMIT_BURST": "20", "RATE_LIMIT_REQUESTS": "100",
                              "RATE_LIMIT_WINDOW_SECONDS": "10s"}).rate_limit_quota == Quota(100, 10.0, 20)


def test_key_types_of_the_model_and_the_setting_agree() -> None:
    assert get_args(KeyType) == TRANSIT_KEY_TYPES
    assert Settings.from_env({"TRANSIT_ALLOWED_KEY_TYPES": "rsa-4096, hmac"}).transit_allowed_key_types == [
        "rsa-4096", "hmac"]


def test_secret_id_required_with_role_id() -> None:
    with pytest.raises(ConfigError, match="VAULT_SECRET_ID"):
        Settings.from_env({"VAULT_ROLE_ID": "rid"})


def test_overrides_win_over_environment() -> None:
    assert Settings.from_env({"PORT": "1"}, port=2).port == 2


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


# -- the edge settings (issue 9) ---------------------------------------------------------------------------

def test_edge_defaults() -> None:
    s = Settings.from_env({})
    assert s.allowed_hosts == []
    assert (s.header_read_timeout, s.body_read_timeout) == (10.0, 30.0)
    assert (s.max_connections, s.max_json_depth, s.ready_probe_interval) == (2048, 32, 2.0)


def test_edge_settings_parse() -> None:
    s = Settings.from_env({"ALLOWED_HOSTS": "Bridge.Example., bridge.example:8443, ::1, [fd00::2]:80, 10.1.0.0/16, *",
                           "HEADER_READ_TIMEOUT": "500ms", "BODY_READ_TIMEOUT": "2m", "MAX_CONNECTIONS": "100",
                           "MAX_JSON_DEPTH": "64", "READY_PROBE_INTERVAL": "5s"})
    assert s.allowed_hosts == ["bridge.example", "bridge.example:8443", "[::1]", "[fd00::2]:80", "10.1.0.0/16", "*"]
    assert (s.header_read_timeout, s.body_read_timeout, s.ready_probe_interval) == (0.5, 120.0, 5.0)
    assert (s.max_connections, s.max_json_depth) == (100, 64)


@pytest.mark.parametrize(("var", "value"), [
    ("ALLOWED_HOSTS", "bridge example"), ("ALLOWED_HOSTS", "a..b"), ("ALLOWED_HOSTS", "host:0"),
    ("ALLOWED_HOSTS", "host:99999"), ("ALLOWED_HOSTS", "10.0.0.0/99"), ("ALLOWED_HOSTS", "[zz]"),
    ("ALLOWED_HOSTS", "http://bridge.example"), ("HEADER_READ_TIMEOUT", "0"), ("BODY_READ_TIMEOUT", "soon"),
    ("MAX_CONNECTIONS", "0"), ("MAX_JSON_DEPTH", "2"), ("MAX_JSON_DEPTH", "100000"), ("READY_PROBE_INTERVAL", "1ms"),
])
def test_edge_settings_refused(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting {var}"):
        Settings.from_env({var: value})


def test_vault_addr_with_user_info_is_accepted() -> None:
    assert Settings.from_env({"VAULT_ADDR": "https://user:p%40ss@vault.example:8200"}).vault_addr == \
        "https://user:p%40ss@vault.example:8200"


@pytest.mark.parametrize("value", ["lean", "aiohttp", "anything"])
def test_vault_http_client_is_gone_and_ignored(value: str) -> None:
    """The setting is removed (the hand-written transport with it); a leftover one does not stop start-up (``serve``
    logs one warning: tests/test_startup.py), and no field of that name is left."""
    env = {"VAULT_HTTP_CLIENT": value}
    assert "vault_http_client" not in Settings.model_fields
    assert Settings.from_env(env) == Settings.from_env({})
    assert list(ignored_settings(env)) == ["VAULT_HTTP_CLIENT"]
    assert ignored_settings({}) == {}
