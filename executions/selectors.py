"""Read-only queries about runs (no writes, no status changes).

`run_status_view()` is what `run_status` prints (seed 003, "Status Display"): per wave,
per group (a pipeline group or a parallel block; an ungrouped task is a serial step of its
own), how many steps are done and which are running, failed or waiting for approval.
It reads a fixed number of queries whatever the size of the run.
"""

from __future__ import annotations

from typing import Any

from executions.models import ExecutionRun, ParallelExecutionWave, RunStatus, TaskStatus, WaveTask
from executions.services import iso
from waves.models import Task

# Succeeded or skipped steps count as done (seed 003 "n/m steps complete").
DONE = frozenset({TaskStatus.SUCCEEDED, TaskStatus.SKIPPED})
FAILED = frozenset({TaskStatus.FAILED, TaskStatus.LOST, TaskStatus.CANCELLED})
ACTIVE = frozenset({TaskStatus.RUNNING, TaskStatus.QUEUED, TaskStatus.WAITING_APPROVAL})


def run_get(run_id: int) -> ExecutionRun:
    """The run with this id (raises ExecutionRun.DoesNotExist)."""
    return ExecutionRun.objects.select_related("task_list").get(pk=run_id)


def run_latest() -> ExecutionRun | None:
    """The newest run, or None when there is none."""
    return ExecutionRun.objects.select_related("task_list").order_by("-id").first()


def _percent(done: int, total: int) -> int:
    # Floor, so 100% means every step is done (11/16 -> 68%, as in seed 003).
    return (100 * done) // total if total else 0


def _group_status(counts: dict[str, int], total: int) -> str:
    if total and counts["done"] == total:
        return "done"
    if counts["failed"]:
        return "failed"
    if counts["active"] or counts["done"]:
        return "in_progress"
    return "pending"


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
            "task__kind",
            "task__position",
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
    for wave in waves:
        wave_views[wave["id"]] = {
            "wave_number": wave["wave_number"],
            "status": wave["status"],
            "started_at": iso(wave["started_at"]),
            "completed_at": iso(wave["completed_at"]),
            "groups": [],
            "done": 0,
            "total": 0,
            "_groups": {},
        }

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
                "running": [],
                "failed": [],
                "waiting_approval": [],
                "_counts": {"done": 0, "failed": 0, "active": 0},
            }
            wave_view["_groups"][group_key] = group
            wave_view["groups"].append(group)
        status = row["status"]
        group["total"] += 1
        if status in DONE:
            group["done"] += 1
            group["_counts"]["done"] += 1
        elif status in FAILED:
            group["failed"].append(row["key"])
            group["_counts"]["failed"] += 1
        elif status in ACTIVE:
            group["_counts"]["active"] += 1
            if status == TaskStatus.RUNNING:
                group["running"].append(row["key"])
            elif status == TaskStatus.WAITING_APPROVAL:
                group["waiting_approval"].append(row["key"])

    total = done = 0
    out_waves = []
    for wave_view in wave_views.values():
        wave_view.pop("_groups")
        for group in wave_view["groups"]:
            group["status"] = _group_status(group.pop("_counts"), group["total"])
            group["percent"] = _percent(group["done"], group["total"])
            wave_view["done"] += group["done"]
            wave_view["total"] += group["total"]
        wave_view["percent"] = _percent(wave_view["done"], wave_view["total"])
        done += wave_view["done"]
        total += wave_view["total"]
        out_waves.append(wave_view)

    counts: dict[str, int] = {}
    for _owner, row in steps:
        counts[row["status"]] = counts.get(row["status"], 0) + 1

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
        "speedup": round(run.task_seconds / run.wall_seconds, 2)
        if run.wall_seconds and run.task_seconds is not None
        else None,
        "peak_concurrency": run.peak_concurrency,
        "cancel_requested": run.cancel_requested_at is not None,
        "error": run.error,
        "waves": out_waves,
        "steps": counts,
        "done": done,
        "total": total,
        "percent": _percent(done, total),
    }
