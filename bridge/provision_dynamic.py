"""``vault-mcp-bridge provision --dynamic roles.yaml``: database connections, per-agent dynamic roles, a PKI CA
and an SSH CA, declared in one small file and provisioned idempotently (schema: docs/dynamic.md).

With ``DYNAMIC_ROLE_SCOPE=agent`` (default) agent ``a``'s role ``r`` is the Vault role ``{prefix}.{a}.{r}`` on the
engine's mount, which the agent's policy grants (``bridge/templates/agent-policy.hcl.j2``) and no other agent's
does. Every step reads first and writes only what differs, so a second run reports no changes:

- database connections: Vault never returns a connection's password, so a connection is compared on its other
  fields (plugin, URL, username, ``allowed_roles``) and an update writes only the fields that differ; Vault keeps
  the stored password (checked on OpenBao 2.7.2: a write is merged into the stored connection). The password is
  written when the connection is created, and again only with ``--write-db-passwords``. ``allowed_roles`` lists
  exactly the file's roles that use the connection.
- PKI roles always get ``generate_lease: true``: each certificate is a lease of the token that obtained it, so
  revoking the agent's lease token (quarantine) revokes its certificates, and the agent's policy can revoke its
  own certificate by lease id, which Vault restricts by path (``pki/revoke`` takes any serial).
- a CA is created only where the mount has none: ``pki.generate_root`` (an internal root) and an SSH CA key
  (``ssh.ca``, ed25519 by default). An existing CA is never replaced.
- a database role's ``allowed_hosts`` (where the bridge may broker its passwords for a ``use``-only identity:
  ``{{lease://<lease_id>#password}}`` placeholders) is written to the bridge state, ``{KV_MOUNT}/data/{prefix}/
  _bridge/database-roles/<vault role>`` (:mod:`bridge.lease_values`), which the bridge reads with its own token;
  a role without ``allowed_hosts``, or no longer in the file, has no such document (a stale one is deleted): its
  passwords cannot be brokered.
- ``--prune`` deletes the roles named ``{prefix}.<agent>.<name>`` that the file no longer declares; without it
  they are reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from bridge.broker.hosts import parse_allowed_hosts
from bridge.config import IDENT_RE, parse_duration
from bridge.lease_values import ROLES_FOLDER, role_name
from bridge.vault.api import quote_path
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultHTTPError, VaultInvalidRequestError, VaultNotFoundError
from bridge.vault.models import MountInfo
from bridge.vault.state import STATE_DIR

IDENT_DOC = "^[a-z0-9][a-z0-9_-]{0,63}$"
DEFAULT_ROOT_TTL = 87600 * 3600  # ten years


class DynamicSpecError(ValueError):
    """The roles file is unreadable or invalid; the message is one line. Raised before anything is written."""


class DynamicStateError(Exception):
    """Vault is in a state the ``--dynamic`` steps must not overwrite (a mount of another type, no PKI CA)."""


def _ident(value: str) -> str:
    if not IDENT_RE.match(value):
        raise ValueError(f"must match {IDENT_DOC}")
    return value


def _seconds(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 15m, 1h or 3600")
    seconds = parse_duration(value)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError("must be a whole number of seconds, at least 1 (15m, 1h, 3600)")
    return int(seconds)


Ident = Annotated[str, AfterValidator(_ident)]
Duration = Annotated[int, BeforeValidator(_seconds)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connection(_Model):
    """A database connection Vault logs in with (its root credentials)."""

    plugin: str = Field(pattern=r"^[a-z0-9-]+-database-plugin$")
    connection_url: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: str | None = None
    password_env: str | None = None
    verify_connection: bool = True

    @model_validator(mode="after")
    def _one_password_source(self) -> Connection:
        given = [name for name in ("password", "password_file", "password_env") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of password, password_file, password_env")
        try:
            inline = urlsplit(self.connection_url).password
        except ValueError:
            inline = None
        if inline not in (None, "{{password}}"):
            raise ValueError("connection_url holds a password: use {{username}}:{{password}} in the URL and "
                             "password, password_file or password_env (Vault shows the URL to readers)")
        return self

    def resolve_password(self, environ: Mapping[str, str]) -> str:
        if self.password is not None:
            value = self.password.get_secret_value()
        elif self.password_env is not None:
            value = environ.get(self.password_env, "")
            if not value:
                raise ValueError(f"password_env: {self.password_env} is not set")
        else:
            assert self.password_file is not None
            try:
                value = Path(self.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"password_file: cannot read {self.password_file} ({exc.strerror})") from None
            if not value:
                raise ValueError(f"password_file: {self.password_file} is empty")
        return value


class _Role(_Model):
    agent: Ident | None = None  # required with DYNAMIC_ROLE_SCOPE=agent, absent with shared
    name: Ident

    def vault_name(self, prefix: str, scope: str) -> str:
        return f"{prefix}.{self.agent}.{self.name}" if scope == "agent" else self.name


class _TtlRole(_Role):
    ttl: Duration | None = None
    max_ttl: Duration

    @model_validator(mode="after")
    def _ttl_within_max(self) -> _TtlRole:
        if self.ttl is not None and self.ttl > self.max_ttl:
            raise ValueError(f"ttl ({self.ttl}s) exceeds max_ttl ({self.max_ttl}s)")
        return self


def _allowed_hosts(value: list[str] | None) -> list[str] | None:
    """``host[:port]`` entries as a secret's ``bridge.allowed_hosts`` takes them (:mod:`bridge.broker.hosts`)."""
    if value is None:
        return None
    entries = [entry.strip() for entry in value]
    if not entries or any(not entry or "," in entry for entry in entries):
        raise ValueError("a list of host[:port] entries (*.example.com allowed), one per item; leave "
                         "allowed_hosts out for a role whose passwords must not be brokered")
    parse_allowed_hosts(",".join(entries))  # ValueError naming the bad entry
    return entries


