"""The benchmark's arithmetic: medians of runs, issue 11's targets with pass/miss, and the profile's buckets.

These run without wrk, OpenBao or py-spy: the numbers and stacks are made up, the code that turns them into
the report is the real one (bench/run.py, bench/profile.py).
"""

from __future__ import annotations

from typing import Any

from bench import profile
from bench.run import bridge_environment, median_point, targets


def point(rps: float, p50: float = 1.0, bridge: float | None = 300.0, openbao: float = 200.0) -> dict[str, Any]:
    cpu = {"openbao": openbao, "wrk": 20.0}
    if bridge is not None:
        cpu["bridge"] = bridge
    return {"rps": rps, "p50_ms": p50, "p99_ms": 10 * p50, "max_ms": 20 * p50, "requests": int(rps * 3),
            "non_2xx": 0, "socket_errors": 0, "cpu_us": cpu, "load1": 1.0}


def test_median_point_takes_each_figures_median_and_keeps_the_spread() -> None:
    runs = [point(1000, 1.0, 300), point(3000, 3.0, 250), point(2000, 2.0, 280)]
    runs[1]["non_2xx"] = 2
    med = median_point(runs)
    assert med["rps"] == 2000
    assert med["p50_ms"] == 2.0
    assert med["cpu_us"] == {"bridge": 280.0, "openbao": 200.0, "wrk": 20.0}
    assert (med["rps_min"], med["rps_max"], med["runs"]) == (1000, 3000, 3)
    assert med["non_2xx"] == 2


def table(**points: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {str(conc): p for conc, p in by_conc.items()} for key, by_conc in points.items()}


def test_targets_pass_and_miss_with_the_issues_thresholds() -> None:
    pinned = table(
        a={1: point(4000, 0.20, None), 64: point(4000, 10, None), 256: point(4000, 40, None)},
        b={64: point(3000, 10, None)},
        c={1: point(1500, 0.55), 64: point(3500, 10, 280), 256: point(3000, 40)},  # 0.875; 256/64 = 0.857
        d={64: point(3400, 10)},  # 3400 / 3500 = 0.971
        e={64: point(3000, 10, 330)},  # 0.75
        f={64: point(2600, 10)},  # 2600 / 3000 = 0.867
    )
    rows = {r["name"]: r for r in targets(pinned)}
    c_a = rows["(c) REST read / (a) direct, req/s at c=64"]
    assert (c_a["value"], c_a["met"]) == (0.875, True)
    # the bridge CPU per request that would just meet the target at (a)'s 4000 req/s: 1e6 / (0.85 * 4000)
    assert c_a["bridge_cpu_us"] == 280
    assert c_a["budget_us"] == 294.1
    assert c_a["cpu0_us"] == 220  # OpenBao + wrk, sharing CPU 0
    # as if each CPU were its own: (a) paced by CPU 0 (200 + 20 µs), (c) by the bridge (280 µs)
    assert c_a["cpu_bound"] == round(220 / 280, 3)
    assert rows["(e) MCP / (a) direct, req/s at c=64"]["met"] is False
    assert rows["(f) child token / (b) policy token, req/s at c=64"]["met"] is True
    assert rows["(d) JWT / (c) API key, req/s at c=64"]["met"] is True
    collapse = rows["(c) at c=256 / (c) at c=64, req/s"]
    assert collapse["met"] is False
    assert (collapse["bridge_cpu_us"], collapse["bridge_cpu_us_den"]) == (300, 280)
    latency = rows["added latency at c=1: (c) p50 - (a) p50, ms"]
    assert (latency["value"], latency["met"]) == (0.35, True)
    assert rows["(g) REST write / (w) direct write, req/s at c=64 (no target)"]["met"] is None  # not measured


def test_targets_report_each_rounds_value() -> None:
    rounds = [table(a={64: point(4000, bridge=None)}, c={64: point(3600)}),
              table(a={64: point(4000, bridge=None)}, c={64: point(3000)})]
    medians = table(a={64: point(4000, bridge=None)}, c={64: point(3300)})
    row = targets(medians, rounds)[0]
    assert row["runs"] == [0.9, 0.75]
    assert row["met"] is False


