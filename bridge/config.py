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

IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
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
    vault_approle_mount: str = "approle"
    vault_cacert: str = ""
    vault_timeout: float = 10.0
    vault_pool_size: int = Field(default=100, ge=1, le=10000)
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    default_prefix: str = "mcp"

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

    # server
    host: str = "127.0.0.1"
    port: int = Field(default=8089, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    reload: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # MCP
    mcp_session_secret: SecretStr | None = None
    mcp_session_ttl: float = 86400.0
    mcp_allowed_origins: list[str] = Field(default_factory=list)
    mcp_resource_url: str = ""

    @field_validator("vault_timeout", "jwt_leeway_seconds", "rate_limit_window_seconds", "mcp_session_ttl",
                     mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("jwt_default_scopes", "mcp_allowed_origins", mode="before")
    @classmethod
    def _list(cls, value: Any) -> list[str]:
        return parse_list(value)

    @field_validator("jwt_default_scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if s not in SCOPES]
        if bad:
            raise ValueError(f"unknown scope(s) {bad}; allowed: {list(SCOPES)}")
        return value

    @field_validator("mtls_trusted_proxies", mode="before")
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

    @field_validator("vault_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("expected http(s)://host:port")
        return value.rstrip("/")

    @field_validator("kv_mount", "transit_mount", "vault_approle_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        value = value.strip("/")
        if not re.match(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", value):
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
        if self.vault_role_id and self.vault_secret_id is None:
            raise ValueError("VAULT_ROLE_ID is set but VAULT_SECRET_ID is not")
        return self

    @property
    def uses_approle(self) -> bool:
        return bool(self.vault_role_id)

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
