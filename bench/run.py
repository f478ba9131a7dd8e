"""``make bench``: OpenBao direct vs the bridge, measured with wrk in one run, printed as one report.

Starts an OpenBao dev server (in memory) and bridge processes with the bridge's default settings, then for
each arrangement (``pinned``: OpenBao and wrk on CPU 0, the bridge on CPU 1, as when Vault has its own
machine; ``unpinned``: everything on every CPU) drives each scenario at each concurrency (1, 16, 64, 256) for a
few seconds with wrk (bench/wrk/request.lua), ``--runs`` times (rounds: every scenario and concurrency once per
round), and reports the median of: requests/s, p50, p99, and the CPU time each process spent per request
(utime + stime deltas from ``/proc/<pid>/stat`` over the run, divided by the requests answered: the bridge,
OpenBao, and wrk itself from its rusage). Other work on the machine moves req/s far more than CPU per
request (bench/ab.py measures changes by instruction counts, which it does not move at all). Then the issue's
targets (pinned) with pass/miss, the bridge's RSS with 1,000 idle keep-alive connections, the fairness
scenario (v), and a py-spy profile of the bridge during (c) and (e) at c=64 (bench/profile.py: where each
microsecond goes). Results: ``bench/results/<UTC time>.json`` (machine,
versions, load average, every run), ``bench/results/latest.md`` and ``latest-profile.md``; the report is
printed too.

The bridge runs with its defaults (``LOG_LEVEL=info``: one access line per request; aiohttp's client to Vault
with its default pool; rate limit and in-flight cap on), except two quotas sized for one benchmark agent that
sends thousands of requests a second: ``RATE_LIMIT_REQUESTS=10000000`` (a minute) and
``AGENT_MAX_INFLIGHT=1024``; both checks still run on every request. No inherited environment variable reaches
it: only what the harness sets (``--bridge-env NAME=VALUE`` adds or overrides a setting for experiments).
SIGTERM (or Ctrl-C) stops the run and every process it started.

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

Usage: ``python -m bench.run [--duration 3] [--runs 3] [--concurrency 1,16,64,256] [--scenarios abcdefgwv]
[--arrangements pinned,unpinned] [--bridge-env NAME=VALUE ...] [--no-profile] [--profile-seconds 10]
[--profile-scenarios ce] [--profile-python-only] [--render JSON]``; ``--profile`` profiles only (pinned, no
tables); ``--render`` prints the report of an earlier run's JSON again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile as profiler
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
# the two settings the throughput bridges change: one agent sends thousands of requests a second, at up to 256
# at once; both checks still run on every request (bench.run's docstring)
THROUGHPUT_ENV = {"RATE_LIMIT_REQUESTS": "10000000", "AGENT_MAX_INFLIGHT": "1024"}
PROFILED = ("c", "e")  # the REST read and the MCP call, at c=64
PROFILE_CONCURRENCY = 64

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

    def start_bridge(self, name: str, env: dict[str, str], source: Path | None = None,
                     wrapper: list[str] | None = None, ready_timeout: float = 20.0) -> Bridge | None:
        """``python -m bridge serve``; from ``source`` (its ``bridge`` package comes first on sys.path) if
        given, for an A/B of two versions of the code, and under ``wrapper`` (valgrind) if given (bench/ab.py)."""
        assert self.vault is not None
        port = free_port()
        full = bridge_environment(os.environ)
        full.update({
            "HOST": "127.0.0.1", "PORT": str(port), "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.vault.root_token, "API_KEYS_JSON": json.dumps({API_KEY: AGENT}),
        })
        full.update(env)
        full.update(self.args.bridge_env)  # experiments: --bridge-env NAME=VALUE wins over everything
        log = open(self.workdir / f"bridge-{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([*(wrapper or []), sys.executable, "-m", "bridge", "serve"], env=full, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=source)
        bridge = Bridge(name, port, proc)
        deadline = time.monotonic() + ready_timeout
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

    def affinity(self) -> dict[str, list[int]]:
        """The CPUs each process may run on (the pinning, as the kernel sees it)."""
        out = {"openbao": sorted(os.sched_getaffinity(self.pids("vault")[0]))}
        for name, bridge in self.bridges.items():
            out[f"bridge-{name}"] = sorted(os.sched_getaffinity(bridge.proc.pid))
        return out

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
        for key in list(self.targets):
            if key not in want:
                del self.targets[key]
        targets = self.bridge_targets("main", "child", want)
        if targets is None:
            raise SystemExit(f"bench: the bridge did not start: {self.skipped}")
        self.targets.update(targets)
        for key, target in list(self.targets.items()):
            if not self.probe(target):
                del self.targets[key]

    def bridge_targets(self, name: str, child_name: str, want: set[str], env: dict[str, str] | None = None,
                       source: Path | None = None, wrapper: list[str] | None = None,
                       ready_timeout: float = 20.0) -> dict[str, Target] | None:
        """Start the throughput bridge ``name`` (and ``child_name`` in child-token mode when (f) is wanted),
        from ``source`` (a directory holding a ``bridge`` package; default: the installed one), with ``env``
        on top of :data:`THROUGHPUT_ENV`; its targets among c, d, e, f, g. None if it did not start."""
        extra = env or {}
        bridge = self.start_bridge(name, {**THROUGHPUT_ENV, **self._jwt_env(), **extra}, source, wrapper,
                                   ready_timeout)
        if bridge is None:
            return None
        key_hdr = {"X-API-Key": API_KEY}
        out = {"c": Target("c", f"{bridge.url}/secrets/db", headers=key_hdr, process=name),
               "g": Target("g", f"{bridge.url}/secrets/w", "PUT", key_hdr, json.dumps({"data": SECRET}),
                           process=name)}
        if "d" in want and (jwt := self._jwt_target(bridge)) is not None:
            out["d"] = jwt
        if "e" in want and (mcp := self._mcp_target(bridge)) is not None:
            out["e"] = mcp
        if "f" in want and (child := self._child_target(child_name, extra, source, wrapper,
                                                        ready_timeout)) is not None:
            out["f"] = child
        return {key: target for key, target in out.items() if key in want}

    def probe(self, target: Target) -> bool:
        """One request first: a target that does not answer 200 (an MCP error result) is skipped."""
        status, _, body = http(target.method, target.url, json.loads(target.body) if target.body else None,
                               target.headers)
        if status != 200 or (target.key == "e" and b'"isError":true' in body.replace(b" ", b"")):
            self.skipped[target.key] = f"probe answered {status}: {body[:200]!r}"
            return False
        return True

    def _jwt_env(self) -> dict[str, str]:
        from bridge.config import Settings

        if "jwt_jwks_file" not in Settings.model_fields:
            return {}
        from joserfc.jwk import RSAKey

        jwks = self.workdir / "jwks.json"
        if self._jwk is None:
            key = RSAKey.generate_key(2048, parameters={"kid": "bench", "use": "sig", "alg": "RS256"},
                                      private=True)
            self._jwk = key
            jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        # a key set needs its issuer and audience (issue 9)
        return {"JWT_JWKS_FILE": str(jwks), "JWT_ALGORITHMS": "RS256", "JWT_ISSUER": BENCH_ISSUER,
                "JWT_AUDIENCE": BENCH_AUDIENCE}

    def _jwt_target(self, bridge: Bridge) -> Target | None:
        if self._jwk is None:
            self.skipped["d"] = "the bridge has no JWT_JWKS_FILE setting (no RS256 support)"
            return None
        from joserfc import jwt

        now = int(time.time())
        token = jwt.encode({"alg": "RS256", "kid": "bench"},
                           {"sub": AGENT, "iat": now, "exp": now + 3600, "scope": "read list",
                            "iss": BENCH_ISSUER, "aud": BENCH_AUDIENCE}, self._jwk)
        return Target("d", f"{bridge.url}/secrets/db", headers={"Authorization": f"Bearer {token}"},
                      process=bridge.name)

    def _mcp_target(self, bridge: Bridge) -> Target | None:
        base = {"X-API-Key": API_KEY, "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json"}
        version = "2025-11-25"
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": version, "capabilities": {},
                           "clientInfo": {"name": "bench", "version": "1"}}}
        status, headers, _ = http("POST", f"{bridge.url}/mcp", init, base)
        if status != 200:
            self.skipped["e"] = f"POST /mcp initialize answered {status}"
            return None
        session = {k.lower(): v for k, v in headers.items()}.get("mcp-session-id")
        hdrs = dict(base, **{"MCP-Protocol-Version": version})
        if session:
            hdrs["Mcp-Session-Id"] = session
        http("POST", f"{bridge.url}/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, hdrs)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "kv_read", "arguments": {"path": "db"}}}
        return Target("e", f"{bridge.url}/mcp", "POST", hdrs, json.dumps(call), process=bridge.name)

    def _child_target(self, name: str, env: dict[str, str], source: Path | None, wrapper: list[str] | None,
                      ready_timeout: float) -> Target | None:
        from bridge.config import Settings

        if "child_token_enabled" not in Settings.model_fields:
            self.skipped["f"] = "the bridge has no CHILD_TOKEN_ENABLED setting"
            return None
        child = self.start_bridge(name, {**THROUGHPUT_ENV, **env, "CHILD_TOKEN_ENABLED": "true"}, source,
                                  wrapper, ready_timeout)
        if child is None:
            return None
        return Target("f", f"{child.url}/secrets/db", headers={"X-API-Key": API_KEY}, process=name)

    # -- measuring ----------------------------------------------------------------------------------

    def wrk(self, target: Target, conc: int, duration: float, arrangement: str) -> dict[str, Any]:
        """One wrk run, with the CPU each process spent per request answered: the bridge that serves it (none
        for the direct scenarios), OpenBao, and wrk (its rusage: the only child this process reaps meanwhile)."""
        cmd, env = self._wrk_cmd(target, conc, duration, arrangement)
        pids = {"openbao": self.pids("vault")[0]}
        if target.process != "vault":
            pids["bridge"] = self.pids(target.process)[0]
        before = {name: _cpu_times(pid) for name, pid in pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 30, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times = {name: _cpu_times(pid) for name, pid in pids.items()}
        cpu = {name: sum(times[name]) - sum(before[name]) for name in pids}
        cpu["wrk"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        point = _wrk_point(out.stdout, out.stderr)
        answered = max(1, point["requests"])
        # CPU per request: moved much less than req/s by other work on the machine
        point["cpu_us"] = {name: round(seconds / answered * 1e6, 1) for name, seconds in cpu.items()}
        # of which in the kernel (system time: syscalls, the network stack)
        point["sys_us"] = {name: round((times[name][1] - before[name][1]) / answered * 1e6, 1) for name in pids}
        point["load1"] = round(os.getloadavg()[0], 2)
        return point

    def profile(self, target: Target, seconds: int, arrangement: str, native: bool, rate: int,
                conc: int = PROFILE_CONCURRENCY) -> dict[str, Any]:
        """py-spy on the serving bridge while wrk drives ``target`` at c=64 (bench/profile.py). A run without
        the profiler comes first: its CPU per request is what the samples' shares are scaled to (stopping the
        bridge for each native sample costs it CPU of its own)."""
        pid = self.pids(target.process)[0]
        plain = self.wrk(target, conc, seconds, arrangement)
        stacks = self.workdir / f"profile-{target.key}.txt"
        cmd, env = self._wrk_cmd(target, conc, seconds + 1.0, arrangement)
        cpu_before = _cpu_seconds(pid)
        running = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        spy = profiler.record(pid, seconds, stacks, rate=rate, native=native,
                              cpus="0" if arrangement == "pinned" else None)
        _, spy_err = spy.communicate(timeout=seconds + 120)
        stdout, stderr = running.communicate(timeout=seconds + 60)
        cpu = _cpu_seconds(pid) - cpu_before
        point = _wrk_point(stdout, stderr)
        if spy.returncode != 0 or not stacks.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy_err.decode(errors='replace')[-500:]}")
        with stacks.open() as fh:
            result = profiler.analyse(profiler.parse_collapsed(fh), plain["cpu_us"]["bridge"]).as_dict()
        result.update({"rps": plain["rps"], "rps_profiled": point["rps"],
                       "cpu_us_profiled": round(cpu / max(1, point["requests"]) * 1e6, 1),
                       "concurrency": conc, "seconds": seconds, "native": native, "rate": rate,
                       "arrangement": arrangement, "non_2xx": point["non_2xx"] + plain["non_2xx"],
                       "load1": round(os.getloadavg()[0], 2)})
        with stacks.open("rb") as src, gzip.open(
                Path(self.args.out) / f"{self.args.started_file}-profile-{target.key}.collapsed.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        return result

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
        return _wrk_point(stdout, stderr)

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


def _wrk_point(stdout: str, stderr: str) -> dict[str, Any]:
    """The JSON line of bench/wrk/request.lua's ``done()`` as one measured point."""
    match = re.search(r"WRK_JSON (\{.*\})", stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {stdout[-500:]} {stderr[-500:]}")
    raw = json.loads(match.group(1))
    secs = raw["duration_us"] / 1e6
    errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return {"rps": round(raw["requests"] / secs, 1), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "requests": raw["requests"],
            "non_2xx": raw["status_errors"], "socket_errors": errors, "seconds": round(secs, 2)}


def bridge_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a bench bridge starts from: this process's, without anything the bridge would read as a
    setting (so a ``LOG_LEVEL`` or ``VAULT_HTTP_CLIENT`` exported in the shell cannot change what is measured)."""
    from bridge.config import Settings

    settings = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in environ.items()
            if k not in settings and not k.startswith(("VAULT_", "BAO_"))}


def median_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs of one point (errors are summed, the spread of req/s kept)."""
    med = statistics.median
    out: dict[str, Any] = {
        "rps": round(med(r["rps"] for r in runs), 1), "p50_ms": med(r["p50_ms"] for r in runs),
        "p99_ms": med(r["p99_ms"] for r in runs), "max_ms": max(r["max_ms"] for r in runs),
        "requests": sum(r["requests"] for r in runs), "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "rps_min": min(r["rps"] for r in runs), "rps_max": max(r["rps"] for r in runs), "runs": len(runs),
        "load1": [r.get("load1") for r in runs],
    }
    names = sorted({name for r in runs for name in r.get("cpu_us", {})})
    out["cpu_us"] = {name: round(med(r["cpu_us"][name] for r in runs if name in r.get("cpu_us", {})), 1)
                     for name in names}
    sys_names = sorted({name for r in runs for name in r.get("sys_us", {})})
    out["sys_us"] = {name: round(med(r["sys_us"][name] for r in runs if name in r.get("sys_us", {})), 1)
                     for name in sys_names}
    return out


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


def _cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(_cpu_times(pid))


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


@dataclass(frozen=True)
class TargetSpec:
    """One of issue 11's targets: ``num / den`` (or ``num - den`` for latency) of two pinned points."""

    name: str
    num: tuple[str, int]  # (scenario, concurrency)
    den: tuple[str, int]
    op: str  # ">=" or "<="
    target: float
    kind: str = "rps"  # "rps": a ratio of req/s; "p50": a difference of p50 in ms; "p99": a ratio of p99
    info: bool = False  # shown, but not a target of issue 11


TARGETS = (
    TargetSpec("(c) REST read / (a) direct, req/s at c=64", ("c", 64), ("a", 64), ">=", 0.85),
    TargetSpec("(e) MCP / (a) direct, req/s at c=64", ("e", 64), ("a", 64), ">=", 0.8),
    TargetSpec("(f) child token / (b) policy token, req/s at c=64", ("f", 64), ("b", 64), ">=", 0.85),
    TargetSpec("(d) JWT / (c) API key, req/s at c=64", ("d", 64), ("c", 64), ">=", 0.95),
    TargetSpec("(c) at c=256 / (c) at c=64, req/s", ("c", 256), ("c", 64), ">=", 0.9),
    TargetSpec("added latency at c=1: (c) p50 - (a) p50, ms", ("c", 1), ("a", 1), "<=", 0.4, kind="p50"),
    TargetSpec("p99 (c) / (a) at c=256 (benchmark issue)", ("c", 256), ("a", 256), "<=", 2.0, kind="p99",
               info=True),
    TargetSpec("(g) REST write / (w) direct write, req/s at c=64 (no target)", ("g", 64), ("w", 64), ">=", 0.8,
               info=True),
)


def _compare(spec: TargetSpec, num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    if num is None or den is None:
        return None
    if spec.kind == "p50":
        return round(float(num["p50_ms"]) - float(den["p50_ms"]), 3)
    field_name = "p99_ms" if spec.kind == "p99" else "rps"
    return round(float(num[field_name]) / float(den[field_name]), 3) if den[field_name] else None


def targets(table: dict[str, dict[str, Any]], rounds: list[dict[str, dict[str, Any]]] | None = None
            ) -> list[dict[str, Any]]:
    """Each target from the medians of a pinned table (``table[scenario][str(concurrency)]``), with its value
    in every round and, for a throughput ratio with the bridge in the numerator, the bridge CPU per request
    that would meet it while the bridge's one core is the bottleneck (``1e6 / (target x den req/s)``)."""
    out: list[dict[str, Any]] = []
    for spec in TARGETS:
        def point(source: dict[str, dict[str, Any]], ref: tuple[str, int]) -> dict[str, Any] | None:
            return source.get(ref[0], {}).get(str(ref[1]))

        num, den = point(table, spec.num), point(table, spec.den)
        value = _compare(spec, num, den)
        met = None if value is None else (value >= spec.target if spec.op == ">=" else value <= spec.target)
        per_round = [_compare(spec, point(r, spec.num), point(r, spec.den)) for r in rounds or []]
        row: dict[str, Any] = {"name": spec.name, "value": value, "op": spec.op, "target": spec.target,
                               "met": met, "info": spec.info, "runs": [v for v in per_round if v is not None]}
        if spec.kind == "rps" and num is not None and den is not None:
            capacity = _capacity(num), _capacity(den)
            if capacity[0] and capacity[1]:
                row["cpu_bound"] = round(capacity[0] / capacity[1], 3)
        if spec.kind == "rps" and num is not None and den is not None and den["rps"]:
            cpu = num.get("cpu_us", {})
            if cpu.get("bridge") is not None and spec.num[1] == spec.den[1]:
                # pinned, the bridge has CPU 1 and OpenBao + wrk share CPU 0: each side must fit the budget
                row["budget_us"] = round(1e6 / (spec.target * den["rps"]), 1)
                row["bridge_cpu_us"] = cpu["bridge"]
                row["cpu0_us"] = round(cpu.get("openbao", 0.0) + cpu.get("wrk", 0.0), 1)
            elif cpu.get("bridge") is not None:  # the same scenario at two concurrencies
                row["bridge_cpu_us"] = cpu["bridge"]
                row["bridge_cpu_us_den"] = den.get("cpu_us", {}).get("bridge")
        out.append(row)
    return out


def _capacity(point: dict[str, Any]) -> float | None:
    """Requests/s one scenario would reach, pinned, if each CPU were its own: the bridge on CPU 1, OpenBao and
    wrk on CPU 0, the busier CPU sets the pace (1e6 / its CPU µs per request). Blind to how much of each CPU
    other work on the machine took, which is what moves req/s; not to the cache misses it caused."""
    cpu = point.get("cpu_us", {})
    cpu0 = cpu.get("openbao", 0.0) + cpu.get("wrk", 0.0)
    busiest = max(cpu0, cpu.get("bridge") or 0.0)
    return 1e6 / busiest if busiest else None


ARRANGEMENT_TITLES = {"pinned": "pinned: OpenBao and wrk on CPU 0, the bridge on CPU 1",
                      "unpinned": "unpinned: every process on every CPU"}


def render(report: dict[str, Any]) -> str:
    lines = [f"# Benchmark {report['started']}", ""]
    m = report["machine"]
    st = report["settings"]
    lines.append(f"{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, aiohttp "
                 f"{m['aiohttp']}, uvloop {m['uvloop']}, {m['openbao']}, {m['wrk']}; {st['duration']:g} s per "
                 f"point, median of {st['runs']} runs; load average at start {m.get('loadavg_at_start')}, at end "
                 f"{m.get('loadavg_at_end')} (other work on the machine moves req/s much more than CPU per "
                 "request).")
    lines.append("")
    lines.append("The bridge ran with its default settings except " + ", ".join(
        f"`{k}`" for k in st["bridge_overrides"]) + " (see bench/run.py). CPU columns: µs of CPU (user + "
                 "system) each process spent per request answered.")
    lines.append("")
    concs = st["concurrency"]
    for arrangement, table in report["results"].items():
        if not table:
            continue
        lines += [f"## {ARRANGEMENT_TITLES.get(arrangement, arrangement)}", ""]
        for conc in concs:
            lines += [f"### c={conc}", "",
                      "| scenario | req/s | runs min-max | p50 ms | p99 ms | bridge CPU µs/req | OpenBao CPU µs/req "
                      "| wrk CPU µs/req | non-2xx / socket errors |", "|---|---|---|---|---|---|---|---|---|"]
            for key, points in table.items():
                p = points.get(str(conc))
                if p is None:
                    continue
                cpu = p.get("cpu_us", {})
                lines.append(
                    f"| ({key}) {SCENARIOS[key]} | {p['rps']:.0f} | {p['rps_min']:.0f}-{p['rps_max']:.0f} | "
                    f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {_cpu(cpu.get('bridge'))} | "
                    f"{_cpu(cpu.get('openbao'))} | {_cpu(cpu.get('wrk'))} | {p['non_2xx']} / {p['socket_errors']} |")
            lines.append("")
    if not any(table for table in report["results"].values()):  # only the fairness scenario or the profile ran
        lines += render_fairness(report.get("fairness") or {})
        lines += render_profile(report)
        return "\n".join(lines) + "\n"
    lines += render_targets(report.get("targets") or [])
    mem = report.get("memory")
    if mem:
        lines.append(f"Bridge RSS with {mem['connections']} idle keep-alive connections: {mem['rss_mb']:.1f} MB "
                     f"(peak {mem['peak_rss_mb']:.1f} MB, {mem['still_open']} still open; target ≤ 150 MB: "
                     f"{'met' if mem['peak_rss_mb'] <= 150 else '**missed**'}).")
    lines += render_fairness(report.get("fairness") or {})
    lines += render_profile(report)
    if report["skipped"]:
        lines.append("")
        lines.append("Skipped: " + "; ".join(f"({k}) {v}" for k, v in report["skipped"].items()))
    lines.append("")
    return "\n".join(lines)


def render_targets(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Targets (issue 11; pinned, medians)", "",
             "| target | value | per run | wanted | met | from CPU µs | CPU µs/req: bridge, CPU 0 (OpenBao + wrk) → "
             "budget |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["met"] is None else ("pass" if r["met"] else "**miss**")
        if r["info"]:
            met = f"({met}, info)"
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        runs = ", ".join(f"{v:.2f}" for v in r["runs"]) or "-"
        if "budget_us" in r:
            budget = f"{r['bridge_cpu_us']:.0f}, {r['cpu0_us']:.0f} → {r['budget_us']:.0f}"
        elif r.get("bridge_cpu_us_den") is not None:
            budget = f"bridge {r['bridge_cpu_us']:.0f} here, {r['bridge_cpu_us_den']:.0f} at the reference"
        else:
            budget = "-"
        bound = f"{r['cpu_bound']:.2f}" if r.get("cpu_bound") is not None else "-"
        lines.append(f"| {r['name']} | {value} | {runs} | {r['op']} {r['target']:g} | {met} | {bound} | {budget} |")
    lines += ["", "From CPU µs: the same ratio computed from CPU per request instead of req/s, as if each process "
              "had its CPU to itself (pinned: the bridge on CPU 1, OpenBao and wrk on CPU 0; the busier CPU sets a "
              "scenario's pace, 1e6 / its µs per request). It does not move with how much CPU other work took "
              "from the run, which is what makes req/s swing on a shared machine. "
              "Budget: the CPU per request at which one core serves the wanted share of the reference's req/s, "
              "1e6 / (wanted x reference req/s). Pinned, the bridge has CPU 1 to itself and OpenBao shares CPU 0 "
              "with wrk, so a throughput target needs both the bridge's CPU per request and CPU 0's (OpenBao's "
              "plus wrk's, for this scenario) under the budget; the larger of the two is the bottleneck.", ""]
    return lines


def render_profile(report: dict[str, Any]) -> list[str]:
    profiles: dict[str, dict[str, Any]] = report.get("profile") or {}
    if not profiles and not report.get("profile_error"):
        return []
    conc = next((p.get("concurrency", PROFILE_CONCURRENCY) for p in profiles.values()), PROFILE_CONCURRENCY)
    lines = ["", f"## Where each microsecond goes (py-spy, bridge, pinned, c={conc})", ""]
    if report.get("profile_error"):
        lines.append(f"No profile: {report['profile_error']}")
        return lines
    first = next(iter(profiles.values()))
    lines.append(f"py-spy {'--native ' if first['native'] else ''}at {first['rate']} samples/s for "
                 f"{first['seconds']} s per scenario. Each bucket is its share of the bridge's event-loop samples "
                 "times the bridge's CPU per request in a run without the profiler just before (the profiler "
                 "stops the bridge for each sample, which costs it CPU of its own: "
                 + "; ".join(f"({k}) {p['cpu_us_per_request']:.0f} µs/req at {p['rps']:.0f} req/s without, "
                             f"{p['cpu_us_profiled']:.0f} µs/req with it, load {p['load1']}"
                             for k, p in profiles.items())
                 + "). Each sample counts once, in the first bucket that claims it: garbage collector, logging, "
                 "metrics, audit, JSON, pydantic wherever they are called from; else the innermost pipeline stage "
                 "on the stack (bench/profile.py).")
    lines.append("")
    lines += profiler.render(profiles, SCENARIOS)
    lines.append("")
    return lines


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


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


def stop_on_sigterm() -> None:
    """SIGTERM (and SIGINT, which a shell's background job ignores) unwind like Ctrl-C: ``bench_context``
    stops OpenBao and the bridges, which run in sessions of their own."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _bridge_env(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"bench: --bridge-env wants NAME=VALUE, got {item!r}")
        out[name.upper()] = value
    return out


def measure(bench: Bench, arrangement: str, concs: list[int], runs: int, duration: float
            ) -> tuple[dict[str, dict[str, Any]], list[dict[str, dict[str, Any]]]]:
    """Every scenario at every concurrency, ``runs`` rounds; the medians, and each round's points."""
    keys = [key for key in SCENARIOS if key in bench.targets]
    for key in keys:
        bench.wrk(bench.targets[key], 16, 1.0, arrangement)  # warm-up: pools, caches
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(runs):
        points: dict[str, dict[str, Any]] = {}
        for key in keys:
            points[key] = {}
            for conc in concs:
                point = bench.wrk(bench.targets[key], conc, duration, arrangement)
                points[key][str(conc)] = point
                cpu = point["cpu_us"]
                print(f"{arrangement:9} run {number + 1}/{runs} ({key}) c={conc:<4} {point['rps']:>7.0f} req/s  "
                      f"p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms  CPU µs/req: bridge "
                      f"{_cpu(cpu.get('bridge')):>4} OpenBao {_cpu(cpu.get('openbao')):>4} wrk "
                      f"{_cpu(cpu.get('wrk')):>4}  load {point['load1']}"
                      + (f"  non-2xx {point['non_2xx']}" if point["non_2xx"] else ""), flush=True)
        rounds.append(points)
    table = {key: {str(conc): median_point([r[key][str(conc)] for r in rounds]) for conc in concs}
             for key in keys}
    return table, rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; the report shows medians (default 3)")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--scenarios", default="abcdefgwv")
    parser.add_argument("--arrangements", default="pinned,unpinned")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a bridge setting for an experiment (repeatable; the report names it)")
    parser.add_argument("--profile", dest="profile_only", action="store_true",
                        help="only the profile: scenarios c and e at c=64, pinned, under py-spy")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of (c) and (e)")
    parser.add_argument("--profile-scenarios", default="".join(PROFILED), help="profiled scenarios (default ce)")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--profile-concurrency", type=int, default=PROFILE_CONCURRENCY)
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--profile-python-only", dest="profile_native", action="store_false",
                        help="py-spy without --native (no C frames: syscalls, GC, C parsers hidden)")
    parser.add_argument("--render", metavar="JSON", help="only re-render the report of an earlier run's JSON")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.render:
        print(rerender(json.loads(Path(args.render).read_text())))
        return 0
    stop_on_sigterm()
    args.bridge_env = _bridge_env(args.bridge_env)
    if args.profile_only:
        args.scenarios = args.profile_scenarios
        args.arrangements = "pinned" if (os.cpu_count() or 1) >= 2 else "unpinned"
        args.idle_connections = 0
        args.profile = True
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
    args.started_file = started.replace(":", "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    rounds_by_arrangement: dict[str, list[dict[str, dict[str, Any]]]] = {}
    memory: dict[str, Any] | None = None
    fairness: dict[str, Any] = {}
    machine: dict[str, Any] = {}
    scenarios: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    profile_error = ""
    affinity: dict[str, dict[str, list[int]]] = {}
    with bench_context(args) as bench:
        for arrangement in arrangements:
            bench.stop()
            bench.start(arrangement)
            machine = machine or machine_info()
            affinity[arrangement] = bench.affinity()
            scenarios.update({k: SCENARIOS[k] for k in bench.targets})
            if not args.profile_only:
                results[arrangement], rounds_by_arrangement[arrangement] = measure(
                    bench, arrangement, concs, args.runs, args.duration)
            if args.profile and not profiles and not profile_error:  # the first arrangement (pinned)
                profiles, profile_error = run_profiles(bench, arrangement, args)
            if "v" in args.scenarios and not args.profile_only:
                fairness[arrangement] = bench.fairness(args.duration, arrangement)
                print(f"{arrangement:9} (v) fairness {json.dumps(fairness[arrangement])}", flush=True)
            if args.idle_connections and memory is None and "main" in bench.bridges:  # first arrangement's bridge
                memory = bench.idle_connections(bench.bridges["main"], args.idle_connections)
                memory["arrangement"] = arrangement
        report: dict[str, Any] = {
            "started": started,
            "machine": machine,
            "settings": {"duration": args.duration, "runs": args.runs, "concurrency": concs,
                         "arrangements": arrangements, "affinity": affinity,
                         "bridge_overrides": {**THROUGHPUT_ENV, **args.bridge_env}},
            "scenarios": scenarios,
            "results": results,
            "rounds": rounds_by_arrangement,
            "memory": memory,
            "fairness": fairness,
            "profile": profiles,
            "profile_error": profile_error,
            "skipped": bench.skipped,
        }
        pinned = "pinned" if "pinned" in results else next(iter(results), "")
        report["targets"] = targets(results.get(pinned, {}), rounds_by_arrangement.get(pinned)) if pinned else []
        report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / f"{args.started_file}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = render(report)
    if any(results.values()):
        (out / "latest.md").write_text(md)
    elif fairness:  # a fairness-only run (--scenarios v) keeps the full table of the last complete run
        (out / "latest-fairness.md").write_text(md)
    if profiles:
        (out / "latest-profile.md").write_text("\n".join([f"# Profile {started}", "", *render_profile(report)[1:]])
                                               + "\n")
    print()
    print(md)
    return 0


def rerender(report: dict[str, Any]) -> str:
    """The report of an earlier run's JSON, its targets computed again (``--render``)."""
    results = report["results"]
    pinned = "pinned" if "pinned" in results else next(iter(results), "")
    report["targets"] = targets(results.get(pinned, {}), report.get("rounds", {}).get(pinned)) if pinned else []
    return render(report)


def run_profiles(bench: Bench, arrangement: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """(c) and (e) under py-spy; an error (no py-spy, not allowed to attach) is reported, not raised."""
    if profiler.py_spy() is None:
        return {}, "py-spy is not installed (it is in the dev extra: make install)"
    out: dict[str, Any] = {}
    for key in args.profile_scenarios:
        target = bench.targets.get(key)
        if target is None:
            continue
        bench.wrk(target, args.profile_concurrency, 1.0, arrangement)  # warm-up
        try:
            out[key] = bench.profile(target, args.profile_seconds, arrangement, args.profile_native,
                                     args.profile_rate, args.profile_concurrency)
        except (RuntimeError, OSError) as exc:
            return out, f"py-spy could not profile the bridge: {exc}"
        print(f"{arrangement:9} profile ({key}) {json.dumps(out[key]['categories'])}", flush=True)
    return out, ""


if __name__ == "__main__":
    raise SystemExit(main())
