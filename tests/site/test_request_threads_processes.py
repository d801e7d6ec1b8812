"""Under daphne, a request held up in the database holds its own thread, never anyone else's request."""

import threading
import time

import pytest
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

pytestmark = pytest.mark.processes


@pytest.fixture
def slow_session_saves(transactional_db):
    """Every UPDATE of a session row takes 2 s (PostgreSQL: a trigger; SQLite has nothing like it)."""
    if connection.vendor != "postgresql":
        pytest.skip("needs a trigger that sleeps (PostgreSQL)")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION test_slow_session() RETURNS trigger AS $$"
            " BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute("CREATE TRIGGER test_slow_session BEFORE UPDATE ON django_session"
                       " FOR EACH ROW EXECUTE FUNCTION test_slow_session()")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS test_slow_session ON django_session")
        cursor.execute("DROP FUNCTION IF EXISTS test_slow_session()")


def test_a_login_whose_session_save_is_slow_holds_up_no_other_request(slow_session_saves, proc_env,
                                                                      django_user_model):
    # Hashed as daphne's default hashers can check (the tests' fast hasher is this process's only).
    hasher = PBKDF2PasswordHasher()
    django_user_model.objects.create(username="ops", is_staff=True, is_superuser=True,
                                     password=hasher.encode("pw-for-tests", hasher.salt()))
    web = proc_env.daphne()
    browser = requests.Session()
    browser.get(f"{web.url}/admin/login/", timeout=10)
    answers: list[requests.Response] = []
    # The login creates its session in the view, then saves it again (an UPDATE: 2 s) on the way out.
    login = threading.Thread(target=lambda: answers.append(browser.post(
        f"{web.url}/admin/login/?next=/admin/",
        data={"username": "ops", "password": "pw-for-tests", "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": f"{web.url}/admin/login/"}, allow_redirects=False, timeout=30,
    )))
    login.start()
    try:
        waits = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert requests.get(f"{web.url}/health", timeout=10).ok
            waits.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        login.join(30)
    assert answers and answers[0].status_code == 302, answers and answers[0].text[:300]
    assert max(waits) < 0.5, waits
