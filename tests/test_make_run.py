"""``make run`` never leaks (issue 10): scripts/dev_run.py in a subprocess on free ports, with the real ``bao`` dev
server and the real bridge, stopped every way a run ends in practice.

Each test records the process ids of the runner, the dev server and the bridge, ends the run (SIGINT, SIGTERM,
SIGHUP, a background start with SIGINT ignored, ``kill -9`` of ``make``, ``kill -9`` of the runner) and polls
the process table and the ports until nothing is left. While the run is up it also checks that the dev
server's root token is on no command line and in no process environment but the dev server's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.devvault import free_port, free_port_pair, port_free

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")]

ROOT = Path(__file__).resolve().parents[1]
DEV_RUN = ROOT / "scripts" / "dev_run.py"
READY_WITHIN = 90.0
GONE_WITHIN = 60.0
API_KEY = "mk-run-key-" + "k" * 24


# -- the process table ------------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone, or not ours to read
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid), or None when the process is gone."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if not raw:
        return None
    state, ppid = raw[raw.rindex(")") + 2:].split()[:2]  # the command name may hold spaces and parentheses
    return state, int(ppid)


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has stopped; only its parent must reap it


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    return [p for p in pids() if (stat := _stat(p)) is not None and stat[1] == pid and alive(p)]


def runners(pid: int) -> list[int]:
    """The dev_run.py processes below ``pid`` (make may run its recipe through a shell)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            (found if "dev_run.py" in cmdline(child) else todo).append(child)
    return found


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")


