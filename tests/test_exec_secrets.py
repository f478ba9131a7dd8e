"""``vault-mcp-bridge exec`` end to end: a real bridge process on real OpenBao resolves the references; the
child gets the values in its environment (not its command line); its output reaches us scrubbed, including a
value split across writes; exit codes and signals pass through; refusals exit 125 with the bridge's error."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import secrets
import signal
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bridge.cli import main
from bridge.exec_secrets import ExecError, parse_binding
from bridge.references import LeaseReference, Reference
from devtools.devvault import DevVault, free_port, stop_process
from tests.conftest import API_KEY_ALICE, API_KEYS

pytestmark = pytest.mark.integration

LIST_ONLY_KEY = "list-only-key-" + "l" * 16
USE_ONLY_KEY = "use-only-key-" + "u" * 17
TOKEN = "tok_" + secrets.token_hex(12) + "/+=&?"
PASSWORD = "pässwörd \"quoted\" " + secrets.token_hex(6)


@dataclass
class Bridge:
    url: str
    key_file: Path
    list_key_file: Path
    prefix: str
    use_key_file: Path


def _http(method: str, url: str, body: object | None = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"X-API-Key": API_KEY_ALICE, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def bridge(bao: DevVault, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """``python -m bridge serve`` on a free port, like tests/support/servers.py's ``spawn_bridge``."""
    tmp = tmp_path_factory.mktemp("exec")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "warning", "VAULT_ADDR": bao.addr,
                "VAULT_TOKEN": bao.root_token,
                "API_KEYS_JSON": json.dumps({**API_KEYS, LIST_ONLY_KEY: {"agent": "alice", "scopes": ["list"]},
                                             USE_ONLY_KEY: {"agent": "alice", "scopes": ["use", "list"]}})})
    log_path = tmp / "bridge.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bridge exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bridge did not come up")
            time.sleep(0.05)
        prefix = f"exec-{secrets.token_hex(4)}"
        assert _http("PUT", f"{url}/secrets/{prefix}/api", {"data": {"token": TOKEN, "n": 42}})[0] == 200
        assert _http("PUT", f"{url}/secrets/{prefix}/db", {"data": {"password": PASSWORD}})[0] == 200
        assert _http("PUT", f"{url}/secrets/{prefix}/db", {"data": {"password": "newer-" + PASSWORD}})[0] == 200
        assert _http("PUT", f"{url}/secrets/{prefix}/hidden", {"data": {"password": PASSWORD}})[0] == 200
        with urllib.request.urlopen(urllib.request.Request(  # an operator marks it: no value leaves the bridge
                f"{bao.addr}/v1/secret/metadata/mcp/alice/{prefix}/hidden", method="POST",
                data=json.dumps({"custom_metadata": {"bridge.reveal": "never"}}).encode(),
                headers={"X-Vault-Token": bao.root_token}), timeout=10) as resp:
            assert resp.status == 204
        key_file, list_key_file, use_key_file = tmp / "alice.key", tmp / "list.key", tmp / "use.key"
        key_file.write_text(API_KEY_ALICE + "\n")
        list_key_file.write_text(LIST_ONLY_KEY)
        use_key_file.write_text(USE_ONLY_KEY)
        yield Bridge(url, key_file, list_key_file, prefix, use_key_file)
    finally:
        stop_process(proc, timeout=15)


def run_exec(bridge: Bridge, envs: list[str], script: str, *, key_file: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    args = [sys.executable, "-m", "bridge", "exec", "--url", bridge.url, "--api-key-file",
            str(key_file or bridge.key_file)]
    for item in envs:
        args += ["--env", item]
    args += ["--", sys.executable, "-c", script]
    return subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="), quote(value, safe=""), quote_plus(value),
            json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]


CHILD = r"""
import base64, json, os, sys, time, urllib.parse
t, p, n = os.environ["TOKEN"], os.environ["PW"], os.environ["N"]
print("argv-has-values", any(t in a or p in a for a in sys.argv))
print("raw", t, "n", n)
print("b64", base64.b64encode(t.encode()).decode())
print("url", urllib.parse.quote(t, safe=""), urllib.parse.quote_plus(p))
print("json", json.dumps({"t": t, "p": p}))
print("basic", base64.b64encode(("user:" + p).encode()).decode())
sys.stdout.write("split " + p[:4]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(p[4:9]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(p[9:] + " end\n"); sys.stdout.flush()
print("err", p, file=sys.stderr)
print("plain text stays")
sys.exit(7)
"""


def test_values_in_the_environment_and_scrubbed_from_the_output(bridge: Bridge) -> None:
    result = run_exec(bridge, [f"TOKEN=secret://{bridge.prefix}/api#token", f"N=secret://{bridge.prefix}/api#n",
                               f"PW=secret://{bridge.prefix}/db#password@1"], CHILD)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 7, err
    assert "argv-has-values False" in out
    assert "raw [redacted:TOKEN] n [redacted:N]" in out
    assert "b64 [redacted:TOKEN]" in out
    assert "split [redacted:PW] end" in out  # written in three pieces with pauses between
    assert "err [redacted:PW]" in err
    assert "plain text stays" in out
    assert "[redacted:PW]" in out.split("basic ", 1)[1].splitlines()[0]
    for value in (TOKEN, PASSWORD):
        for form in forms(value):
            assert form not in out
            assert form not in err
    assert "newer-" not in out  # @1 pinned the first version