def test_no_inherited_setting_reaches_the_bench_bridge() -> None:
    env = bridge_environment({"PATH": "/usr/bin", "LOG_LEVEL": "warning", "VAULT_HTTP_CLIENT": "lean",
                              "AGENT_MAX_INFLIGHT": "0", "BAO_ADDR": "x", "HOME": "/root"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root"}


MAIN = ("_run_module_as_main (<frozen runpy>:198);main (bridge/cli.py:168);run_app (bridge/serving.py:461);"
        "run_until_complete (loop.c);uv_run (core.c)")
HANDLER = (MAIN + ";task_step (_asynciomodule.c);RequestHandler._handle_request (aiohttp/web_protocol.py:577);"
           "request_context (bridge/middlewares.py:92);error_renderer (bridge/middlewares.py:126);"
           "metrics_middleware (bridge/metrics.py:290);inflight_middleware (bridge/middlewares.py:240);"
           "secret_get (bridge/rest.py:92)")
VAULT = (HANDLER + ";SecretService.read (bridge/service.py:216);VaultClient.request (bridge/vault/client.py:217);"
         "VaultClient._once (bridge/vault/client.py:264);ClientSession._request (aiohttp/client.py:619)")


def collapsed(*lines: tuple[str, int], thread: str = "thread (1): MainThread") -> list[str]:
    return [f"{thread};{stack} {count}\n" for stack, count in lines]


def test_profile_buckets_each_sample_once() -> None:
    lines = collapsed(
        # the Vault client's write to Vault goes through aiohttp's shared writer: the Vault client's
        (VAULT + ";ClientRequest.send (aiohttp/client_reqrep.py:800);StreamWriter.write_headers "
                 "(aiohttp/http_writer.py:100);UVStream_write (loop.c);write (libc.so.6)", 30),
        # the server's answer through the same writer: the server's
        (MAIN + ";RequestHandler.finish_response (aiohttp/web_protocol.py:700);StreamWriter._write "
                "(aiohttp/http_writer.py:80);write (libc.so.6)", 20),
        # the access line, JSON inside it included, is logging
        (HANDLER.rsplit(";", 4)[0] + ";BoundLoggerBase._proxy_to_logger (structlog/_base.py:200);"
         "dumps (json/__init__.py:231)", 15),
        # JSON of Vault's answer is JSON, wherever it is decoded
        (VAULT.rsplit(";", 1)[0] + ";loads (json/__init__.py:346)", 10),
        # the garbage collector wins over everything
        (VAULT + ";gc_collect_main (libpython3.11.so.1.0)", 5),
        (HANDLER, 10),  # the REST handler's own code
        (HANDLER.rsplit(";", 1)[0], 5),  # inflight_middleware's own code
        (MAIN + ";epoll_pwait (libc.so.6)", 5),  # the loop
    ) + collapsed(("_worker (concurrent/futures/thread.py:81)", 500), thread="thread (2): ThreadPoolExecutor-0_0")
    result = profile.analyse(profile.parse_collapsed(lines), cpu_us_per_request=200.0)
    assert result.samples == 100  # the idle worker thread is not counted
    cats = result.categories
    assert cats[profile.VAULT_CLIENT] == 60.0  # 30 samples of 100, of 200 µs
    assert cats[profile.SERVER] == 40.0
    assert cats[profile.LOGGING] == 30.0
    assert cats[profile.JSON] == 20.0
    assert cats[profile.GC] == 10.0
    assert cats[profile.REST] == 20.0
    assert cats[profile.MIDDLEWARES["inflight_middleware"]] == 10.0
    assert cats[profile.LOOP] == 10.0
    assert sum(cats.values()) == 200.0
    # self time: the syscall or GC a sample was in, else its innermost Python function
    assert result.self_time["write (libc.so.6)"] == 100.0
    assert result.self_time["gc_collect_main (libpython3.11.so.1.0)"] == 10.0
    assert result.self_time["secret_get (bridge/rest.py)"] == 20.0
    # inclusive: Python functions only, once per sample, without the frames under every sample
    assert result.inclusive["VaultClient.request (bridge/vault/client.py)"] == 90.0
    assert "run_app (bridge/serving.py)" not in result.inclusive


def test_profile_renders_a_markdown_table() -> None:
    lines = collapsed((HANDLER, 3), (VAULT, 1))
    result = profile.analyse(profile.parse_collapsed(lines), 100.0).as_dict()
    text = "\n".join(profile.render({"c": result}, {"c": "bridge REST read"}))
    assert "| REST handler (bridge/rest.py) | 75.0 (75 %) |" in text
    assert "| **total (measured, /proc)** | **100** |" in text
