"""A session's peaks when executors commit in an order that is not the order of the changes'
times (two executors, or a celery executor reading its workers' starts late): once the session
closes, its peaks are those of the records (the agents' lifetimes, the audit's running periods)."""

from datetime import timedelta
from uuid import uuid4

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions import services
from executions.models import BuildAgentInstance, ConcurrentExecutionSession, RunStatus, TaskStatus, WaveTask
from tests.factories import run_with_waves, task_list

KEYS = [f"k{i}" for i in range(6)]


def overlap_peak(intervals: list[tuple[int, int]]) -> int:
    """Brute force: the most intervals [start, end) holding one instant (an end before a start)."""
    instants = {start for start, _ in intervals}
    return max((sum(start <= t < end for start, end in intervals) for t in instants), default=0)


@st.composite
def histories(draw):
    """For each task of two runs: a start and an end second; and an order to commit the
    starts and ends in, each end after its own start but otherwise in any order."""
    tasks = [(run, key) for run in (0, 1) for key in KEYS[: draw(st.integers(1, len(KEYS)))]]
    spans = {t: (s := draw(st.integers(0, 20)), s + draw(st.integers(0, 6))) for t in tasks}
    order = draw(st.permutations([(t, "start") for t in tasks] + [(t, "end") for t in tasks]))
    for task in tasks:  # each task's end after its start
        i, j = order.index((task, "start")), order.index((task, "end"))
        if j < i:
            order[i], order[j] = order[j], order[i]
    return spans, order


@pytest.mark.django_db(transaction=True)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories())
def test_closed_session_peaks_are_those_of_the_records(history):
    spans, committed = history
    t0 = timezone.now().replace(microsecond=0)
    at = lambda seconds: t0 + timedelta(seconds=seconds)  # noqa: E731
    runs = [run_with_waves(task_list(f"list-{uuid4().hex}", keys=KEYS), [KEYS]) for n in (0, 1)]
    for run in runs:
        services.session_join(run, t0)
    session_id = runs[0].session_id
    assert runs[1].session_id == session_id
    rows = {(n, wt.key): wt for n, run in enumerate(runs) for wt in WaveTask.objects.filter(execution=run)}
    agents = {}
    for task, kind in committed:  # each its own transaction, as an executor's turn
        wt = rows[task]
        start, end = spans[task]
        with transaction.atomic(), services.batch():
            if kind == "start":
                services.transition(wt, TaskStatus.RUNNING, expected=TaskStatus.PENDING, now=at(start))
                agents[task] = services.agents_start(
                    [
                        BuildAgentInstance(
                            instance_id=f"{wt.execution_id}-{wt.key}",
                            execution_id=wt.execution_id,
                            wave_id=wt.wave_id,
                            task_id=wt.task_id,
                            wave_task=wt,
                            started_at=at(start),
                        )
                    ]
                )[0]
            else:
                services.transition(wt, TaskStatus.SUCCEEDED, expected=TaskStatus.RUNNING, now=at(end))
                services.agents_finish([(agents[task], "succeeded", 0, at(end))])
    for run in runs:
        run.status = RunStatus.SUCCEEDED
        run.save(update_fields=["status"])
        services.session_leave(run, at(30))
    session = ConcurrentExecutionSession.objects.get(pk=session_id)
    truth = overlap_peak(list(spans.values()))
    assert session.status == "completed"
    assert (session.running_tasks, session.running_agents) == (0, 0)
    assert (session.peak_concurrent_tasks, session.peak_concurrent_agents) == (truth, truth)
