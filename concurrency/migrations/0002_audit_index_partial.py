"""Index only the rows that leave a status the timeline counts (running, queued,
waiting_approval): the same reads, and the other rows (a task created, leaving pending, ...)
cost the audit's writers nothing more. Replaces 0001's index over every row."""

from django.db import migrations

OLD = "idx_audit_previous_status_time"
NEW = "idx_audit_left_counted_status"
STATUSES = "('running', 'queued', 'waiting_approval')"  # concurrency.selectors.STATUSES


def _concurrently(schema_editor) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""


def forwards(apps, schema_editor):
    c = _concurrently(schema_editor)
    schema_editor.execute(
        f"CREATE INDEX {c}IF NOT EXISTS {NEW} ON task_status_audit (previous_status, changed_at, task_id) "
        f"WHERE previous_status IN {STATUSES}"
    )
    schema_editor.execute(f"DROP INDEX {c}IF EXISTS {OLD}")


def backwards(apps, schema_editor):
    c = _concurrently(schema_editor)
    schema_editor.execute(
        f"CREATE INDEX {c}IF NOT EXISTS {OLD} ON task_status_audit (previous_status, changed_at, task_id)"
    )
    schema_editor.execute(f"DROP INDEX {c}IF EXISTS {NEW}")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("concurrency", "0001_audit_index_on_previous_status")]

    operations = [migrations.RunPython(forwards, backwards)]
