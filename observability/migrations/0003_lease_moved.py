from django.db import migrations


class Migration(migrations.Migration):
    """Lease now belongs to agentfield_site (the job machinery); the table is left where it is."""

    dependencies = [
        ("observability", "0002_forwarder"),
        ("agentfield_site", "0003_lease"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="Lease")]),
    ]
