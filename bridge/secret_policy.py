"""``vault-mcp-bridge secret-policy AGENT PATH [--reveal allow|never] [--allowed-hosts H,…] [--canary true|false]``.

An operator's per-secret settings live in the secret's KV v2 custom metadata under ``bridge.*`` keys, which
agents can read but never write (their policy grants ``read, list`` on ``metadata/``, and no operation of the bridge
takes custom metadata). What they mean, and the one parser the bridge reads them with: :mod:`bridge.secret_settings`:

- ``bridge.reveal``: ``allow`` or ``never`` (no value leaves the bridge for anyone);
- ``bridge.allowed_hosts``: comma-separated ``host[:port]`` (``*.`` prefix allowed) a secret may be brokered to;
- ``bridge.canary``: ``true`` or ``false``.

The command runs with an admin Vault token from the environment (``VAULT_ADDR``, ``VAULT_TOKEN``,
``VAULT_NAMESPACE``, ``VAULT_CACERT``, like ``provision``). It changes only the keys it is given, with a JSON
merge patch on ``{mount}/metadata/{prefix}/{agent}/{path}`` (a plain metadata write would replace the whole
custom_metadata map, checked on OpenBao 2.7.2); an empty ``--allowed-hosts ""`` removes that key. For a secret
that does not exist yet the metadata is created (the settings then apply from its first version). It prints the
secret's resulting ``bridge.*`` settings; it never reads the secret's data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping

from bridge.broker.hosts import parse_entry
from bridge.config import IDENT_RE
from bridge.errors import InvalidPathError
from bridge.paths import agent_path, validate_path
from bridge.policy import check_mount
from bridge.secret_settings import ALLOWED_HOSTS, BRIDGE_KEY_PREFIX, CANARY, REVEAL, bridge_settings
from bridge.vault.client import VaultClient
from bridge.vault.errors import VaultError, VaultNotFoundError

MAX_METADATA_VALUE = 512  # KV v2 custom_metadata: values of at most 512 bytes


def parse_allowed_hosts(value: str) -> str | None:
    """The normalized ``bridge.allowed_hosts`` value, or ``None`` for an empty value (remove the key). Entries are
    parsed by the broker's own parser (:func:`bridge.broker.hosts.parse_entry`) and written back in its canonical
    form, so what is stored is exactly what the broker will read."""
    items = [item for item in (part.strip() for part in value.split(",")) if item]
    if not items:
        return None
    hosts: list[str] = []
    for item in items:
        try:
            hosts.append(str(parse_entry(item)))
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    joined = ",".join(dict.fromkeys(hosts))
    if len(joined.encode()) > MAX_METADATA_VALUE:
        raise ValueError(f"the allowed hosts take more than {MAX_METADATA_VALUE} bytes (a KV metadata limit)")
    return joined


def settings_patch(*, reveal: str | None, allowed_hosts: str | None, canary: str | None) -> dict[str, str | None]:
    """The custom_metadata merge patch for the options given (``None`` values remove a key)."""
    patch: dict[str, str | None] = {}
    if reveal is not None:
        if reveal not in ("allow", "never"):
            raise ValueError("--reveal is allow or never")
        patch[REVEAL] = reveal
    if allowed_hosts is not None:
        patch[ALLOWED_HOSTS] = parse_allowed_hosts(allowed_hosts)
    if canary is not None:
        if canary not in ("true", "false"):
            raise ValueError("--canary is true or false")
        patch[CANARY] = canary
    return patch


async def apply_secret_policy(client: VaultClient, token: str, mount: str, kv_path: str,
                              patch: Mapping[str, str | None]) -> tuple[dict[str, str], bool]:
    """Merge ``patch`` into the secret's custom metadata (with the admin ``token``); returns its ``bridge.*``
    settings and whether a write was made. ``kv_path`` is the path below the mount (``{prefix}/{agent}/{path}``)."""
    try:
        have = (await client.kv.metadata(mount, kv_path, token=token)).custom_metadata or {}
        exists = True
    except VaultNotFoundError:
        have, exists = {}, False
    wanted = {k: v for k, v in patch.items() if have.get(k) != v}
    if not exists and not any(v is not None for v in wanted.values()):
        wanted = {}  # nothing to set on a secret without metadata
    if not wanted:
        return bridge_settings(have), False
    await client.kv.write_custom_metadata(mount, kv_path, wanted, token=token, create=not exists)
    after = await client.kv.metadata(mount, kv_path, token=token)
    return bridge_settings(after.custom_metadata), True


def add_secret_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", help="the agent id (as in its API key or JWT subject)")
    parser.add_argument("path", help="the secret's path in the agent's namespace, e.g. app/db")
    parser.add_argument("--reveal", choices=("allow", "never"), default=None,
                        help="never: no value of this secret leaves the bridge, for anyone")
    parser.add_argument("--allowed-hosts", default=None, metavar="H,...",
                        help="host[:port] list the secret may be brokered to (*. prefix allowed); \"\" removes it")
    parser.add_argument("--canary", choices=("true", "false"), default=None,
                        help="true: any read by an agent trips the canary")
    parser.add_argument("--mount", default=None, help="KV v2 mount (default: $KV_MOUNT or secret)")
    parser.add_argument("--prefix", default=None, help="namespace prefix (default: $DEFAULT_PREFIX or mcp)")


def secret_policy_main(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Settings on stdout (``bridge.reveal=never``), what changed on stderr; exit 0, 1 (Vault), 2 (arguments)."""
    env = os.environ if environ is None else environ
    addr = env.get("VAULT_ADDR", "http://127.0.0.1:8200").rstrip("/")
    token = env.get("VAULT_TOKEN", "")
    if not token:
        print("secret-policy: set VAULT_TOKEN to an admin token", file=sys.stderr)
        return 2
    try:
        agent = args.agent.lower()
        if not IDENT_RE.match(agent):
            raise ValueError("the agent id must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        try:
            path = validate_path(args.path)
        except InvalidPathError as exc:
            raise ValueError(exc.message) from None
        mount = check_mount("mount", (args.mount or env.get("KV_MOUNT") or "secret")).strip("/")
        prefix = args.prefix or env.get("DEFAULT_PREFIX") or "mcp"
        if not IDENT_RE.match(prefix):
            raise ValueError("the prefix must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        patch = settings_patch(reveal=args.reveal, allowed_hosts=args.allowed_hosts, canary=args.canary)
    except ValueError as exc:
        print(f"secret-policy: {exc}", file=sys.stderr)
        return 2
    kv_path = agent_path(prefix, agent, path)

    async def run() -> tuple[dict[str, str], bool]:
        async with VaultClient(addr, namespace=env.get("VAULT_NAMESPACE", ""), cacert=env.get("VAULT_CACERT", ""),
                               timeout=30) as client:
            return await apply_secret_policy(client, token, mount, kv_path, patch)

    try:
        settings, changed = asyncio.run(run())
    except VaultError as exc:
        print(f"secret-policy: {exc}", file=sys.stderr)
        return 1
    where = f"{mount}/metadata/{kv_path}"
    print(f"secret-policy: {'updated' if changed else 'no changes to'} {where}", file=sys.stderr)
    if not settings:
        print(f"secret-policy: {where} has no bridge.* settings (reveal allow, not brokered, not a canary)",
              file=sys.stderr)
    for key, value in settings.items():
        print(f"{key}={value}")
    return 0


__all__ = ["ALLOWED_HOSTS", "BRIDGE_KEY_PREFIX", "CANARY", "MAX_METADATA_VALUE", "REVEAL", "add_secret_policy_args",
           "apply_secret_policy", "bridge_settings", "parse_allowed_hosts", "secret_policy_main", "settings_patch"]