class DatabaseRole(_Role):
    connection: Ident
    creation_statements: list[str] = Field(min_length=1)
    revocation_statements: list[str] = Field(default_factory=list)
    default_ttl: Duration | None = None
    max_ttl: Duration
    allowed_hosts: Annotated[list[str] | None, AfterValidator(_allowed_hosts)] = None
    """Where the bridge may send this role's passwords in brokered HTTP for a ``use``-only identity (absent:
    nowhere)."""

    @model_validator(mode="after")
    def _ttl_within_max(self) -> DatabaseRole:
        if self.default_ttl is not None and self.default_ttl > self.max_ttl:
            raise ValueError(f"default_ttl ({self.default_ttl}s) exceeds max_ttl ({self.max_ttl}s)")
        return self


class Database(_Model):
    connections: dict[Ident, Connection] = Field(default_factory=dict)
    roles: list[DatabaseRole] = Field(default_factory=list)

    @model_validator(mode="after")
    def _connections_exist(self) -> Database:
        for index, role in enumerate(self.roles):
            if role.connection not in self.connections:
                raise ValueError(f"roles[{index}]: connection {role.connection!r} is not declared under connections")
        return self


class PkiRoot(_Model):
    """An internal root CA, generated only when the mount has no issuer."""

    common_name: str = Field(min_length=1)
    ttl: Duration = DEFAULT_ROOT_TTL
    key_type: Literal["rsa", "ec", "ed25519"] = "ec"
    key_bits: int = 0  # Vault's default for the type
    issuer_name: str = Field(default="", pattern=r"^[a-zA-Z0-9_-]{0,64}$")


class PkiRole(_TtlRole):
    allowed_domains: list[str] = Field(min_length=1)
    allow_subdomains: bool = False
    allow_bare_domains: bool = False
    allow_wildcard_certificates: bool = False
    allow_ip_sans: bool = False
    allow_localhost: bool = False
    server_flag: bool = True
    client_flag: bool = False
    key_type: Literal["rsa", "ec", "ed25519", "any"] = "ec"  # "any": sign (CSR) only, Vault refuses to issue
    key_bits: int | None = None


class Pki(_Model):
    generate_root: PkiRoot | None = None
    roles: list[PkiRole] = Field(default_factory=list)


class SshCa(_Model):
    key_type: Literal["ed25519", "rsa", "ec"] = "ed25519"
    key_bits: int = 0


