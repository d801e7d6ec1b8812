"""Log levels from the environment reach the loggers that really log (django-q2's included)."""

import os
import subprocess
import sys

import pytest

from devtools.processes import ROOT

LEVEL_OF_DJANGO_Q2 = (
    "import logging, django; django.setup(); from django_q.conf import logger; "
    "print(logger.name, logging.getLevelName(logger.getEffectiveLevel()))"
)


@pytest.mark.parametrize(("q_log_level", "expected"), [(None, "WARNING"), ("DEBUG", "DEBUG")])
def test_q_log_level_sets_the_level_django_q2_logs_at(q_log_level, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("Q_LOG_LEVEL", "LOG_LEVEL")}
    env.update({"SECRET_KEY": "x", "DJANGO_SETTINGS_MODULE": "agentfield_site.settings", "LOG_LEVEL": "INFO"})
    if q_log_level:
        env["Q_LOG_LEVEL"] = q_log_level
    done = subprocess.run([sys.executable, "-c", LEVEL_OF_DJANGO_Q2], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True, timeout=60)
    # The README's default (WARNING) holds although everything else logs at INFO.
    assert done.stdout.split() == ["django-q", expected], done.stderr


REFUSED_HOST = (
    "import django; django.setup(); from django.test import Client; "
    "print(Client().get('/api/v1/executions', HTTP_HOST='evil.example').status_code)"
)


def test_a_refused_host_is_one_log_line_without_a_traceback():
    env = {**os.environ, "SECRET_KEY": "x", "DJANGO_SETTINGS_MODULE": "agentfield_site.settings", "LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-c", REFUSED_HOST], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["400"], done.stderr
    refusals = [line for line in done.stderr.splitlines() if "django.security.DisallowedHost" in line]
    assert len(refusals) == 1 and "evil.example" in refusals[0], done.stderr
    assert "Traceback" not in done.stderr
