"""`manage.py apikey create|list|revoke` and the same in the admin: shown once, hashed at rest, revoked not deleted."""

import io
import re

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from agentfield_site.models import ApiKey, hash_key

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_prints_the_key_once_and_stores_only_its_hash():
    out, err = run("create", "--name", "ci", "--scope", "client")
    raw = out.strip()
    assert re.fullmatch(r"afk_[A-Za-z0-9_-]{40,}", raw), out
    assert "shown once" in err and raw not in err
    key = ApiKey.objects.get(name="ci")
    assert key.scope == "client" and key.key_hash == hash_key(raw)
    assert raw not in {getattr(key, f.name) for f in ApiKey._meta.fields}
    listing, _ = run("list")
    assert "ci" in listing and "client" in listing and key.prefix in listing and raw not in listing
    api = APIClient()
    assert api.get("/api/v1/executions", headers={"X-API-Key": raw}).status_code == 200
    assert api.get("/api/v1/settings/observability-webhook", headers={"X-API-Key": raw}).status_code == 403


def test_each_scope_and_a_bad_one():
    for scope in ("admin", "client", "agent"):
        run("create", "--name", f"k-{scope}", "--scope", scope)
    assert sorted(ApiKey.objects.values_list("scope", flat=True)) == ["admin", "agent", "client"]
    with pytest.raises(CommandError):
        run("create", "--name", "x", "--scope", "root")
    with pytest.raises(CommandError):
        run("create", "--name", "", "--scope", "client")


def test_revoke_by_id_or_prefix_refuses_the_key_and_keeps_the_row():
    raw_a = run("create", "--name", "a", "--scope", "agent")[0].strip()
    raw_b = run("create", "--name", "b", "--scope", "client")[0].strip()
    a, b = ApiKey.objects.get(name="a"), ApiKey.objects.get(name="b")
    out, _ = run("revoke", str(a.pk))
    assert "Revoked" in out
    out, _ = run("revoke", b.prefix)
    assert "Revoked" in out
    assert "already revoked" in run("revoke", str(a.pk))[0]
    with pytest.raises(CommandError):
        run("revoke", "afk_nothing")
    api = APIClient()
    for raw in (raw_a, raw_b):
        assert api.get("/api/v1/nodes", headers={"X-API-Key": raw}).status_code == 401
    assert ApiKey.objects.filter(revoked_at__isnull=False).count() == 2
    assert "revoked" in run("list")[0]


def test_the_admin_creates_a_scoped_key_shows_it_once_and_cannot_delete(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
    # The add form asks for what one chooses: no empty read-only rows (prefix, dates, demo).
    form = client.get("/admin/agentfield_site/apikey/add/").content.decode()
    assert "field-name" in form and "field-scope" in form
    assert "field-prefix" not in form and "field-created_at" not in form and "field-demo" not in form
    response = client.post("/admin/agentfield_site/apikey/add/", {"name": "from-admin", "scope": "agent"}, follow=True)
    assert response.status_code == 200
    shown = re.search(r"The new key is (afk_[A-Za-z0-9_-]+)", response.content.decode())
    assert shown, "the admin shows the new key once"
    key = ApiKey.objects.get(name="from-admin")
    assert key.scope == "agent" and key.key_hash == hash_key(shown.group(1))
    change = client.get(f"/admin/agentfield_site/apikey/{key.pk}/change/").content.decode()
    assert shown.group(1) not in change
    assert client.get(f"/admin/agentfield_site/apikey/{key.pk}/delete/").status_code == 403
    client.post("/admin/agentfield_site/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_keys_made_before_scopes_are_admin_keys():
    """The migration's default: a key from before scopes keeps what it could do."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    migration = executor.loader.get_migration("agentfield_site", "0002_apikey_scope")
    added = migration.operations[0]
    assert added.name == "scope" and added.field.default == "admin"
    assert ApiKey._meta.get_field("scope").default == "client"
