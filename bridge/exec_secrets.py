"""``vault-mcp-bridge exec``: run a command with secrets in its environment, its output scrubbed of them.

::

    vault-mcp-bridge exec --url https://bridge:8089 --api-key-file ~/.config/agent.key \\
        --env DATABASE_PASSWORD=secret://app/db#password --env API_TOKEN=secret://app/api#token@3 -- ./job --flag

1. Each ``--env NAME=<reference>`` is resolved through the bridge's REST API with the key from
   ``--api-key-file`` (never from the command line): a secret reference with ``GET /secrets/<path>[?version=N]``,
   a lease reference (``lease://<lease_id>#password``, the password of a database login the bridge holds for the
   agent, from ``db_creds`` of a ``use``-only identity) with ``POST /leases:resolve``. The key needs the ``read``
   scope, because this process does receive the values, and must be the same agent's. A field that is no JSON
   string is passed as its compact JSON text.
2. The values go into the child's environment, never onto its command line. The child's stdin is inherited;
   its stdout and stderr are pipes read here and written to ours with every value, and its base64, URL-encoded,
   JSON- and HTML-escaped forms, replaced by ``[redacted:<NAME>]`` (:mod:`bridge.broker.redact`, as the broker
   does). A value split across reads is still caught: the stream redactor holds back the shortest tail that
   could be the start of a form, and nothing else, so the child's output is not delayed otherwise.
3. The exit status is the child's; a child killed by a signal makes this process end by the same signal.
   Signals: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the child (to its process group when it has its
   own). Without a terminal on stdin (scripts, CI) the child runs in a process group of its own and SIGINT and
   SIGQUIT are forwarded too. With a terminal the child stays in the terminal's foreground group, so job control
   and terminal input work, and a Ctrl-C reaches it from the terminal directly: this process then ignores SIGINT
   and SIGQUIT itself (forwarding them would deliver each twice).

Scrubbing is a best effort: a program can transform a value in ways no pattern catches (reverse, hex-encode,
encrypt or print it a character at a time with other output in between), and the values sit in the child's
environment (``/proc/<pid>/environ`` for the same user). The guarantee that a model never sees a value is an
identity with the ``use`` scope and without ``read``, not ``exec``.

Exit codes of its own: 2 (arguments), 125 (a reference could not be resolved: the bridge's error is printed),
126 (the command cannot be run), 127 (not found).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import quote

import aiohttp

from bridge.broker.redact import Redactor, StreamRedactor
from bridge.errors import InvalidReferenceError
from bridge.references import AnyReference, LeaseReference, Reference, parse_any_reference

EXIT_USAGE = 2
EXIT_RESOLVE = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
_RERAISED = {signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGKILL}
"""Signals this process re-raises on itself when the child died of one (those that end a process without a core
dump); for the others it exits with 128 + the signal number, as a shell reports it."""
PIPE_DRAIN_SECONDS = 5.0
"""After the child exits, how long its pipes may stay open (a background grandchild) before exec stops reading."""


class ExecError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_RESOLVE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class EnvBinding:
    name: str
    reference: AnyReference


def parse_binding(text: str) -> EnvBinding:
    """``NAME=secret://<path>#<field>[@<version>]`` or ``NAME=lease://<lease_id>#password``; :class:`ExecError`
    (exit 2) when malformed."""
    name, sep, ref = text.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise ExecError(f"--env {name[:64]!r}: expected NAME=secret://<path>#<field> (or NAME=lease://<lease_id>"
                        "#password) with NAME of letters, digits and _ (not starting with a digit)", EXIT_USAGE)
    try:
        return EnvBinding(name, parse_any_reference(ref, where=f"--env {name}"))
    except InvalidReferenceError as exc:
        raise ExecError(exc.message, EXIT_USAGE) from None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def resolve_bindings(url: str, api_key: str, bindings: Sequence[EnvBinding], *, cacert: str = "",
                           time_limit: float = 30.0) -> dict[str, str]:
    """The value of each binding, read through the bridge; :class:`ExecError` (exit 125) on any failure."""
    context = ssl.create_default_context(cafile=cacert or None)
    reads: dict[tuple[str, int | None], dict[str, Any]] = {}
    values: dict[str, str] = {}
    async with aiohttp.ClientSession(base_url=None, timeout=aiohttp.ClientTimeout(total=time_limit),
                                     headers={"X-API-Key": api_key, "User-Agent": "vault-mcp-bridge exec"},
                                     connector=aiohttp.TCPConnector(ssl=context)) as session:
        for binding in bindings:
            ref = binding.reference
            if isinstance(ref, LeaseReference):
                value = await _resolve_lease(session, url, ref)
            else:
                key = (ref.path, ref.version)
                if key not in reads:
                    reads[key] = await _read(session, url, ref)
                data = reads[key]
                if ref.field not in data:
                    raise ExecError(f"exec: {ref}: the secret has no field {ref.field!r}")
                value = _as_text(data[ref.field])
            if "\0" in value:
                raise ExecError(f"exec: {ref}: the value holds a NUL character and cannot go into the environment")
            values[binding.name] = value
    return values


async def _call(session: aiohttp.ClientSession, method: str, url: str, target: str, ref: AnyReference,
                body: dict[str, Any] | None = None) -> Any:
    """One call to the bridge; its JSON answer. Any status but 200 is an :class:`ExecError` with the bridge's
    error code and message."""
    try:
        async with session.request(method, target, json=body, allow_redirects=False) as resp:
            try:
                answer = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                answer = None
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ExecError(f"exec: {ref}: the bridge at {url} cannot be reached ({type(exc).__name__})") from None
    if status != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        code, message = error.get("code", f"http_{status}"), error.get("message", "no error body")
        raise ExecError(f"exec: {ref}: the bridge answered {status} {code}: {message}")
    return answer


async def _resolve_lease(session: aiohttp.ClientSession, url: str, ref: LeaseReference) -> str:
    answer = await _call(session, "POST", url, f"{url.rstrip('/')}/leases:resolve", ref, {"reference": str(ref)})
    value = answer.get("value") if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise ExecError(f"exec: {ref}: the bridge's answer holds no value")
    return value


async def _read(session: aiohttp.ClientSession, url: str, ref: Reference) -> dict[str, Any]:
    target = f"{url.rstrip('/')}/secrets/{quote(ref.path, safe='/')}"
    if ref.version is not None:
        target += f"?version={ref.version}"
    body = await _call(session, "GET", url, target, ref)
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ExecError(f"exec: {ref}: the bridge returned references instead of values: the API key needs the "
                        "read scope (a use-only key gets references and fingerprints), and the secret must not be "
                        "marked bridge.reveal=never (its values leave the bridge for no one)")
    data: dict[str, Any] = body["data"]
    return data


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything to ``fd``; ``False`` once the reader has gone (EPIPE)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return False
        except InterruptedError:
            continue
        view = view[written:]
    return True


def _pump(source: int, target: int, stream: StreamRedactor) -> None:
    """Copy the child's pipe to ours through the redactor until EOF (keeps reading if ours is closed, so the
    child never blocks on a full pipe)."""
    alive = True
    try:
        while True:
            try:
                chunk = os.read(source, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            out = stream.feed(chunk)
            if alive and out:
                alive = _write_all(target, out)
        rest = stream.close()
        if alive and rest:
            _write_all(target, rest)
    finally:
        os.close(source)


def run_child(command: Sequence[str], values: Mapping[str, str], *, interactive: bool | None = None) -> int:
    """Run ``command`` with ``values`` added to the environment, output scrubbed; its exit status (or -N when it
    was killed by signal N)."""
    if interactive is None:
        try:
            interactive = os.isatty(0)
        except OSError:
            interactive = False
    redactor = Redactor((value, name) for name, value in values.items())
    env = dict(os.environ)
    env.update(values)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        proc = subprocess.Popen(list(command), env=env, stdout=out_write, stderr=err_write,
                                process_group=None if interactive else 0)
    except OSError as exc:
        os.close(out_read)
        os.close(err_read)
        if isinstance(exc, FileNotFoundError):
            raise ExecError(f"exec: {command[0]}: command not found", EXIT_NOT_FOUND) from None
        raise ExecError(f"exec: {command[0]}: cannot run ({exc.strerror})", EXIT_CANNOT_RUN) from None
    finally:
        os.close(out_write)  # the child holds its own copies; EOF comes when it (and its children) close them
        os.close(err_write)
    # each pump thread owns its read end and closes it at EOF
    pumps = [threading.Thread(target=_pump, args=(source, target, redactor.stream()), daemon=True,
                              name=f"exec-{name}")
             for source, target, name in ((out_read, 1, "stdout"), (err_read, 2, "stderr"))]
    for pump in pumps:
        pump.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            if interactive:
                proc.send_signal(signum)
            else:
                os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    for sig in _TERMINAL_SIGNALS:
        previous[sig] = signal.signal(sig, signal.SIG_IGN if interactive else forward)
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for pump in pumps:
        pump.join(PIPE_DRAIN_SECONDS)
    return status


def exit_like(status: int) -> int:
    """Pass the child's status on: its exit code, or its death by a signal (see :data:`_RERAISED`)."""
    if status >= 0:
        return status
    sig = -status
    if sig in _RERAISED:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return 128 + sig