class SshRole(_TtlRole):
    allowed_users: list[Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})$")]] = Field(
        min_length=1)
    default_user: str = ""
    allowed_extensions: list[Annotated[str, Field(pattern=r"^[a-z0-9@._-]+$")]] = Field(
        default_factory=lambda: ["permit-pty"])
    default_extensions: dict[str, str] = Field(default_factory=lambda: {"permit-pty": ""})

    @model_validator(mode="after")
    def _default_user_allowed(self) -> SshRole:
        if self.default_user and "*" not in self.allowed_users and self.default_user not in self.allowed_users:
            raise ValueError(f"default_user {self.default_user!r} is not in allowed_users")
        return self


class Ssh(_Model):
    ca: SshCa = Field(default_factory=SshCa)
    roles: list[SshRole] = Field(default_factory=list)


class DynamicSpec(_Model):
    """The whole ``--dynamic`` file."""

    database: Database | None = None
    pki: Pki | None = None
    ssh: Ssh | None = None

    def roles(self) -> list[tuple[str, _Role]]:
        """(section, role) for every role of the file."""
        out: list[tuple[str, _Role]] = []
        for section, owner in (("database", self.database), ("pki", self.pki), ("ssh", self.ssh)):
            if owner is not None:
                out.extend((section, role) for role in owner.roles)
        return out

    def agents(self) -> list[str]:
        return sorted({role.agent for _, role in self.roles() if role.agent})

    def check_scope(self, prefix: str, scope: str) -> None:
        """Agent scope: every role names its agent; shared: none does. No two roles share a Vault name."""
        seen: dict[tuple[str, str], str] = {}
        counters: dict[str, int] = {}
        for section, role in self.roles():
            index = counters.get(section, 0)
            counters[section] = index + 1
            where = f"{section}.roles[{index}]"
            if scope == "agent" and not role.agent:
                raise DynamicSpecError(f"{where}: agent is required (DYNAMIC_ROLE_SCOPE=agent)")
            if scope == "shared" and role.agent:
                raise DynamicSpecError(f"{where}: agent must be absent with DYNAMIC_ROLE_SCOPE=shared")
            name = role.vault_name(prefix, scope)
            if (section, name) in seen:
                raise DynamicSpecError(f"{where}: role {name} is declared twice (also {seen[(section, name)]})")
            seen[(section, name)] = where


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(exc: ValidationError) -> str:
    """One line: ``where: what`` for each problem (at most three), values never echoed."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:3]:
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = _location(tuple(err["loc"]))
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_dynamic(data: Any) -> DynamicSpec:
    if data is None:
        raise DynamicSpecError("the file is empty")
    if not isinstance(data, dict):
        raise DynamicSpecError("the file must hold a mapping with database, pki and/or ssh")
    try:
        return DynamicSpec.model_validate(data)
    except ValidationError as exc:
        raise DynamicSpecError(format_validation_error(exc)) from None


def load_dynamic(path: str | Path) -> DynamicSpec:
    """Read and validate the YAML (or JSON) file; :class:`DynamicSpecError` with one line on any problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DynamicSpecError(f"cannot read {path} ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DynamicSpecError(f"not valid YAML{where}") from None
    return parse_dynamic(data)


@dataclass(frozen=True)
class DynamicPlan:
    """A validated file plus the connections' passwords, resolved before anything is written."""

    spec: DynamicSpec
    passwords: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)


def plan_dynamic(spec: DynamicSpec, *, prefix: str, scope: str, prune: bool = False,
                 environ: Mapping[str, str] | None = None) -> DynamicPlan:
    """Check the file against the scope and resolve every password (``password_env`` from ``environ``,
    ``password_file`` from disk); :class:`DynamicSpecError` on any problem, with nothing written yet."""
    spec.check_scope(prefix, scope)
    if prune and scope != "agent":
        raise DynamicSpecError("--prune needs DYNAMIC_ROLE_SCOPE=agent (shared role names are not ours to delete)")
    env = os.environ if environ is None else environ
    passwords: dict[str, SecretStr] = {}
    if spec.database is not None:
        for name, conn in spec.database.connections.items():
            try:
                passwords[name] = SecretStr(conn.resolve_password(env))
            except ValueError as exc:
                raise DynamicSpecError(f"database.connections.{name}.{exc}") from None
    return DynamicPlan(spec, passwords)


def _same(have: Any, want: Any, *, unordered: bool = False) -> bool:
    if isinstance(want, list):
        have_list = [str(v) for v in (have or [])]
        want_list = [str(v) for v in want]
        return sorted(have_list) == sorted(want_list) if unordered else have_list == want_list
    if isinstance(want, dict):
        return dict(have or {}) == want
    return bool(have == want)


