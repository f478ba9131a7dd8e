"""``make run``: an embedded OpenBao dev server, the demo agents, and the bridge in the foreground.

If ``VAULT_ADDR`` points at a reachable Vault, that one is used (``VAULT_TOKEN`` must be an admin token for
the demo provisioning) and no dev server is started.

Nothing is left running, however the run ends (see README, "make run"):

- SIGINT (Ctrl-C), SIGTERM (``timeout``, ``docker stop``, a CI cancel) and SIGHUP (the terminal closed) stop
  the bridge first (SIGTERM: it finishes in-flight requests and revokes its Vault token), then the dev server.
  The handlers are installed explicitly, so a run started in the background by a non-interactive shell
  (``make run &``, which starts it with SIGINT ignored) still stops on SIGINT.
- The bridge and the dev server run in sessions of their own: a terminal's signals reach only this runner,
  which stops them in that order (a second SIGINT straight to the bridge would cut its shutdown short).
- The parent going away (``make`` killed with ``kill -9``) is noticed within a fraction of a second: this
  runner watches its parent process id. If this runner itself is killed, the kernel stops its children
  (``PR_SET_PDEATHSIG``, Linux; ``devtools.devvault.die_with_parent``).
- The dev server's root token exists only in this process (provisioning runs in-process) and in the dev
  server's own environment; the bridge logs in with its own AppRole and never sees it.

Environment of the runner itself (besides the bridge's settings, passed through): ``DEV_VAULT_PORT`` (default
8200; the dev server also takes the next port for its cluster listener; a busy pair means any free pair),
``DEV_RUN_DIR`` (default ``.run``: the dev server's log), ``DEMO_API_KEY``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joserfc import jwt  # noqa: E402
from joserfc.jwk import OctKey  # noqa: E402

from bridge.config import IDENT_RE, parse_api_keys  # noqa: E402
from devtools.devvault import (  # noqa: E402
    DevVault,
    DevVaultCancelled,
    demo_mtls,
    die_with_parent,
    free_port_pair,
    port_free,
    provision_demo_sync,
    start_dev_vault,
    stop_process_group,
    vault_reachable,
)

AGENTS = ["agent_api", "agent_jwt", "agent_mtls"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.1
BRIDGE_STOP_SECONDS = 30.0  # SHUTDOWN_GRACE_SECONDS (10 s) plus the Vault calls of the cleanup
# Never passed on to the bridge: it logs in with the AppRole provisioned here, not with an admin token.
WITHHELD_FROM_BRIDGE = ("VAULT_TOKEN", "VAULT_TOKEN_FILE", "VAULT_SECRET_ID_FILE", "VAULT_WRAPPED_SECRET_ID",
                        "VAULT_DEV_ROOT_TOKEN_ID")


class StopWatch:
    """Why the run should stop: a signal received (the first one counts), or the parent gone."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._parent = os.getppid()

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)  # also replaces SIG_IGN inherited from a background shell

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def orphaned(self) -> bool:
        return os.getppid() != self._parent

    def __call__(self) -> bool:
        return self.signum is not None or self.orphaned()

    def reason(self) -> str:
        if self.signum is not None:
            return signal.Signals(self.signum).name
        return "parent process gone" if self.orphaned() else ""


# -- API keys: the banner names what is configured ---------------------------------------------------------


@dataclass
class ApiKeys:
    """The API keys the bridge will use: configured (``API_KEYS_JSON`` or ``API_KEYS_FILE``) or the demo key."""

    source: str  # "API_KEYS_JSON", "API_KEYS_FILE", or "" for the demo key made here
    agents: list[str] = field(default_factory=list)  # distinct agents, in the file's order
    count: int = 0
    error: str = ""
    demo_key: str = field(default="", repr=False)


