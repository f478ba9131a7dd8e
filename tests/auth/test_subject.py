"""The one subject rule: lower-cased, then ``^[a-z0-9][a-z0-9_-]{0,63}$``, else 403 ``invalid_subject``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.auth.identity import normalize_subject
from bridge.errors import ForbiddenError
from devtools.fakevault import FakeVault
from tests.auth.conftest import MakeClient, hs256
from tests.auth.test_mtls import MTLS_ENV
from tests.support.pki import issue, make_ca, relayed


@pytest.mark.parametrize(("raw", "subject"), [
    ("alice", "alice"), ("ALICE", "alice"), ("Agent_API", "agent_api"), ("a", "a"), ("0", "0"),
    ("a" * 64, "a" * 64), ("a-b_c-9", "a-b_c-9"),
])
def test_valid_subjects(raw: str, subject: str) -> None:
    assert normalize_subject(raw, "api_key") == subject


BAD = ["", "a" * 65, "_alice", "-alice", "alice.smith", "alice@example.com", "team/alice", "a b", " alice",
       "alice ", "alice\n", "\talice", "al*ce", "..", "\u212aate",  # KELVIN SIGN lower-cases to ASCII 'k'
       "\u0130nes", "\u00e9lise", "alice\x00"]


@pytest.mark.parametrize("raw", BAD)
def test_invalid_subjects(raw: str) -> None:
    with capture_logs() as logs, pytest.raises(ForbiddenError) as info:
        normalize_subject(raw, "jwt")
    assert info.value.code == "invalid_subject"
    assert info.value.status == 403
    assert "^[a-z0-9][a-z0-9_-]{0,63}$" in info.value.message
    assert [e["event"] for e in logs] == ["auth.subject.invalid"]
    assert logs[0]["log_level"] == "warning"


async def test_invalid_subject_through_each_method(make_client: MakeClient, fake_vault: FakeVault,
                                                   tmp_path: Path) -> None:
    client = await make_client(env=MTLS_ENV, api_keys_json=json.dumps({"dotted-key-" + "1" * 20: "alice.smith"}))
    ca = make_ca(tmp_path, "ca")
    attempts = [
        {"X-API-Key": "dotted-key-" + "1" * 20},
        {"Authorization": f"Bearer {hs256({'sub': 'Alice@Example.com'})}"},
        {"Authorization": f"Bearer {hs256({'sub': chr(0x212A) + 'ate'})}"},
        relayed(issue(tmp_path, ca, "team-alice", cn="team/alice")),
    ]
    for headers in attempts:
        resp = await client.put("/secrets/x", json={"data": {"a": 1}}, headers=headers)
        assert resp.status == 403, headers
        err = (await resp.json())["error"]
        assert err["code"] == "invalid_subject"
        assert "^[a-z0-9][a-z0-9_-]{0,63}$" in err["message"]
    assert fake_vault.calls("secret/") == []
