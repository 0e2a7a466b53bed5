"""An index on the task status audit for the concurrency timeline: rows that *leave* a status,
by time. With the seed's (new_status, changed_at, task_id) for rows that *enter* one, the
timeline reads a window's steps as two index-only range scans (concurrency/selectors.py).

The audit table is the executions app's; this app owns no table, so the index is created
here by SQL (CONCURRENTLY on PostgreSQL: the audit takes writes while it is built)."""

from django.db import migrations

INDEX = "idx_audit_previous_status_time"


def create(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS {INDEX} "
        "ON task_status_audit (previous_status, changed_at, task_id)"
    )


def drop(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("executions", "0003_run_gate_wait_resumed_by_wave_skipped")]

    operations = [migrations.RunPython(create, drop)]
