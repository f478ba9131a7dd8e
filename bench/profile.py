"""Where each microsecond of the bridge goes: py-spy samples of its event-loop thread, as µs per request.

:func:`record` attaches ``py-spy record --native`` to a running bridge while wrk drives one scenario; py-spy
writes collapsed stacks (``frame;frame;... count``), Python and C frames merged. :func:`analyse` turns them into
µs of bridge CPU per request: a bucket's share of the samples x the bridge's CPU per request (``/proc``), which
bench/run.py measures in a run without the profiler just before (stopping the bridge for every native sample
costs it CPU of its own, so the shares are trusted, not the profiled run's total). Two views:

- **categories**: every sample counted once, in the first bucket that claims it:
  1. cross-cutting work, wherever it is called from, in this order: the garbage collector, logging
     (structlog, the ``logging`` module, bridge/logging.py), metrics (prometheus_client, ``Metrics``,
     ``OpsStats``), audit (``AuditLog``), JSON (the json module and its C encoder, bridge/jsonbody.py, orjson,
     msgspec), pydantic;
  2. else the innermost pipeline stage on the stack: the Vault client (bridge/vault/ and aiohttp's client
     modules), the service, the REST handler, the MCP handler, auth, rate limiter, in-flight cap, each
     middleware by name, the aiohttp server (aiohttp's web modules, our ``BridgeRequestHandler``). aiohttp's
     HTTP parser, writer and streams serve both sides: they count for the Vault client when it called them,
     else for the server. asyncio, uvloop, contextlib, yarl, multidict and C helpers are transparent: they
     count for whoever called them;
  3. else the event loop: uvloop/libuv and the socket reads and writes they make between callbacks.
- **functions**: inclusive (anywhere on the stack, once per sample) and self time of the costliest Python
  functions; self is the innermost Python frame, or the syscall or the garbage collector the sample was in.

Only the main thread is kept (the event loop; the thread pool's idle workers would otherwise count as busy).
Cross-checked against A/B runs (bench/ab.py): with ``--native`` the logging share matched what turning the
access line off saved; without it, time in syscalls is partly lost and logging looked half as expensive.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")

# cross-cutting buckets: claimed when any frame of the sample matches, in this order
GC_FUNCS = ("gc_collect_main", "gc_collect_with_callback", "gc_collect_generations", "_PyObject_GC_Link")
LOGGING_FILES = ("structlog/", "logging/", "bridge/logging.py")
METRICS_FUNCS = ("Metrics.", "OpsStats.", "route_label", "ops_vault_observer")
AUDIT_FUNCS = ("AuditLog.", "_request_fields", "_now")
JSON_FILES = ("json/", "_json.c", "bridge/jsonbody.py", "orjson", "msgspec")
PYDANTIC_FILES = ("pydantic/", "pydantic_core")

# pipeline stages, innermost wins
MIDDLEWARES = {
    "request_context": "middleware: request_context (own code)",
    "error_renderer": "middleware: error_renderer",
    "metrics_middleware": "middleware: metrics_middleware (own code)",
    "edge_middleware": "middleware: edge (Host/Origin)",
    "identity_middleware": "middleware: identity_middleware",
    "rate_limit_middleware": "middleware: rate_limit_middleware",
    "inflight_middleware": "middleware: inflight_middleware",
    "tracing_middleware": "middleware: tracing",
}
AIOHTTP_CLIENT = ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tcp_helpers.py", "aiohttp/resolver.py",
                  "aiohttp/cookiejar.py", "aiohttp/tracing.py")
AIOHTTP_SERVER = ("aiohttp/web",)
SERVING_CLASSES = ("BridgeServer.", "BridgeRequestHandler.", "_Throttled.", "_raw_response")  # bridge/serving.py
# aiohttp modules both sides use (HTTP parser and writer, streams): the client's when the client called them
AIOHTTP_SHARED = ("aiohttp/http", "aiohttp/_http", "aiohttp/base_protocol.py", "aiohttp/streams.py",
                  "aiohttp/helpers.py", "aiohttp/abc.py", "aiohttp/payload.py", "_http_parser.c", "llhttp.c",
                  "_http_writer.c", "aiohttp/_helpers", "_helpers_c.c")

VAULT_CLIENT = "Vault client: ours + aiohttp client (build, send, parse)"
SERVICE = "service (bridge/service.py, paths, models, @audited)"
REST = "REST handler (bridge/rest.py)"
MCP = "MCP handler (envelope, tools/call)"
AUTH = "auth (bridge/auth/)"
RATELIMIT = "rate limiter (bridge/ratelimit.py, billing)"
INFLIGHT = "in-flight cap (bridge/inflight.py)"
SERVER = "aiohttp server (parse, route, write the answer)"
LOOP = "event loop (uvloop/libuv, socket syscalls)"
OTHER = "other bridge code"
GC = "garbage collector"
LOGGING = "logging (access line, mcp.tool.called; structlog)"
METRICS = "metrics (prometheus, ops stats)"
AUDIT = "audit"
JSON = "JSON encode/decode"
PYDANTIC = "pydantic (validation, serialisation)"

CATEGORY_ORDER = (
    SERVER, *MIDDLEWARES.values(), AUTH, RATELIMIT, INFLIGHT, REST, MCP, SERVICE, VAULT_CLIENT, JSON, PYDANTIC,
    LOGGING, METRICS, AUDIT, GC, OTHER, LOOP,
)


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str

    @classmethod
    def parse(cls, text: str) -> Frame:
        """``name (file:line)`` (py-spy's raw format; a native frame may have no line)."""
        text = _LINE.sub(")", text.strip())
        name, sep, rest = text.rpartition(" (")
        if not sep:
            return cls(text, "")
        return cls(name, rest[:-1] if rest.endswith(")") else rest)

    def label(self) -> str:
        return f"{self.function} ({self.file})" if self.file else self.function


def parse_collapsed(lines: Iterable[str], *, main_thread_only: bool = True) -> list[tuple[list[Frame], int]]:
    """py-spy's raw (collapsed) output as ``(frames root→leaf, count)``. With ``--threads`` the first frame
    names the thread; then only ``MainThread`` samples are kept."""
    out: list[tuple[list[Frame], int]] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        if parts and parts[0].startswith("thread ("):
            if main_thread_only and "MainThread" not in parts[0]:
                continue
            parts = parts[1:]
        if parts and parts[0].startswith("process "):
            parts = parts[1:]
        out.append(([Frame.parse(p) for p in parts], int(count)))
    return out


def _any(frames: Sequence[Frame], files: tuple[str, ...] = (), funcs: tuple[str, ...] = (),
         bridge_only: bool = True) -> bool:
    for frame in frames:
        if files and any(f in frame.file for f in files):
            return True
        if funcs and (frame.file.startswith("bridge/") or not bridge_only) \
                and any(frame.function.startswith(f) for f in funcs):
            return True
    return False


SHARED = "shared"


def _stage(frame: Frame) -> str | None:
    """The pipeline stage a frame belongs to, :data:`SHARED` for aiohttp's client/server modules, or None
    (transparent: asyncio, uvloop, C helpers, the standard library)."""
    file, func = frame.file, frame.function
    if file.startswith("bridge/vault/") or file.startswith(AIOHTTP_CLIENT):
        return VAULT_CLIENT
    if file.startswith(("bridge/service.py", "bridge/paths.py", "bridge/models.py", "bridge/keyguard.py",
                        "bridge/errors.py", "bridge/audit.py")):  # audit.py here: the @audited wrapper
        return SERVICE
    if file.startswith("bridge/rest.py"):
        return REST
    if file.startswith("bridge/mcp/"):
        return MCP
    if file.startswith("bridge/auth/"):
        return AUTH
    if file.startswith(("bridge/ratelimit", "bridge/billing.py")):
        return RATELIMIT
    if file.startswith("bridge/inflight.py"):
        return INFLIGHT
    if file.startswith(("bridge/middlewares.py", "bridge/metrics.py", "bridge/edge.py", "bridge/tracing.py")):
        short = func.rsplit(".", 1)[-1]
        if short in MIDDLEWARES:
            return MIDDLEWARES[short]
        if file.startswith("bridge/edge.py"):
            return MIDDLEWARES["edge_middleware"]
    if file.startswith(AIOHTTP_SERVER) or (file == "bridge/serving.py" and func.startswith(SERVING_CLASSES)):
        return SERVER
    if any(s in file for s in AIOHTTP_SHARED):
        return SHARED
    if file.startswith("bridge/") and not file.startswith(("bridge/cli.py", "bridge/__main__.py",
                                                            "bridge/serving.py")):
        return OTHER
    return None


def categorise(frames: Sequence[Frame]) -> str:
    """The one bucket of a sample (see the module docstring for the order)."""
    if _any(frames, funcs=GC_FUNCS, bridge_only=False):
        return GC
    if _any(frames, files=LOGGING_FILES):
        return LOGGING
    if _any(frames, files=("prometheus_client/",), funcs=METRICS_FUNCS):
        return METRICS
    if _any(frames, funcs=AUDIT_FUNCS) and _any(frames, files=("bridge/audit.py",)):
        return AUDIT
    if _any(frames, files=JSON_FILES):
        return JSON
    if _any(frames, files=PYDANTIC_FILES):
        return PYDANTIC
    shared = False
    for frame in reversed(frames):
        stage = _stage(frame)
        if stage == SHARED:
            shared = True
        elif stage is not None:
            if shared and stage != VAULT_CLIENT:
                return SERVER  # aiohttp's parser/writer/streams, called by the server side
            return stage
    return SERVER if shared else LOOP


@dataclass
class Profile:
    samples: int
    cpu_us_per_request: float
    categories: dict[str, float]  # µs per request
    inclusive: dict[str, float]  # function label -> µs per request
    self_time: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "cpu_us_per_request": self.cpu_us_per_request,
                "categories": self.categories, "inclusive": self.inclusive, "self": self.self_time}


