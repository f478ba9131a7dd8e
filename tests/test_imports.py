"""The structure of ``bridge/``: no import cycles, function-level and ``TYPE_CHECKING`` imports included; the
Vault client imports nothing of the rest of the bridge; the service layer and the executor know no aiohttp."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> Iterator[str]:
    """Every module of the package ``name`` imports, anywhere in the file (top level, functions, classes,
    ``if TYPE_CHECKING:``): ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def graph() -> dict[str, set[str]]:
    return {name: {dep for dep in imported(name, path) if dep in MODULES and dep != name}
            for name, path in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules in order, the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    edges = graph()
    assert len(MODULES) > 50
    assert "bridge.vault.client" in edges["bridge.vault.auth"]  # under TYPE_CHECKING
    assert "bridge.auth.api_key" in edges["bridge.cli"]  # inside a function
    assert "bridge.vault.errors" in edges["bridge.errors"]  # ``from bridge.vault import errors``


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_in_bridge() -> None:
    assert find_cycle(graph()) is None, " → ".join(find_cycle(graph()) or [])


def test_the_vault_client_imports_nothing_of_the_bridge() -> None:
    for name, deps in graph().items():
        if name.startswith("bridge.vault"):
            assert all(dep.startswith("bridge.vault") for dep in deps), (name, deps)


@pytest.mark.parametrize("layer", ["bridge.service", "bridge.operations"])
def test_services_and_the_executor_know_no_aiohttp(layer: str) -> None:
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            assert not [dep for dep in imported(name, path) if dep.split(".")[0] == "aiohttp"], name


def test_every_runtime_dependency_is_imported_and_authlib_is_none() -> None:
    """``install_requires`` lists what ``bridge/`` imports (README, Dependencies): joserfc for JOSE, no authlib."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    required = {line.split(">=")[0].split("[")[0].strip().lower()
                for line in config["options"]["install_requires"].splitlines() if line.strip()}
    modules = {dep.split(".")[0] for name, path in MODULES.items() for dep in imported(name, path)}
    import_names = {"aiohttp-jinja2": "aiohttp_jinja2", "prometheus-client": "prometheus_client", "pyyaml": "yaml"}
    assert "authlib" not in required
    assert "authlib" not in modules
    assert {import_names.get(pkg, pkg) for pkg in required} <= modules
