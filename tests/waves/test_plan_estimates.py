"""`plan_tasklist` plans with the definition's estimates only and says which it lacked."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.factories import run_with_waves, task_list
from waves.models import Task

pytestmark = pytest.mark.django_db


def plan_output(*args) -> str:
    out = StringIO()
    call_command("plan_tasklist", *args, stdout=out)
    return out.getvalue()


def test_plan_text_says_how_many_tasks_count_as_one_minute_for_want_of_an_estimate():
    tl = task_list("est", keys=["a", "b", "c"], edges=[("b", "a")])
    Task.objects.filter(task_list=tl, key="a").update(estimated_minutes=5)
    text = plan_output("est")
    assert "  - b  B (1 min)" in text
    assert text.rstrip().endswith("2 tasks without estimated_minutes counted as 1 min each.")
    assert "2 tasks without estimated_minutes counted as 1 min each." in plan_output(
        "est", "--format", "markdown"
    )


def test_plan_of_a_fully_estimated_list_has_no_note():
    tl = task_list("full", keys=["a"])
    Task.objects.filter(task_list=tl).update(estimated_minutes=3)
    assert "without estimated_minutes" not in plan_output("full")


def test_plan_does_not_change_with_past_runs():
    tl = task_list("hist-plan", keys=["a", "b"], edges=[("b", "a")])
    before = plan_output("hist-plan")
    run = run_with_waves(tl, [["a"], ["b"]])
    end = timezone.now()
    run.wave_tasks.update(status="succeeded", started_at=end - timedelta(minutes=30), completed_at=end)
    assert plan_output("hist-plan") == before
    assert "Critical path: a -> b (2 min)" in before
