"""Plain indexes instead of `db_index`/`unique`, which on PostgreSQL add unused `varchar_pattern_ops` twins.

Dropping `db_index` from `execution_id` makes PostgreSQL's schema editor drop
every plain-looking index on the column, the partial unique index
`webhooks_one_completion` included, so the constraint is made again at the end
(`DROP INDEX IF EXISTS` first: on SQLite the table rebuild kept it).
"""

import django.db.models.deletion
import webhooks.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agentfield_site', '0003_lease'),
        ('webhooks', '0004_owners'),
    ]

    operations = [
        migrations.AlterField(
            model_name='delivery',
            name='execution_id',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AlterField(
            model_name='delivery',
            name='subscription',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='webhooks.subscription'),
        ),
        migrations.AlterField(
            model_name='delivery',
            name='webhook_id',
            field=models.CharField(default=webhooks.models.new_webhook_id, editable=False, max_length=64),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(fields=['execution_id'], name='webhooks_by_execution'),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(fields=['subscription'], name='webhooks_by_subscription'),
        ),
        migrations.AddConstraint(
            model_name='delivery',
            constraint=models.UniqueConstraint(fields=('webhook_id',), name='webhooks_one_webhook_id'),
        ),
        migrations.RemoveConstraint(model_name='delivery', name='webhooks_one_completion'),
        migrations.AddConstraint(
            model_name='delivery',
            constraint=models.UniqueConstraint(
                condition=models.Q(kind='completion'), fields=('execution_id',), name='webhooks_one_completion'
            ),
        ),
    ]
