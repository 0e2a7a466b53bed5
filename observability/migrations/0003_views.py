"""The dashboard views v_wave_progress and v_active_agents, in each database's own SQL.

v_wave_progress has a wave's counters (COALESCEd, so a wave with no statistics row reads
zeros) and its task list title and run status. On PostgreSQL a two-argument GROUP_CONCAT
aggregate is created too, so a GROUP_CONCAT(x, sep) query written for SQLite runs as written.
"""

from django.db import migrations

WAVE_PROGRESS = """
CREATE VIEW v_wave_progress AS
SELECT
    pew.id AS wave_id,
    pew.execution_id,
    pew.wave_number,
    pew.status,
    pew.started_at,
    pew.completed_at,
    COALESCE(ws.task_count, 0) AS task_count,
    COALESCE(ws.completed_count, 0) AS completed_count,
    COALESCE(ws.failed_count, 0) AS failed_count,
    ws.pass_rate,
    COALESCE(ws.tool_use_count, 0) AS tool_use_count,
    COALESCE(ws.assertion_count, 0) AS assertion_count,
    COALESCE(ws.assertion_pass_count, 0) AS assertion_pass_count,
    ws.duration_ms,
    tl.title AS task_list_title,
    tler.status AS execution_status
FROM parallel_execution_waves pew
LEFT JOIN wave_statistics ws ON ws.wave_id = pew.id
LEFT JOIN task_list_execution_runs tler ON tler.id = pew.execution_id
LEFT JOIN task_lists_v2 tl ON tl.id = tler.task_list_id
ORDER BY pew.started_at DESC
"""

ACTIVE_AGENTS = """
CREATE VIEW v_active_agents AS
SELECT
    bai.id AS agent_id,
    bai.instance_id,
    bai.status,
    bai.started_at,
    bai.last_heartbeat,
    t.id AS task_id,
    t.display_id,
    t.title AS task_title,
    pew.wave_number,
    pew.id AS wave_id,
    tler.id AS execution_id,
    tl.title AS task_list_title,
    {running_seconds} AS running_seconds
FROM build_agent_instances bai
JOIN tasks t ON t.id = bai.task_id
JOIN parallel_execution_waves pew ON pew.id = bai.wave_id
JOIN task_list_execution_runs tler ON tler.id = pew.execution_id
LEFT JOIN task_lists_v2 tl ON tl.id = tler.task_list_id
WHERE bai.status = 'running'
ORDER BY bai.started_at ASC
"""

RUNNING_SECONDS = {
    "sqlite": "ROUND((julianday('now') - julianday(bai.started_at)) * 86400)",
    "postgresql": "ROUND(EXTRACT(EPOCH FROM (now() - bai.started_at)))",
}

PG_GROUP_CONCAT = """
CREATE OR REPLACE FUNCTION tidewatch_group_concat_step(acc text, val text, sep text) RETURNS text
    LANGUAGE sql IMMUTABLE AS
    $$ SELECT CASE WHEN val IS NULL THEN acc WHEN acc IS NULL THEN val ELSE acc || sep || val END $$;
DROP AGGREGATE IF EXISTS group_concat(text, text);
CREATE AGGREGATE group_concat(text, text) (SFUNC = tidewatch_group_concat_step, STYPE = text);
"""


def create_views(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in RUNNING_SECONDS:
        raise NotImplementedError(f"no view SQL for database vendor {vendor!r}")
    schema_editor.execute(WAVE_PROGRESS)
    schema_editor.execute(ACTIVE_AGENTS.format(running_seconds=RUNNING_SECONDS[vendor]))
    if vendor == "postgresql":
        schema_editor.execute(PG_GROUP_CONCAT)


def drop_views(apps, schema_editor):
    schema_editor.execute("DROP VIEW IF EXISTS v_active_agents")
    schema_editor.execute("DROP VIEW IF EXISTS v_wave_progress")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP AGGREGATE IF EXISTS group_concat(text, text)")
        schema_editor.execute("DROP FUNCTION IF EXISTS tidewatch_group_concat_step(text, text, text)")


class Migration(migrations.Migration):
    dependencies = [("observability", "0002_initial")]
    operations = [migrations.RunPython(create_views, drop_views)]
