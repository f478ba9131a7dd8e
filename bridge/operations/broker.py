"""Brokered HTTP (:class:`~bridge.service.broker.BrokerService`): an HTTP request that uses secrets through
``{{secret://…}}`` placeholders, sent by the bridge to a host every used secret allows, answered redacted."""

from __future__ import annotations

from typing import Any

from bridge.broker import BrokerHttpAnswer, BrokerHttpBody, audit_fields
from bridge.operations.spec import AnyOperation, Operation, RestBinding, hints
from bridge.service.broker import BrokerService
from bridge.service.capabilities import need


def _audit(args: BrokerHttpBody, out: BrokerHttpAnswer | None) -> dict[str, Any]:
    return audit_fields(args, out)


OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name="http_request", scope=("use", "read"), input=BrokerHttpBody, output=BrokerHttpAnswer,
        service=BrokerService, run=BrokerService.http_request, audit_details=_audit,
        title="HTTP request using secrets",
        summary="Send an HTTP request with secret placeholders; the answer comes back with every value redacted.",
        description=(
            "Call an HTTP API with a secret you may use but never see: put {{secret://<path>#<field>}} (a "
            "reference from kv_read) into a header value, the URL's path or query, or the body, e.g. "
            "headers {\"Authorization\": \"Bearer {{secret://app/api#token}}\"}. The bridge fills the value in "
            "and sends the request only to a host the secret's operator allowed (bridge.allowed_hosts; else "
            "broker_not_brokerable / broker_host_not_allowed). Returns status, reason, headers and body with every "
            "value and its encoded forms replaced by [redacted:<fingerprint>]. No redirect is followed: a 3xx is "
            "the answer."),
        annotations=hints(read_only=False, destructive=True, idempotent=False, open_world=True),
        rest=RestBinding("POST", "/broker/http", route="broker_http", tag="broker",
                         errors=(404, 413, 502, 504), body=BrokerHttpBody),
        needs=(need("{kv}/data/{ns}/{probe}", "read"),)),  # the secrets are read with the agent's token
)
