"""Reads of definitions: lookup, the executable graph, durations and the plan."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from waves import dag
from waves.models import Task, TaskDependency, TaskList


class TaskListNotFound(TaskList.DoesNotExist):
    pass


def task_list_get(id_or_name: str | int) -> TaskList:
    """A live list by title, else any list (archived too, for history) by id."""
    text = str(id_or_name).strip()
    found = TaskList.objects.filter(title=text, archived_at__isnull=True).first()
    if found is None and text.isdigit():
        found = TaskList.objects.filter(pk=int(text)).first()
    if found is None:
        raise TaskListNotFound(f"no task list with id or name '{text}'")
    return found


def task_list_graph(task_list: TaskList) -> tuple[list[str], list[tuple[str, str]]]:
    """Executable task keys (in position order) and (upstream, downstream) key pairs.

    Groups (parallel blocks) are not nodes: an edge onto a group becomes edges onto each of
    its recursive children; a group's own dependencies are already on its children.
    """
    rows = list(Task.objects.filter(task_list=task_list).values_list("id", "key", "kind", "parent_id"))
    key_of = {pk: key for pk, key, _, _ in rows}
    groups = {pk for pk, _, kind, _ in rows if kind == Task.Kind.GROUP}
    children = defaultdict(list)
    for pk, _, _, parent in rows:
        if parent:
            children[parent].append(pk)

    def leaves(pk):
        if pk not in groups:
            return [key_of[pk]]
        return [leaf for c in children[pk] for leaf in leaves(c)]

    nodes = [key for pk, key, _, _ in rows if pk not in groups]
    deps = TaskDependency.objects.filter(task__task_list=task_list).values_list("task_id", "depends_on_id")
    edges = [(up, key_of[t]) for t, d in deps.order_by("id") if t not in groups for up in leaves(d)]
    return nodes, list(dict.fromkeys(edges))


HISTORY_RUNS = 5


def task_durations(task_list: TaskList) -> dict[str, float]:
    """Minutes per executable task: its estimate, else the median of its last 5 successful
    runs in lists of the same title (so history survives --replace), else 1."""
    from executions.models import WaveTask  # executions depends on waves, not the reverse

    tasks = Task.objects.filter(task_list=task_list).exclude(kind=Task.Kind.GROUP)
    out = {key: est for key, est in tasks.values_list("key", "estimated_minutes")}
    missing = [k for k, v in out.items() if v is None]
    history = defaultdict(list)
    if missing:
        rows = (
            WaveTask.objects.filter(
                status="succeeded",
                parent__isnull=True,
                task__task_list__title=task_list.title,
                task__key__in=missing,
                started_at__isnull=False,
                completed_at__isnull=False,
            )  # fmt: skip
            .order_by("-completed_at")
            .values_list("task__key", "started_at", "completed_at")
        )
        for key, start, end in rows.iterator():
            if len(history[key]) < HISTORY_RUNS:
                history[key].append((end - start).total_seconds() / 60)
    for key in missing:
        out[key] = statistics.median(history[key]) if history[key] else 1.0
    return out


@dataclass
class Plan:
    task_list: TaskList
    analysis: dag.Analysis
    durations: dict[str, float]  # minutes
    groups: list[list[str]]  # pipeline groups / parallel blocks in each wave, in order
    group_of: dict[str, str]
    titles: dict[str, str]
    max_parallelism: int
    estimated_total: float  # greedy schedule at max_parallelism, minutes
    serial_total: float  # one after another, minutes

    @property
    def saving(self) -> float:
        return self.serial_total - self.estimated_total


def task_list_plan(task_list: TaskList) -> Plan:
    nodes, edges = task_list_graph(task_list)
    durations = task_durations(task_list)
    analysis = dag.analyze(nodes, edges, durations)
    info = {
        key: (group, title)
        for key, group, title in Task.objects.filter(task_list=task_list).values_list(
            "key", "parallel_group", "title"
        )
    }
    group_of = {k: info[k][0] for k in nodes if info[k][0]}
    groups = [list(dict.fromkeys(group_of[k] for k in wave if k in group_of)) for wave in analysis.waves]
    return Plan(
        task_list=task_list,
        analysis=analysis,
        durations=durations,
        groups=groups,
        group_of=group_of,
        titles={k: info[k][1] for k in nodes},
        max_parallelism=task_list.max_parallelism,
        estimated_total=dag.estimate_makespan(analysis, durations, task_list.max_parallelism),
        serial_total=sum(durations.values()),
    )
