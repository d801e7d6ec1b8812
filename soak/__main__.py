"""`make soak` / `python -m soak [--executions=N] [--rate=R] [--outage=S] [--web-processes=N] [--ci]`.

Runs the soak on the database that DATABASE_URL names (SQLite by default; with
REDIS_URL, Redis as broker and channel layer), in a throwaway database created
beside it the way the tests do, prints the table, and exits non-zero when
anything was lost. `--web-processes=2` serves the API from `manage.py serve
--web-processes 2` and SIGKILLs one of its daphne processes mid-run instead of
restarting a lone daphne.
"""

import signal
import sys

from soak.standalone import throwaway_database

KNOWN = {"executions", "rate", "outage", "web-processes"}


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    options = dict(a.lstrip("-").split("=", 1) for a in argv if "=" in a)
    unknown = set(options) - KNOWN | {a for a in argv if "=" not in a and a != "--ci"}
    if unknown:
        print(f"unknown arguments: {', '.join(sorted(unknown))}\n{__doc__}", file=sys.stderr)
        return 2
    # A SIGTERM (Ctrl-C's cousin from `timeout` or a CI runner) unwinds like an
    # exception, so the processes the soak started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with throwaway_database("soak") as env:
        from soak.orchestrator import SoakConfig, run_soak

        config = SoakConfig.ci() if "--ci" in argv else SoakConfig()
        config.executions = int(options.get("executions", config.executions))
        config.rate = float(options.get("rate", config.rate))
        config.outage_seconds = float(options.get("outage", config.outage_seconds))
        config.web_processes = int(options.get("web-processes", config.web_processes))
        print(f"soak: {config.executions} executions at {config.rate:g}/s, receiver failing "
              f"{config.fail_rate:.0%}, outages of {config.outage_seconds:g}s, {config.web_processes} web process(es); "
              f"logs in {env.tmp}", flush=True)
        report = run_soak(env, config)
    print(report.table())
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
