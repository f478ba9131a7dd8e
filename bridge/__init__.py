"""Vault MCP Bridge: AI agents use Vault secrets through REST and MCP without holding a Vault token."""

__version__ = "0.1.0"
