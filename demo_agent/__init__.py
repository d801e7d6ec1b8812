"""The demo agent node `analyzer` with reasoner `process` (see `demo_agent.server`)."""