def environ(pid: int) -> dict[str, str]:
    pairs = (item.split(b"=", 1) for item in _read(f"/proc/{pid}/environ").split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def poll(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        time.sleep(0.1)


# -- one make run ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    launcher: subprocess.Popen[bytes]
    runner: int
    vault_port: int
    port: int
    out: Path
    run_dir: Path
    bao: int = 0
    bridge: int = 0
    seen: list[int] = field(default_factory=list)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self) -> None:
        def up() -> bool:
            assert alive(self.runner), f"the runner exited early:\n{self.output()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        poll(up, READY_WITHIN, "the bridge answers /healthz")
        kids = children(self.runner)
        self.bao = next(p for p in kids if "server -dev" in cmdline(p))
        self.bridge = next(p for p in kids if "-m bridge serve" in cmdline(p))
        self.seen += [self.runner, self.bao, self.bridge]

    def request(self, key: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/secrets/demo/db", method="PUT",
                                     data=json.dumps({"data": {"pw": "x"}}).encode(),
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def assert_all_gone(self) -> None:
        poll(lambda: not any(alive(p) for p in self.seen), GONE_WITHIN,
             "runner, dev server and bridge all exited: still running "
             + ", ".join(f"{p} ({cmdline(p)[:60]})" for p in self.seen if alive(p)))
        ports = (self.vault_port, self.vault_port + 1, self.port)
        poll(lambda: all(port_free(p) for p in ports), 10, f"ports {ports} free again")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    drop = ("VAULT_", "BAO_", "API_KEYS_", "JWT_", "DEV_", "DEMO_", "MTLS_", "AUTH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("PORT", "HOST")}
    env.update({"DEV_RUN_DIR": str(tmp_path / "run"), "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """``start_run(argv_or_shell, **env)``: launch, wait until the bridge answers; everything it started is
    killed at the end whatever the test did (so a failing test leaks nothing either)."""
    runs: list[Run] = []

    def start(how: str = "direct", **extra: str) -> Run:
        vault_port, port = free_port_pair(), free_port()
        env = clean_env(tmp_path, DEV_VAULT_PORT=str(vault_port), PORT=str(port), **extra)
        out = tmp_path / f"out-{len(runs)}.log"
        with out.open("wb") as log:
            if how == "direct":
                launcher = subprocess.Popen([sys.executable, str(DEV_RUN)], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
                runner = launcher.pid
            elif how == "background":
                # A non-interactive shell starts `cmd &` with SIGINT and SIGQUIT ignored (POSIX).
                launcher = subprocess.Popen(["sh", "-c", '"$0" "$1" >"$2" 2>&1 & echo $!; wait', sys.executable,
                                             str(DEV_RUN), str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                assert launcher.stdout is not None
                runner = int(launcher.stdout.readline())
            else:  # make: the real Makefile target, its venv stamp taken as up to date
                make = shutil.which("make")
                assert make is not None
                launcher = subprocess.Popen([make, "--no-print-directory", "-o", ".venv/.installed-stamp", "run",
                                             f"BIN={Path(sys.executable).parent}", f"PYTHON={sys.executable}"],
                                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                poll(lambda: bool(runners(launcher.pid)), 30, "make started the runner")
                runner = runners(launcher.pid)[0]
        run = Run(launcher, runner, vault_port, port, out, tmp_path / "run", seen=[launcher.pid])
        runs.append(run)
        run.wait_ready()
        return run

    yield start
    for run in runs:
        for pid in run.seen:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in (run.bao, run.bridge):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # each leads its own process group
        run.launcher.kill()
        run.launcher.wait(timeout=10)
        if run.launcher.stdout is not None:
            run.launcher.stdout.close()


def assert_root_token_private(run: Run) -> None:
    """The root token is only in the dev server's own environment: on no command line (``ps`` shows those to
    every user) and in no other process's environment (the bridge logs in with its own AppRole)."""
    bao_env = environ(run.bao)
    token = bao_env.get("BAO_DEV_ROOT_TOKEN_ID", "")
    if not token:  # before the fix: the token was a command-line flag
        flag = next((a for a in cmdline(run.bao).split() if a.startswith("-dev-root-token-id=")), "")
        token = flag.split("=", 1)[1] if flag else ""
    assert token, "the dev server's root token was not found"
    leaks = [f"{pid} cmdline ({cmdline(pid)[:60]})" for pid in pids() if token in cmdline(pid)]
    leaks += [f"{pid} environ ({cmdline(pid)[:60]})" for pid in pids()
              if pid != run.bao and any(token in v for v in environ(pid).values())]
    assert not leaks, f"the root token is visible in: {leaks}"
    assert "VAULT_TOKEN" not in environ(run.bridge)
    assert (run.run_dir / "openbao.log").stat().st_mode & 0o077 == 0, "the log (it holds the token) is not private"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_everything(sig: signal.Signals, start_run: Callable[..., Run]) -> None:
    run = start_run(DEMO_API_KEY=API_KEY)
    assert run.request(API_KEY) == 200
    assert_root_token_private(run)
    os.kill(run.runner, sig)
    assert run.launcher.wait(timeout=GONE_WITHIN) == 0
    run.assert_all_gone()
    out = run.output()
    assert f"stopping ({sig.name})" in out
    assert "vault.token.revoked" in out  # the bridge stopped gracefully, before the dev server


def test_a_background_run_still_stops_on_sigint(start_run: Callable[..., Run]) -> None:
    # The premise: this shell really starts a background command with SIGINT ignored.
    probe = subprocess.run(["sh", "-c", "grep SigIgn /proc/self/status & wait"], capture_output=True, text=True,
                           check=True, timeout=10)
    assert int(probe.stdout.split()[1], 16) & (1 << (signal.SIGINT - 1))
    run = start_run("background")
    os.kill(run.runner, signal.SIGINT)
    run.assert_all_gone()
    assert "stopping (SIGINT)" in run.output()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_killing_make_stops_everything(start_run: Callable[..., Run]) -> None:
    run = start_run("make")
    assert_root_token_private(run)
    os.kill(run.launcher.pid, signal.SIGKILL)  # make dies without a word to its children
    run.launcher.wait(timeout=10)
    run.assert_all_gone()
    assert "stopping (parent process gone)" in run.output()


def test_killing_the_runner_stops_its_children(start_run: Callable[..., Run]) -> None:
    run = start_run()
    os.kill(run.runner, signal.SIGKILL)  # no finally runs: the kernel tells the children (PR_SET_PDEATHSIG)
    run.launcher.wait(timeout=10)
    run.assert_all_gone()


def test_the_banner_names_configured_keys_and_never_invents_one(start_run: Callable[..., Run],
                                                                tmp_path: Path) -> None:
    keys = {API_KEY: "alice", "sha256:" + "0" * 64: {"agent": "bob", "scopes": ["read"]}}
    run = start_run(API_KEYS_JSON=json.dumps(keys))
    out = run.output()
    assert "API key     : from API_KEYS_JSON: 2 key(s) for alice, bob (not shown)" in out
    assert API_KEY not in out
    assert "demo-" not in out
    assert 'X-API-Key: $API_KEY' in out
    assert "agents      : agent_api, agent_jwt, agent_mtls, alice, bob" in out
    assert run.request(API_KEY) == 200  # alice was provisioned too: her key works under her own child token
    os.kill(run.runner, signal.SIGTERM)
    run.assert_all_gone()

    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({API_KEY: "carol"}))
    run = start_run(API_KEYS_FILE=str(key_file))
    out = run.output()
    assert "API key     : from API_KEYS_FILE: 1 key(s) for carol (not shown)" in out
    assert API_KEY not in out
    assert "API_KEYS_JSON" not in environ(run.bridge)
    assert environ(run.bridge)["API_KEYS_FILE"] == str(key_file)
    os.kill(run.runner, signal.SIGTERM)
    run.assert_all_gone()
