"""``API_KEYS_FILE``: API keys from a file (the ``API_KEYS_JSON`` format), changed without a restart.

The file is read at start-up (a bad file stops start-up, see :mod:`bridge.config`) and again

- when its content changes: a background task (started in ``cleanup_ctx`` by :func:`bridge.app`) reads it every
  ``interval`` seconds (1 s) and compares a digest, so atomic renames, Kubernetes secret volumes (symlink
  swaps) and in-place edits are all seen;
- on SIGHUP: ``vault-mcp-bridge serve`` installs a handler that calls :meth:`ApiKeyFile.request_reload`.

A new file that cannot be read or parsed (bad JSON, a key shorter than 24 characters, an unknown scope …) is
refused with one log line (``auth.api_keys.reload_refused``, never a key) and the keys in force stay. A good
one replaces the whole key table at once (:meth:`ApiKeyAuthenticator.replace`): added keys work, removed keys
get 401 from the next request on, and requests already authenticated finish as they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import structlog

from bridge.auth.api_key import ApiKeyAuthenticator
from bridge.config import parse_api_keys, read_secret_file

log = structlog.get_logger("bridge.auth")

POLL_SECONDS = 1.0


class ApiKeyFile:
    def __init__(self, path: str, authenticator: ApiKeyAuthenticator, *, interval: float = POLL_SECONDS) -> None:
        self.path = path
        self.authenticator = authenticator
        self.interval = interval
        self._seen: bytes | None = None  # digest of the last content handled (loaded or refused), or the error
        self._wake = asyncio.Event()
        self._forced = False
        self.reloads = 0

    def request_reload(self) -> None:
        """Re-read the file now, even if it looks unchanged (the SIGHUP handler; safe from the event loop)."""
        self._forced = True
        self._wake.set()

    async def check(self, *, reason: str = "changed", force: bool = False) -> bool:
        """Read the file; load it if it changed (or ``force``). True when new keys are in force."""
        try:
            content = await asyncio.to_thread(read_secret_file, self.path, "API_KEYS_FILE")
        except ValueError as exc:
            return self._refuse(str(exc), None, force)
        digest = hashlib.sha256(content.encode()).digest()
        if digest == self._seen and not force:
            return False
        try:
            keys = parse_api_keys(content)
        except ValueError as exc:
            return self._refuse(f"API_KEYS_FILE: {exc}", digest, force)
        before = len(self.authenticator)
        self.authenticator.replace(keys)
        self._seen = digest
        self.reloads += 1
        log.info("auth.api_keys.reloaded", reason=reason, path=self.path, keys=len(keys), keys_before=before)
        return True

    def _refuse(self, error: str, digest: bytes | None, force: bool) -> bool:
        marker = digest if digest is not None else error.encode()
        if marker != self._seen or force:  # one line per bad version (or read error), not one per poll
            log.error("auth.api_keys.reload_refused", path=self.path, error=error,
                      keys_in_force=len(self.authenticator))
        self._seen = marker
        return False

    async def prime(self) -> None:
        """At start-up: load what the file holds now (it may have changed since the settings were read)."""
        await self.check(reason="startup", force=True)

    async def run(self) -> None:
        """Poll every ``interval`` seconds; wake at once on :meth:`request_reload`. Runs until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            forced, self._forced = self._forced, False
            try:
                await self.check(reason="sighup" if forced else "changed", force=forced)
            except Exception:  # never let the watcher die: the keys in force keep working
                log.exception("auth.api_keys.watch_failed", path=self.path)