def analyse(stacks: list[tuple[list[Frame], int]], cpu_us_per_request: float, *, top: int = 40) -> Profile:
    """Samples → µs per request (each sample is worth ``cpu_us_per_request / samples``)."""
    total = sum(count for _, count in stacks) or 1
    scale = cpu_us_per_request / total
    cats: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        cats[categorise(frames)] += count
        for label in {f.label() for f in frames if f.file.endswith(".py")}:
            incl[label] += count
        if frames:
            own[_self_frame(frames).label()] += count
    categories = {name: round(cats[name] * scale, 1) for name in CATEGORY_ORDER if cats.get(name)}
    return Profile(
        samples=total, cpu_us_per_request=round(cpu_us_per_request, 1), categories=categories,
        inclusive={k: round(v * scale, 1) for k, v in [kv for kv in incl.most_common() if _interesting(kv[0])][:top]},
        self_time={k: round(v * scale, 1) for k, v in own.most_common(top)},
    )


def _self_frame(frames: Sequence[Frame]) -> Frame:
    """Where a sample's time is spent: a syscall or the garbage collector when the leaf is one, else the
    innermost Python frame (C helpers such as ``Py_DECREF`` count for the Python code that ran them)."""
    leaf = frames[-1]
    if leaf.file.startswith("libc.so") or leaf.function.startswith(GC_FUNCS):
        return leaf
    gc = next((f for f in frames if f.function.startswith(GC_FUNCS)), None)
    if gc is not None:
        return gc
    return next((f for f in reversed(frames) if f.file.endswith(".py")), leaf)


