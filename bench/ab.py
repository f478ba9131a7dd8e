"""A/B of bridge variants: what a change saves per request, measured side by side.

Each variant is a bridge process started from a source tree (a directory holding a ``bridge`` package, e.g.
a scratch copy with one change: ``cp -r bridge /tmp/v1/ && git apply`` there; default: this checkout) with
extra settings, all against one OpenBao, pinned as in ``make bench`` (OpenBao and wrk on CPU 0, the bridges on
CPU 1). Rounds alternate the variants (the order rotates every round), so load from other work on the machine
falls on all of them alike. For each scenario and concurrency it reports each variant's median bridge CPU µs
per request, req/s and p50, and the median of the per-round differences to the first variant (the paired
difference is what survives a noisy machine).

``--icount`` runs each bridge under valgrind (callgrind, instrumentation switched on only while wrk runs) and
reports thousands of instructions per request instead of CPU µs: exact to a fraction of a per cent and blind to
other load, but 20-50x slower, and blind to what costs time without instructions (cache misses: the garbage
collector's; the kernel: syscalls). Use it at c=1 for code-path changes; use CPU µs at c=64/256 for what
depends on concurrency (garbage collection, the connection pool).

Usage::

    python -m bench.ab --variant base --variant quiet --env quiet:LOG_LEVEL=warning \\
        [--variant orjson=/tmp/tree-with-orjson] [--scenarios ce] [--concurrency 64] [--rounds 5] [--duration 3] \\
        [--icount]

``--variant NAME[=TREE]`` (the first one is the reference), ``--env NAME:SETTING=VALUE`` (repeatable). Results:
printed, and ``--out FILE`` (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import SCENARIOS, Bench, Target, _raise_fd_limit, bench_context, median_point, stop_on_sigterm


def _variants(args: argparse.Namespace) -> dict[str, tuple[Path | None, dict[str, str]]]:
    out: dict[str, tuple[Path | None, dict[str, str]]] = {}
    for spec in args.variant:
        name, _, tree = spec.partition("=")
        source = Path(tree).resolve() if tree else None
        if source is not None and not (source / "bridge" / "__init__.py").exists():
            raise SystemExit(f"bench.ab: {source} holds no bridge package")
        out[name] = (source, {})
    for spec in args.env:
        name, _, setting = spec.partition(":")
        key, sep, value = setting.partition("=")
        if name not in out or not sep:
            raise SystemExit(f"bench.ab: --env wants VARIANT:NAME=VALUE of a declared variant, got {spec!r}")
        out[name][1][key.upper()] = value
    if len(out) < 1:
        raise SystemExit("bench.ab: give at least one --variant")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[=TREE]")
    parser.add_argument("--env", action="append", default=[], metavar="NAME:SETTING=VALUE")
    parser.add_argument("--scenarios", default="ce", help="among c, d, e, f, g (default ce)")
    parser.add_argument("--concurrency", default="64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--arrangement", default="pinned", choices=["pinned", "unpinned"])
    parser.add_argument("--icount", action="store_true",
                        help="count the bridge's instructions per request under valgrind (callgrind) instead of "
                             "its CPU time: exact and blind to other load, 20-50x slower; use c=1")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.icount and shutil.which("valgrind") is None:
        raise SystemExit("bench.ab: --icount needs valgrind (apt-get install valgrind)")
    stop_on_sigterm()
    variants = _variants(args)
    want = set(args.scenarios)
    concs = [int(c) for c in args.concurrency.split(",")]
    _raise_fd_limit()
    # what bench.run's Bench reads from its arguments
    bench_args = argparse.Namespace(scenarios="", bridge_env={}, out=str(Path(args.out or ".").parent),
                                    started_file="ab")
    started_load = [round(x, 2) for x in os.getloadavg()]
    with bench_context(bench_args) as bench:
        bench.start(args.arrangement)  # OpenBao only: no scenario wanted of the main harness
        targets: dict[str, dict[str, Target]] = {}
        mine = os.sched_getaffinity(0)
        try:
            if args.arrangement == "pinned":
                os.sched_setaffinity(0, {1})
            for name, (source, env) in variants.items():
                wrapper = None
                if args.icount:  # instrumentation off until each measured run (Icount.measure)
                    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                               f"--callgrind-out-file={bench.workdir / f'callgrind-{name}-%p.out'}"]
                    env = {"READY_PROBE_INTERVAL": "3600", **env}  # no probe inside the counted runs
                found = bench.bridge_targets(f"main-{name}", f"child-{name}", want, env, source, wrapper,
                                             ready_timeout=300.0 if args.icount else 20.0)
                if found is None:
                    raise SystemExit(f"bench.ab: variant {name} did not start: {bench.skipped}")
                targets[name] = {k: t for k, t in found.items() if bench.probe(t)}
        finally:
            os.sched_setaffinity(0, mine)
        keys = [k for k in SCENARIOS if all(k in t for t in targets.values())]
        names = list(variants)
        for name in names:
            for key in keys:
                bench.wrk(targets[name][key], 16, 1.0, args.arrangement)  # warm-up
        runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
            n: {k: {str(c): [] for c in concs} for k in keys} for n in names}
        for number in range(args.rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            for key in keys:
                for conc in concs:
                    for name in order:
                        target = targets[name][key]
                        if args.icount:
                            point = icount(bench, target, conc, args.duration, args.arrangement)
                        else:
                            point = bench.wrk(target, conc, args.duration, args.arrangement)
                        runs[name][key][str(conc)].append(point)
                        print(f"round {number + 1}/{args.rounds} ({key}) c={conc:<4} {name:>12}: bridge "
                              f"{point['cpu_us'].get('bridge', 0):9.1f} {'kI' if args.icount else 'µs'}/req  "
                              f"{point['rps']:7.0f} req/s  p50 {point['p50_ms']:6.2f} ms  load {point['load1']}"
                              + (f"  non-2xx {point['non_2xx']}" if point["non_2xx"] else ""), flush=True)
    report = summarise(runs, names, keys, concs)
    report["unit"] = "kI/req" if args.icount else "µs/req"
    report["settings"] = {"variants": {n: {"source": str(s) if s else None, "env": e}
                                       for n, (s, e) in variants.items()},
                          "rounds": args.rounds, "duration": args.duration, "arrangement": args.arrangement,
                          "loadavg_at_start": started_load,
                          "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    print()
    print(render(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def icount(bench: Bench, target: Target, conc: int, duration: float, arrangement: str) -> dict[str, Any]:
    """One wrk run with callgrind's instrumentation on in the bridge: thousands of instructions per request
    (put where bench.wrk puts CPU µs, so the summary treats both alike)."""
    pid = bench.pids(target.process)[0]
    _callgrind(pid, "-i", "on")
    point = bench.wrk(target, conc, duration, arrangement)
    _callgrind(pid, "-i", "off")
    dumps = set(bench.workdir.glob("callgrind-*.out.*"))
    _callgrind(pid, "-d")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(bench.workdir.glob("callgrind-*.out.*")) - dumps
        totals = [_totals(f) for f in new]
        if new and all(t is not None for t in totals):
            instructions = sum(t for t in totals if t is not None)
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("callgrind wrote no dump")
    point["cpu_us"] = {"bridge": round(instructions / max(1, point["requests"]) / 1000, 1)}
    return point


def _callgrind(pid: int, *command: str) -> None:
    # vgdb names its pipes after $HOST, which the bridge has in its environment (its listen address)
    subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True, check=True,
                   env=dict(os.environ, HOST="127.0.0.1"), timeout=120)


def _totals(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def summarise(runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]], names: list[str], keys: list[str],
              concs: list[int]) -> dict[str, Any]:
    """Medians per variant, and the median paired (same round) difference of bridge CPU µs/req to the first."""
    out: dict[str, Any] = {"points": {}}
    ref = names[0]
    for key in keys:
        for conc in concs:
            row: dict[str, Any] = {}
            base = runs[ref][key][str(conc)]
            for name in names:
                points = runs[name][key][str(conc)]
                med = median_point(points)
                entry = {"bridge_us": med["cpu_us"].get("bridge"), "openbao_us": med["cpu_us"].get("openbao"),
                         "bridge_sys_us": med.get("sys_us", {}).get("bridge"),
                         "rps": med["rps"], "p50_ms": med["p50_ms"], "p99_ms": med["p99_ms"],
                         "non_2xx": med["non_2xx"],
                         "bridge_us_runs": [p["cpu_us"].get("bridge") for p in points]}
                if name != ref:
                    diffs = [p["cpu_us"]["bridge"] - b["cpu_us"]["bridge"] for p, b in zip(points, base, strict=True)]
                    entry["delta_us"] = round(statistics.median(diffs), 1)
                    entry["delta_us_range"] = [round(min(diffs), 1), round(max(diffs), 1)]
                    ref_us = statistics.median(b["cpu_us"]["bridge"] for b in base)
                    entry["delta_pct"] = round(100 * entry["delta_us"] / ref_us, 1) if ref_us else None
                row[name] = entry
            out["points"][f"{key}@{conc}"] = row
    return out


def render(report: dict[str, Any]) -> str:
    unit = report.get("unit", "µs/req")
    lines = [f"| scenario | variant | bridge {unit} | Δ vs first (paired median, range) | req/s | p50 ms |",
             "|---|---|---|---|---|---|"]
    for point, row in report["points"].items():
        key, conc = point.split("@")
        for name, e in row.items():
            delta = "-" if "delta_us" not in e else (
                f"{e['delta_us']:+.1f} ({e['delta_pct']:+.1f} %; {e['delta_us_range'][0]:+.1f}..."
                f"{e['delta_us_range'][1]:+.1f})")
            lines.append(f"| ({key}) c={conc} | {name} | {e['bridge_us']:.1f} | {delta} | {e['rps']:.0f} | "
                         f"{e['p50_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
