"""Indexes for the API's pages of a wave's tool uses and assertions.

The endpoints page these by id (`WHERE wave_id = ? [AND is_error = ?] ORDER BY id LIMIT n`).
With an index on `wave` alone, PostgreSQL walks the primary key in id order and filters out
every other wave's rows: on 200,000 tool uses, 17 ms for the errors of a wave whose rows are
recent (benchmarks/bench_api.py). Indexes ending in `id` answer the page directly. They
replace the single-column `wave` indexes, which they cover.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("observability", "0004_active_agents_running_seconds_float")]

    operations = [
        migrations.RemoveIndex(model_name="tooluse", name="idx_tool_use_wave_id"),
        migrations.AddIndex(
            model_name="tooluse",
            index=models.Index(fields=["wave", "id"], name="idx_tool_use_wave_page"),
        ),
        migrations.AddIndex(
            model_name="tooluse",
            index=models.Index(fields=["wave", "is_error", "id"], name="idx_tool_use_wave_error_page"),
        ),
        migrations.RemoveIndex(model_name="assertionresult", name="idx_assertion_wave_id"),
        migrations.AddIndex(
            model_name="assertionresult",
            index=models.Index(fields=["wave", "id"], name="idx_assertion_wave_page"),
        ),
        migrations.AddIndex(
            model_name="assertionresult",
            index=models.Index(fields=["wave", "passed", "id"], name="idx_assertion_wave_passed_page"),
        ),
    ]
