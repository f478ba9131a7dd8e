"""Configuration: read from the environment once, validated, passed down.

Every setting is a field of :class:`Settings`; its environment variable is the field name in upper case.
``Settings.from_env()`` raises :class:`ConfigError` with one line naming the variable when a value is bad,
so the process stops before anything starts half-configured.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

SCOPES: tuple[str, ...] = ("read", "write", "delete", "list")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

JWT_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                                   "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
"""What ``JWT_ALGORITHMS`` may list (never ``none``)."""

IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: "$" would also accept a trailing newline
"""Agent ids and Transit key names: they become Vault path segments, policy and key names."""


class ConfigError(Exception):
    """A setting is missing or malformed. The message names the environment variable."""


def parse_duration(value: Any) -> float:
    """``90s``, ``2m``, ``1h``, ``500ms`` or plain seconds (``90``) as float seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 2m or 30")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as 90s, 2m or 30")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_list(value: Any) -> list[str]:
    """Comma-separated list; blanks dropped. A list passes through."""
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


_HOST_RE = re.compile(r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?\Z")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (a ``Host`` header or an ``ALLOWED_HOSTS`` entry) as (host, port): the host lower-case,
    without a trailing dot, an IPv6 address without brackets and compressed. ``None`` when malformed."""
    match = _HOST_RE.match(value.strip().lower())
    if match is None:
        return None
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        return None
    if match.group("v6") is not None:
        try:
            return str(ipaddress.IPv6Address(match.group("v6"))), port
        except ValueError:
            return None
    name = match.group("name").removesuffix(".")
    if not name or name.startswith(".") or ".." in name:
        return None
    return name, port


def format_host(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def check_host_entry(entry: str) -> str:
    """One ``ALLOWED_HOSTS`` entry, normalised: ``*``, a CIDR, ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    entry = entry.strip().lower()
    if entry == "*":
        return entry
    if "/" in entry:
        try:
            return str(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not a network (CIDR such as 10.0.0.0/8)") from None
    if entry.count(":") > 1 and not entry.startswith("["):
        entry = f"[{entry}]"  # a bare IPv6 address
    parsed = parse_host(entry)
    if parsed is None:
        raise ValueError(f"{entry!r} is not a host name, IP address, host:port or CIDR")
    return format_host(*parsed)


class ApiKeyEntry(BaseModel):
    """One API key's owner and scopes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    agent: str
    scopes: tuple[str, ...] = SCOPES


def parse_api_keys(raw: str) -> dict[str, ApiKeyEntry]:
    """``API_KEYS_JSON``: ``{"key": "agent"}`` or ``{"key": {"agent": "a", "scopes": [...]}}``."""
    if not raw.strip():
        return {}
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(loaded, dict):
        raise ValueError("must be a JSON object mapping key -> agent id or {agent, scopes}")
    out: dict[str, ApiKeyEntry] = {}
    for index, (key, value) in enumerate(loaded.items()):
        if not isinstance(key, str) or len(key) < 8:
            raise ValueError(f"entry #{index + 1}: keys must be strings of at least 8 characters")
        if key.startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", key[len("sha256:"):]):
            raise ValueError(f"entry #{index + 1}: a 'sha256:' key must be followed by 64 hex digits")
        if isinstance(value, str):
            entry = ApiKeyEntry(agent=value)
        elif isinstance(value, dict):
            try:
                entry = ApiKeyEntry.model_validate(value)
            except ValidationError:
                raise ValueError(
                    f"entry #{index + 1}: expected {{\"agent\": id, \"scopes\": [...]}}"
                ) from None
        else:
            raise ValueError(f"entry #{index + 1}: expected an agent id or an object")
        bad = [s for s in entry.scopes if s not in SCOPES]
        if bad:
            raise ValueError(f"entry #{index + 1}: unknown scope(s) {bad}; allowed: {list(SCOPES)}")
        out[key] = entry
    return out


class Settings(BaseModel):
    """All settings of the bridge, with their defaults (see README, "Configuration")."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    # Vault connection
    vault_addr: str = "http://127.0.0.1:8200"
    vault_namespace: str = ""
    vault_token: SecretStr | None = None
    vault_role_id: str = ""
    vault_secret_id: SecretStr | None = None
    vault_secret_id_file: str = ""  # read at every AppRole login (rotation by rewriting the file)
    vault_wrapped_secret_id: SecretStr | None = None  # response-wrapping token, unwrapped once at start
    vault_approle_mount: str = "approle"
    vault_cacert: str = ""
    vault_timeout: float = 10.0
    vault_pool_size: int = Field(default=100, ge=1, le=10000)
    vault_breaker_threshold: int = Field(default=5, ge=0)  # consecutive outages that open it; 0 = off
    # aiohttp (default): the general, battle-tested client; lean: bridge/vault/transport.py, ~18 % less CPU per call
    vault_http_client: Literal["aiohttp", "lean"] = "aiohttp"
    vault_breaker_cooldown: float = 2.0  # seconds open before one probe goes through
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    default_prefix: str = "mcp"
    transit_key_scope: Literal["agent", "shared"] = "agent"

    # per-agent child tokens (docs/trust.md)
    child_token_enabled: bool = False
    child_token_ttl: float = 90.0
    child_token_policy_prefix: str = "mcp-agent-"
    child_token_type: Literal["batch", "service"] = "batch"
    child_token_role: str = ""  # default: mcp-agent-batch (batch) / mcp-agent (service)
    child_token_reuse_seconds: float | None = None  # batch reuse window; default CHILD_TOKEN_TTL / 3
    child_token_cache_size: int = Field(default=10_000, ge=1)

    # identities
    auth_api_key_enabled: bool = True
    auth_jwt_enabled: bool = True
    auth_mtls_enabled: bool = False
    api_keys_json: dict[str, ApiKeyEntry] = Field(default_factory=dict, repr=False)
    jwt_hs256_secret: SecretStr | None = None
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_default_scopes: list[str] = Field(default_factory=lambda: ["read", "list"])
    jwt_leeway_seconds: float = 30.0
    jwt_max_bytes: int = Field(default=8192, ge=256)
    jwt_cache_seconds: float = 60.0  # verified tokens are trusted until min(exp, this); 0 = verify every time
    jwt_cache_size: int = Field(default=10_000, ge=0)
    jwt_jwks_url: str = ""
    jwt_jwks_file: str = ""
    jwt_algorithms: list[str] = Field(default_factory=list)  # empty: HS256 with a secret, + RS256/ES256/EdDSA with JWKS
    jwt_jwks_cache_seconds: float = 300.0
    jwt_jwks_min_refresh_seconds: float = 30.0
    jwt_jwks_timeout: float = 5.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    mtls_spiffe_trust_domain: str = ""
    mtls_identity_header: str = "x-ssl-client-s-dn"
    mtls_verify_header: str = "x-ssl-client-verify"
    mtls_subject_cn_prefix: str = "CN="
    mtls_trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    )

    # rate limiting
    rate_limit_enabled: bool = True
    rate_limit_requests: int = Field(default=60, ge=1)
    rate_limit_window_seconds: float = Field(default=60.0, gt=0)
    rate_limit_backend: Literal["memory", "redis"] = "memory"
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    redis_url: SecretStr | None = Field(default=None, repr=False)
    redis_timeout: float = 0.5
    redis_key_prefix: str = "vmb:rl:"

    # server
    host: str = "127.0.0.1"
    port: int = Field(default=8089, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    reload: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_grace_seconds: float = 10.0
    workers: int = Field(default=1, ge=1, le=256)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    # operations (see docs/operations.md)
    metrics_agent_labels: bool = False
    audit_log: str = ""  # a file path, "stdout", or empty = off
    audit_fsync: bool = False
    status_allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    )
    admin_api_keys: list[SecretStr] = Field(default_factory=list, repr=False)
    otel_exporter_otlp_endpoint: str = ""
    otel_service_name: str = "vault-mcp-bridge"

    # MCP
    mcp_session_secret: SecretStr | None = None
    mcp_session_ttl: float = 86400.0
    mcp_allowed_origins: list[str] = Field(default_factory=list)
    mcp_resource_url: str = ""
    mcp_page_size: int = Field(default=50, ge=1, le=1000)

    # the edge: what a request must be before it reaches a handler (README "Security notes")
    allowed_hosts: list[str] = Field(default_factory=list)  # added to the defaults; "*" = any Host
    header_read_timeout: float = 10.0  # a request's headers must be complete this long after its first byte
    body_read_timeout: float = 30.0  # ... and its whole body this long after its headers
    max_connections: int = Field(default=2048, ge=1, le=1_000_000)  # per process; over it: 503 and close
    max_json_depth: int = Field(default=32, ge=4, le=512)  # nesting of objects/arrays in a request body
    ready_probe_interval: float = 2.0  # /readyz answers from a probe that calls Vault at most this often

    @field_validator("mcp_session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it keys the session-id HMAC)")
        return value

    @field_validator("vault_timeout", "jwt_leeway_seconds", "rate_limit_window_seconds", "mcp_session_ttl",
                     "vault_breaker_cooldown", "redis_timeout", "shutdown_grace_seconds", "child_token_ttl",
                     "jwt_cache_seconds",
                     "jwt_jwks_cache_seconds", "jwt_jwks_min_refresh_seconds", "jwt_jwks_timeout",
                     "header_read_timeout", "body_read_timeout", "ready_probe_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("child_token_reuse_seconds", mode="before")
    @classmethod
    def _optional_duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: Any) -> list[str]:
        algs = parse_list(value)
        bad = [a for a in algs if a not in JWT_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {bad}; allowed: {list(JWT_ALGORITHMS)}")
        return algs

    @field_validator("child_token_policy_prefix")
    @classmethod
    def _policy_prefix(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9_.-]{0,63}$", value):
            raise ValueError("must be a policy name prefix such as mcp-agent-")
        return value

    @field_validator("mtls_spiffe_trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if value and not re.match(r"^[a-z0-9._-]{1,255}$", value):
            raise ValueError("expected a SPIFFE trust domain such as example.org (no scheme, no path)")
        return value

    @field_validator("jwt_default_scopes", "mcp_allowed_origins", mode="before")
    @classmethod
    def _list(cls, value: Any) -> list[str]:
        return parse_list(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> list[str]:
        return [check_host_entry(entry) for entry in parse_list(value)]

    @field_validator("header_read_timeout", "body_read_timeout", "ready_probe_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 0.05:
            raise ValueError("must be at least 50ms")
        return value

    @field_validator("jwt_default_scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if s not in SCOPES]
        if bad:
            raise ValueError(f"unknown scope(s) {bad}; allowed: {list(SCOPES)}")
        return value

    @field_validator("admin_api_keys", mode="before")
    @classmethod
    def _admin_keys(cls, value: Any) -> list[Any]:
        if isinstance(value, list) and all(isinstance(v, SecretStr) for v in value):
            return value
        keys = parse_list(value)
        if any(len(k) < 16 for k in keys):
            raise ValueError("admin API keys must be at least 16 characters")
        return keys

    @field_validator("mtls_trusted_proxies", "status_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        if isinstance(value, list) and all(not isinstance(v, str) for v in value):
            return value
        nets = []
        for item in parse_list(value):
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (CIDR such as 10.0.0.0/8)") from None
        return nets

    @field_validator("api_keys_json", mode="before")
    @classmethod
    def _api_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_api_keys(value)
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value  # LOG_LEVEL=INFO is common

    @field_validator("vault_cacert")
    @classmethod
    def _cacert(cls, value: str) -> str:
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file: {value}")  # fail at start-up, not at the first TLS call
        return value

    @field_validator("vault_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError("expected http(s)://host:port")
        return value.rstrip("/")

    @field_validator("kv_mount", "transit_mount", "vault_approle_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        value = value.strip("/")
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", value):
            raise ValueError("expected a mount path such as 'secret'")
        return value

    @field_validator("default_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not IDENT_RE.match(value):
            raise ValueError("must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        sources = [self.vault_secret_id is not None, bool(self.vault_secret_id_file),
                   self.vault_wrapped_secret_id is not None]
        if self.vault_role_id and not any(sources):
            raise ValueError("VAULT_ROLE_ID is set but none of VAULT_SECRET_ID, VAULT_SECRET_ID_FILE, "
                             "VAULT_WRAPPED_SECRET_ID is")
        if sum(sources) > 1:
            raise ValueError("set only one of VAULT_SECRET_ID, VAULT_SECRET_ID_FILE, VAULT_WRAPPED_SECRET_ID")
        if self.child_token_reuse_seconds is not None and self.child_token_reuse_seconds >= self.child_token_ttl:
            raise ValueError("CHILD_TOKEN_REUSE_SECONDS must be shorter than CHILD_TOKEN_TTL")
        if self.child_token_enabled and self.child_token_ttl < 10:
            raise ValueError("CHILD_TOKEN_TTL must be at least 10s")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE (the bridge must serve TLS)")
        if self.jwt_jwks_url and self.jwt_jwks_file:
            raise ValueError("set only one of JWT_JWKS_URL and JWT_JWKS_FILE")
        if self.jwt_jwks_url and not re.match(r"^https?://[^/\s]+(/\S*)?$", self.jwt_jwks_url):
            raise ValueError("JWT_JWKS_URL must be an http(s) URL")
        if self.rate_limit_backend == "redis" and self.redis_url is None:
            raise ValueError("RATE_LIMIT_BACKEND=redis needs REDIS_URL (redis://host:port/0)")
        return self

    @property
    def uses_approle(self) -> bool:
        return bool(self.vault_role_id)

    @property
    def child_role(self) -> str:
        """The token role child tokens are minted through."""
        if self.child_token_role:
            return self.child_token_role
        return "mcp-agent-batch" if self.child_token_type == "batch" else "mcp-agent"

    @property
    def child_reuse_seconds(self) -> float:
        """Batch reuse window (``CHILD_TOKEN_REUSE_SECONDS``, default a third of the TTL)."""
        if self.child_token_reuse_seconds is not None:
            return self.child_token_reuse_seconds
        return self.child_token_ttl / 3

    @property
    def jwt_allowed_algorithms(self) -> list[str]:
        """``JWT_ALGORITHMS``, or by default HS256 with a secret plus RS256/ES256/EdDSA with a JWKS."""
        if self.jwt_algorithms:
            return list(self.jwt_algorithms)
        algs = ["HS256"] if self.jwt_hs256_secret is not None else []
        if self.jwt_jwks_url or self.jwt_jwks_file:
            algs += ["RS256", "ES256", "EdDSA"]
        return algs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win (used by tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(name.upper())
            if raw is None or (raw == "" and name not in ("vault_namespace",)):
                continue
            values[name] = raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = err["loc"][0] if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"invalid setting {str(loc).upper()}: {msg}") from None
