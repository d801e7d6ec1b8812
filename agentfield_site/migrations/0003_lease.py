import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    """The Lease model moves here from observability; its table stays as it is (state only)."""

    dependencies = [
        ("agentfield_site", "0002_apikey_scope"),
        ("observability", "0002_forwarder"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Lease",
                    fields=[
                        ("name", models.CharField(max_length=64, primary_key=True, serialize=False)),
                        ("holder", models.CharField(blank=True, max_length=64)),
                        ("expires_at", models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                    options={"db_table": "observability_lease"},
                ),
            ],
        ),
    ]