def configured_api_keys(env: Mapping[str, str]) -> ApiKeys | None:
    """What ``API_KEYS_FILE`` (read here) or ``API_KEYS_JSON`` configure; ``None`` when neither is set.
    A malformed value is reported, not raised: the bridge refuses it at start with its own message."""
    if env.get("API_KEYS_FILE"):
        source = "API_KEYS_FILE"
        try:
            raw = Path(env["API_KEYS_FILE"]).read_text(encoding="utf-8")
        except OSError as exc:
            return ApiKeys(source, error=f"cannot read the file ({exc.strerror})")
    elif env.get("API_KEYS_JSON", "").strip():
        source, raw = "API_KEYS_JSON", env["API_KEYS_JSON"]
    else:
        return None
    try:
        entries = parse_api_keys(raw)
    except ValueError as exc:
        return ApiKeys(source, error=str(exc))
    agents: list[str] = []
    for entry in entries.values():
        agent = entry.agent.lower() if entry.agent.isascii() else entry.agent
        if agent not in agents:
            agents.append(agent)
    return ApiKeys(source, agents=agents, count=len(entries))


def demo_agents(keys: ApiKeys) -> list[str]:
    """The demo agents plus every valid agent id named by a configured key (so that each gets a policy)."""
    return AGENTS + [a for a in keys.agents if a not in AGENTS and IDENT_RE.match(a)]


# -- the dev Vault ------------------------------------------------------------------------------------------


def open_vault(run_dir: Path, stop: StopWatch) -> DevVault:
    """The Vault at ``VAULT_ADDR`` when reachable (with an admin ``VAULT_TOKEN``), else a dev server."""
    addr = os.environ.get("VAULT_ADDR", "")
    if addr and vault_reachable(addr):
        token = os.environ.get("VAULT_TOKEN", "")
        if not token:
            raise SystemExit("VAULT_ADDR is reachable but VAULT_TOKEN is not set")
        print(f"using the Vault at {addr}", flush=True)
        return DevVault(addr=addr, root_token=token)
    port = int(os.environ.get("DEV_VAULT_PORT", "8200"))
    if not (port_free(port) and port_free(port + 1)):
        print(f"127.0.0.1:{port} or :{port + 1} is busy; the dev server takes a free pair", flush=True)
        port = free_port_pair()
    log_path = run_dir / "openbao.log"
    vault = start_dev_vault(port=port, log_path=log_path, cancelled=stop)
    print(f"embedded OpenBao dev server at {vault.addr} (cluster listener :{port + 1}; log: {log_path})",
          flush=True)
    return vault


# -- the bridge ---------------------------------------------------------------------------------------------


def bridge_env(vault: DevVault, role_id: str, secret_id: str, keys: ApiKeys, jwt_secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_FROM_BRIDGE and not k.startswith("BAO_")}
    env.update({
        "VAULT_ADDR": vault.addr,
        "VAULT_ROLE_ID": role_id,
        "VAULT_SECRET_ID": secret_id,
        "CHILD_TOKEN_ENABLED": env.get("CHILD_TOKEN_ENABLED", "true"),
        "JWT_HS256_SECRET": jwt_secret,
        "AUTH_MTLS_ENABLED": env.get("AUTH_MTLS_ENABLED", "true"),
        "LOG_FORMAT": env.get("LOG_FORMAT", "console"),
    })
    if not keys.source:
        env["API_KEYS_JSON"] = json.dumps({keys.demo_key: "agent_api"})
    return env


