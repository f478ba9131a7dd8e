"""What the agent's Vault policy lets it do, asked of Vault: :class:`VaultNeed` and :class:`CapabilityCache`.

An operation declares the Vault capability it needs on a representative path of the agent's own namespace
(``Operation.needs``, e.g. ``kv_write``: ``create`` or ``update`` on ``{kv}/data/{ns}/{probe}``). ``tools/list`` and
``GET /whoami`` show an operation only when Vault says the agent's token has it there: one
``POST sys/capabilities-self`` per agent with every declared path, made with the token the agent's calls use (its
child token with ``CHILD_TOKEN_ENABLED``, else the bridge's own), and cached per agent for ``CAPABILITIES_TTL``.

``sys/capabilities-self`` takes concrete paths, not globs: the representative path is a made-up secret
(:data:`PROBE`) directly below the agent's namespace, where the provisioned policy grants its rights (``…/<agent>/*``).
A policy that grants a right only deeper (``…/<agent>/app/*``) is not seen: the tool stays hidden, and still works
when called. The check only hides; it refuses nothing (a hidden tool called anyway is refused by Vault, as before).
When Vault cannot answer (the token may not ask, Vault is down), nothing is hidden and the fact is logged once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from bridge.auth.identity import Identity
from bridge.errors import BridgeError
from bridge.service.access import VaultAccess

log = structlog.get_logger("bridge.capabilities")

PROBE = "vault-mcp-bridge-probe"
"""The made-up secret or key name of the representative paths (any name below the namespace would do)."""
MAX_AGENTS = 10_000
"""The most agents whose answer is kept (least recently used dropped first)."""
UNKNOWN_SECONDS = 5.0
"""How long "Vault could not say" is kept (at most ``CAPABILITIES_TTL``)."""
ASK_SECONDS = 2.0
"""The most a capability check may take (a slow Vault must not slow ``tools/list`` or ``GET /whoami`` down for
long): after it, Vault "could not say"."""

Answer = dict[str, frozenset[str]] | None
"""Path → capabilities; ``None``: Vault could not say (nothing is hidden)."""


@dataclass(frozen=True, slots=True)
class VaultNeed:
    """One of ``capabilities`` on ``path``, a template of the agent's own paths: ``{kv}`` (``KV_MOUNT``),
    ``{transit}`` (``TRANSIT_MOUNT``), ``{database}``, ``{pki}``, ``{ssh}`` (``DATABASE_MOUNT``, ``PKI_MOUNT``,
    ``SSH_MOUNT``), ``{ns}`` (``{DEFAULT_PREFIX}/{agent}``), ``{key}`` (a Transit key name of the agent,
    ``{DEFAULT_PREFIX}.{agent}.{probe}``, or ``{probe}`` with shared keys), ``{role}`` (a dynamic-secrets role of
    the agent, the same shape with ``DYNAMIC_ROLE_SCOPE``) and ``{probe}``."""

    path: str
    capabilities: frozenset[str]

    def resolve(self, identity: Identity, *, mounts: Mapping[str, str], prefix: str, shared_keys: bool,
                shared_roles: bool) -> str:
        own = f"{prefix}.{identity.subject}.{PROBE}"
        return self.path.format(**mounts, ns=f"{prefix}/{identity.subject}", key=PROBE if shared_keys else own,
                                role=PROBE if shared_roles else own, probe=PROBE)


def need(path: str, *capabilities: str) -> VaultNeed:
    """``need("{kv}/data/{ns}/{probe}", "create", "update")``: any one of the capabilities on the path."""
    return VaultNeed(path, frozenset(capabilities))


class CapabilityCache:
    """Per agent, the answer of ``sys/capabilities-self`` for every registered path; asked once per ``ttl``
    seconds at most (0: every time), one request in flight per agent."""

    def __init__(self, access: VaultAccess, ttl: float, *, clock: Callable[[], float] = time.monotonic,
                 max_agents: int = MAX_AGENTS) -> None:
        settings = access.settings
        self._access = access
        self._ttl = ttl
        self._clock = clock
        self._max_agents = max_agents
        self._mounts = {"kv": settings.kv_mount, "transit": settings.transit_mount,
                        "database": settings.database_mount, "pki": settings.pki_mount, "ssh": settings.ssh_mount}
        self._prefix = settings.default_prefix
        self._shared_keys = settings.transit_key_scope == "shared"
        self._shared_roles = settings.dynamic_role_scope == "shared"
        self._needs: dict[VaultNeed, None] = {}
        self._answers: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._warned = False

    def register(self, needs: Iterable[VaultNeed]) -> None:
        """Paths asked about from now on (the executor registers every operation's)."""
        for item in needs:
            self._needs.setdefault(item)

    def forget(self, agent: str | None = None) -> None:
        """Drop the cached answer of ``agent`` (every agent's with ``None``)."""
        if agent is None:
            self._answers.clear()
        else:
            self._answers.pop(agent, None)

    async def grants(self, identity: Identity, needs: Iterable[VaultNeed]) -> bool:
        """Whether the agent's token has every one of ``needs`` (any capability of each); true when Vault could
        not say."""
        needs = tuple(needs)
        if not needs:
            return True
        answer = await self._answer(identity)
        if answer is None:
            return True
        for item in needs:
            have = answer.get(self._resolve(identity, item))
            if have is None:  # registered after the answer was cached: ask again next time
                self.forget(identity.subject)
                return True
            if "root" not in have and not (have & item.capabilities):
                return False
        return True

    def _resolve(self, identity: Identity, item: VaultNeed) -> str:
        return item.resolve(identity, mounts=self._mounts, prefix=self._prefix, shared_keys=self._shared_keys,
                            shared_roles=self._shared_roles)

    async def _answer(self, identity: Identity) -> Answer:
        agent = identity.subject
        cached = self._answers.get(agent)
        if cached is not None and self._clock() < cached[0]:
            self._answers.move_to_end(agent)
            return cached[1]
        pending = self._pending.get(agent)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[agent] = future
        try:
            answer = await self._ask(identity)
            future.set_result(answer)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter-less failure is not logged as "never retrieved"
            raise
        finally:
            del self._pending[agent]
        if self._ttl > 0:  # "could not say" is asked again sooner: Vault may be back
            ttl = self._ttl if answer is not None else min(self._ttl, UNKNOWN_SECONDS)
            self._answers[agent] = (self._clock() + ttl, answer)
            self._answers.move_to_end(agent)
            while len(self._answers) > self._max_agents:
                self._answers.popitem(last=False)
        return answer

    async def _ask(self, identity: Identity) -> Answer:
        paths = sorted({self._resolve(identity, item) for item in self._needs})
        if not paths:
            return {}

        async def go(token: str) -> dict[str, frozenset[str]]:
            return await self._access.vault.sys.capabilities_self(paths, token=token)

        try:
            async with asyncio.timeout(ASK_SECONDS):
                return await self._access.call(identity, "the capability check", go)
        except (BridgeError, TimeoutError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("capabilities.unavailable", agent=identity.subject,
                            code=exc.code if isinstance(exc, BridgeError) else "timeout",
                            hint="tools/list shows every tool the scopes allow; the token needs 'update' on "
                                 "sys/capabilities-self (provision grants it to agent policies)")
            return None
