"""``make run``: an embedded OpenBao dev server, three demo agents, and the bridge in the foreground.

If ``VAULT_ADDR`` points at a reachable Vault, that one is used (``VAULT_TOKEN`` must be an admin token for
the demo provisioning) and no dev server is started. Ctrl-C stops the bridge and the dev server.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joserfc import jwt  # noqa: E402
from joserfc.jwk import OctKey  # noqa: E402

from bridge.devvault import (  # noqa: E402
    DevVault,
    demo_mtls,
    provision_demo_sync,
    start_dev_vault,
    stop_process,
    vault_reachable,
)

AGENTS = ["agent_api", "agent_jwt", "agent_mtls"]


def main() -> int:
    run_dir = ROOT / ".run"
    run_dir.mkdir(exist_ok=True)
    addr = os.environ.get("VAULT_ADDR", "")
    vault: DevVault
    if addr and vault_reachable(addr):
        token = os.environ.get("VAULT_TOKEN", "")
        if not token:
            print("VAULT_ADDR is reachable but VAULT_TOKEN is not set", file=sys.stderr)
            return 2
        vault = DevVault(addr=addr, root_token=token)
        print(f"using the Vault at {addr}")
    else:
        port = int(os.environ.get("DEV_VAULT_PORT", "8200"))
        try:
            vault = start_dev_vault(port=port, log_path=run_dir / "openbao.log")
        except RuntimeError:
            vault = start_dev_vault(log_path=run_dir / "openbao.log")  # 8200 busy: any free port
        print(f"embedded OpenBao dev server at {vault.addr} (log: .run/openbao.log)")
    try:
        # `vault-mcp-bridge provision` for the demo agents; the bridge then logs in with its own AppRole (a
        # policy that can only mint child tokens) and every agent operation runs under that agent's child token.
        provisioned = provision_demo_sync(vault.addr, vault.root_token, AGENTS, new_secret_id=True)
        api_key = os.environ.get("DEMO_API_KEY") or "demo-" + secrets.token_urlsafe(18)
        jwt_secret = os.environ.get("JWT_HS256_SECRET") or secrets.token_urlsafe(32)
        demo_jwt = jwt.encode({"alg": "HS256"},
                              {"sub": "agent_jwt", "scope": "read write delete list", "iat": int(time.time()),
                               "exp": int(time.time()) + 8 * 3600}, OctKey.import_key(jwt_secret))
        env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "VAULT_SECRET_ID_FILE",
                                                                 "VAULT_WRAPPED_SECRET_ID")}
        env.update({
            "VAULT_ADDR": vault.addr,
            "VAULT_ROLE_ID": provisioned.role_id,
            "VAULT_SECRET_ID": provisioned.secret_id or "",
            "CHILD_TOKEN_ENABLED": env.get("CHILD_TOKEN_ENABLED", "true"),
            "API_KEYS_JSON": env.get("API_KEYS_JSON") or f'{{"{api_key}": "agent_api"}}',
            "JWT_HS256_SECRET": jwt_secret,
            "LOG_FORMAT": env.get("LOG_FORMAT", "console"),
        })
        base = f"http://{env.get('HOST', '127.0.0.1')}:{env.get('PORT', '8089')}"
        # The demo mTLS agent as nginx relays it (deploy/nginx/): its certificate and the proxy secret.
        mtls_line = "off (AUTH_MTLS_ENABLED=false)"
        if env.get("AUTH_MTLS_ENABLED", "true").lower() not in ("false", "0", "no", "off"):
            mtls = demo_mtls(run_dir / "mtls")
            env.pop("MTLS_PROXY_SECRET", None)
            env.update(mtls.env)
            mtls_line = f"agent_mtls, as a TLS proxy relays it (certificate + proxy secret):\n  {mtls.curl(base)}"
        print(f"""
Vault MCP Bridge (demo) on {base}
  agents      : {", ".join(AGENTS)}
  API key     : {api_key}   (agent_api)
  JWT         : {demo_jwt}   (agent_jwt, 8h)
  mTLS        : {mtls_line}

  curl -s -X PUT {base}/secrets/demo/db -H 'X-API-Key: {api_key}' -H 'Content-Type: application/json' \\
       -d '{{"data": {{"password": "s3cr3t"}}}}'
  curl -s {base}/secrets/demo/db -H 'X-API-Key: {api_key}'
""", flush=True)
        bridge = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, cwd=ROOT)
        try:
            return bridge.wait()
        except KeyboardInterrupt:
            stop_process(bridge, sig=signal.SIGINT, timeout=15)
            return 0
    finally:
        vault.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