class DynamicProvisioner:
    """The ``--dynamic`` steps, run by :class:`bridge.provision.Provisioner` with its admin client."""

    def __init__(self, client: VaultClient, token: str, plan: DynamicPlan, *, prefix: str, scope: str,
                 database_mount: str, pki_mount: str, ssh_mount: str, note: Callable[[str, bool], None],
                 warn: Callable[[str], None], write_db_passwords: bool = False, prune: bool = False,
                 kv_mount: str = "secret") -> None:
        self._client = client
        self._kv = kv_mount
        self._token = token
        self._plan = plan
        self._prefix = prefix
        self._scope = scope
        self._db = database_mount
        self._pki = pki_mount
        self._ssh = ssh_mount
        self._note = note
        self._warn = warn
        self._write_db_passwords = write_db_passwords
        self._prune = prune

    async def _get(self, path: str) -> dict[str, Any] | None:
        return await self._client.logical.read(path, token=self._token, operation="provision.read")

    async def _write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self._client.logical.write(path, body, token=self._token, operation="provision.write")
        return resp.data or {}

    async def run(self) -> None:
        spec = self._plan.spec
        mounts = await self._client.sys.mounts(token=self._token)
        if spec.database is not None:
            await self._mount(mounts, self._db, "database")
            await self._database(spec.database)
        if spec.pki is not None:
            await self._mount(mounts, self._pki, "pki", self._pki_mount_ttl(spec.pki))
            await self._pki_ca(spec.pki)
            await self._pki_roles(spec.pki)
        if spec.ssh is not None:
            await self._mount(mounts, self._ssh, "ssh")
            await self._ssh_ca(spec.ssh)
            await self._ssh_roles(spec.ssh)

    async def _mount(self, mounts: dict[str, MountInfo], path: str, kind: str, max_lease_ttl: int = 0) -> None:
        current = mounts.get(f"{path}/")
        if current is None:
            await self._client.sys.enable_engine(path, kind, max_lease_ttl=max_lease_ttl, token=self._token)
            self._note(f"enabled the {kind} secrets engine at {path}/", True)
        elif current.type != kind:
            raise DynamicStateError(f"{path}/ is mounted but is not the {kind} secrets engine")
        else:
            self._note(f"{kind} secrets engine at {path}/", False)

    # -- database ----------------------------------------------------------------------------------------------

    async def _database(self, db: Database) -> None:
        names = {role.vault_name(self._prefix, self._scope): role for role in db.roles}
        for conn_name, conn in db.connections.items():
            allowed = sorted(name for name, role in names.items() if role.connection == conn_name)
            await self._connection(conn_name, conn, allowed, self._plan.passwords[conn_name])
        for name, role in names.items():
            body = {"db_name": role.connection, "creation_statements": role.creation_statements,
                    "revocation_statements": role.revocation_statements,
                    "default_ttl": role.default_ttl or 0, "max_ttl": role.max_ttl}
            await self._role(f"{quote_path(self._db)}/roles/{quote_path(name)}", body,
                             f"database role {name} at {self._db}/")
            await self._role_hosts(name, role.allowed_hosts)
        await self._stale(f"{quote_path(self._db)}/roles", set(names), "database role", self._db)
        await self._stale_hosts(set(names))

    async def _connection(self, name: str, conn: Connection, allowed: list[str], password: SecretStr) -> None:
        path = f"{quote_path(self._db)}/config/{quote_path(name)}"
        label = f"database connection {name} at {self._db}/"
        want: dict[str, Any] = {"plugin_name": conn.plugin, "connection_url": conn.connection_url,
                                "username": conn.username, "allowed_roles": allowed}
        current = await self._get(path)
        if current is None:
            await self._write_connection(label, path, {**want, "password": password.get_secret_value(),
                                                       "verify_connection": conn.verify_connection})
            self._note(f"created {label}", True)
            return
        details = current.get("connection_details") or {}
        have = {"plugin_name": current.get("plugin_name"), "connection_url": details.get("connection_url"),
                "username": details.get("username"), "allowed_roles": current.get("allowed_roles")}
        differs = [key for key, value in want.items() if not _same(have[key], value, unordered=True)]
        if not differs and not self._write_db_passwords:
            self._note(label, False)
            return
        # Vault merges a write into the stored connection: the password it holds stays unless one is sent
        body: dict[str, Any] = {key: want[key] for key in differs}
        body["verify_connection"] = conn.verify_connection
        if self._write_db_passwords:
            body["password"] = password.get_secret_value()
        await self._write_connection(label, path, body)
        what = ", ".join([*differs, *(["password"] if self._write_db_passwords else [])])
        self._note(f"updated {label} ({what})", True)

    async def _write_connection(self, label: str, path: str, body: dict[str, Any]) -> None:
        """Vault verifies the connection on write (``verify_connection``); its message names no password."""
        try:
            await self._write(path, body)
        except VaultHTTPError as exc:
            raise DynamicStateError(f"{label}: {exc}") from exc

    def _state_path(self, name: str) -> str:
        """``name``'s path in the bridge state below the KV mount (:mod:`bridge.vault.state`)."""
        return f"{self._prefix}/{STATE_DIR}/{name}"

    async def _role_hosts(self, name: str, hosts: list[str] | None) -> None:
        """The role's ``allowed_hosts`` document (deleted when the file lists none)."""
        path = self._state_path(role_name(name))
        label = f"allowed_hosts of database role {name}"
        try:
            current = (await self._client.kv.read(self._kv, path, token=self._token)).data
        except VaultNotFoundError:
            current = None
        if hosts is None:
            if current is not None:
                await self._delete_state(path)
                self._note(f"deleted the {label} (not brokerable)", True)
            return
        want = {"allowed_hosts": ",".join(hosts)}
        if current == want:
            self._note(label, False)
            return
        await self._client.kv.write(self._kv, path, want, token=self._token)
        self._note(f"{'updated' if current is not None else 'set'} the {label} ({want['allowed_hosts']})", True)

    async def _delete_state(self, path: str) -> None:
        await self._client.logical.delete(f"{quote_path(self._kv)}/metadata/{quote_path(path)}", token=self._token,
                                          operation="provision.delete")

    async def _stale_hosts(self, wanted: set[str]) -> None:
        """``allowed_hosts`` documents of database roles the file does not declare are deleted (with or without
        ``--prune``: such a role is no allowed role of any connection any more, and the documents are the
        bridge's own)."""
        listed = await self._client.kv.list(self._kv, self._state_path(ROLES_FOLDER), token=self._token)
        for name in sorted(n for n in listed if not n.endswith("/") and n not in wanted):
            await self._delete_state(self._state_path(role_name(name)))
            self._note(f"deleted the allowed_hosts of database role {name} (not in the file)", True)

    # -- PKI ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _pki_mount_ttl(pki: Pki) -> int:
        ttls = [role.max_ttl for role in pki.roles]
        if pki.generate_root is not None:
            ttls.append(pki.generate_root.ttl)
        return max(ttls, default=0)

    async def _pki_ca(self, pki: Pki) -> None:
        mount = quote_path(self._pki)
        issuers = await self._client.logical.list(f"{mount}/issuers", token=self._token, operation="provision.read")
        if issuers:
            self._note(f"PKI CA at {self._pki}/", False)
            return
        root = pki.generate_root
        if root is None:
            raise DynamicStateError(f"{self._pki}/ has no CA: add pki.generate_root to the file, or set up an "
                                 "issuer (an intermediate signed by your CA) first")
        if await self._client.sys.max_lease_ttl(self._pki, token=self._token) < root.ttl:
            await self._client.sys.set_max_lease_ttl(self._pki, root.ttl, token=self._token)
            self._note(f"raised the max lease TTL of {self._pki}/ to {root.ttl}s for the root CA", True)
        body: dict[str, Any] = {"common_name": root.common_name, "ttl": root.ttl, "key_type": root.key_type}
        if root.key_bits:
            body["key_bits"] = root.key_bits
        if root.issuer_name:
            body["issuer_name"] = root.issuer_name
        made = await self._write(f"{mount}/root/generate/internal", body)
        self._note(f"generated the root CA {root.common_name!r} at {self._pki}/ (serial "
                   f"{made.get('serial_number', '?')})", True)

    async def _pki_roles(self, pki: Pki) -> None:
        names = {}
        for role in pki.roles:
            name = role.vault_name(self._prefix, self._scope)
            names[name] = role
            body: dict[str, Any] = {
                "allowed_domains": role.allowed_domains, "allow_subdomains": role.allow_subdomains,
                "allow_bare_domains": role.allow_bare_domains, "allow_glob_domains": False,
                "allow_any_name": False, "allow_wildcard_certificates": role.allow_wildcard_certificates,
                "allow_ip_sans": role.allow_ip_sans, "allow_localhost": role.allow_localhost,
                "enforce_hostnames": True, "server_flag": role.server_flag, "client_flag": role.client_flag,
                "key_type": role.key_type, "ttl": role.ttl or 0, "max_ttl": role.max_ttl,
                # each certificate is a lease of the token that obtained it (module docstring); stored, so it can
                # be revoked and listed
                "generate_lease": True, "no_store": False}
            if role.key_bits is not None:
                body["key_bits"] = role.key_bits
            await self._role(f"{quote_path(self._pki)}/roles/{quote_path(name)}", body,
                             f"PKI role {name} at {self._pki}/", unordered=("allowed_domains",))
        await self._stale(f"{quote_path(self._pki)}/roles", set(names), "PKI role", self._pki)

    # -- SSH ---------------------------------------------------------------------------------------------------

    async def _ssh_ca(self, ssh: Ssh) -> None:
        mount = quote_path(self._ssh)
        try:
            current = await self._get(f"{mount}/config/ca")
        except VaultInvalidRequestError:  # 400 "no default issuer currently configured"
            current = None
        if current and current.get("public_key"):
            self._note(f"SSH CA at {self._ssh}/", False)
            return
        body: dict[str, Any] = {"generate_signing_key": True, "key_type": ssh.ca.key_type}
        if ssh.ca.key_bits:
            body["key_bits"] = ssh.ca.key_bits
        made = await self._write(f"{mount}/config/ca", body)
        public = str(made.get("public_key") or "").strip()
        self._note(f"generated an SSH CA at {self._ssh}/ (sshd TrustedUserCAKeys: {public})", True)

    async def _ssh_roles(self, ssh: Ssh) -> None:
        names = {}
        for role in ssh.roles:
            name = role.vault_name(self._prefix, self._scope)
            names[name] = role
            body: dict[str, Any] = {
                "key_type": "ca", "allow_user_certificates": True, "allow_host_certificates": False,
                "allowed_users": ",".join(role.allowed_users), "default_user": role.default_user,
                "allow_user_key_ids": False, "ttl": role.ttl or 0, "max_ttl": role.max_ttl,
                "allowed_extensions": ",".join(role.allowed_extensions),
                "default_extensions": role.default_extensions}
            await self._role(f"{quote_path(self._ssh)}/roles/{quote_path(name)}", body,
                             f"SSH role {name} at {self._ssh}/")
        await self._stale(f"{quote_path(self._ssh)}/roles", set(names), "SSH role", self._ssh)

    # -- shared ------------------------------------------------------------------------------------------------

    async def _role(self, path: str, body: dict[str, Any], label: str, *, unordered: tuple[str, ...] = ()) -> None:
        current = await self._get(path)
        if current is not None and all(_same(current.get(k), v, unordered=k in unordered) for k, v in body.items()):
            self._note(label, False)
            return
        await self._write(path, body)
        self._note(f"{'updated' if current is not None else 'created'} {label}", True)

    async def _stale(self, path: str, wanted: set[str], kind: str, mount: str) -> None:
        """Roles named like ours (``{prefix}.<agent>.<name>``) that the file does not declare: deleted with
        ``--prune``, reported otherwise. Other roles of the mount are never touched."""
        if self._scope != "agent":
            return
        listed = await self._client.logical.list(path, token=self._token, operation="provision.list")
        for name in sorted(listed):
            parts = name.split(".")
            if name in wanted or len(parts) != 3 or parts[0] != self._prefix:
                continue
            label = f"{kind} {name} at {mount}/"
            if self._prune:
                await self._client.logical.delete(f"{path}/{quote_path(name)}", token=self._token,
                                                  operation="provision.delete")
                self._note(f"deleted {label} (not in the file)", True)
            else:
                self._warn(f"{label} is not in the file (--prune deletes it)")


__all__ = ["DynamicPlan", "DynamicProvisioner", "DynamicSpec", "DynamicSpecError", "DynamicStateError",
           "load_dynamic", "parse_dynamic", "plan_dynamic"]
