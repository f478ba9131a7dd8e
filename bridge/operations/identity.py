"""The caller's own identity (:class:`~bridge.service.identity.IdentityService`)."""

from __future__ import annotations

from bridge.models import NoArgs, WhoamiOut
from bridge.operations.spec import AnyOperation, Operation, RestBinding, hints
from bridge.service.identity import IdentityService

OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="whoami", scope=None, input=NoArgs, output=WhoamiOut, service=IdentityService,
        run=IdentityService.whoami, title="Who am I",
        summary="The caller's identity, scopes and Vault path prefix.",
        description=(
            "Show the identity this connection acts as: agent id, how it authenticated, its scopes (read, "
            "write, delete, list) and where its secrets live in Vault. Takes no arguments."),
        annotations=hints(read_only=True, idempotent=True),
        rest=RestBinding("GET", "/whoami", route="whoami", tag="identity", errors=())),
)
