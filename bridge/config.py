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

from bridge.ratelimit import Quota

SCOPES: tuple[str, ...] = ("read", "write", "delete", "list")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

JWT_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                                   "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
"""What ``JWT_ALGORITHMS`` may list (never ``none``)."""

IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")  # \Z: "$" would also accept a trailing newline
"""Agent ids and Transit key names: they become Vault path segments, policy and key names."""

TRANSIT_KEY_TYPES: tuple[str, ...] = ("aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256",
                                      "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096", "hmac")
"""Transit key types an agent may name (``TRANSIT_ALLOWED_KEY_TYPES`` picks from these)."""
DEFAULT_TRANSIT_KEY_TYPES: tuple[str, ...] = ("aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256",
                                              "rsa-2048", "hmac")
"""Cheap to create and to use: no RSA above 2048 bits (a 4096-bit key costs Vault seconds of CPU to make)."""
MAX_TRANSIT_BATCH = 1000
"""The most ``TRANSIT_MAX_BATCH`` may be (the request models' own bound)."""


MIN_API_KEY_LENGTH = 24
"""API keys (``API_KEYS_JSON``/``API_KEYS_FILE``, ``ADMIN_API_KEYS``) shorter than this stop start-up; a
``sha256:`` entry is exempt (its key is not known here)."""

