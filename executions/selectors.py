"""Read-only queries about runs (no writes, no status changes).

`run_status_view()` is what `run_status` prints: per wave, per group (a pipeline group or a
parallel block; an ungrouped task is a serial step of its own), how many steps are complete
("n/m steps complete": succeeded or skipped) and every step with its status, attempt and
times. It reads a fixed number of queries whatever the size of the run.

`task_durations()` is the history half of a step's estimated duration (its estimate, else the
median of its past successful runs, else 1 minute): the definitions app (`waves`) knows only
the estimates, since it imports nothing from this app.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from django.db import connection, models
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, RowNumber

from executions.errors import NotFound
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from executions.records import iso
from waves.models import Task, TaskList
from waves.selectors import task_estimates
from waves.teams import team_rule

# Largest value a database id column holds (a signed 64-bit integer).
MAX_ID = 2**63 - 1

# "n/m steps complete": a step is complete when it succeeded or was skipped. Failed,
# cancelled and lost steps are not complete (a resume runs them again).
COMPLETE = frozenset({TaskStatus.SUCCEEDED, TaskStatus.SKIPPED})
ACTIVE = frozenset({TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.WAITING_APPROVAL})
# The statuses each group lists by key, in display order.
LISTED = (
    TaskStatus.RUNNING,
    TaskStatus.QUEUED,
    TaskStatus.WAITING_APPROVAL,
    TaskStatus.FAILED,
    TaskStatus.LOST,
    TaskStatus.CANCELLED,
    TaskStatus.SKIPPED,
)


def parse_id(value: int | str) -> int | None:
    """`value` as a database id, or None when no row can have it (not a whole number, or
    too large for the column: PostgreSQL raises on bigint overflow instead of finding nothing)."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def run_get(run_id: int | str) -> ExecutionRun:
    """The run with this id (with its task list), or NotFound naming it."""
    pk = parse_id(run_id)
    run = None if pk is None else ExecutionRun.objects.select_related("task_list").filter(pk=pk).first()
    if run is None:
        raise NotFound(f"run {str(run_id).strip()} does not exist")
    return run


def run_latest() -> ExecutionRun | None:
    """The newest run, or None when there is none."""
    return ExecutionRun.objects.select_related("task_list").order_by("-id").first()


def _percent(done: int, total: int) -> int:
    # Floor, so 100% means every step is complete (11/16 -> 68%).
    return (100 * done) // total if total else 0


def _group_status(counts: dict[str, int], total: int) -> str:
    """One word for a group (or a wave) from the counts of its steps' statuses."""
    running = counts.get(TaskStatus.RUNNING, 0) + counts.get(TaskStatus.QUEUED, 0)
    waiting = counts.get(TaskStatus.WAITING_APPROVAL, 0)
    complete = counts.get(TaskStatus.SUCCEEDED, 0) + counts.get(TaskStatus.SKIPPED, 0)
    if counts.get(TaskStatus.FAILED):
        return "failed"
    if counts.get(TaskStatus.LOST) and not (running or waiting):
        return "lost"
    if counts.get(TaskStatus.CANCELLED) and not (running or waiting):
        return "cancelled"
    if running:
        return "in_progress"
    if waiting:
        return "waiting_approval"
    if total and complete == total:
        return "skipped" if counts.get(TaskStatus.SKIPPED) == total else "done"
    if complete or counts.get(TaskStatus.LOST) or counts.get(TaskStatus.CANCELLED):
        return "in_progress"
    return "pending"


def speedup(run: ExecutionRun) -> float | None:
    """Task seconds over the seconds the run could work (its wall time less the time it could
    only wait at approval gates), or None when there is nothing meaningful to show."""
    return speedup_of(run.wall_seconds, run.task_seconds, run.gate_wait_seconds)


def speedup_of(wall_seconds: float | None, task_seconds: float | None, gate_wait_seconds: float | None):
    """speedup() from a run's three columns (for rows read with `.values()`)."""
    if not wall_seconds or not task_seconds:
        return None
    working = wall_seconds - (gate_wait_seconds or 0.0)
    if working <= 0:
        return None
    value = round(task_seconds / working, 2)
    return value or None  # never a "0.0x": too small to show is not shown


