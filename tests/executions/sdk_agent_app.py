"""An agent built with the real, unmodified `agentfield` SDK, run as a child process by tests.

    python tests/executions/sdk_agent_app.py PORT NODE_ID SERVER_URL

With AGENTFIELD_API_KEY set, the agent sends that key (the SDK's `api_key`).
"""

import os
import sys

from agentfield import Agent


def build(node_id: str, server: str) -> Agent:
    app = Agent(node_id=node_id, agentfield_server=server, dev_mode=False,
                api_key=os.environ.get("AGENTFIELD_API_KEY") or None)

    @app.reasoner()
    async def summarize(text: str, repeat: int = 1) -> dict:
        """Count words and echo the text, as a stand-in for real work."""
        app.note(f"summarizing {len(text)} characters", ["sdk"])  # fire-and-forget: an execution.log entry
        return {"echo": text * repeat, "words": len(text.split())}

    @app.skill()
    def upper(text: str) -> dict:
        return {"upper": text.upper()}

    @app.reasoner()
    async def chain(text: str) -> dict:
        """Call another agent's skill through the control plane (`app.call`), with this agent's own key."""
        called = await app.call(f"{node_id}.upper", text=text)
        return {"called": called}

    return app


if __name__ == "__main__":
    port, node_id, server = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    build(node_id, server).serve(port=port, host="127.0.0.1")