SECRET_FILE_FORMS: dict[str, str] = {
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
"""Secret setting → its ``*_FILE`` form (Docker/Kubernetes secrets), read at start-up; ``API_KEYS_FILE`` is
also re-read while running (:mod:`bridge.auth.keyfile`). ``VAULT_SECRET_ID_FILE`` is read at every AppRole
login instead. Setting both forms of one secret is a configuration error."""

MAX_SECRET_FILE_BYTES = 16 * 1024 * 1024

REMOVED_SETTINGS: dict[str, str] = {
    "MTLS_IDENTITY_HEADER": "the subject DN is no longer an identity source: the proxy forwards the whole "
                            "client certificate in MTLS_CERT_HEADER (see README, Upgrading)",
    "MTLS_SUBJECT_CN_PREFIX": "the subject DN is no longer an identity source: the agent is the certificate's "
                              "one CN, parsed from the certificate itself (see README, Upgrading)",
}
"""Settings that existed once and now stop start-up with a pointer, so an upgrade cannot silently change who
is trusted."""

IGNORED_SETTINGS: dict[str, str] = {
    "VAULT_HTTP_CLIENT": "removed: the bridge always talks to Vault through aiohttp's client, the default before "
                         "(the opt-in 'lean' transport is gone; see README, Upgrading)",
}
"""Settings that existed once and changed nothing about trust: still set, they are ignored with one warning line
at start-up (:func:`ignored_settings`), so a deployment that sets them keeps starting."""


def ignored_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The :data:`IGNORED_SETTINGS` present in ``environ``, with why each is ignored."""
    return {name: why for name, why in IGNORED_SETTINGS.items() if name in environ}


class ConfigError(Exception):
    """A setting is missing or malformed. The message names the environment variable."""


def read_secret_file(path: str, variable: str) -> str:
    """The content of a ``*_FILE`` secret, without its trailing line break (``echo`` and most editors add one)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{variable}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {path} is not UTF-8 text") from None


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


class RateLimitSpec(BaseModel):
    """An API key's own rate limit: ``requests`` per ``window_seconds``, bursts of ``burst`` (default: its own
    ``requests``, not ``RATE_LIMIT_BURST``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    requests: int = Field(ge=1)
    window_seconds: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)

    @field_validator("window_seconds", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        return parse_duration(value)

    def quota(self) -> Quota:
        return Quota(self.requests, self.window_seconds, self.burst or self.requests)
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
    """One API key's owner, scopes and (optionally) its own rate limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    agent: str
    scopes: tuple[str, ...] = SCOPES
    rate_limit: RateLimitSpec | None = None


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
        if not isinstance(key, str):
            raise ValueError(f"entry #{index + 1}: keys must be strings")
        if key.startswith("sha256:"):
            if not re.fullmatch(r"[0-9a-fA-F]{64}", key[len("sha256:"):]):
                raise ValueError(f"entry #{index + 1}: a 'sha256:' key must be followed by 64 hex digits")
        elif len(key) < MIN_API_KEY_LENGTH:
            raise ValueError(f"entry #{index + 1}: an API key must have at least {MIN_API_KEY_LENGTH} characters "
                             "(or be given as sha256:<hex>)")
        if isinstance(value, str):
            entry = ApiKeyEntry(agent=value)
        elif isinstance(value, dict):
            try:
                entry = ApiKeyEntry.model_validate(value)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ValueError(
                    f"entry #{index + 1}: expected {{\"agent\": id, \"scopes\": [...], \"rate_limit\": "
                    f"{{\"requests\", \"window_seconds\", \"burst\"}}}}"
                    + (f" ({where}: {err['msg'].removeprefix('Value error, ')})" if where else "")
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
    vault_token_file: str = ""  # read once at start-up (VAULT_TOKEN's *_FILE form)
    vault_role_id: str = ""
    vault_secret_id: SecretStr | None = None
    vault_secret_id_file: str = ""  # read at every AppRole login (rotation by rewriting the file)
    vault_wrapped_secret_id: SecretStr | None = None  # response-wrapping token, unwrapped once at start
    vault_approle_mount: str = "approle"
    vault_cacert: str = ""
    vault_timeout: float = 10.0
    vault_pool_size: int = Field(default=100, ge=1, le=10000)
    vault_breaker_threshold: int = Field(default=5, ge=0)  # consecutive outages that open it; 0 = off
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
    mtls_verify_header: str = "x-ssl-client-verify"

    # identity hardening and *_FILE forms (issues 9 and 10; README "Identities", "Security notes")
    api_keys_file: str = ""  # API_KEYS_JSON's format; re-read on SIGHUP and when it changes
    jwt_hs256_secret_file: str = ""
    jwt_max_ttl: float = 86400.0  # exp at most this far from iat and from now
    mtls_cert_header: str = "x-ssl-client-cert"  # the whole client certificate, from the proxy
    mtls_trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    mtls_proxy_secret: SecretStr | None = Field(default=None, repr=False)  # the proxy sends it in X-Proxy-Secret
    mtls_proxy_secret_file: str = ""
    auth_failure_limit: int = Field(default=30, ge=0)  # failed authentications per source address per minute
    vault_wrapped_secret_id_file: str = ""
    redis_url_file: str = ""  # REDIS_URL may carry a password

    # rate limiting
    rate_limit_enabled: bool = True
    rate_limit_requests: int = Field(default=600, ge=1)  # refill: this many per window (GCRA, bridge/ratelimit.py)
    rate_limit_window_seconds: float = Field(default=60.0, gt=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)  # bucket size; default RATE_LIMIT_REQUESTS
    rate_limit_max_agents: int = Field(default=100_000, ge=1)  # memory backend: most agents tracked (LRU)
    rate_limit_backend: Literal["memory", "redis"] = "memory"
    rate_limit_fail_mode: Literal["open", "closed"] = "open"
    redis_url: SecretStr | None = Field(default=None, repr=False)
    redis_timeout: float = 0.5
    redis_key_prefix: str = "vmb:rl:"

    # limits and fairness: one agent cannot take Vault from everyone
    transit_max_batch: int = Field(default=100, ge=1, le=MAX_TRANSIT_BATCH)  # items per Transit batch
    transit_allowed_key_types: list[str] = Field(default_factory=lambda: list(DEFAULT_TRANSIT_KEY_TYPES))
    transit_max_keys_per_agent: int = Field(default=25, ge=0)  # 0 = no cap
    agent_max_inflight: int = Field(default=16, ge=0)  # concurrent requests per agent and process; 0 = no cap
    agent_inflight_wait: float = 1.0  # how long a request over the cap waits for a slot before its 429

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
    admin_api_keys_file: str = ""
    otel_exporter_otlp_endpoint: str = ""
    otel_service_name: str = "vault-mcp-bridge"

    # MCP
    mcp_session_secret: SecretStr | None = None
    mcp_session_secret_file: str = ""
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

    # use, don't reveal (issue 12): brokered HTTP and intake links (README "Keeping secrets out of the model's
    # context", docs/use-dont-reveal.md)
    broker_timeout: float = 30.0  # a brokered request: DNS, connection, sending and the whole answer
    broker_max_response_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)  # decoded body
    broker_max_request_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)  # after substitution
    broker_cacert: str = ""  # PEM CA bundle trusted for brokered HTTPS besides the system's
    intake_ttl: float = 600.0  # how long an intake link can be used
    intake_secret: SecretStr | None = Field(default=None, repr=False)  # signs intake links (default: derived)
    intake_secret_file: str = ""
    intake_public_url: str = ""  # the bridge's public base URL for intake links (https://bridge.example.com)
    # the bridge's Transit HMAC key for fingerprints ("" = {DEFAULT_PREFIX}-bridge-fingerprint, as provision makes)
    fingerprint_key: str = ""

    @field_validator("broker_timeout", "intake_ttl", mode="before")
    @classmethod
    def _issue12_durations(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("broker_timeout")
    @classmethod
    def _broker_timeout(cls, value: float) -> float:
        if not 0.1 <= value <= 600:
            raise ValueError("must be from 100ms to 10m")
        return value

    @field_validator("intake_ttl")
    @classmethod
    def _intake_ttl(cls, value: float) -> float:
        if not 30 <= value <= 86400:
            raise ValueError("must be from 30s to 24h")
        return value

    @field_validator("intake_secret")
    @classmethod
    def _intake_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. openssl rand -hex 32)")
        return value

    @field_validator("intake_public_url")
    @classmethod
    def _intake_public_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/\s?#@]+(/[^\s?#]*)?", value):
            raise ValueError("expected http(s)://host[:port][/path], e.g. https://bridge.example.com")
        return value.rstrip("/")

    @field_validator("fingerprint_key")
    @classmethod
    def _fingerprint_key(cls, value: str) -> str:
        if value and not IDENT_RE.match(value):
            raise ValueError("must match ^[a-z0-9][a-z0-9_-]{0,63}$ (a plain Transit key name, as provision makes)")
        return value

    @field_validator("broker_cacert")
    @classmethod
    def _broker_cacert(cls, value: str) -> str:
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("mcp_session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (it keys the session-id HMAC)")
        return value

    @field_validator("jwt_hs256_secret")
    @classmethod
    def _hs256_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (RFC 7518 asks for a key as long as the HS256 hash)")
        return value

    @field_validator("mtls_proxy_secret")
    @classmethod
    def _proxy_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. openssl rand -hex 32)")
        if not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", value.get_secret_value()):
            # it travels in a header and sits in the proxy's config: no spaces, quotes, '$' or control characters
            raise ValueError("may hold only letters, digits and . _ ~ + / = - (e.g. openssl rand -hex 32)")
        return value

    @field_validator("mtls_cert_header", "mtls_verify_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
            raise ValueError("expected an HTTP header name such as X-SSL-Client-Cert")
        return value

    @field_validator("jwt_max_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """``X_FILE`` settings: the file's content becomes ``X`` (``API_KEYS_FILE`` is parsed here, so a bad
        file stops start-up naming ``API_KEYS_FILE``)."""
        if not isinstance(data, dict):
            return data
        values = dict(data)
        for name, file_name in SECRET_FILE_FORMS.items():
            path = values.get(file_name)
            if not path:
                continue
            if values.get(name) not in (None, ""):
                raise ValueError(f"{file_name.upper()}: set only one of {name.upper()} and {file_name.upper()}")
            content = read_secret_file(str(path), file_name.upper())
            if name == "api_keys_json":
                try:
                    values[name] = parse_api_keys(content)
                except ValueError as exc:
                    raise ValueError(f"{file_name.upper()}: {exc}") from None
            elif name == "admin_api_keys":
                values[name] = content.replace("\r", "").replace("\n", ",")
            elif not content:
                raise ValueError(f"{file_name.upper()}: {path} is empty")
            else:
                values[name] = content
        return values

    @field_validator("vault_timeout", "jwt_leeway_seconds", "rate_limit_window_seconds", "mcp_session_ttl",
                     "vault_breaker_cooldown", "redis_timeout", "shutdown_grace_seconds", "child_token_ttl",
                     "jwt_cache_seconds", "jwt_max_ttl", "agent_inflight_wait",
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

    @field_validator("transit_allowed_key_types", mode="before")
    @classmethod
    def _key_types(cls, value: Any) -> list[str]:
        types = parse_list(value)
        bad = [t for t in types if t not in TRANSIT_KEY_TYPES]
        if bad:
            raise ValueError(f"unknown key type(s) {bad}; known: {list(TRANSIT_KEY_TYPES)}")
        if not types:
            raise ValueError("list at least one key type")
        return types

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
    def _at_least_50ms(cls, value: float) -> float:
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
        if any(len(k) < MIN_API_KEY_LENGTH for k in keys):
            raise ValueError(f"admin API keys must be at least {MIN_API_KEY_LENGTH} characters")
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
        self._check_identity_sources()
        return self

    def _check_identity_sources(self) -> None:
        """Header identity needs a named proxy and its secret; a JWKS needs issuer and audience."""
        if any(net.prefixlen == 0 for net in self.mtls_trusted_proxies):
            raise ValueError("MTLS_TRUSTED_PROXIES: 0.0.0.0/0 and ::/0 would trust every peer; "
                             "list the proxy's own address(es)")
        if self.auth_mtls_enabled:
            if not self.mtls_trusted_proxies:
                raise ValueError("MTLS_TRUSTED_PROXIES: AUTH_MTLS_ENABLED needs the proxy's address(es), "
                                 "e.g. 127.0.0.1/32 (there is no default)")
            if self.mtls_proxy_secret is None:
                raise ValueError("MTLS_PROXY_SECRET: AUTH_MTLS_ENABLED needs MTLS_PROXY_SECRET or "
                                 "MTLS_PROXY_SECRET_FILE (32+ characters; the proxy sends it in X-Proxy-Secret)")
        if self.auth_jwt_enabled and (self.jwt_jwks_url or self.jwt_jwks_file):
            for name, value in (("JWT_ISSUER", self.jwt_issuer), ("JWT_AUDIENCE", self.jwt_audience)):
                if not value:
                    raise ValueError(f"{name}: a JWK Set (JWT_JWKS_URL or JWT_JWKS_FILE) needs both JWT_ISSUER "
                                     "and JWT_AUDIENCE, so a token of another issuer or service is refused")

    def unusable_reason(self) -> str | None:
        """Why no request could ever succeed with these settings, or ``None``. Checked by ``serve`` only
        (tests and tools may build partial settings)."""
        if self.vault_token is None and not self.vault_role_id:
            return ("no Vault credential: set VAULT_TOKEN (or VAULT_TOKEN_FILE), or VAULT_ROLE_ID with a "
                    "secret id")
        api_keys = self.auth_api_key_enabled and bool(self.api_keys_json or self.api_keys_file)
        algorithms = set(self.jwt_allowed_algorithms)
        jwt_keys = self.auth_jwt_enabled and (
            (self.jwt_hs256_secret is not None and bool(algorithms & {"HS256", "HS384", "HS512"}))
            or (bool(self.jwt_jwks_url or self.jwt_jwks_file) and bool(algorithms - {"HS256", "HS384", "HS512"})))
        certificates = bool(self.tls_client_ca_file) or self.auth_mtls_enabled
        if not (api_keys or jwt_keys or certificates):
            return ("no identity method has a key: set API_KEYS_JSON or API_KEYS_FILE, JWT_HS256_SECRET or "
                    "JWT_JWKS_URL/JWT_JWKS_FILE, TLS_CLIENT_CA_FILE, or AUTH_MTLS_ENABLED with its proxy")
        return None

    @property
    def rate_limit_quota(self) -> Quota:
        """The default per-agent quota (an API key may carry its own)."""
        return Quota(self.rate_limit_requests, self.rate_limit_window_seconds,
                     self.rate_limit_burst or self.rate_limit_requests)

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
        for name, why in REMOVED_SETTINGS.items():
            if env.get(name):
                raise ConfigError(f"invalid setting {name}: removed; {why}")
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
            named = re.match(r"([A-Z][A-Z0-9_]*): (.*)\Z", msg, re.S) if not err["loc"] else None
            if named:  # a check across settings that names its variable first
                loc, msg = named.group(1), named.group(2)
            raise ConfigError(f"invalid setting {str(loc).upper()}: {msg}") from None
