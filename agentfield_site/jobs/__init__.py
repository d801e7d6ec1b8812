"""The job machinery every app may use: named leases and the sweeper that ticks over time-driven work.

It lives below the apps (executions → webhooks → observability → here) so that each
registers its own ticks without the lowest app owning the mechanism.
"""
