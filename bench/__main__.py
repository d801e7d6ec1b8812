"""`make bench`: run the benchmarks and print their tables.

`python -m bench` runs every suite; `python -m bench webhooks streams` runs some.
Each suite is a module `bench/<name>.py` with `main(argv: list[str]) -> None` that
prints its own table. Figures are medians of repeated runs in one process, so the
ratios in one table were measured under the same load.
"""

import importlib
import sys

SUITES = ["webhooks", "isolation", "streams", "forwarder", "load", "api"]


def main(argv: list[str]) -> None:
    names = [a for a in argv if not a.startswith("-")] or SUITES
    flags = [a for a in argv if a.startswith("-")]
    for name in names:
        if name not in SUITES:
            raise SystemExit(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        print(f"\n## {name}\n", flush=True)
        importlib.import_module(f"bench.{name}").main(flags)


if __name__ == "__main__":
    main(sys.argv[1:])
