"""Shared fixtures: real processes (daphne, qcluster, agents) and loopback servers."""

import pytest
from django.test import override_settings

from devtools.processes import ProcessEnv


@pytest.fixture(autouse=True, scope="session")
def few_password_hash_iterations():
    """Users made in tests hash their passwords quickly (tests.support.passwords)."""
    with override_settings(PASSWORD_HASHERS=["tests.support.passwords.FewIterationsPBKDF2PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def keys_looked_up_afresh():
    """Each test starts with no key remembered: a row it revokes by UPDATE is refused at once."""
    from agentfield_site.auth import forget_keys

    forget_keys()
    yield
    forget_keys()


@pytest.fixture(autouse=True)
def subscriptions_looked_up_afresh():
    """Each test starts with no subscription remembered: one a test before made (and rolled back) receives nothing."""
    from webhooks import subscriptions

    subscriptions.invalidate_cache()
    yield
    subscriptions.invalidate_cache()


@pytest.fixture
def proc_env(request, transactional_db, tmp_path) -> ProcessEnv:
    """Environment for real child processes that share this test's database."""
    env = ProcessEnv.for_current_database(tmp_path)
    yield env
    env.kill_all()
    # `make test-fast` deselects by this marker: a test that starts processes without
    # it would slow the inner loop down unseen.
    if env.procs and request.node.get_closest_marker("processes") is None:
        pytest.fail("this test starts processes: mark it @pytest.mark.processes", pytrace=False)
