#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentfield_site.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise SystemExit(
            f"Django is not installed for {sys.executable}. `make run` installs the project in .venv: "
            "run `.venv/bin/python manage.py ...`, or `python -m pip install -e .` in a virtualenv of your own."
        ) from exc

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
