"""Agent identities: who is calling, by which method, with which scopes.

Each authenticator follows one shape (after starlette's backends): ``authenticate(request)`` returns an
:class:`Identity`, ``None`` when its credential is absent, and raises :class:`UnauthenticatedError` when its
credential is present but invalid (no falling through to another method).
"""

from __future__ import annotations

from bridge.auth.chain import AuthChain, build_auth_chain
from bridge.auth.identity import Identity, normalize_subject

__all__ = ["AuthChain", "Identity", "build_auth_chain", "normalize_subject"]
