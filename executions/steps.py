"""Loading a run for the engine: its rows, and the scheduler's view of its steps.

Reads the task list's definition (tasks, dependencies, parallel blocks) and the run's wave
tasks in a fixed number of queries, and turns them into the plain `StepDef`/`GroupDef`
values the scheduler works on, with critical-path priorities from the steps' durations.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from executions.models import ExecutionRun, WaveTask
from executions.resolve import ENV_VALUE_MAX_BYTES, ResolveError, render_command, resolve_env, resolve_value
from executions.runners.base import LaunchSpec
from executions.scheduler import GroupDef, StepDef
from executions.selectors import task_durations
from waves import dag, selectors
from waves.models import Task, TaskDependency


def safe(key: str) -> str:
    """A step key as a file and instance-id fragment."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


@dataclass(eq=False)
class Node:
    """What the engine keeps of a step beside the scheduler: its row and its attempt."""

    wt: WaveTask
    task: Task
    handle: str | None = None
    agent: Any = None
    started: float = 0.0
    # An attempt a queueing runner holds and has not started: (its iteration, when it was sent).
    waiting: tuple[int, datetime] | None = None
    seconds: float = 0.0  # time spent running, all attempts
    instances: list[str] = field(default_factory=list)


@dataclass
class Loaded:
    rows: dict[str, tuple[WaveTask, Task]]  # key -> (wave task, its task), steps before instances
    steps: list[tuple[StepDef, str, Any]]  # (definition, status, outputs)
    groups: list[GroupDef]
    edges: list[tuple[str, str]]
    durations: dict[str, float]  # minutes


def load_steps(run: ExecutionRun) -> Loaded:
    tl = run.task_list
    tasks = {t.pk: t for t in tl.tasks.select_related("template")}
    by_key = {t.key: t for t in tasks.values()}
    deps: dict[str, list[str]] = defaultdict(list)
    for task_key, dep_key in TaskDependency.objects.filter(task__task_list=tl).values_list(
        "task__key", "depends_on__key"
    ):
        deps[task_key].append(dep_key)
    nodes, edges = selectors.task_list_graph(tl)
    if run.simulate_scale:
        durations = {k: by_key[k].estimated_minutes or 1.0 for k in nodes}
    else:
        durations = task_durations(tl)
    remaining = dag.analyze(nodes, edges, durations).remaining
    order = {k: i for i, k in enumerate(nodes)}
    fifo = run.schedule == "fifo"

    def enclosing(task: Task) -> tuple[str, ...]:
        out, parent_id = [], task.parent_id
        while parent_id:
            out.append(tasks[parent_id].key)
            parent_id = tasks[parent_id].parent_id
        return tuple(out)

    children: dict[int, list[str]] = defaultdict(list)
    for t in tasks.values():
        if t.parent_id:
            children[t.parent_id].append(t.key)
    groups = [
        GroupDef(
            key=t.key,
            children=tuple(children[t.pk]),
            join_policy=t.join_policy,
            max_parallelism=t.max_parallelism,
            parent=tasks[t.parent_id].key if t.parent_id else None,
        )
        for t in tasks.values()
        if t.kind == Task.Kind.GROUP
    ]
    wave_tasks = sorted(
        WaveTask.objects.filter(execution=run).select_related("wave"), key=lambda wt: (wt.parent_id is not None, wt.pk)
    )
    rows, steps = {}, []
    for wt in wave_tasks:
        task = tasks[wt.task_id]
        wt.task = task
        top = wt.parent_id is None
        base = wt.key if top else wt.key.rsplit("[", 1)[0]
        d = StepDef(
            key=wt.key,
            deps=tuple(deps.get(task.key, ())) if top else (),
            groups=enclosing(task),
            template=task.template_id,
            template_limit=task.template.max_concurrency,
            join_policy=task.join_policy,
            condition=task.condition if top else "",
            approval=task.approval and top,
            for_each=task.for_each if top else None,
            repeat=task.repeat,
            retries=task.retries,
            max_parallelism=task.max_parallelism if top else None,
            priority=0.0 if fifo else remaining.get(base, 0.0),
            order=order.get(base, 0) * 100_000 + (wt.item_index or 0),
            parent=None if top else base,
            item=wt.item,
        )
        rows[wt.key] = (wt, task)
        steps.append((d, wt.status, wt.outputs))
    return Loaded(rows=rows, steps=steps, groups=groups, edges=edges, durations=durations)


def launch_spec(run: ExecutionRun, node: Node, ctx: dict, iteration: int, durations: dict) -> LaunchSpec:
    """What the runner needs to start the node's next attempt, every value resolved and
    bounded. Raises ResolveError when its command, env or inputs cannot be built."""
    task, key = node.task, node.wt.key
    if run.simulate_scale:
        minutes = task.estimated_minutes or durations.get(key.split("[", 1)[0], 1.0)
        command = f"sleep {minutes * run.simulate_scale:.3f}"
    else:
        command = render_command(task.command, ctx)
    env = resolve_env(task.env or {}, ctx)
    env.update(
        TIDEWATCH_RUN_ID=str(run.pk),
        TIDEWATCH_STEP=key,
        TIDEWATCH_ATTEMPT=str(node.wt.attempt),
        TIDEWATCH_ITERATION=str(iteration),
    )
    if node.wt.parent_id or "item" in ctx:
        item = json.dumps(ctx.get("item"))
        if len(item.encode()) > ENV_VALUE_MAX_BYTES:
            raise ResolveError(f"the item ({len(item)} characters) is too large for $TIDEWATCH_ITEM")
        env["TIDEWATCH_ITEM"] = item
    return LaunchSpec(
        run_id=run.pk,
        key=key,
        attempt=node.wt.attempt,
        command=command,
        inputs=resolve_value(task.inputs or {}, ctx),
        env=env,
        timeout_s=task.timeout_s,
        queue=task.template.queue or None,
    )
