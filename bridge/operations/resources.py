"""The catalog behind MCP resources (:class:`~bridge.service.resources.ResourceService`): the agent's secrets and
Transit keys, described without values. In-process operations (no REST route, no tool): ``resources/list``,
``resources/read`` of a key and ``completion/complete`` carry them out through the executor, so scopes, the rate
limit, audit and metrics apply as to every operation."""

from __future__ import annotations

from bridge import models as m
from bridge.operations.spec import AnyOperation, Operation, hints
from bridge.service.capabilities import need
from bridge.service.resources import ResourceService

OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="kv_secrets", scope="list", input=m.SecretsPageArgs, output=m.SecretsPageOut, service=ResourceService,
        run=ResourceService.secrets, title="Your secrets", summary="A page of your secrets with versions and times.",
        description="Every readable secret of your namespace, in path order, with its version and times.",
        annotations=hints(read_only=True, idempotent=True), audit=("after", "limit"), mcp=False,
        needs=(need("{kv}/metadata/{ns}/", "list"),)),
    Operation(
        name="transit_keys", scope="list", input=m.TransitKeysArgs, output=m.TransitKeysOut, service=ResourceService,
        run=ResourceService.transit_keys, title="Your Transit keys", summary="A page of your Transit keys.",
        description="Your Transit keys with their type and versions (never key material).",
        annotations=hints(read_only=True, idempotent=True), audit=("after", "limit"), mcp=False,
        needs=(need("{transit}/keys/{key}", "read"),)),
    Operation(
        name="transit_key", scope="read", input=m.TransitKeyArgs, output=m.TransitKeyInfo, service=ResourceService,
        run=ResourceService.transit_key, title="A Transit key", summary="One of your Transit keys, described.",
        description="Type and versions of one of your Transit keys (never key material).",
        annotations=hints(read_only=True, idempotent=True), audit=("key",), mcp=False,
        needs=(need("{transit}/keys/{key}", "read"),)),
)