def run_status_view(run: ExecutionRun) -> dict[str, Any]:
    """The status display of a run as a plain dict (JSON-ready).

    Queries: the run's waves, and its wave tasks joined with their tasks and the tasks'
    parent blocks (2 queries, plus 1 for the task list when `run` was loaded without it).
    """
    waves = list(
        ParallelExecutionWave.objects.filter(execution=run)
        .order_by("wave_number")
        .values("id", "wave_number", "status", "started_at", "completed_at")
    )
    rows = list(
        WaveTask.objects.filter(execution=run)
        .order_by("wave__wave_number", "task__position", "item_index", "id")
        .values(
            "id",
            "key",
            "wave_id",
            "parent_id",
            "status",
            "attempt",
            "started_at",
            "completed_at",
            "task__kind",
            "task__parallel_group",
            "task__parent__key",
            "task__parent__kind",
        )
    )

    def group_of(row: dict) -> str | None:
        if row["task__parallel_group"]:
            return row["task__parallel_group"]
        if row["task__parent__key"] and row["task__parent__kind"] == Task.Kind.GROUP:
            return row["task__parent__key"]
        return None

    by_id = {row["id"]: row for row in rows}
    has_instances = {row["parent_id"] for row in rows if row["parent_id"]}
    # Steps: a for_each parent with instances is replaced by its instances, which belong to
    # the parent's group and wave; block containers are not steps.
    steps: list[tuple[dict, dict]] = []  # (row giving group and wave, row giving status)
    for row in rows:
        if row["task__kind"] == Task.Kind.GROUP or row["id"] in has_instances:
            continue
        owner = by_id.get(row["parent_id"], row) if row["parent_id"] else row
        steps.append((owner, row))

    wave_views: dict[int, dict] = {}
    wave_counts: dict[int, dict[str, int]] = {}
    for wave in waves:
        wave_views[wave["id"]] = {
            "wave_number": wave["wave_number"],
            "status": wave["status"],
            "display_status": wave["status"],
            "started_at": iso(wave["started_at"]),
            "completed_at": iso(wave["completed_at"]),
            "groups": [],
            "done": 0,
            "total": 0,
            "waiting_approval": [],
            "_groups": {},
        }
        wave_counts[wave["id"]] = defaultdict(int)

    counts: dict[str, int] = {}
    for owner, row in steps:
        wave_view = wave_views.get(owner["wave_id"])
        if wave_view is None:  # a wave task whose wave row is of another run: ignore it
            continue
        name = group_of(owner)
        # A serial step is a group of one, named by its key.
        group_key = ("group", name) if name else ("step", owner["key"])
        group = wave_view["_groups"].get(group_key)
        if group is None:
            group = {
                "name": name or owner["key"],
                "kind": "group" if name else "serial",
                "status": "pending",
                "done": 0,
                "total": 0,
                "percent": 0,
                **{status: [] for status in LISTED},
                "counts": defaultdict(int),
                "steps": [],
            }
            wave_view["_groups"][group_key] = group
            wave_view["groups"].append(group)
        status = row["status"]
        group["total"] += 1
        group["counts"][status] += 1
        wave_counts[owner["wave_id"]][status] += 1
        counts[status] = counts.get(status, 0) + 1
        if status in COMPLETE:
            group["done"] += 1
        if status in LISTED:
            group[status].append(row["key"])
        if status == TaskStatus.WAITING_APPROVAL:
            wave_view["waiting_approval"].append(row["key"])
        group["steps"].append(
            {
                "key": row["key"],
                "status": status,
                "attempt": row["attempt"],
                "started_at": iso(row["started_at"]),
                "completed_at": iso(row["completed_at"]),
            }
        )

    total = done = 0
    out_waves = []
    for wave_id, wave_view in wave_views.items():
        wave_view.pop("_groups")
        for group in wave_view["groups"]:
            group["counts"] = dict(group["counts"])
            group["status"] = _group_status(group["counts"], group["total"])
            group["percent"] = _percent(group["done"], group["total"])
            wave_view["done"] += group["done"]
            wave_view["total"] += group["total"]
        wave_view["percent"] = _percent(wave_view["done"], wave_view["total"])
        # A wave whose only activity is steps waiting at a gate is waiting for approval,
        # whatever its row says (it may not have started: a gate launches nothing).
        shown = _group_status(wave_counts[wave_id], wave_view["total"])
        if shown == "waiting_approval" and wave_view["status"] not in ("failed", "cancelled"):
            wave_view["display_status"] = "waiting_approval"
        done += wave_view["done"]
        total += wave_view["total"]
        out_waves.append(wave_view)

    return {
        "run_id": run.pk,
        "task_list_id": run.task_list_id,
        "task_list": run.task_list.title,
        "status": run.status,
        "finished": run.status in RunStatus.terminal(),
        "backend": run.backend,
        "schedule": run.schedule,
        "max_parallelism": run.max_parallelism,
        "attempt": run.attempt,
        "resumed_from": run.resumed_from_id,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "wall_seconds": run.wall_seconds,
        "task_seconds": run.task_seconds,
        "gate_wait_seconds": run.gate_wait_seconds or 0.0,
        "speedup": speedup(run),
        "peak_concurrency": run.peak_concurrency,
        "cancel_requested": run.cancel_requested_at is not None,
        "error": run.error,
        "waves": out_waves,
        "steps": counts,  # steps per status
        "done": done,
        "total": total,
        "percent": _percent(done, total),
    }