def banner(base: str, agents: list[str], keys: ApiKeys, demo_jwt: str, mtls_line: str) -> str:
    if keys.source:
        # A configured key is the operator's secret: it is never printed; the curl lines use $API_KEY.
        if keys.error:
            key_line = f"from {keys.source}, which the bridge will refuse: {keys.error}"
        else:
            key_line = (f"from {keys.source}: {keys.count} key(s) for {', '.join(keys.agents) or 'no agent'}"
                        " (not shown)")
        key_ref, key_note = "$API_KEY", f"\n  (set API_KEY to one of the keys in {keys.source} first)"
    else:
        key_line, key_ref, key_note = f"{keys.demo_key}   (agent_api)", keys.demo_key, ""
    return f"""
Vault MCP Bridge (demo) on {base}
  agents      : {", ".join(agents)}
  API key     : {key_line}
  JWT         : {demo_jwt}   (agent_jwt, 8h)
  mTLS        : {mtls_line}
{key_note}
  curl -s -X PUT {base}/secrets/demo/db -H "X-API-Key: {key_ref}" -H 'Content-Type: application/json' \\
       -d '{{"data": {{"password": "s3cr3t"}}}}'
  curl -s {base}/secrets/demo/db -H "X-API-Key: {key_ref}"
"""


def supervise(bridge: subprocess.Popen[bytes], vault: DevVault, stop: StopWatch) -> int:
    """Wait until the bridge or the dev server exits, a stop signal arrives, or the parent goes away."""
    while True:
        code = bridge.poll()
        if code is not None:
            print(f"the bridge exited with {code}", file=sys.stderr, flush=True)
            return code
        if vault.process is not None and vault.process.poll() is not None:
            print(f"the dev server exited with {vault.process.returncode}", file=sys.stderr, flush=True)
            return 1
        if stop():
            print(f"stopping ({stop.reason()})", flush=True)
            return 0
        time.sleep(POLL_SECONDS)


def main() -> int:
    stop = StopWatch()
    stop.install()
    run_dir = Path(os.environ.get("DEV_RUN_DIR") or ROOT / ".run")
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = configured_api_keys(os.environ) or ApiKeys(
        "", agents=["agent_api"], count=1,
        demo_key=os.environ.get("DEMO_API_KEY") or "demo-" + secrets.token_urlsafe(18))
    agents = demo_agents(keys)
    vault: DevVault | None = None
    bridge: subprocess.Popen[bytes] | None = None
    try:
        try:
            vault = open_vault(run_dir, stop)
        except DevVaultCancelled:
            return 0
        # `vault-mcp-bridge provision` for the demo agents, in this process: the root token is never handed to
        # another program. The bridge then logs in with its own AppRole (a policy that can only mint child
        # tokens) and every agent operation runs under that agent's child token.
        provisioned = provision_demo_sync(vault.addr, vault.root_token, agents, new_secret_id=True)
        if stop():
            return 0
        jwt_secret = os.environ.get("JWT_HS256_SECRET") or secrets.token_urlsafe(32)
        now = int(time.time())
        demo_jwt = jwt.encode({"alg": "HS256"}, {"sub": "agent_jwt", "scope": "read write delete list", "iat": now,
                                                 "exp": now + 8 * 3600}, OctKey.import_key(jwt_secret))
        env = bridge_env(vault, provisioned.role_id, provisioned.secret_id or "", keys, jwt_secret)
        base = f"http://{env.get('HOST', '127.0.0.1')}:{env.get('PORT', '8089')}"
        # The demo mTLS agent as nginx relays it (deploy/nginx/): its certificate and the proxy secret.
        mtls_line = "off (AUTH_MTLS_ENABLED=false)"
        if env.get("AUTH_MTLS_ENABLED", "true").lower() not in ("false", "0", "no", "off"):
            mtls = demo_mtls(run_dir / "mtls")
            env.pop("MTLS_PROXY_SECRET", None)
            env.update(mtls.env)
            mtls_line = f"agent_mtls, as a TLS proxy relays it (certificate + proxy secret):\n  {mtls.curl(base)}"
        print(banner(base, agents, keys, demo_jwt, mtls_line), flush=True)
        bridge = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=ROOT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent())
        return supervise(bridge, vault, stop)
    finally:
        stop_process_group(bridge, timeout=BRIDGE_STOP_SECONDS)  # first: it revokes its token in Vault
        if vault is not None:
            vault.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
