"""An agent framework's MCP client against a live bridge and the real OpenBao, no LLM involved: the OpenAI Agents
SDK (``openai-agents``) loads the bridge's tools the way an agent run does (``Agent.get_all_tools``: MCP
``tools/list`` turned into the framework's function tools, schemas converted to strict mode) and invokes them the
way the runner does when a model asks for a call (``FunctionTool.on_invoke_tool`` with JSON arguments).

Why this framework: it installs from PyPI on Python 3.11 next to the ``mcp`` 2.x SDK the tests pin, with six small
packages (README, "Dependencies"); LangChain's adapters need ``mcp`` < 2, Pydantic AI pulls in FastMCP. Their
snippets in docs/mcp.md were tried by hand against ``make run``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunContextWrapper
from agents.mcp import MCPServerStreamableHttp
from agents.tool_context import ToolContext

from bridge.operations import default_registry
from tests.conftest import API_KEY_ALICE, API_KEY_READONLY
from tests.mcp.conftest import ServerFactory

pytestmark = pytest.mark.integration


async def invoke(tool: FunctionTool, arguments: dict[str, Any]) -> str:
    """Call a tool exactly as the Agents SDK runner does for a model's tool call; the text the model gets."""
    raw = json.dumps(arguments)
    context = ToolContext(context=None, tool_name=tool.name, tool_call_id="call-1", tool_arguments=raw)
    output = await tool.on_invoke_tool(context, raw)
    if isinstance(output, dict):  # one text block comes back as {"type": "text", "text": ...}
        assert output["type"] == "text"
        return str(output["text"])
    return str(output)


@asynccontextmanager
async def agent_tools(url: str, key: str) -> AsyncIterator[dict[str, FunctionTool]]:
    """The function tools an Agents SDK agent gets from the bridge (connected for the block)."""
    async with MCPServerStreamableHttp({"url": url, "headers": {"X-API-Key": key}, "timeout": 10}, name="vault",
                                       cache_tools_list=True) as server:
        agent = Agent(name="ops", instructions="Keep secrets in Vault.", mcp_servers=[server],
                      mcp_config={"convert_schemas_to_strict": True})
        tools = await agent.get_all_tools(RunContextWrapper(context=None))
        yield {t.name: t for t in tools if isinstance(t, FunctionTool)}


async def test_openai_agents_sdk_loads_the_tools_and_calls_one(mcp_server: ServerFactory) -> None:
    async with agent_tools(await mcp_server(), API_KEY_ALICE) as tools:
        assert set(tools) == {op.name for op in default_registry().tools()}
        assert tools["kv_write"].params_json_schema["required"]  # the bridge's input schema reached the agent
        written = json.loads(await invoke(tools["kv_write"], {"path": "agents-sdk/db", "data": {"user": "app"}}))
        assert written["version"] >= 1
        read = json.loads(await invoke(tools["kv_read"], {"path": "agents-sdk/db"}))
        assert read["data"] == {"user": "app"}
        missing = await invoke(tools["kv_read"], {"path": "agents-sdk/none"})
        assert "not_found" in missing  # a bridge error result reaches the model as readable text


async def test_a_read_only_key_gets_only_read_tools(mcp_server: ServerFactory) -> None:
    async with agent_tools(await mcp_server(), API_KEY_READONLY) as tools:
        assert "kv_read" in tools
        assert "kv_write" not in tools
        assert "kv_delete" not in tools
