"""``make bench``: OpenBao direct vs the bridge, measured with wrk in one run, printed as one table.

Starts an OpenBao dev server (in memory) and bridge processes, then for each arrangement (``pinned``: OpenBao
and wrk on CPU 0, the bridge on CPU 1, as when Vault has its own machine; ``unpinned``: everything on every
CPU) and each concurrency (1, 16, 64, 256) drives each scenario for a few seconds with wrk (bench/wrk/
request.lua) and records requests/s, p50 and p99. Then it opens 1,000 idle keep-alive connections to the
bridge and records its RSS and peak RSS (VmHWM). Results: ``bench/results/<UTC time>.json`` (with the machine
and versions) and ``bench/results/latest.md``; the table is printed too.

Scenarios:
  a   direct Vault KV v2 read with the bridge's token (root)
  b   direct Vault KV v2 read with a policy-bound non-root token (mcp-agent-bench)
  c   bridge REST read with an API key
  d   bridge REST read with an RS256 JWT (JWKS file; skipped when the bridge has no RS256 support)
  e   bridge MCP tools/call kv_read (skipped without /mcp)
  f   bridge REST read in child-token mode (skipped without CHILD_TOKEN_ENABLED)
  g   bridge REST write (PUT)
  w   direct Vault KV v2 write with the bridge's token (the reference for g)
  v   fairness: a victim agent's REST reads (c=8), alone and while another agent floods the most expensive
      operation the default limits allow (``POST /transit/sign``, 100-item batches with an rsa-2048 key, c=16):
      keeping to its rate limit (bench/flood.py honours Retry-After), ignoring every 429 (wrk), and against a
      bridge with the limits off (``RATE_LIMIT_ENABLED=false AGENT_MAX_INFLIGHT=0``). ``--scenarios v`` runs
      only this (and writes latest-fairness.md, leaving latest.md to the last complete run).

Usage: ``python -m bench.run [--duration 3] [--concurrency 1,16,64,256] [--scenarios abcdefgwv]
[--arrangements pinned,unpinned] [--log-level warning]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.devvault import DevVault, free_port, provision_demo_sync, start_dev_vault, stop_process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LUA = HERE / "wrk" / "request.lua"
AGENT = "bench"
API_KEY = "bench-key-" + "k" * 24
BENCH_ISSUER = "https://bench.invalid"
BENCH_AUDIENCE = "vault-mcp-bridge"
FLOOD_AGENT = "flood"
FLOOD_KEY = "flood-key-" + "f" * 24
FLOOD_ITEMS = 100  # TRANSIT_MAX_BATCH's default: the largest batch allowed
VICTIM_CONCURRENCY = 8
FLOOD_CONCURRENCY = 16
SECRET = {"username": "svc-bench", "password": "p" * 24, "url": "postgres://db.internal:5432/app"}

SCENARIOS: dict[str, str] = {
    "a": "direct KV read, bridge token",
    "b": "direct KV read, policy token",
    "c": "bridge REST read, API key",
    "d": "bridge REST read, RS256 JWT",
    "e": "bridge MCP tools/call kv_read",
    "f": "bridge REST read, child token",
    "g": "bridge REST write",
    "w": "direct KV write, bridge token",
}


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - local servers only
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Target:
    """One thing wrk can hammer."""

    key: str
    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    process: str = "vault"  # which process serves it: vault or a bridge name


@dataclass
class Bridge:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.vault: DevVault | None = None
        self.bridges: dict[str, Bridge] = {}
        self.targets: dict[str, Target] = {}
        self.skipped: dict[str, str] = {}
        self.policy_token = ""
        self._jwk: Any = None

    # -- processes ----------------------------------------------------------------------------------

    def start_vault(self) -> DevVault:
        vault = start_dev_vault(log_path=self.workdir / "bao.log")
        self.vault = vault
        provision_demo_sync(vault.addr, vault.root_token, [AGENT])
        root = {"X-Vault-Token": vault.root_token}
        status, _, body = http("POST", f"{vault.addr}/v1/secret/data/mcp/{AGENT}/db", {"data": SECRET}, root)
        assert status == 200, body
        status, _, body = http("POST", f"{vault.addr}/v1/auth/token/create",
                               {"policies": [f"mcp-agent-{AGENT}"], "ttl": "4h", "no_default_policy": True}, root)
        assert status == 200, body
        self.policy_token = json.loads(body)["auth"]["client_token"]
        return vault

    def start_bridge(self, name: str, env: dict[str, str]) -> Bridge | None:
        assert self.vault is not None
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        full.update({
            "HOST": "127.0.0.1", "PORT": str(port), "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.vault.root_token, "API_KEYS_JSON": json.dumps({API_KEY: AGENT}),
            "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": self.args.log_level,
            "VAULT_POOL_SIZE": str(self.args.pool_size), "VAULT_HTTP_CLIENT": self.args.http_client,
        })
        full.update(env)
        log = open(self.workdir / f"bridge-{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=full, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        bridge = Bridge(name, port, proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.skipped[name] = f"bridge '{name}' exited: see {self.workdir}/bridge-{name}.log"
                return None
            with contextlib.suppress(OSError):
                if http("GET", f"{bridge.url}/readyz", timeout=1)[0] == 200:
                    self.bridges[name] = bridge
                    return bridge
            time.sleep(0.1)
        proc.kill()
        self.skipped[name] = f"bridge '{name}' did not become ready"
        return None

    def stop(self) -> None:
        for bridge in self.bridges.values():
            stop_process(bridge.proc, timeout=15)
        self.bridges.clear()
        self.targets.clear()
        if self.vault is not None:
            self.vault.stop()
            self.vault = None

    def pids(self, process: str) -> list[int]:
        if process == "vault":
            assert self.vault is not None
            assert self.vault.process is not None
            return [self.vault.process.pid]
        return [self.bridges[process].proc.pid]

    def start(self, arrangement: str) -> None:
        """Start OpenBao and the bridges, each process born on its CPUs (so Go's GOMAXPROCS and every
        thread pool see the CPUs they really have). pinned: OpenBao (and wrk) on CPU 0, the bridges on CPU 1;
        unpinned: every process on every CPU."""
        every = set(range(os.cpu_count() or 1))
        mine = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {0} if arrangement == "pinned" else every)
            self.start_vault()
            os.sched_setaffinity(0, {1} if arrangement == "pinned" else every)
            self.setup_targets()
        finally:
            os.sched_setaffinity(0, mine)

    # -- scenarios ----------------------------------------------------------------------------------

    def setup_targets(self) -> None:
        assert self.vault is not None
        want = set(self.args.scenarios) - {"v"}
        if not want:
            return
        vault_read = f"{self.vault.addr}/v1/secret/data/mcp/{AGENT}/db"
        root_hdr = {"X-Vault-Token": self.vault.root_token}
        self.targets["a"] = Target("a", vault_read, headers=root_hdr)
        self.targets["b"] = Target("b", vault_read, headers={"X-Vault-Token": self.policy_token})
        self.targets["w"] = Target("w", f"{self.vault.addr}/v1/secret/data/mcp/{AGENT}/w", "POST", root_hdr,
                                   json.dumps({"data": SECRET}))
        main = self.start_bridge("main", self._jwt_env())
        if main is None:
            raise SystemExit(f"bench: the bridge did not start: {self.skipped}")
        key_hdr = {"X-API-Key": API_KEY}
        self.targets["c"] = Target("c", f"{main.url}/secrets/db", headers=key_hdr, process="main")
        self.targets["g"] = Target("g", f"{main.url}/secrets/w", "PUT", key_hdr, json.dumps({"data": SECRET}),
                                   process="main")
        if "d" in want:
            self._setup_jwt(main)
        if "e" in want:
            self._setup_mcp(main)
        if "f" in want:
            self._setup_child()
        for key, target in list(self.targets.items()):
            if key not in want:
                del self.targets[key]
                continue
            status, _, body = http(target.method, target.url,
                                   json.loads(target.body) if target.body else None, target.headers)
            if status != 200 or (key == "e" and b'"isError":true' in body.replace(b" ", b"")):
                self.skipped[key] = f"probe answered {status}: {body[:200]!r}"
                del self.targets[key]

    def _jwt_env(self) -> dict[str, str]:
        from bridge.config import Settings

        if "jwt_jwks_file" not in Settings.model_fields:
            return {}
        from joserfc.jwk import RSAKey

        key = RSAKey.generate_key(2048, parameters={"kid": "bench", "use": "sig", "alg": "RS256"}, private=True)
        self._jwk = key
        jwks = self.workdir / "jwks.json"
        jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        # a key set needs its issuer and audience (issue 9)
        return {"JWT_JWKS_FILE": str(jwks), "JWT_ALGORITHMS": "RS256", "JWT_ISSUER": BENCH_ISSUER,
                "JWT_AUDIENCE": BENCH_AUDIENCE}

    def _setup_jwt(self, main: Bridge) -> None:
        if self._jwk is None:
            self.skipped["d"] = "the bridge has no JWT_JWKS_FILE setting (no RS256 support)"
            return
        from joserfc import jwt

        now = int(time.time())
        token = jwt.encode({"alg": "RS256", "kid": "bench"},
                           {"sub": AGENT, "iat": now, "exp": now + 3600, "scope": "read list",
                            "iss": BENCH_ISSUER, "aud": BENCH_AUDIENCE}, self._jwk)
        self.targets["d"] = Target("d", f"{main.url}/secrets/db", headers={"Authorization": f"Bearer {token}"},
                                   process="main")

    def _setup_mcp(self, main: Bridge) -> None:
        base = {"X-API-Key": API_KEY, "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json"}
        version = "2025-11-25"
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": version, "capabilities": {},
                           "clientInfo": {"name": "bench", "version": "1"}}}
        status, headers, _ = http("POST", f"{main.url}/mcp", init, base)
        if status != 200:
            self.skipped["e"] = f"POST /mcp initialize answered {status}"
            return
        session = {k.lower(): v for k, v in headers.items()}.get("mcp-session-id")
        hdrs = dict(base, **{"MCP-Protocol-Version": version})
        if session:
            hdrs["Mcp-Session-Id"] = session
        http("POST", f"{main.url}/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, hdrs)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "kv_read", "arguments": {"path": "db"}}}
        self.targets["e"] = Target("e", f"{main.url}/mcp", "POST", hdrs, json.dumps(call), process="main")

    def _setup_child(self) -> None:
        from bridge.config import Settings

        if "child_token_enabled" not in Settings.model_fields:
            self.skipped["f"] = "the bridge has no CHILD_TOKEN_ENABLED setting"
            return
        child = self.start_bridge("child", {"CHILD_TOKEN_ENABLED": "true"})
        if child is None:
            return
        self.targets["f"] = Target("f", f"{child.url}/secrets/db", headers={"X-API-Key": API_KEY},
                                   process="child")

    # -- measuring ----------------------------------------------------------------------------------

    def wrk(self, target: Target, conc: int, duration: float, arrangement: str) -> dict[str, Any]:
        cmd, env = self._wrk_cmd(target, conc, duration, arrangement)
        pid = self.pids(target.process)[0]
        cpu_before = _cpu_seconds(pid)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 30, check=False)
        cpu = _cpu_seconds(pid) - cpu_before
        match = re.search(r"WRK_JSON (\{.*\})", out.stdout)
        if not match:
            raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        raw = json.loads(match.group(1))
        secs = raw["duration_us"] / 1e6
        errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
        return {"rps": round(raw["requests"] / secs, 1), "p50_ms": raw["p50_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "requests": raw["requests"],
                "non_2xx": raw["status_errors"], "socket_errors": errors,
                # CPU the serving process (OpenBao for a/b/w, the bridge otherwise) spent per request:
                # unlike req/s, barely moved by other work on the machine
                "server_cpu_us": round(cpu / max(1, raw["requests"]) * 1e6, 1)}

    def fairness(self, duration: float, arrangement: str) -> dict[str, Any]:
        """Scenario (v): the victim's reads alone, then during three floods of the most expensive operation the
        default limits allow: one that keeps to its rate limit (honours Retry-After), one that ignores every 429
        (the bridge's refusals cost CPU too), and one against a bridge with the limits off."""
        keys = {API_KEY: {"agent": AGENT, "rate_limit": {"requests": 10_000_000, "window_seconds": 60}},
                FLOOD_KEY: FLOOD_AGENT}
        out: dict[str, Any] = {"victim_concurrency": VICTIM_CONCURRENCY, "flood_concurrency": FLOOD_CONCURRENCY,
                               "flood_items": FLOOD_ITEMS}
        body = json.dumps({"key": "sig", "batch_input": [{"input": "aGVsbG8gd29ybGQ="}] * FLOOD_ITEMS})
        body_file = self.workdir / "flood-body.json"
        body_file.write_text(body)
        flooder = {"X-API-Key": FLOOD_KEY}
        runs = (("at_limit", {"RATE_LIMIT_ENABLED": "true"}), ("ignoring_429", {"RATE_LIMIT_ENABLED": "true"}),
                ("no_limits", {"RATE_LIMIT_ENABLED": "false", "AGENT_MAX_INFLIGHT": "0"}))
        for name, env in runs:
            bridge = self.start_bridge(f"fair-{name}", {"API_KEYS_JSON": json.dumps(keys), **env})
            if bridge is None:
                self.skipped["v"] = f"the fairness bridge ({name}) did not start"
                return out
            try:
                status, _, answer = http("POST", f"{bridge.url}/transit/keys", {"key": "sig", "type": "rsa-2048"},
                                         flooder)
                if status != 200:
                    self.skipped["v"] = f"creating the flood's key answered {status}: {answer[:200]!r}"
                    return out
                victim = Target("v", f"{bridge.url}/secrets/db", headers={"X-API-Key": API_KEY},
                                process=bridge.name)
                self.wrk(victim, VICTIM_CONCURRENCY, 1.0, arrangement)  # warm-up
                if "alone" not in out:
                    out["alone"] = self.wrk(victim, VICTIM_CONCURRENCY, duration, arrangement)
                url = f"{bridge.url}/transit/sign"
                if name == "ignoring_429":
                    target = Target("v", url, "POST", {**flooder, "Content-Type": "application/json"}, body,
                                    process=bridge.name)
                    running: subprocess.Popen[str] = self.wrk_start(target, FLOOD_CONCURRENCY, duration + 2.0,
                                                                    arrangement)
                else:
                    running = subprocess.Popen(
                        [sys.executable, "-m", "bench.flood", url, FLOOD_KEY, str(body_file), str(FLOOD_CONCURRENCY),
                         str(duration + 2.0)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        cwd=HERE.parent)
                time.sleep(1.0)  # the flood is under way (with limits: its burst is spent by now)
                during = self.wrk(victim, VICTIM_CONCURRENCY, duration, arrangement)
                if name == "ignoring_429":
                    point = self.wrk_finish(running)
                    flood = {"requests": point["requests"], "served": point["requests"] - point["non_2xx"],
                             "refused": point["non_2xx"], "seconds": point["seconds"]}
                else:
                    stdout, stderr = running.communicate(timeout=120)
                    try:
                        flood = json.loads(stdout.strip().splitlines()[-1])
                    except (ValueError, IndexError):
                        raise RuntimeError(f"bench.flood failed: {stderr[-500:]}") from None
                out[name] = {"victim": during, "flood": flood,
                             "flood_signatures_per_s": round(flood["served"] * FLOOD_ITEMS / flood["seconds"], 1)}
            finally:
                stop_process(bridge.proc, timeout=15)
                del self.bridges[bridge.name]
        return out

    def _wrk_cmd(self, target: Target, conc: int, duration: float, arrangement: str) -> tuple[list[str],
                                                                                            dict[str, str]]:
        env = dict(os.environ, WRK_METHOD=target.method, WRK_BODY=target.body,
                   WRK_HEADERS="\n".join(f"{k}: {v}" for k, v in target.headers.items()))
        cmd = ["wrk", "-t1", f"-c{conc}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(LUA), target.url]
        if arrangement == "pinned":
            cmd = ["taskset", "-c", "0", *cmd]
        return cmd, env

    def wrk_start(self, target: Target, conc: int, duration: float, arrangement: str) -> subprocess.Popen[str]:
        """A wrk run in the background (the flood); :meth:`wrk_finish` collects it."""
        cmd, env = self._wrk_cmd(target, conc, duration, arrangement)
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wrk_finish(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        stdout, stderr = proc.communicate(timeout=120)
        match = re.search(r"WRK_JSON (\{.*\})", stdout)
        if not match:
            raise RuntimeError(f"wrk failed: {stdout[-500:]} {stderr[-500:]}")
        raw = json.loads(match.group(1))
        secs = raw["duration_us"] / 1e6
        return {"rps": round(raw["requests"] / secs, 1), "p50_ms": raw["p50_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000, "requests": raw["requests"], "non_2xx": raw["status_errors"],
                "seconds": round(secs, 2)}

    def idle_connections(self, bridge: Bridge, count: int) -> dict[str, Any]:
        """Open ``count`` keep-alive connections (one authenticated read each), hold them, read the RSS."""
        socks: list[socket.socket] = []
        request = (f"GET /secrets/db HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
                   "Connection: keep-alive\r\n\r\n").encode()
        ok = 0
        try:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", bridge.port), timeout=10)
                socks.append(sock)
                sock.sendall(request)
                if _read_response(sock).startswith(b"HTTP/1.1 200"):
                    ok += 1
            time.sleep(1.0)
            alive = sum(1 for s in socks if _still_open(s))
            mem = _proc_mem(bridge.proc.pid)
        finally:
            for sock in socks:
                sock.close()
        return {"connections": count, "answered_200": ok, "still_open": alive, **mem}


def _read_response(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    need = int(match.group(1)) if match else 0
    while len(rest) < need:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_mem(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"rss_mb": round(fields.get("VmRSS", 0.0), 1), "peak_rss_mb": round(fields.get("VmHWM", 0.0), 1)}


def machine_info() -> dict[str, Any]:
    import aiohttp

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    bao_version = subprocess.run([_bao(), "version"],
                                 capture_output=True, text=True, check=False)
    try:
        uv: str | None = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uv = None
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "aiohttp": aiohttp.__version__, "uvloop": uv,
        "openbao": bao_version.stdout.strip().splitlines()[0] if bao_version.stdout else "",
        "wrk": (wrk_version.stdout + wrk_version.stderr).strip().splitlines()[0],
    }


def _bao() -> str:
    from devtools.devvault import find_bao

    return find_bao()


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, from the pinned arrangement."""
    pinned = results.get("pinned", {})

    def rps(key: str, conc: int = 64) -> float | None:
        point = pinned.get(key, {}).get(str(conc))
        return point["rps"] if point else None

    def p99(key: str, conc: int) -> float | None:
        point = pinned.get(key, {}).get(str(conc))
        return point["p99_ms"] if point else None

    out: list[dict[str, Any]] = []

    def add(name: str, num: float | None, den: float | None, target: float, higher_is_better: bool = True) -> None:
        value = round(num / den, 3) if num is not None and den else None
        met = None if value is None else (value >= target if higher_is_better else value <= target)
        out.append({"name": name, "value": value, "target": target,
                    "op": ">=" if higher_is_better else "<=", "met": met})

    add("(c)/(a) rps @64", rps("c"), rps("a"), 0.8)
    add("(e)/(a) rps @64", rps("e"), rps("a"), 0.7)
    add("(f)/(b) rps @64", rps("f"), rps("b"), 0.8)
    add("(d)/(c) rps @64", rps("d"), rps("c"), 0.8)
    add("p99 (c)/(a) @256", p99("c", 256), p99("a", 256), 2.0, higher_is_better=False)
    add("(g)/(w) rps @64 (writes, info)", rps("g"), rps("w"), 0.8)
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"# Benchmark {report['started']}", ""]
    m = report["machine"]
    lines.append(f"{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, aiohttp "
                 f"{m['aiohttp']}, uvloop {m['uvloop']}, {m['openbao']}, {m['wrk']}; "
                 f"{report['settings']['duration']:g} s per point, bridge LOG_LEVEL={report['settings']['log_level']}, "
                 f"VAULT_POOL_SIZE={report['settings']['pool_size']}, "
                 f"VAULT_HTTP_CLIENT={report['settings'].get('http_client', 'aiohttp')}; load average at start "
                 f"{m.get('loadavg_at_start')}, at end {m.get('loadavg_at_end')} (other work on the machine "
                 "skews the numbers).")
    lines.append("")
    concs = report["settings"]["concurrency"]
    for arrangement, table in report["results"].items():
        if not table:
            continue
        lines.append(f"## {arrangement}")
        lines.append("")
        header = "| scenario | " + " | ".join(f"c={c} req/s | p50 ms | p99 ms" for c in concs) + \
            " | server CPU µs/req (c=64) |"
        lines.append(header)
        lines.append("|" + "---|" * (2 + 3 * len(concs)))
        for key, points in table.items():
            cells = []
            for c in concs:
                p = points.get(str(c))
                if p is None:
                    cells += ["-", "-", "-"]
                    continue
                flag = "" if p["non_2xx"] == 0 and p["socket_errors"] == 0 else \
                    f" ⚠{p['non_2xx']}/{p['socket_errors']}"
                cells += [f"{p['rps']:.0f}{flag}", f"{p['p50_ms']:.2f}", f"{p['p99_ms']:.2f}"]
            cpu_point = points.get("64") or next(iter(points.values()), None)
            cpu = f"{cpu_point['server_cpu_us']:.0f}" if cpu_point and "server_cpu_us" in cpu_point else "-"
            lines.append(f"| ({key}) {SCENARIOS[key]} | " + " | ".join(cells) + f" | {cpu} |")
        lines.append("")
    if not any(table for table in report["results"].values()):  # only the fairness scenario ran
        lines += render_fairness(report.get("fairness") or {})
        return "\n".join(lines) + "\n"
    lines.append("## Targets (pinned)")
    lines.append("")
    lines.append("| ratio | value | target | met |")
    lines.append("|---|---|---|---|")
    for r in report["ratios"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"| {r['name']} | {value} | {r['op']} {r['target']} | {met} |")
    mem = report.get("memory")
    if mem:
        lines.append(f"| bridge RSS with {mem['connections']} idle keep-alive connections | "
                     f"{mem['rss_mb']:.1f} MB (peak {mem['peak_rss_mb']:.1f} MB, {mem['still_open']} open) | "
                     f"<= 150 MB | {'yes' if mem['peak_rss_mb'] <= 150 else '**no**'} |")
    lines += render_fairness(report.get("fairness") or {})
    if report["skipped"]:
        lines.append("")
        lines.append("Skipped: " + "; ".join(f"({k}) {v}" for k, v in report["skipped"].items()))
    lines.append("")
    return "\n".join(lines)


def render_fairness(fairness: dict[str, Any]) -> list[str]:
    """Scenario (v) as a table: the victim's reads alone and during each flood, per arrangement."""
    lines: list[str] = []
    for arrangement, f in fairness.items():
        if "alone" not in f:
            continue
        lines += ["", f"## Fairness ({arrangement}): victim reads (c={f['victim_concurrency']}) while another agent "
                  f"floods {f['flood_items']}-item rsa-2048 signing batches (c={f['flood_concurrency']})", "",
                  "| victim's reads | req/s | p50 ms | p99 ms | flood requests served / refused | "
                  "flood signatures/s |", "|---|---|---|---|---|---|"]
        alone = f["alone"]
        lines.append(f"| alone | {alone['rps']:.0f} | {alone['p50_ms']:.2f} | {alone['p99_ms']:.2f} | - | - |")
        for name, label in (("at_limit", "flood at its rate limit (honours Retry-After), default limits"),
                            ("ignoring_429", "flood ignoring every 429, default limits"),
                            ("no_limits", "flood, limits off (RATE_LIMIT_ENABLED=false, AGENT_MAX_INFLIGHT=0)")):
            run = f.get(name)
            if not run:
                continue
            v, fl = run["victim"], run["flood"]
            lines.append(f"| {label} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                         f"{fl['served']} / {fl['refused']} | {run['flood_signatures_per_s']:.0f} |")
    return lines


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@contextlib.contextmanager
def bench_context(args: argparse.Namespace) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="vmb-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            yield bench
        finally:
            bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point (default 3)")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--scenarios", default="abcdefgwv")
    parser.add_argument("--arrangements", default="pinned,unpinned")
    parser.add_argument("--log-level", default="warning", help="the bridge's LOG_LEVEL (default warning)")
    parser.add_argument("--pool-size", type=int, default=256, help="the bridge's VAULT_POOL_SIZE")
    parser.add_argument("--http-client", default="lean", choices=["aiohttp", "lean"],
                        help="the bridge's VAULT_HTTP_CLIENT (default lean)")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk, or make bench as root)", file=sys.stderr)
        return 2
    _raise_fd_limit()
    concs = [int(c) for c in args.concurrency.split(",")]
    arrangements = [a for a in args.arrangements.split(",") if a]
    if "pinned" in arrangements and (os.cpu_count() or 1) < 2:
        print("bench: one CPU only: the pinned arrangement is skipped", file=sys.stderr)
        arrangements.remove("pinned")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    memory: dict[str, Any] | None = None
    fairness: dict[str, Any] = {}
    machine: dict[str, Any] = {}
    scenarios: dict[str, str] = {}
    with bench_context(args) as bench:
        for arrangement in arrangements:
            bench.stop()
            bench.start(arrangement)
            machine = machine or machine_info()
            scenarios.update({k: SCENARIOS[k] for k in bench.targets})
            table: dict[str, dict[str, Any]] = {}
            for key in SCENARIOS:
                target = bench.targets.get(key)
                if target is None:
                    continue
                bench.wrk(target, 16, 1.0, arrangement)  # warm-up: pools, caches
                table[key] = {}
                for conc in concs:
                    point = bench.wrk(target, conc, args.duration, arrangement)
                    table[key][str(conc)] = point
                    print(f"{arrangement:9} ({key}) c={conc:<4} {point['rps']:>9.0f} req/s  "
                          f"p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms"
                          + (f"  non-2xx {point['non_2xx']}" if point["non_2xx"] else ""), flush=True)
            results[arrangement] = table
            if "v" in args.scenarios:
                fairness[arrangement] = bench.fairness(args.duration, arrangement)
                print(f"{arrangement:9} (v) fairness {json.dumps(fairness[arrangement])}", flush=True)
            if args.idle_connections and memory is None and "main" in bench.bridges:  # first arrangement's bridge
                memory = bench.idle_connections(bench.bridges["main"], args.idle_connections)
                memory["arrangement"] = arrangement
        report: dict[str, Any] = {
            "started": started,
            "machine": machine,
            "settings": {"duration": args.duration, "concurrency": concs, "log_level": args.log_level,
                         "pool_size": args.pool_size, "arrangements": arrangements,
                         "http_client": args.http_client},
            "scenarios": scenarios,
            "results": results,
            "memory": memory,
            "fairness": fairness,
            "skipped": bench.skipped,
        }
        report["ratios"] = ratios(results)
        report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{started.replace(':', '')}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = render(report)
    # a fairness-only run (--scenarios v) keeps the full table of the last complete run in latest.md
    (out / ("latest.md" if any(results.values()) else "latest-fairness.md")).write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