def add_exec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the bridge's base URL, e.g. https://bridge.example.com:8089")
    parser.add_argument("--api-key-file", required=True, metavar="FILE",
                        help="file holding the API key (needs the read scope); never give the key itself")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=secret://PATH#FIELD[@VERSION]",
                        help="an environment variable for the command, from a secret field or a database "
                             "password the bridge holds (NAME=lease://LEASE_ID#password) (repeatable)")
    parser.add_argument("--cacert", default="", help="CA bundle (PEM) for an https bridge with a private CA")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to resolve all references (30)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run")


def exec_main(args: argparse.Namespace) -> int:
    from bridge.config import read_secret_file

    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        if not command:
            raise ExecError("exec: no command given (… -- CMD [ARGS...])", EXIT_USAGE)
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", args.url):
            raise ExecError("exec: --url must be the bridge's http(s) base URL", EXIT_USAGE)
        bindings = [parse_binding(item) for item in args.env]
        names = [b.name for b in bindings]
        if len(set(names)) != len(names):
            raise ExecError("exec: an environment variable is given twice", EXIT_USAGE)
        try:
            api_key = read_secret_file(args.api_key_file, "--api-key-file").strip()
        except ValueError as exc:
            raise ExecError(f"exec: {exc}", EXIT_USAGE) from None
        if not api_key:
            raise ExecError("exec: the API key file is empty", EXIT_USAGE)
        values = asyncio.run(resolve_bindings(args.url, api_key, bindings, cacert=args.cacert,
                                              time_limit=args.timeout)) if bindings else {}
        return exit_like(run_child(command, values))
    except ExecError as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code


__all__ = ["EnvBinding", "ExecError", "add_exec_args", "exec_main", "parse_binding", "resolve_bindings",
           "run_child"]
