from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("agentfield_site", "0001_initial")]

    operations = [
        # Keys made before scopes existed could do everything: they stay admin keys.
        migrations.AddField(
            model_name="apikey",
            name="scope",
            field=models.CharField(default="admin", max_length=16),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="apikey",
            name="scope",
            field=models.CharField(
                choices=[
                    ("admin", "admin: everything"),
                    ("client", "client: its own executions, subscriptions and dead letters"),
                    ("agent", "agent: its own nodes and the executions dispatched to them"),
                ],
                default="client",
                max_length=16,
            ),
        ),
    ]
