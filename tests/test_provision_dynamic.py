"""``vault-mcp-bridge provision --dynamic roles.yaml``: the file's schema (one-line errors, nothing written on bad
input) and, against a real OpenBao and PostgreSQL, idempotent provisioning of connections, roles and CAs."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.provision_dynamic import DynamicSpecError, load_dynamic, parse_dynamic, plan_dynamic
from bridge.vault.errors import VaultError
from devtools.devvault import DevVault
from tests.support.dynamic import CREATE_LOGIN, provision_dynamic, spec_dict
from tests.support.postgres import PostgresServer, can_login, make_login_role
from tests.support.vault import root_client

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "dynamic-roles.example.yaml"


def _spec(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "database": {
            "connections": {"app": {"plugin": "postgresql-database-plugin",
                                    "connection_url": "postgresql://{{username}}:{{password}}@db:5432/app",
                                    "username": "vault", "password": "pw-canary-0d1e"}},
            "roles": [{"agent": "alice", "name": "ro", "connection": "app", "creation_statements": ["x"],
                       "default_ttl": "15m", "max_ttl": "1h"}]}}
    base.update(sections)
    return base


def _error(data: Any) -> str:
    with pytest.raises(DynamicSpecError) as info:
        parse_dynamic(data)
    return str(info.value)


def test_the_shipped_example_is_valid() -> None:
    spec = load_dynamic(EXAMPLE)
    assert spec.agents() == ["alice", "bob"]
    names = [(section, role.vault_name("mcp", "agent")) for section, role in spec.roles()]
    assert names == [("database", "mcp.alice.readonly"), ("database", "mcp.bob.readonly"), ("pki", "mcp.alice.web"),
                     ("ssh", "mcp.alice.deploy")]
    plan = plan_dynamic(spec, prefix="mcp", scope="agent", environ={"APP_DB_VAULT_PASSWORD": "pw-canary-5b2"})
    assert plan.passwords["app"].get_secret_value() == "pw-canary-5b2"
    assert "pw-canary-5b2" not in repr(plan) + str(plan)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["database"]["roles"][0].pop("max_ttl"), "database.roles[0].max_ttl: Field required"),
    (lambda d: d["database"]["roles"][0].update(default_ttl="2h"), "default_ttl (7200s) exceeds max_ttl (3600s)"),
    (lambda d: d["database"]["roles"][0].update(max_ttl="soon"), "database.roles[0].max_ttl"),
    (lambda d: d["database"]["roles"][0].update(agent="Al.ice"), "database.roles[0].agent: must match"),
    (lambda d: d["database"]["roles"][0].update(name="a.b"), "database.roles[0].name: must match"),
    (lambda d: d["database"]["roles"][0].update(connection="other"), "connection 'other' is not declared"),
    (lambda d: d["database"]["roles"][0].update(creation_statements=[]), "creation_statements"),
    (lambda d: d["database"]["roles"][0].update(grant="all"), "grant: Extra inputs are not permitted"),
    (lambda d: d["database"]["connections"]["app"].update(password_env="X"), "exactly one of password"),
    (lambda d: d["database"]["connections"]["app"].pop("password"), "exactly one of password"),
    (lambda d: d["database"]["connections"]["app"].update(
        connection_url="postgresql://vault:hunter2@db/app"), "connection_url holds a password"),
    (lambda d: d["database"]["connections"]["app"].update(plugin="postgres"), "plugin"),
    (lambda d: d.update(vault={}), "vault: Extra inputs are not permitted"),
    (lambda d: d.update(pki={"roles": [{"agent": "a", "name": "w", "allowed_domains": [], "max_ttl": "1h"}]}),
     "pki.roles[0].allowed_domains"),
    (lambda d: d.update(ssh={"roles": [{"agent": "a", "name": "s", "allowed_users": ["deploy"],
                                        "default_user": "root", "max_ttl": "1h"}]}),
     "default_user 'root' is not in allowed_users"),
    (lambda d: d.update(ssh={"roles": [{"agent": "a", "name": "s", "allowed_users": ["a,b"], "max_ttl": "1h"}]}),
     "ssh.roles[0].allowed_users[0]"),
    (lambda d: d["database"]["roles"][0].update(allowed_hosts=[]), "database.roles[0].allowed_hosts: a list of"),
    (lambda d: d["database"]["roles"][0].update(allowed_hosts=["a.example,b.example"]), "one per item"),
    (lambda d: d["database"]["roles"][0].update(allowed_hosts=["https://a.example"]),
     "database.roles[0].allowed_hosts: entry 'https://a.example'"),
    (lambda d: d["database"]["roles"][0].update(allowed_hosts=["a.example:99999"]), "entry 'a.example:99999'"),
    (lambda d: d["database"]["roles"][0].update(allowed_hosts="a.example"), "database.roles[0].allowed_hosts"),
])
def test_bad_files_get_one_line_that_names_the_field(mutate: Any, expected: str) -> None:
    data = _spec()
    mutate(data)
    message = _error(data)
    assert expected in message, message
    assert "\n" not in message
    assert "pw-canary-0d1e" not in message
    assert "hunter2" not in message


def test_scope_rules_and_duplicates() -> None:
    spec = parse_dynamic(_spec())
    with pytest.raises(DynamicSpecError, match="agent must be absent"):
        spec.check_scope("mcp", "shared")
    no_agent = _spec()
    del no_agent["database"]["roles"][0]["agent"]
    with pytest.raises(DynamicSpecError, match=r"database.roles\[0\]: agent is required"):
        parse_dynamic(no_agent).check_scope("mcp", "agent")
    parse_dynamic(no_agent).check_scope("mcp", "shared")
    twice = _spec()
    twice["database"]["roles"].append(dict(twice["database"]["roles"][0]))
    with pytest.raises(DynamicSpecError, match=r"mcp.alice.ro is declared twice"):
        parse_dynamic(twice).check_scope("mcp", "agent")
    with pytest.raises(DynamicSpecError, match="--prune needs"):
        plan_dynamic(parse_dynamic(no_agent), prefix="mcp", scope="shared", prune=True)


def test_passwords_come_from_exactly_one_place(tmp_path: Path) -> None:
    data = _spec()
    conn = data["database"]["connections"]["app"]
    del conn["password"]
    conn["password_env"] = "DB_PW"
    with pytest.raises(DynamicSpecError, match="DB_PW is not set"):
        plan_dynamic(parse_dynamic(data), prefix="mcp", scope="agent", environ={})
    plan = plan_dynamic(parse_dynamic(data), prefix="mcp", scope="agent", environ={"DB_PW": "from-env"})
    assert plan.passwords["app"].get_secret_value() == "from-env"
    del conn["password_env"]
    conn["password_file"] = str(tmp_path / "pw")
    with pytest.raises(DynamicSpecError, match="cannot read"):
        plan_dynamic(parse_dynamic(data), prefix="mcp", scope="agent", environ={})
    (tmp_path / "pw").write_text("from-file\n")
    plan = plan_dynamic(parse_dynamic(data), prefix="mcp", scope="agent", environ={})
    assert plan.passwords["app"].get_secret_value() == "from-file"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DynamicSpecError, match="cannot read"):
        load_dynamic(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("database:\n  roles: [\n")
    with pytest.raises(DynamicSpecError, match="not valid YAML at line"):
        load_dynamic(bad)
    bad.write_text("")
    with pytest.raises(DynamicSpecError, match="empty"):
        load_dynamic(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(DynamicSpecError, match="mapping"):
        load_dynamic(bad)


# -- against OpenBao and PostgreSQL ----------------------------------------------------------------------------

pg = pytest.mark.integration


async def _read(bao: DevVault, namespace: str, path: str, **params: str) -> dict[str, Any]:
    async with root_client(bao, namespace) as root:
        return (await root.request("GET", path, operation="test.read", params=params or None)).data or {}


async def _creds(bao: DevVault, namespace: str, role: str) -> dict[str, Any]:
    async with root_client(bao, namespace) as root:
        return (await root.request("GET", f"database/creds/{role}", operation="test.creds")).data or {}


@pg
async def test_first_run_creates_everything_second_changes_nothing(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    first = await provision_dynamic(bao, fresh_namespace, postgres)
    text = "\n".join(first.result.changes)
    for expected in ("created token role mcp-agent-lease", "created Transit key mcp-bridge-fingerprint (hmac)",
                     "enabled the database secrets engine at database/", "created database connection app",
                     "created database role mcp.alice.ro", "created database role mcp.bob.ro",
                     "enabled the pki secrets engine at pki/", "generated the root CA 'bridge test root' at pki/",
                     "created PKI role mcp.alice.web", "created PKI role mcp.bob.web",
                     "enabled the ssh secrets engine at ssh/", "generated an SSH CA at ssh/ (sshd TrustedUserCAKeys: "
                     "ssh-ed25519 ", "created SSH role mcp.alice.shell", "created SSH role mcp.bob.shell"):
        assert expected in text, text
    assert first.admin_password not in text
    second = await provision_dynamic(bao, fresh_namespace, postgres, admin=(first.admin, first.admin_password))
    assert second.result.changes == []
    # what Vault holds
    conn = await _read(bao, fresh_namespace, "database/config/app")
    assert sorted(conn["allowed_roles"]) == ["mcp.alice.ro", "mcp.bob.ro"]
    assert "password" not in conn["connection_details"]  # Vault never returns it
    role = await _read(bao, fresh_namespace, "pki/roles/mcp.alice.web")
    assert role["generate_lease"] is True
    assert role["no_store"] is False
    assert (role["allow_localhost"], role["allow_ip_sans"], role["allow_wildcard_certificates"]) == (False,) * 3
    ssh = await _read(bao, fresh_namespace, "ssh/roles/mcp.alice.shell")
    assert (ssh["key_type"], ssh["allowed_users"], ssh["allow_host_certificates"]) == ("ca", "deploy", False)
    creds = await _creds(bao, fresh_namespace, "mcp.alice.ro")
    assert await can_login(postgres, creds["username"], creds["password"])


@pg
async def test_drift_is_repaired_and_the_stored_password_is_kept(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    first = await provision_dynamic(bao, fresh_namespace, postgres)
    admin = (first.admin, first.admin_password)
    async with root_client(bao, fresh_namespace) as root:
        await root.request("POST", "database/config/app", operation="test", json_body={"allowed_roles": ["*"]})
        await root.request("POST", "database/roles/mcp.alice.ro", operation="test",
                           json_body={"db_name": "app", "creation_statements": [CREATE_LOGIN], "default_ttl": 60,
                                      "max_ttl": 3600})
        await root.request("POST", "pki/roles/mcp.bob.web", operation="test",
                           json_body={"allowed_domains": ["alice.example"], "max_ttl": 86400})
    repaired = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin)
    assert repaired.result.changes == ["updated database connection app at database/ (allowed_roles)",
                                       "updated database role mcp.alice.ro at database/",
                                       "updated PKI role mcp.bob.web at pki/"]
    # the update sent no password, and Vault still logs in with the one it stored
    creds = await _creds(bao, fresh_namespace, "mcp.bob.ro")
    assert await can_login(postgres, creds["username"], creds["password"])
    assert (await provision_dynamic(bao, fresh_namespace, postgres, admin=admin)).result.changes == []


@pg
async def test_allowed_roles_follow_the_file_and_prune_deletes_what_left_it(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    first = await provision_dynamic(bao, fresh_namespace, postgres)
    admin = (first.admin, first.admin_password)
    smaller = spec_dict(postgres, first.admin, agents=("alice",))
    kept = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=smaller)
    assert kept.result.changes == ["updated database connection app at database/ (allowed_roles)"]
    assert (await _read(bao, fresh_namespace, "database/config/app"))["allowed_roles"] == ["mcp.alice.ro"]
    warned = "\n".join(kept.result.warnings)
    for name in ("database role mcp.bob.ro at database/", "PKI role mcp.bob.web at pki/",
                 "SSH role mcp.bob.shell at ssh/"):
        assert f"{name} is not in the file (--prune deletes it)" in warned, warned
    async with root_client(bao, fresh_namespace) as root:  # bob's role no longer works: not an allowed role
        with pytest.raises(Exception, match="not an allowed role"):
            await root.request("GET", "database/creds/mcp.bob.ro", operation="test")
        await root.request("POST", "ssh/roles/other-role", operation="test",
                           json_body={"key_type": "ca", "allow_user_certificates": True, "allowed_users": "x"})
    pruned = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=smaller, prune=True)
    assert pruned.result.changes == ["deleted database role mcp.bob.ro at database/ (not in the file)",
                                     "deleted PKI role mcp.bob.web at pki/ (not in the file)",
                                     "deleted SSH role mcp.bob.shell at ssh/ (not in the file)"]
    assert (await _read(bao, fresh_namespace, "ssh/roles/other-role"))["allowed_users"] == "x"  # not ours: kept
    again = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=smaller, prune=True)
    assert again.result.changes == []
    assert not [w for w in again.result.warnings if "not in the file" in w]


@pg
async def test_allowed_hosts_of_database_roles_are_kept_in_the_bridge_state(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    """A database role's ``allowed_hosts`` go to ``_bridge/database-roles/<vault role>`` (what the bridge reads to
    broker a use-only identity's password), idempotently; changed, dropped and removed with the role."""
    admin = await make_login_role(postgres, createrole=True)
    data = spec_dict(postgres, admin[0])
    data["database"]["roles"][0]["allowed_hosts"] = ["db-api.example.com:8443", " *.example.org "]
    first = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=copy.deepcopy(data))
    assert ("set the allowed_hosts of database role mcp.alice.ro (db-api.example.com:8443,*.example.org)"
            in first.result.changes)
    doc = "secret/data/mcp/_bridge/database-roles/mcp.alice.ro"
    stored = (await _read(bao, fresh_namespace, doc))["data"]
    assert stored == {"allowed_hosts": "db-api.example.com:8443,*.example.org"}
    with pytest.raises(VaultError):  # bob's role lists none: no document
        await _read(bao, fresh_namespace, "secret/data/mcp/_bridge/database-roles/mcp.bob.ro")
    again = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=copy.deepcopy(data))
    assert again.result.changes == []
    assert "allowed_hosts of database role mcp.alice.ro" in again.result.unchanged
    data["database"]["roles"][0]["allowed_hosts"] = ["db-api.example.com:8443"]
    data["database"]["roles"][1]["allowed_hosts"] = ["10.0.0.5:5000"]
    changed = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=copy.deepcopy(data))
    assert changed.result.changes == [
        "updated the allowed_hosts of database role mcp.alice.ro (db-api.example.com:8443)",
        "set the allowed_hosts of database role mcp.bob.ro (10.0.0.5:5000)"]
    del data["database"]["roles"][0]["allowed_hosts"]  # alice's passwords: no longer brokerable
    data["database"]["roles"] = data["database"]["roles"][:1]  # bob's role leaves the file
    dropped = await provision_dynamic(bao, fresh_namespace, postgres, admin=admin, spec=copy.deepcopy(data))
    assert "deleted the allowed_hosts of database role mcp.alice.ro (not brokerable)" in dropped.result.changes
    assert "deleted the allowed_hosts of database role mcp.bob.ro (not in the file)" in dropped.result.changes
    for name in ("mcp.alice.ro", "mcp.bob.ro"):
        with pytest.raises(VaultError):
            await _read(bao, fresh_namespace, f"secret/data/mcp/_bridge/database-roles/{name}")
    assert not [c for c in (await provision_dynamic(bao, fresh_namespace, postgres, admin=admin,
                                                    spec=copy.deepcopy(data))).result.changes if "allowed_hosts" in c]


