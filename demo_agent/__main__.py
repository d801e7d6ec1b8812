"""`python -m demo_agent [--port P] --node-id analyzer --server URL`.

Without --port (or DEMO_AGENT_PORT) the agent takes a free port and registers the
address it really listens on, so `make run` never collides with a busy neighbour.
"""

import argparse
import contextlib
import logging
import os
import signal
import sys

from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="demo_agent", description="A demo AgentField agent node.")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("DEMO_AGENT_PORT") or 0), help="0: any free port"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--node-id", default="analyzer")
    parser.add_argument("--server", default=os.environ.get("AGENTFIELD_SERVER", "http://localhost:8080"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Its own agent key (what `manage.py serve` hands it), else the first of API_KEYS.
    env_keys = [k.strip() for k in os.environ.get("API_KEYS", "").split(",") if k.strip()]
    api_key = os.environ.get("AGENTFIELD_API_KEY", "").strip() or (env_keys[0] if env_keys else "")
    # SIGTERM (what `manage.py serve` and the tests send) unwinds like Ctrl-C, so the
    # agent tells the control plane it is shutting down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.node_id, args.server, api_key, host=args.host)


if __name__ == "__main__":
    main()