# --- durations from history ----------------------------------------------------------------

HISTORY_RUNS = 5


def task_durations(task_list: TaskList) -> dict[str, float]:
    """Minutes per executable task: its estimate, else the median of its last 5 successful
    runs in lists of the same title (so history survives `import_tasklist --replace`), else 1."""
    out = task_estimates(task_list)
    missing = [key for key, minutes in out.items() if minutes is None]
    history: dict[str, list[float]] = defaultdict(list)
    if missing:
        # The last HISTORY_RUNS successes of each task, numbered in the database; the keys come
        # from a subquery, so a list of any size binds no parameter per task.
        unestimated = Task.objects.filter(task_list=task_list, estimated_minutes__isnull=True)
        latest = Window(RowNumber(), partition_by=[F("task__key")], order_by=F("completed_at").desc())
        rows = (
            WaveTask.objects.filter(
                status=TaskStatus.SUCCEEDED,
                parent__isnull=True,
                task__task_list__title=task_list.title,
                task__key__in=unestimated.values("key"),
                started_at__isnull=False,
                completed_at__isnull=False,
            )
            .annotate(latest=latest)
            .filter(latest__lte=HISTORY_RUNS)
            .values_list("task__key", "started_at", "completed_at")
        )
        for key, start, end in rows.iterator():
            history[key].append((end - start).total_seconds() / 60)
    return {
        key: minutes if minutes is not None else (statistics.median(history[key]) if history[key] else 1.0)
        for key, minutes in out.items()
    }


# --- what the REST API reads (executions/api.py) --------------------------------------------
# Each answers in a fixed number of queries whatever the number of rows: what a row shows of
# other tables comes by a join or a subquery, never a query per row. "Steps" are counted as
# run_status counts them: a for_each step that has its instances is counted by its instances.


def visible_runs(user) -> QuerySet[ExecutionRun]:
    """The runs of the task lists `user` may see (waves.teams): anything else is not found."""
    return ExecutionRun.objects.filter(team_rule(user, "task_list"))


def _is_step() -> Exists:
    return ~Exists(WaveTask.objects.filter(parent_id=OuterRef("pk")))


def run_step_counts(run: ExecutionRun | int) -> dict[str, int]:
    """Steps of the run per status, every status present (one query)."""
    rows = (
        WaveTask.objects.filter(_is_step(), execution=run)
        .order_by()
        .values_list("status")
        .annotate(Count("pk"))
    )
    return {**dict.fromkeys(TaskStatus.values, 0), **dict(rows)}


# The counters wave_progress() adds, per status. completed_count is "succeeded", as in
# wave_statistics and v_wave_progress.
WAVE_COUNTERS = {
    status: "completed_count" if status == TaskStatus.SUCCEEDED else f"{status}_count"
    for status in TaskStatus.values
}


