"""Estimated durations of steps: `waves` knows the estimates, `executions` adds history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions.models import WaveTask
from executions.selectors import task_durations
from tests.factories import run_with_waves, task_list
from waves import selectors as waves_selectors
from waves.models import Task, TaskList

pytestmark = pytest.mark.django_db


def succeed(run, key, minutes, *, ago=0.0, status="succeeded"):
    """Record that step `key` of `run` took `minutes` and ended `ago` minutes ago."""
    end = timezone.now() - timedelta(minutes=ago)
    WaveTask.objects.filter(execution=run, key=key).update(
        status=status, started_at=end - timedelta(minutes=minutes), completed_at=end
    )


def test_estimate_wins_then_median_of_past_successes_then_one_minute():
    tl = task_list("hist", keys=["a", "b", "c"])
    Task.objects.filter(task_list=tl, key="b").update(estimated_minutes=7)
    for minutes in (2, 4, 9):
        run = run_with_waves(tl, [["a", "b", "c"]])
        succeed(run, "a", minutes)
        succeed(run, "b", 100)  # ignored: b has an estimate
    assert task_durations(tl) == {"a": 4.0, "b": 7.0, "c": 1.0}


def test_history_follows_the_title_across_a_replaced_list():
    old = task_list("same-title", keys=["a"])
    succeed(run_with_waves(old, [["a"]]), "a", 3)
    TaskList.objects.filter(pk=old.pk).update(archived_at=timezone.now())  # as --replace does
    new = task_list("same-title", keys=["a"])
    assert task_durations(new) == {"a": 3.0}
    assert task_durations(task_list("other-title", keys=["a"])) == {"a": 1.0}


def test_only_the_last_five_successes_count():
    tl = task_list("recent", keys=["a"])
    # Oldest first: 100, 100, 100 minutes, then five runs of 1..5 minutes.
    for i, minutes in enumerate([100, 100, 100, 1, 2, 3, 4, 5]):
        succeed(run_with_waves(tl, [["a"]]), "a", minutes, ago=1000 - i)
    assert task_durations(tl) == {"a": 3.0}


def test_failed_runs_and_unfinished_ones_are_not_history():
    tl = task_list("noisy", keys=["a"])
    succeed(run_with_waves(tl, [["a"]]), "a", 50, status="failed")
    running = run_with_waves(tl, [["a"]])
    WaveTask.objects.filter(execution=running, key="a").update(status="running", started_at=timezone.now())
    succeed(run_with_waves(tl, [["a"]]), "a", 6)
    assert task_durations(tl) == {"a": 6.0}


def test_durations_read_a_fixed_number_of_queries(django_assert_max_num_queries):
    tl = task_list("many", keys=[f"t{i}" for i in range(40)])
    for _ in range(3):
        run = run_with_waves(tl, [[f"t{i}" for i in range(40)]])
        for i in range(40):
            succeed(run, f"t{i}", i + 1)
    with django_assert_max_num_queries(2):
        durations = task_durations(tl)
    assert durations == {f"t{i}": float(i + 1) for i in range(40)}


def test_waves_durations_are_the_estimates_else_one_without_history():
    tl = task_list("defs", keys=["a", "b"])
    Task.objects.filter(task_list=tl, key="b").update(estimated_minutes=7)
    succeed(run_with_waves(tl, [["a", "b"]]), "a", 3)
    assert waves_selectors.task_durations(tl) == {"a": 1.0, "b": 7.0}
    assert waves_selectors.task_estimates(tl) == {"a": None, "b": 7.0}


def test_plan_uses_the_durations_given_and_names_the_tasks_counted_as_one_minute():
    tl = task_list("plan", keys=["a", "b"], edges=[("b", "a")])
    Task.objects.filter(task_list=tl, key="b").update(estimated_minutes=7)
    plan = waves_selectors.task_list_plan(tl)
    assert (plan.durations, plan.unestimated, plan.serial_total) == ({"a": 1.0, "b": 7.0}, ["a"], 8.0)
    given = waves_selectors.task_list_plan(tl, durations={"a": 3.0, "b": 7.0})
    assert (given.durations, given.unestimated, given.analysis.critical_length) == (
        {"a": 3.0, "b": 7.0},
        [],
        10.0,
    )