def exec_in_process(bridge: Bridge, envs: list[str], command: list[str], capfd: pytest.CaptureFixture[str], *,
                    key_file: Path | None = None) -> tuple[int, str, str]:
    """``vault-mcp-bridge exec`` run in this process (``bridge.cli.main``): its status, stdout and stderr."""
    argv = ["exec", "--url", bridge.url, "--api-key-file", str(key_file or bridge.key_file)]
    for item in envs:
        argv += ["--env", item]
    status = main([*argv, "--", *command])
    out, err = capfd.readouterr()
    return status, out, err


def test_exit_codes_and_refusals(bridge: Bridge, capfd: pytest.CaptureFixture[str]) -> None:
    py = [sys.executable, "-c"]
    assert exec_in_process(bridge, [], [*py, "import sys; sys.exit(0)"], capfd)[0] == 0
    assert exec_in_process(bridge, [], [*py, "import sys; sys.exit(42)"], capfd)[0] == 42
    never = [*py, "print('never')"]
    status, out, err = exec_in_process(bridge, [f"X=secret://{bridge.prefix}/nope#v"], never, capfd)
    assert status == 125
    assert "404 not_found" in err
    assert "never" not in out
    status, _, err = exec_in_process(bridge, [f"X=secret://{bridge.prefix}/api#nope"], never, capfd)
    assert status == 125
    assert "has no field 'nope'" in err
    status, out, err = exec_in_process(bridge, [f"X=secret://{bridge.prefix}/api#token"], never, capfd,
                                       key_file=bridge.list_key_file)
    assert status == 125
    assert "403" in err
    assert TOKEN not in err + out
    # the new read shapes: a use-only key, and a secret no one may see, get references: no values, no child
    for key_file, ref in ((bridge.use_key_file, f"secret://{bridge.prefix}/api#token"),
                          (bridge.key_file, f"secret://{bridge.prefix}/hidden#password")):
        status, out, err = exec_in_process(bridge, [f"X={ref}"], never, capfd, key_file=key_file)
        assert status == 125
        assert "references instead of values" in err
        assert "never" not in out
        assert TOKEN not in err + out and PASSWORD not in err + out  # noqa: PT018
    status, _, err = exec_in_process(bridge, ["X=secret://../x#y"], never, capfd)
    assert status == 2
    assert "invalid" in err.lower()
    twice = [f"X=secret://{bridge.prefix}/api#token", f"X=secret://{bridge.prefix}/api#n"]
    assert exec_in_process(bridge, twice, never, capfd)[0] == 2
    assert exec_in_process(bridge, [], ["/nonexistent/cmd"], capfd)[0] == 127
    assert exec_in_process(bridge, [], [], capfd)[0] == 2


SIGNALLED = r"""
import os, signal, sys, time
def on_term(signum, frame):
    print("child got", signal.Signals(signum).name, os.environ["TOKEN"], flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, signal.SIG_DFL)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 3), (signal.SIGINT, -signal.SIGINT)])
def test_signals_are_forwarded(bridge: Bridge, sig: signal.Signals, expected: int) -> None:
    """SIGTERM reaches the child (which handles it and exits 3); SIGINT kills the child, and exec then dies of
    SIGINT itself, as if it were the child."""
    args = [sys.executable, "-m", "bridge", "exec", "--url", bridge.url, "--api-key-file", str(bridge.key_file),
            "--env", f"TOKEN=secret://{bridge.prefix}/api#token", "--", sys.executable, "-c", SIGNALLED]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        out, _err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == expected
    if sig == signal.SIGTERM:
        assert out == b"child got SIGTERM [redacted:TOKEN]\n"


COUNT_SIGINT = r"""
import signal, sys, time
count = 0
def on_int(signum, frame):
    global count
    count += 1
signal.signal(signal.SIGINT, on_int)
print("ready", flush=True)
deadline = time.monotonic() + 20
while count == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(0.7)  # room for a second, forwarded SIGINT
sys.exit(10 + count)
"""


def test_ctrl_c_on_a_terminal_reaches_the_child_once(bridge: Bridge) -> None:
    """With a terminal on stdin the child stays in the terminal's foreground group: Ctrl-C there delivers SIGINT
    to both processes, and exec, which ignores it itself, does not deliver it a second time."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    args = [sys.executable, "-m", "bridge", "exec", "--url", bridge.url, "--api-key-file", str(bridge.key_file),
            "--", sys.executable, "-c", COUNT_SIGINT]
    proc = subprocess.Popen(args, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        os.write(master, b"\x03")  # the terminal's interrupt character
        proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 11


def test_parse_binding() -> None:
    assert parse_binding("DB_PW=secret://app/db#password@2").reference == Reference("app/db", "password", 2)
    assert parse_binding("PGPASSWORD=lease://database/creds/mcp.a.ro/x1#password").reference == LeaseReference(
        "database/creds/mcp.a.ro/x1")
    for bad in ("=secret://a#b", "1X=secret://a#b", "X-Y=secret://a#b", "X", "X=secret://a", "X=http://a#b",
                "X=lease://a#username", "X=lease://a"):
        with pytest.raises(ExecError) as info:
            parse_binding(bad)
        assert info.value.exit_code == 2