@pg
async def test_existing_cas_are_kept_and_a_pki_mount_without_one_is_an_error(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    data = spec_dict(postgres, "unused")
    del data["database"]
    del data["pki"]["generate_root"]
    with pytest.raises(Exception, match=r"pki/ has no CA: add pki.generate_root"):
        await provision_dynamic(bao, fresh_namespace, postgres, admin=("x", "y"), spec=data)
    async with root_client(bao, fresh_namespace) as root:
        made = await root.request("POST", "pki/root/generate/internal", operation="test",
                                  json_body={"common_name": "operator's CA", "ttl": "1h", "key_type": "ec"})
        serial = (made.data or {})["serial_number"]
        await root.request("POST", "sys/mounts/ssh", operation="test", json_body={"type": "ssh"})
        await root.request("POST", "ssh/config/ca", operation="test",
                           json_body={"generate_signing_key": True, "key_type": "ed25519"})
        ssh_ca = (await root.request("GET", "ssh/config/ca", operation="test")).data or {}
    data["pki"]["generate_root"] = {"common_name": "would replace"}
    done = await provision_dynamic(bao, fresh_namespace, postgres, admin=("x", "y"), spec=data)
    assert not [c for c in done.result.changes if "CA" in c]
    issuers = await _read(bao, fresh_namespace, "pki/issuers", list="true")
    assert [v["serial_number"] for v in issuers["key_info"].values()] == [serial]
    assert (await _read(bao, fresh_namespace, "ssh/config/ca"))["public_key"] == ssh_ca["public_key"]


@pg
async def test_a_wrong_mount_type_is_refused(bao: DevVault, fresh_namespace: str, postgres: PostgresServer) -> None:
    async with root_client(bao, fresh_namespace) as root:
        await root.request("POST", "sys/mounts/ssh", operation="test", json_body={"type": "kv"})
    data = spec_dict(postgres, "unused")
    del data["database"]
    with pytest.raises(Exception, match="ssh/ is mounted but is not the ssh secrets engine"):
        await provision_dynamic(bao, fresh_namespace, postgres, admin=("x", "y"), spec=data)


# -- the command line -----------------------------------------------------------------------------------------


def _cli(bao: DevVault, namespace: str, *args: str, password: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token, "VAULT_NAMESPACE": namespace,
           "TEST_DB_ADMIN_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "bridge", "provision", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pg
async def test_cli_never_prints_the_password_and_bad_files_change_nothing(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer, tmp_path: Path) -> None:
    admin, password = await make_login_role(postgres, createrole=True)
    path = tmp_path / "roles.yaml"
    data = spec_dict(postgres, admin)
    bad = copy.deepcopy(data)
    bad["database"]["roles"][0]["max_ttl"] = "1 hour"
    path.write_text(yaml.safe_dump(bad))
    refused = _cli(bao, fresh_namespace, "--dynamic", str(path), password=password)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert refused.stderr.startswith(f"provision: {path}: database.roles[0].max_ttl:")
    assert refused.stdout == ""
    mounts = await _read(bao, fresh_namespace, "sys/mounts")
    assert "secret/" not in mounts  # nothing was provisioned
    path.write_text(yaml.safe_dump(data))
    first = _cli(bao, fresh_namespace, "--dynamic", str(path), password=password)  # agents from the file
    assert first.returncode == 0, first.stderr
    assert "created database connection app at database/" in first.stderr
    assert "created policy mcp-agent-bob" in first.stderr
    lines = dict(line.split("=", 1) for line in first.stdout.splitlines())  # stdout: env lines only
    assert lines["DATABASE_MOUNT"] == "database"
    assert lines["FINGERPRINT_KEY"] == "mcp-bridge-fingerprint"
    second = _cli(bao, fresh_namespace, "--dynamic", str(path), password=password)
    assert second.returncode == 0, second.stderr
    assert "no changes" in second.stderr
    for out in (refused, first, second):
        assert password not in out.stdout + out.stderr
    # a wrong password: Vault's own verification fails, its message names no password
    data["database"]["connections"]["other"] = dict(data["database"]["connections"]["app"])
    data["database"]["roles"][0]["connection"] = "other"
    path.write_text(yaml.safe_dump(data))
    wrong = _cli(bao, fresh_namespace, "--dynamic", str(path), password="wrong-" + password)
    assert wrong.returncode == 1
    assert "provision: database connection other at database/: vault answered 400" in wrong.stderr
    assert password not in wrong.stdout + wrong.stderr


@pg
async def test_a_changed_password_is_written_only_when_asked(
        bao: DevVault, fresh_namespace: str, postgres: PostgresServer, tmp_path: Path) -> None:
    import asyncpg

    first = await provision_dynamic(bao, fresh_namespace, postgres)
    admin = (first.admin, first.admin_password)
    conn = await asyncpg.connect(postgres.dsn(), timeout=30)
    try:
        await conn.execute(f"ALTER ROLE \"{first.admin}\" PASSWORD 'changed-{first.admin_password}'")
    finally:
        await conn.close()
    new = (first.admin, f"changed-{first.admin_password}")
    async with root_client(bao, fresh_namespace) as root:
        with contextlib.suppress(VaultError):  # drop the plugin's pooled logins (reconnecting fails now)
            await root.request("POST", "database/reset/app", operation="test", json_body={})
        with pytest.raises(Exception, match="password authentication failed"):
            await root.request("GET", "database/creds/mcp.alice.ro", operation="test")
    unchanged = await provision_dynamic(bao, fresh_namespace, postgres, admin=new)
    assert unchanged.result.changes == []  # Vault never returns the password: nothing to compare
    written = await provision_dynamic(bao, fresh_namespace, postgres, admin=new, write_db_passwords=True)
    assert written.result.changes == ["updated database connection app at database/ (password)"]
    creds = await _creds(bao, fresh_namespace, "mcp.alice.ro")
    assert await can_login(postgres, creds["username"], creds["password"])
    assert admin != new
