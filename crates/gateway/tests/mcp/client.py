"""A real MCP client (the official Python SDK) driven line by line by the Rust tests.

    python3 client.py stdio SLUICE_BIN [ARGS...]   # spawns `sluice mcp`, talks stdio
    python3 client.py http URL TOKEN               # streamable HTTP with a bearer token

After connecting it prints {"server": NAME, "tools": [...]}; then for each JSON line on
stdin ({"tool": NAME, "args": {...}, "meta": {...}}) it calls the tool and prints
{"is_error": BOOL, "structured": ..., "text": [...]} on one line.
"""

import json
import os
import sys

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import Implementation


async def drive(session: ClientSession) -> None:
    init = await session.initialize()
    tools = await session.list_tools()
    print(json.dumps({"server": init.server_info.name, "tools": [t.name for t in tools.tools]}), flush=True)
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        request = json.loads(line)
        result = await session.call_tool(request["tool"], request.get("args") or {}, meta=request.get("meta"))
        print(
            json.dumps(
                {
                    "is_error": bool(result.is_error),
                    "structured": result.structured_content,
                    "text": [c.text for c in result.content if getattr(c, "type", "") == "text"],
                }
            ),
            flush=True,
        )


CLIENT = Implementation(name="sluice-test-agent", version="1.2.3")


async def main() -> None:
    mode = sys.argv[1]
    if mode == "stdio":
        # As an mcp.json `env` block would: the SDK passes only a safe default environment.
        env = {k: v for k, v in os.environ.items() if k.startswith("SLUICE_")}
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, client_info=CLIENT) as session:
                await drive(session)
    elif mode == "http":
        url, token = sys.argv[2], sys.argv[3]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write, client_info=CLIENT) as session:
                    await drive(session)
    else:
        raise SystemExit(f"unknown mode {mode}")


anyio.run(main)
