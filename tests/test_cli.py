"""``vault-mcp-bridge gen-policy`` and ``python scripts/gen_policy.py``: the same HCL, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.policy import render_agent_policy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLAGS = ["--agent", "alice", "--mount", "secret", "--prefix", "mcp"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


def test_gen_policy_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gen-policy", *FLAGS]) == 0
    assert capsys.readouterr().out == render_agent_policy("alice", mount="secret", prefix="mcp")


def test_console_script_and_script_print_the_same_hcl() -> None:
    script = run(str(BIN / "vault-mcp-bridge"), "gen-policy", *FLAGS)
    legacy = run(sys.executable, "scripts/gen_policy.py", *FLAGS)
    module = run(sys.executable, "-m", "bridge", "gen-policy", *FLAGS)
    for proc in (script, legacy, module):
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
    assert script.stdout == legacy.stdout == module.stdout == render_agent_policy("alice")
    assert 'path "secret/data/mcp/alice/*"' in script.stdout


def test_flags_change_the_output() -> None:
    proc = run(sys.executable, "scripts/gen_policy.py", "--agent", "bob", "--mount", "kv", "--prefix", "agents",
               "--transit", "crypto")
    assert proc.returncode == 0
    assert 'path "kv/data/agents/bob/*"' in proc.stdout
    assert 'path "crypto/encrypt/agents.bob.*"' in proc.stdout


@pytest.mark.parametrize("argv", [["--agent", "bob.smith"], ["--agent", "alice", "--prefix", "A/B"],
                                  ["--agent", "alice", "--mount", 'x"y']])
def test_bad_names_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["gen-policy", *argv]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert len(out.err.strip().splitlines()) == 1
    assert out.err.startswith("gen-policy: ")


def test_agent_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gen-policy"])
    assert info.value.code == 2
    assert "--agent" in capsys.readouterr().err
