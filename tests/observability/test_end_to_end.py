"""A real run through the executor: what the handlers kept equals what recompute rebuilds."""

import io
import json

import pytest
import yaml
from django.core.management import call_command
from django.forms.models import model_to_dict

from executions.models import ParallelExecutionWave
from observability import services
from observability.models import WaveStatistics

pytestmark = pytest.mark.django_db

COMPARED = [*services.STATISTICS_FIELDS, "execution"]


def import_workflow(tmp_path, name, steps) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": steps}, sort_keys=False))
    call_command("import_tasklist", str(path), stdout=io.StringIO())
    return name


def run_workflow(name, *args) -> dict:
    out = io.StringIO()
    try:
        call_command("run_tasklist", name, "--json", *args, stdout=out)
    except SystemExit:
        pass
    return json.loads(out.getvalue())


def kept_and_recomputed(run_id):
    waves = ParallelExecutionWave.objects.filter(execution_id=run_id)
    kept = {
        s.wave_id: model_to_dict(s, fields=COMPARED) for s in WaveStatistics.objects.filter(wave__in=waves)
    }
    rebuilt = {
        s.wave_id: model_to_dict(s, fields=COMPARED)
        for s in services.statistics_recompute(execution_id=run_id)
    }
    return kept, rebuilt


def test_an_executed_run_and_its_resume_keep_statistics_equal_to_recompute(tmp_path):
    events = [
        {"type": "tool_use", "tool_name": "grep", "is_error": True},
        {"type": "tool_use", "tool_name": "sed", "is_blocked": True},
        {"type": "assertion", "name": "rows > 0", "passed": True},
        {"type": "assertion", "name": "schema", "passed": False},
        {"type": "skill", "skill_name": "summarise"},
        {"type": "message", "content": "hello"},
    ]
    script = "; ".join(f'echo {json.dumps(json.dumps(e))} >> "$TIDEWATCH_EVENTS"' for e in events)
    gate = tmp_path / "fixed"
    steps = [
        {"id": "ev", "run": script + '; echo "not json" >> "$TIDEWATCH_EVENTS"; echo out; echo err >&2'},
        {"id": "each", "for_each": [1, 2, 3], "run": "echo item ${item}"},
        {"id": "flaky", "run": f"test -e {gate}"},
        {"id": "after", "run": "echo after", "depends_on": ["flaky", "ev"]},
    ]
    name = import_workflow(tmp_path, "obs-e2e", steps)
    first = run_workflow(name)
    assert first["status"] == "failed"
    kept, rebuilt = kept_and_recomputed(first["run_id"])
    assert kept == rebuilt and len(kept) == 2
    wave_one = next(s for s in kept.values() if s["tool_use_count"])
    assert {k: wave_one[k] for k in ("tool_use_count", "tool_error_count", "tool_blocked_count")} == {
        "tool_use_count": 2,
        "tool_error_count": 1,
        "tool_blocked_count": 1,
    }
    assert (wave_one["assertion_pass_count"], wave_one["assertion_fail_count"]) == (1, 1)
    assert wave_one["skill_trace_count"] == 1 and wave_one["failed_count"] == 1
    assert wave_one["duration_ms"] is not None

    gate.touch()
    second = run_workflow(name, "--resume", str(first["run_id"]))
    assert second["status"] == "succeeded", second
    kept, rebuilt = kept_and_recomputed(second["run_id"])
    assert kept == rebuilt
    assert all(s["failed_count"] == 0 and s["pass_rate"] == 1.0 for s in kept.values())
