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
from collections import defaultdict
from typing import Any

from django.db.models import F, Window
from django.db.models.functions import RowNumber

from executions.errors import NotFound
from executions.models import ExecutionRun, ParallelExecutionWave, RunStatus, TaskStatus, WaveTask
from executions.records import iso
from waves.models import Task, TaskList
from waves.selectors import task_estimates

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
    if not run.wall_seconds or not run.task_seconds:
        return None
    working = run.wall_seconds - (run.gate_wait_seconds or 0.0)
    if working <= 0:
        return None
    value = round(run.task_seconds / working, 2)
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
