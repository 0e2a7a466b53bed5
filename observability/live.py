"""What the live consumers read from the database (synchronous; the consumers call these
through `database_sync_to_async`): the team rule, snapshots, and the event log after a cursor.

A snapshot is read *after* the consumer has subscribed and learnt the relay's watermark W
(its `after`): everything up to W is in it, and every event after W follows it. Some events
after W may already show in the snapshot too; each event carries the whole new state of what
it names (a task's status, a wave's counters), so applying it again changes nothing.
"""

from __future__ import annotations

from django.db.models import Count

from executions import selectors
from executions.models import Event, ExecutionRun, RunStatus, WaveTask
from executions.ownership import run_payload
from observability.models import WaveStatistics
from observability.relay import event_message
from waves.teams import visible_task_lists

PAGE = 500

TASK_FIELDS = (
    "id", "key", "wave_id", "wave_number", "task_id", "title", "kind", "parent_id", "parent_key", "item_index",
    "status", "attempt", "started_at", "completed_at", "exit_code", "approval_decision",
)  # fmt: skip
WAVE_FIELDS = (
    "id", "wave_number", "status", "started_at", "completed_at", "max_parallelism", "task_count",
    "agent_count", *selectors.WAVE_COUNTERS.values(),
)  # fmt: skip
AGENT_FIELDS = (
    "id", "instance_id", "execution_id", "wave_id", "wave_number", "wave_task_id", "task_key", "task_id",
    "attempt", "status", "hostname", "pid", "started_at", "last_heartbeat",
)  # fmt: skip
STATISTICS_FIELDS = (
    "wave_id", "task_count", "completed_count", "failed_count", "skipped_count", "pass_rate",
    "transcript_entry_count", "tool_use_count", "tool_error_count", "tool_blocked_count", "assertion_count",
    "assertion_pass_count", "assertion_fail_count", "skill_trace_count", "started_at", "completed_at",
    "duration_ms", "updated_at",
)  # fmt: skip


def visible_run(user, run_id: int) -> ExecutionRun | None:
    """The run, if `user` may see it (the API's team rule: another team's run is not found)."""
    return selectors.visible_runs(user).select_related("task_list").filter(pk=run_id).first()


def visible_run_ids(user, run_ids) -> set[int]:
    return set(selectors.visible_runs(user).filter(pk__in=list(run_ids)).values_list("pk", flat=True))


def run_summary(run: ExecutionRun, steps: dict[str, int]) -> dict:
    return {
        **run_payload(run),
        "task_list_title": run.task_list.title,
        "session_id": run.session_id,
        "created_at": run.created_at,
        "error": run.error,
        "steps": steps,
    }


def run_snapshot(run: ExecutionRun) -> dict:
    """The run, its waves (with live step counts), tasks, running agents and statistics."""
    run.refresh_from_db()
    one = ExecutionRun.objects.filter(pk=run.pk)
    return {
        "run": run_summary(run, selectors.run_step_counts(run)),
        "waves": list(selectors.wave_progress(run).values(*WAVE_FIELDS)),
        "tasks": list(selectors.run_wave_tasks(run).values(*TASK_FIELDS)),
        "agents": list(selectors.active_agents(one).values(*AGENT_FIELDS)),
        "statistics": list(
            WaveStatistics.objects.filter(execution=run).order_by("wave_id").values(*STATISTICS_FIELDS)
        ),
    }


def dashboard_snapshot(user) -> dict:
    """Every active (pending or running) run the user may see, with its steps per status,
    and their running agents."""
    runs = list(
        selectors.visible_runs(user)
        .filter(status__in=(RunStatus.PENDING, RunStatus.RUNNING))
        .select_related("task_list")
        .order_by("id")
    )
    counts: dict[int, dict[str, int]] = {run.pk: {} for run in runs}
    rows = (
        WaveTask.objects.filter(execution__in=[run.pk for run in runs], instances__isnull=True)
        .order_by()
        .values_list("execution_id", "status")
        .annotate(n=Count("pk"))
    )
    for run_id, status, n in rows:
        counts[run_id][status] = n
    agents = selectors.active_agents(ExecutionRun.objects.filter(pk__in=counts))
    return {
        "runs": [run_summary(run, counts[run.pk]) for run in runs],
        "agents": list(agents.values(*AGENT_FIELDS, "task_list_id")),
    }


def events_between(after: int, upto: int, *, run_id: int | None = None, user=None) -> list[dict]:
    """One page of the log with after < id <= upto, of one run or of every run `user` sees."""
    events = Event.objects.filter(id__gt=after, id__lte=upto)
    if run_id is not None:
        events = events.filter(execution_id=run_id)
    else:
        events = events.filter(execution__task_list__in=visible_task_lists(user))
    rows = events.order_by("id").values_list("id", "execution_id", "type", "payload", "created_at")[:PAGE]
    return [event_message(*row) for row in rows]
