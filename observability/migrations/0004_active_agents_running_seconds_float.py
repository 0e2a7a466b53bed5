"""v_active_agents.running_seconds as a float on PostgreSQL too.

ROUND() over EXTRACT(EPOCH ...) returns numeric there, which the FloatField of ActiveAgent
handed on as a Decimal (SQLite gave a float). PostgreSQL cannot change a view column's type
in place, so the view is dropped and created again with a cast.
"""

from importlib import import_module

from django.db import migrations

views = import_module("observability.migrations.0003_views")

PG_RUNNING_SECONDS = "ROUND(EXTRACT(EPOCH FROM (now() - bai.started_at)))::double precision"


def recreate(running_seconds: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute("DROP VIEW IF EXISTS v_active_agents")
            schema_editor.execute(views.ACTIVE_AGENTS.format(running_seconds=running_seconds))

    return run


class Migration(migrations.Migration):
    dependencies = [("observability", "0003_views")]
    operations = [
        migrations.RunPython(
            recreate(PG_RUNNING_SECONDS), recreate(views.RUNNING_SECONDS["postgresql"])
        )
    ]
