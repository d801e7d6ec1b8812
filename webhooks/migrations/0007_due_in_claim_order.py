"""The due index in the claim's own order, `(next_attempt_at, id)`.

Rows due at the same moment (a redrive, a burst) were all read and sorted by id
for every claim, to return the first few: 4.6 ms a claim with 9,500 due.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0006_attempt_outcome_choices'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='delivery',
            name='webhooks_due',
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('status', 'pending')), fields=['next_attempt_at', 'id'], name='webhooks_due_in_order'),
        ),
    ]
