"""Shared fixtures: real processes (daphne, qcluster, agents) and loopback servers."""

import pytest

from tests.support.processes import ProcessEnv


@pytest.fixture
def proc_env(transactional_db, tmp_path) -> ProcessEnv:
    """Environment for real child processes that share this test's database."""
    env = ProcessEnv.for_current_database(tmp_path)
    yield env
    env.stop_all()
