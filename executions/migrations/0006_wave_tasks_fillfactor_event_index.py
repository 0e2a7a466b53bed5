"""Cheaper status changes on PostgreSQL.

wave_tasks: pages filled to half (fillfactor 50), so that a status change, which no index
holds, writes the row's new version in its own page and leaves the indexes alone (a HOT
update): a bulk move of every row of a page needs room for a second version of each.
Applies to pages written from now on; rows already written keep their pages.

event_log: no index on execution_id alone; idx_event_execution (execution_id, id) serves
every lookup by run (the run's events, the cascade when a run is deleted).
"""

import django.db.models.deletion
from django.db import migrations, models


def fillfactor(value: int | None):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name("wave_tasks")
        if value is None:
            schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        else:
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {value})")

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0005_wave_task_audit_fewer_indexes"),
    ]

    operations = [
        migrations.RunPython(fillfactor(50), fillfactor(None)),
        migrations.AlterField(
            model_name="event",
            name="execution",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="executions.executionrun",
            ),
        ),
    ]
