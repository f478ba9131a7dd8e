"""A secret's ``bridge.*`` settings: the one parser of what an operator put into its KV custom metadata.

An operator sets them in Vault directly or with ``vault-mcp-bridge secret-policy`` (:mod:`bridge.secret_policy`);
agents can read the custom metadata but never write it (their policy has no ``create``/``update`` on
``metadata/``, and no operation of the bridge takes custom metadata):

- ``bridge.reveal``: ``allow`` (the default) or ``never``: no value of the secret leaves the bridge for anyone,
  whatever the scope (no plaintext read, no wrapped delivery, no encryption by reference, which
  ``transit_decrypt`` would reverse); brokered use and HMAC or signing by reference still work. Any other value
  counts as ``never`` (fail closed: an operator who wrote ``NEVER`` or ``no`` meant to hide it);
- ``bridge.allowed_hosts``: where the secret may be brokered to, kept as stored; :mod:`bridge.broker.hosts`
  parses its entries when it is used (absent, empty or malformed: the secret cannot be brokered);
- ``bridge.canary``: ``true`` marks a decoy whose every use by an agent trips the canary watch
  (:mod:`bridge.canary`). ``false``, ``0``, ``no``, ``off`` and the empty string are false; any other value is
  true (an operator set the key for a reason).

Whatever reads a secret for an agent parses its metadata here (:meth:`SecretSettings.parse`), and an answer shows
the agent its custom metadata through :func:`agent_view`, which leaves ``bridge.canary`` out: a canary must look
like any other secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

BRIDGE_KEY_PREFIX = "bridge."
REVEAL = "bridge.reveal"
ALLOWED_HOSTS = "bridge.allowed_hosts"
CANARY = "bridge.canary"
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class SecretSettings:
    """The parsed ``bridge.*`` settings of one secret."""

    reveal: Literal["allow", "never"] = "allow"
    allowed_hosts: str | None = None
    canary: bool = False

    @classmethod
    def parse(cls, custom_metadata: Mapping[str, str] | None) -> SecretSettings:
        meta = custom_metadata or {}
        reveal = meta.get(REVEAL)
        canary = meta.get(CANARY)
        return cls(
            reveal="allow" if reveal is None or reveal.strip().lower() == "allow" else "never",
            allowed_hosts=meta.get(ALLOWED_HOSTS),
            canary=canary is not None and canary.strip().lower() not in _FALSE,
        )

    @property
    def revealable(self) -> bool:
        """Whether a value of this secret may leave the bridge at all (to an identity with ``read``)."""
        return self.reveal == "allow"


def is_bridge_key(name: str) -> bool:
    """Whether a custom-metadata key is one of the operator's ``bridge.*`` settings (agents never set one)."""
    return name.lower().startswith(BRIDGE_KEY_PREFIX)


def bridge_settings(custom_metadata: Mapping[str, str] | None) -> dict[str, str]:
    """The ``bridge.*`` entries of a custom-metadata map, sorted (what ``secret-policy`` prints)."""
    return {k: str(v) for k, v in sorted((custom_metadata or {}).items()) if is_bridge_key(k)}


def agent_view(custom_metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The custom metadata an agent is shown: without ``bridge.canary`` (``None`` when nothing is left, as for a
    secret that never had any)."""
    shown = {k: v for k, v in (custom_metadata or {}).items() if k.lower() != CANARY}
    return shown or None


__all__ = ["ALLOWED_HOSTS", "BRIDGE_KEY_PREFIX", "CANARY", "REVEAL", "SecretSettings", "agent_view",
           "bridge_settings", "is_bridge_key"]
