"""Development tooling shared by the tests, `bench/` and `soak/`: real processes, loopback servers, waiting.

Nothing in the product imports it; it may use the `dev` extra.
"""
