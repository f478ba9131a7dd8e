"""``vault-mcp-bridge``: ``serve`` (default), ``stdio``, ``gen-policy``, ``provision``, ``secret-policy``,
``hash-key``, ``exec`` and ``quarantine``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.config import MIN_API_KEY_LENGTH, ConfigError, Settings

if TYPE_CHECKING:
    from aiohttp import web


def serve(settings: Settings) -> int:
    from bridge.app import create_app
    from bridge.logging import configure_logging

    problem = settings.unusable_reason()
    if problem is not None:  # no request could ever succeed: refuse to start rather than answer 401/403 forever
        print(f"vault-mcp-bridge: invalid configuration: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    _warn_ignored_settings()
    if settings.reload and os.environ.get("BRIDGE_RELOAD_CHILD") != "1":
        return _reload_loop()
    from bridge.serving import inherit_session_secret, is_worker, new_event_loop, run_app, run_workers

    if settings.workers > 1 and not is_worker():
        return run_workers(settings)
    if is_worker():
        settings = inherit_session_secret(settings)
    # SIGTERM: stop accepting, let in-flight requests finish for up to SHUTDOWN_GRACE_SECONDS, then run the
    # cleanup contexts (revoke cached child tokens, close the Vault pool).
    from bridge.tls import ssl_context_from_settings

    try:
        ssl_context = ssl_context_from_settings(settings)  # HTTPS, and client certificates with TLS_CLIENT_CA_FILE
    except ConfigError as exc:
        print(f"vault-mcp-bridge: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    loop = new_event_loop(settings.event_loop)
    install_reload_signal(loop, app)  # SIGHUP re-reads API_KEYS_FILE
    run_app(app, settings, ssl_context=ssl_context, loop=loop)
    return 0


def stdio(args: argparse.Namespace) -> int:
    """``stdio``: the settings come from the environment, as for ``serve``; the credential from a file."""
    from bridge.mcp.stdio import Credential, stdio_main

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"vault-mcp-bridge: {exc}", file=sys.stderr)
        return 2
    if args.api_key_file is not None:
        return stdio_main(settings, Credential("api_key", args.api_key_file))
    return stdio_main(settings, Credential("jwt", args.jwt_file))


def _warn_ignored_settings() -> None:
    import structlog

    from bridge.config import ignored_settings

    for name, why in ignored_settings(os.environ).items():
        structlog.get_logger("bridge.config").warning("config.setting_ignored", setting=name, reason=why)


def install_reload_signal(loop: asyncio.AbstractEventLoop, app: web.Application) -> None:
    """SIGHUP re-reads ``API_KEYS_FILE`` (only installed when it is set; otherwise SIGHUP keeps its default)."""
    from bridge.keys import AUTH

    watcher = app[AUTH].api_keys_file
    if watcher is not None:
        loop.add_signal_handler(signal.SIGHUP, watcher.request_reload)


def _snapshot(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in root.rglob("*") if p.suffix in (".py", ".j2", ".html")}


def _reload_loop() -> int:
    """RELOAD=true: run the server in a child process and restart it when a source file changes."""
    root = Path(__file__).parent
    env = dict(os.environ, BRIDGE_RELOAD_CHILD="1")
    while True:
        before = _snapshot(root)
        child = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env)
        try:
            while child.poll() is None and _snapshot(root) == before:
                time.sleep(1.0)
        except KeyboardInterrupt:
            child.terminate()
            child.wait(timeout=15)
            return 0
        if child.poll() is not None:
            return child.returncode
        print("source changed; restarting", file=sys.stderr)
        child.terminate()
        child.wait(timeout=15)


def gen_policy(args: argparse.Namespace) -> int:
    from bridge.policy import render_agent_policy

    try:
        sys.stdout.write(render_agent_policy(args.agent, mount=args.mount, prefix=args.prefix,
                                             transit=args.transit, transit_scope=args.transit_key_scope,
                                             database=args.database_mount, pki=args.pki_mount, ssh=args.ssh_mount,
                                             dynamic_scope=args.dynamic_role_scope,
                                             fingerprint_key=args.fingerprint_key))
    except ValueError as exc:
        print(f"gen-policy: {exc}", file=sys.stderr)
        return 2
    return 0


def hash_key() -> int:
    """``hash-key``: the key comes from stdin (a prompt on a terminal), never from argv or the shell history."""
    import getpass

    from bridge.auth.api_key import hashed_form

    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if len(key) < MIN_API_KEY_LENGTH:
        print(f"hash-key: an API key has at least {MIN_API_KEY_LENGTH} characters", file=sys.stderr)
        return 2
    print(hashed_form(key))
    return 0


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", required=True, help="agent id (lower-case, ^[a-z0-9][a-z0-9_-]{0,63}$)")
    parser.add_argument("--mount", default="secret", help="KV v2 mount (default: secret)")
    parser.add_argument("--prefix", default="mcp", help="namespace prefix (default: mcp)")
    parser.add_argument("--transit", default="transit", help="Transit mount (default: transit)")
    parser.add_argument("--transit-key-scope", choices=("agent", "shared"), default="agent",
                        help="= TRANSIT_KEY_SCOPE: the agent's own keys (default) or every key of the mount")
    parser.add_argument("--database-mount", default="database", help="= DATABASE_MOUNT (default: database)")
    parser.add_argument("--pki-mount", default="pki", help="= PKI_MOUNT (default: pki)")
    parser.add_argument("--ssh-mount", default="ssh", help="= SSH_MOUNT (default: ssh)")
    parser.add_argument("--dynamic-role-scope", choices=("agent", "shared"), default="agent",
                        help="= DYNAMIC_ROLE_SCOPE: the agent's own dynamic roles (default) or every role")
    parser.add_argument("--fingerprint-key", default="",
                        help="= FINGERPRINT_KEY, denied to agents with shared Transit keys "
                             "(default: {prefix}-bridge-fingerprint)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vault-mcp-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the bridge (default)")
    p_policy = sub.add_parser("gen-policy", help="print the Vault policy HCL for an agent")
    add_policy_args(p_policy)
    from bridge.provision import add_provision_args, provision_main

    p_provision = sub.add_parser("provision", help="prepare a Vault for the bridge (admin VAULT_TOKEN); idempotent")
    add_provision_args(p_provision)
    from bridge.secret_policy import add_secret_policy_args, secret_policy_main

    p_secret = sub.add_parser("secret-policy", help="set a secret's bridge.* settings (reveal, allowed hosts, canary) "
                                                    "in its KV custom metadata (admin VAULT_TOKEN)")
    add_secret_policy_args(p_secret)
    sub.add_parser("hash-key", help="print the sha256:<hex> form of an API key read from stdin, for API_KEYS_JSON")
    from bridge.exec_secrets import add_exec_args, exec_main

    p_exec = sub.add_parser("exec", help="run a command with secrets in its environment (resolved through the "
                                         "bridge) and its output scrubbed of them")
    add_exec_args(p_exec)
    p_stdio = sub.add_parser("stdio", help="serve MCP over stdin/stdout for one identity (a local client such as a "
                                           "desktop assistant starts it; docs/mcp.md)")
    credential = p_stdio.add_mutually_exclusive_group(required=True)
    credential.add_argument("--api-key-file", type=Path, help="file holding the identity's API key (a key of "
                                                             "API_KEYS_JSON / API_KEYS_FILE)")
    credential.add_argument("--jwt-file", type=Path, help="file holding the identity's JWT (re-read when it changes)")
    from bridge.quarantine_cli import add_quarantine_args, quarantine_main

    p_quarantine = sub.add_parser("quarantine", help="quarantine an agent on every replica (or --release it) "
                                                     "through a bridge's admin API")
    add_quarantine_args(p_quarantine)
    args = parser.parse_args(argv)
    if args.command == "stdio":
        return stdio(args)
    if args.command == "quarantine":
        return quarantine_main(args)
    if args.command == "exec":
        return exec_main(args)
    if args.command == "gen-policy":
        return gen_policy(args)
    if args.command in ("provision", "secret-policy"):
        from bridge.logging import configure_logging

        # their stdout is their output (an env file, the settings): log lines go to stderr, warnings only
        # (what changed is printed to stderr anyway)
        configure_logging("warning", "console", stream=sys.stderr)
        return provision_main(args) if args.command == "provision" else secret_policy_main(args)
    if args.command == "hash-key":
        return hash_key()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"vault-mcp-bridge: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
