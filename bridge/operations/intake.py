"""Intake: a human types values into a one-time form; the agent (and its model) only learn that they were stored
(:class:`~bridge.service.intake.IntakeService`; docs/use-dont-reveal.md, "Intake links")."""

from __future__ import annotations

from dataclasses import replace

from bridge import models as m
from bridge.operations.kv import DATA, SECRET_PATH, _secret
from bridge.operations.spec import AnyOperation, Operation, Param, hints
from bridge.service.capabilities import need
from bridge.service.intake import IntakeService

REQUEST_INPUT = "kv_request_input"
"""The tool the MCP endpoint turns into a URL-mode elicitation (bridge/mcp/elicitation.py)."""
INTAKE_ID = Param("id", "query", {"type": "string", "minLength": 1, "maxLength": 2000},
                  "The elicitation_id kv_request_input returned.")

OPERATIONS: tuple[AnyOperation, ...] = (
    Operation(
        name=REQUEST_INPUT, scope="write", input=m.IntakeRequestArgs, output=m.IntakeOut, service=IntakeService,
        run=IntakeService.request, title="Ask a human for secret values",
        summary="Make a one-time form where a human types values into a secret (the caller never sees them).",
        description=(
            "Ask a human to provide secret values (passwords, API keys, private keys) for the secret 'path' "
            "without them passing through you: the bridge makes a one-time web form, the human types the values "
            "there, and they are written to Vault directly. You only learn that they were stored: the new "
            "version and a fingerprint per field. 'fields' names the keys to ask for (objects may add 'label', "
            "'description', and 'multiline': true for PEM keys); 'description' tells the human what the values "
            "are for. The write checks that the secret is still at its current version; keys not asked for are "
            "kept. If your client supports it, it shows the link to the human and this call returns once the "
            "values are stored or the human declined; otherwise the result has a 'url' to give the human and an "
            "'elicitation_id' for kv_request_input_status. Never ask for secret values in the chat."),
        annotations=hints(read_only=False, destructive=True, idempotent=False), audit=("path",),
        needs=(need(DATA, "create", "update"),),  # the human's values are written with the agent's token
        rest=replace(_secret("POST", ":request-input", route="secret_post", body=m.IntakeRequestBody, errors=()),
                     exclude_none=True)),
    Operation(
        name="kv_request_input_status", scope="write", input=m.IntakeStatusArgs, output=m.IntakeOut,
        service=IntakeService, run=IntakeService.status, title="Outcome of a request for secret values",
        summary="What became of a kv_request_input request: pending, or stored with version and fingerprints.",
        description=(
            "Check a request made with kv_request_input ('id' = its elicitation_id, 'path' = its path): "
            "'pending' while the human has not submitted the form; 'stored' with the new 'version' and the "
            "values' 'fingerprints'; 'failed' (with 'code', e.g. cas_mismatch: the secret changed meanwhile), "
            "'declined', 'cancelled' or 'expired' otherwise. Never returns the values."),
        annotations=hints(read_only=True, idempotent=True), audit=("path",),
        needs=(need(DATA, "create", "update"),),
        rest=replace(_secret("GET", ":request-input", route="secret_get", query=("id",),
                             params=(SECRET_PATH, INTAKE_ID)), exclude_none=True)),
)