def _interesting(label: str) -> bool:
    """Inclusive time is worth listing for everything but the frames that sit under every sample."""
    boring = ("_run_module_as_main", "_run_code", "<module>", "main (bridge/cli.py", "serve (bridge/cli.py",
              "run_app (bridge/serving.py", "run_until_complete", "_run_once", "Handle._run", "Task.__step")
    return not label.startswith(boring)


def render(profiles: dict[str, dict[str, Any]], titles: dict[str, str]) -> list[str]:
    """Markdown: one category table with a column per profiled scenario, then the functions of each."""
    if not profiles:
        return []
    keys = list(profiles)
    lines = ["| where (µs of bridge CPU per request) | " + " | ".join(f"({k}) {titles.get(k, '')}" for k in keys)
             + " |", "|---|" + "---|" * len(keys)]
    for name in CATEGORY_ORDER:
        if not any(profiles[k]["categories"].get(name) for k in keys):
            continue
        lines.append(f"| {name} | " + " | ".join(_us(profiles[k]["categories"].get(name),
                                                       profiles[k]["cpu_us_per_request"]) for k in keys) + " |")
    lines.append("| **total (measured, /proc)** | " + " | ".join(
        f"**{profiles[k]['cpu_us_per_request']:.0f}**" for k in keys) + " |")
    lines.append("| samples | " + " | ".join(str(profiles[k]["samples"]) for k in keys) + " |")
    for key in keys:
        p = profiles[key]
        lines += ["", f"Functions, ({key}) {titles.get(key, '')}: inclusive and self µs per request (top "
                  f"{len(p['inclusive'])})", "", "| function | inclusive | | function | self |",
                  "|---|---|---|---|---|"]
        incl = list(p["inclusive"].items())
        own = list(p["self"].items())
        for i in range(max(len(incl), len(own))):
            left = f"{_md(incl[i][0])} | {incl[i][1]:.1f}" if i < len(incl) else " | "
            right = f"{_md(own[i][0])} | {own[i][1]:.1f}" if i < len(own) else " | "
            lines.append(f"| {left} | | {right} |")
    return lines


def _us(value: float | None, total: float) -> str:
    if not value:
        return "-"
    return f"{value:.1f} ({100 * value / total:.0f} %)" if total else f"{value:.1f}"


def _md(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def py_spy() -> str | None:
    """The py-spy binary beside this interpreter (the venv) or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, seconds: int, out: Path, *, rate: int = 200, native: bool = False,
           cpus: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (collapsed stacks to ``out``); the caller waits."""
    binary = py_spy()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy; it is in the dev extra)")
    # --nonblocking reads the stacks without stopping the bridge (no overhead, rarely a torn stack); native
    # unwinding needs the process stopped for each sample
    mode = ["--native"] if native else ["--nonblocking"]
    cmd = [binary, "record", "--threads", *mode, "-r", str(rate), "-d", str(seconds), "-p", str(pid),
           "-f", "raw", "-o", str(out)]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
