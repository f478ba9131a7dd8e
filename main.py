"""``python main.py`` starts the bridge (same as ``vault-mcp-bridge serve``)."""

from bridge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
