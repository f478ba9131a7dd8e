"""``vault-mcp-bridge quarantine AGENT [--release] --url URL --admin-key-file FILE [--reason TEXT]``: the kill
switch from a shell, through any replica's admin API (``POST /admin/agents/{agent}:quarantine`` / ``:release``).

The admin key is read from a file (never from argv or the environment, where ``ps`` or a shell history would keep
it). It prints the answer as JSON on stdout. Exit codes: 0 done (also when nothing changed), 1 the bridge refused
or failed (its error on stderr), 2 bad arguments or an unreadable key file.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from urllib.parse import quote

from bridge.config import IDENT_RE, read_secret_file


def add_quarantine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", help="the agent id")
    parser.add_argument("--release", action="store_true", help="release the agent instead")
    parser.add_argument("--url", required=True, help="the bridge's base URL, e.g. https://bridge.internal:8089")
    parser.add_argument("--admin-key-file", required=True, help="a file holding one of ADMIN_API_KEYS")
    parser.add_argument("--reason", default="", help="why (kept with the quarantine and in the audit trail)")
    parser.add_argument("--cacert", default="", help="CA bundle to verify the bridge's certificate")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def quarantine_main(args: argparse.Namespace) -> int:
    if not IDENT_RE.match(args.agent):
        print("quarantine: the agent id must match ^[a-z0-9][a-z0-9_-]{0,63}$", file=sys.stderr)
        return 2
    if not args.url.startswith(("http://", "https://")):
        print("quarantine: --url must be http(s)://host[:port]", file=sys.stderr)
        return 2
    try:
        key = read_secret_file(args.admin_key_file, "--admin-key-file").strip()
    except ValueError as exc:
        print(f"quarantine: {exc}", file=sys.stderr)
        return 2
    if not key:
        print(f"quarantine: {args.admin_key_file} is empty", file=sys.stderr)
        return 2
    verb = "release" if args.release else "quarantine"
    url = f"{args.url.rstrip('/')}/admin/agents/{quote(args.agent, safe='')}:{verb}"
    body = json.dumps({"reason": args.reason[:256]} if args.reason and not args.release else {}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 - http(s) checked above
        "X-API-Key": key, "Content-Type": "application/json", "Accept": "application/json",
        "User-Agent": "vault-mcp-bridge-cli"})
    context = ssl.create_default_context(cafile=args.cacert or None) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as resp:  # noqa: S310
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read() or b"{}").get("error", {})
        except ValueError:
            error = {}
        print(f"quarantine: the bridge answered {exc.code} {error.get('code', '')}: {error.get('message', '')}"
              .rstrip(": "), file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"quarantine: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0
