"""Reads of definitions: lookup, the executable graph, estimated durations and the plan.

Nothing here reads runs: this app imports nothing from `executions` (which depends on it)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from waves import dag
from waves.models import Task, TaskDependency, TaskList


class TaskListNotFound(TaskList.DoesNotExist):
    pass


def task_list_get(id_or_name: str | int) -> TaskList:
    """A live list by title, else any list (archived too, for history) by id."""
    text = str(id_or_name).strip()
    if "\x00" in text:  # no title holds a NUL (PostgreSQL refuses one in a query)
        raise TaskListNotFound(f"no task list with id or name {text!r}")
    found = TaskList.objects.filter(title=text, archived_at__isnull=True).first()
    # An id: ASCII digits, no larger than the id column holds (PostgreSQL raises past it).
    if found is None and text.isascii() and text.isdigit() and int(text) < 2**63:
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


def task_estimates(task_list: TaskList) -> dict[str, float | None]:
    """Each executable task's `estimated_minutes` as the definition gives it (None: none)."""
    tasks = Task.objects.filter(task_list=task_list).exclude(kind=Task.Kind.GROUP)
    return dict(tasks.values_list("key", "estimated_minutes"))


def task_durations(task_list: TaskList) -> dict[str, float]:
    """Minutes per executable task from the definition alone: its estimate, else 1.

    The medians of past runs are not read here: runs belong to `executions`, which depends
    on this app, never the reverse. `executions.selectors.task_durations` adds them (the
    executor schedules with those)."""
    return {key: 1.0 if minutes is None else minutes for key, minutes in task_estimates(task_list).items()}


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
    unestimated: list[str]  # tasks with no duration given: counted as 1 minute each

    @property
    def saving(self) -> float:
        return self.serial_total - self.estimated_total


def task_list_plan(task_list: TaskList, durations: dict[str, float] | None = None) -> Plan:
    """The waves, critical path, width and estimated totals of a list. `durations` (minutes
    per task key) default to the definition's estimates; a task without one counts 1 minute."""
    nodes, edges = task_list_graph(task_list)
    if durations is None:
        estimates = task_estimates(task_list)
        durations = {key: minutes for key, minutes in estimates.items() if minutes is not None}
    unestimated = [key for key in nodes if durations.get(key) is None]
    durations = {key: durations.get(key, 1.0) for key in nodes}
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
        unestimated=unestimated,
    )