def wave_progress(run: ExecutionRun) -> QuerySet[ParallelExecutionWave]:
    """Seed 000 §7.1 (the rows of v_wave_progress, by wave number) computed from this app's
    own tables: the run's waves with their steps counted per status and their agents, in one
    query. The counts are live (the view's come from wave_statistics, kept by observability)."""
    step = Q(wave_tasks__instances__isnull=True)
    counters = {
        name: Count("wave_tasks", filter=step & Q(wave_tasks__status=status))
        for status, name in WAVE_COUNTERS.items()
    }
    return (
        ParallelExecutionWave.objects.filter(execution=run)
        .annotate(
            task_count=Count("wave_tasks", filter=step),
            **counters,
            agent_count=_wave_agent_count(),
            task_list_title=F("execution__task_list__title"),
            execution_status=F("execution__status"),
        )
        .order_by("wave_number")
    )


def _wave_agent_count() -> Coalesce:
    agents = BuildAgentInstance.objects.filter(wave=OuterRef("pk")).order_by().values("wave")
    return Coalesce(Subquery(agents.annotate(n=Count("pk")).values("n")), 0)


def run_waves(run: ExecutionRun) -> QuerySet[ParallelExecutionWave]:
    """The run's waves by wave number with their agent count: wave_progress() less its step
    counters, which wave_step_counts() reads for a page of waves. Counting the steps of every
    wave in the query of the waves made both that query and the page's COUNT(*) group the
    run's wave tasks, and building it took the ORM longer than running it."""
    return (
        ParallelExecutionWave.objects.filter(execution=run)
        .annotate(agent_count=_wave_agent_count())
        .order_by("wave_number")
    )


def wave_step_counts(wave_ids: list[int]) -> dict[int, dict[str, int]]:
    """Steps per status of each of these waves, as wave_progress() counts them (one query)."""
    rows = (
        WaveTask.objects.filter(_is_step(), wave_id__in=wave_ids)
        .order_by()
        .values_list("wave_id", "status")
        .annotate(Count("pk"))
    )
    counts: dict[int, dict[str, int]] = {wave_id: {} for wave_id in wave_ids}
    for wave_id, status, n in rows:
        counts[wave_id][status] = n
    return counts


def run_wave_tasks(run: ExecutionRun) -> QuerySet[WaveTask]:
    """The run's wave tasks with their wave number, step title and kind, and their for_each
    parent's key, in plan order (wave, position in the source, item)."""
    return (
        WaveTask.objects.filter(execution=run)
        .annotate(
            wave_number=F("wave__wave_number"),
            title=F("task__title"),
            kind=F("task__kind"),
            parent_key=F("parent__key"),
        )
        .order_by("wave__wave_number", "task__position", F("item_index").asc(nulls_first=True), "id")
    )


def run_timeline(run: ExecutionRun) -> QuerySet[WaveTask]:
    """Seed 000 §7.5 per task: each wave task with when it last entered the queue (from the
    audit), started and ended, ordered by start (never started last)."""
    queued = (
        TaskStatusAudit.objects.filter(wave_task=OuterRef("pk"), new_status=TaskStatus.QUEUED)
        .order_by("-id")
        .values("changed_at")[:1]
    )
    return (
        WaveTask.objects.filter(execution=run)
        .annotate(
            wave_number=F("wave__wave_number"),
            title=F("task__title"),
            parent_key=F("parent__key"),
            queued_at=Subquery(queued),
        )  # fmt: skip
        .order_by(F("started_at").asc(nulls_last=True), "id")
    )


def active_agents(runs: QuerySet[ExecutionRun]) -> QuerySet[BuildAgentInstance]:
    """Seed 000 §7.2 (the rows of v_active_agents): the running agents of these runs with
    their step, wave and task list, oldest first."""
    return _running_agents().filter(execution__in=runs)


def visible_active_agents(user, run: ExecutionRun | None = None) -> QuerySet[BuildAgentInstance]:
    """active_agents() of one run (already found among those `user` may see), or of every run
    `user` may see. The same rows as active_agents(visible_runs(user)), with the team rule on
    the run's task list (two joins) instead of a subquery over runs."""
    if run is not None:
        return _running_agents().filter(execution=run)
    return _running_agents().filter(team_rule(user, "execution__task_list"))


