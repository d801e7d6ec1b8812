from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("agentfield_site", "0003_lease")]

    operations = [
        # Keys made before are the operators' own: they keep counting.
        migrations.AddField(
            model_name="apikey",
            name="demo",
            field=models.BooleanField(
                default=False,
                editable=False,
                help_text="The demo agent's key, made by `manage.py serve`: it does not end the open API.",
            ),
        ),
    ]
