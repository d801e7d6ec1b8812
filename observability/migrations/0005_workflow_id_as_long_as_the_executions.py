from django.db import migrations, models


class AlterFieldUnlessSQLite(migrations.AlterField):
    """A longer varchar: PostgreSQL changes the column in place (no rewrite); SQLite
    enforces no length, and would copy the whole event log into a new table (and
    lose its AUTOINCREMENT sequence with it), so there only the state changes."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "sqlite":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "sqlite":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    """An event's workflow id is its execution's, which an X-Run-ID of up to 128 characters names."""

    dependencies = [
        ("observability", "0004_lean_indexes"),
    ]

    operations = [
        AlterFieldUnlessSQLite(
            model_name="platformevent",
            name="workflow_id",
            field=models.CharField(blank=True, max_length=128),
        ),
    ]