def _running_agents() -> QuerySet[BuildAgentInstance]:
    """What an agent's row shows of its step, task, wave and run comes by a subquery on the
    related row's primary key, not a join: PostgreSQL planned the query of six joined tables
    for longer than it ran it, and a page's COUNT(*) kept the joins (the subqueries it drops).
    The subqueries are written as SQL: the ORM took longer to compile six of them than the
    database took to run the query."""
    return (
        BuildAgentInstance.objects.filter(status=AgentStatus.RUNNING)
        .annotate(
            task_key=_column(WaveTask, "wave_task_id", "key", models.CharField()),
            display_id=_column(Task, "task_id", "display_id", models.CharField()),
            task_title=_column(Task, "task_id", "title", models.CharField()),
            wave_number=_column(ParallelExecutionWave, "wave_id", "wave_number", models.IntegerField()),
            task_list_id=_column(ExecutionRun, "execution_id", "task_list_id", models.IntegerField()),
            task_list_title=_column(ExecutionRun, "execution_id", "title", models.CharField(), via="task_list"),
        )  # fmt: skip
        .order_by("started_at", "id")
    )


def _column(model, key: str, column: str, output_field, via: str | None = None) -> RawSQL:
    """`column` of the `model` row whose primary key is the agent's `key` (or, with `via`, of
    the row that this row's foreign key `via` names)."""
    qn = connection.ops.quote_name
    agents, table = qn(BuildAgentInstance._meta.db_table), qn(model._meta.db_table)
    source, join = table, ""
    if via is not None:
        fk = model._meta.get_field(via)
        source = qn(fk.related_model._meta.db_table)
        join = f" JOIN {source} ON {source}.id = {table}.{qn(fk.column)}"
    sql = f"SELECT {source}.{qn(column)} FROM {table}{join} WHERE {table}.id = {agents}.{qn(key)}"
    return RawSQL(sql, (), output_field=output_field)


def run_audit(run: ExecutionRun) -> QuerySet[TaskStatusAudit]:
    """The run's task status audit, with each row's step key."""
    return TaskStatusAudit.objects.filter(execution=run).annotate(key=F("wave_task__key"))


def visible_sessions(runs: QuerySet[ExecutionRun]) -> QuerySet[ConcurrentExecutionSession]:
    """The sessions that hold at least one of these runs."""
    return ConcurrentExecutionSession.objects.filter(Exists(runs.filter(session=OuterRef("pk"))))


SUMMARY_IDS_MAX = 1000


def session_summary(session: ConcurrentExecutionSession, runs: QuerySet[ExecutionRun]) -> dict[str, Any]:
    """Seed 000 §7.6 over the session's runs among `runs` (the ones the user may see): its
    task lists, runs per status, waves, steps and agents. The session's own peaks are the
    session's (every run in it counts). Four queries (five past SUMMARY_IDS_MAX runs)."""
    mine = runs.filter(session=session).order_by("task_list__title", "task_list_id")
    # The runs themselves, when there are not too many: the counts below then read by a list
    # of ids instead of applying the team rule of `runs` again in each (a third of the time).
    rows = list(mine.values_list("pk", "task_list_id", "task_list__title", "status")[: SUMMARY_IDS_MAX + 1])
    if len(rows) <= SUMMARY_IDS_MAX:
        counted = [pk for pk, *_ in rows]
        groups = Counter((list_id, title, status) for _, list_id, title, status in rows).items()
    else:  # a long session: grouped in SQL, and the team rule applied in each count
        counted = mine
        per_group = mine.values_list("task_list_id", "task_list__title", "status").annotate(n=Count("pk"))
        groups = [((list_id, title, status), n) for list_id, title, status, n in per_group]
    by_status: dict[str, int] = {}
    lists: dict[int, str] = {}
    for (list_id, title, status), count in groups:  # in the order of the lists' titles
        by_status[status] = by_status.get(status, 0) + count
        lists[list_id] = title
    return {
        "session_id": session.pk,
        "status": session.status,
        "started_at": session.started_at,
        "completed_at": session.completed_at,
        "peak_concurrent_agents": session.peak_concurrent_agents,
        "peak_concurrent_tasks": session.peak_concurrent_tasks,
        "task_lists": [{"id": pk, "title": title} for pk, title in lists.items()],
        "execution_count": sum(by_status.values()),
        "executions": {**dict.fromkeys(RunStatus.values, 0), **by_status},
        "total_waves": ParallelExecutionWave.objects.filter(execution__in=counted).count(),
        "total_tasks": WaveTask.objects.filter(_is_step(), execution__in=counted).count(),
        "total_agents": BuildAgentInstance.objects.filter(execution__in=counted).count(),
    }
