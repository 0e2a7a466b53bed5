"""The parallel executor.

`run_create()` lays a run out (waves from the DAG, one wave task per step, carried-over
results for a resume); `Engine(run, runner).execute()` runs it. Scheduling is
DAG-greedy: a step starts as soon as its own dependencies are done and a slot is free,
the ready step with the longest remaining path first. One thread owns the loop: it asks
the runner for output and exits, records them, decides what became ready, launches.
Every status change goes through `executions.services.transition()`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from executions import services
from executions.capture import Captured
from executions.models import (
    AgentStatus,
    Backend,
    BuildAgentInstance,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    WaveStatus,
    WaveTask,
)
from executions.resolve import ResolveError, evaluate, render_command, resolve_value
from executions.runners.base import Finished, LaunchSpec, Output, Runner
from executions.signals import output_captured
from waves import dag, selectors
from waves.models import JoinPolicy, Task, TaskDependency, TaskList

S = TaskStatus
TERMINAL = S.terminal()
CANCEL_POLL_SECONDS = 0.2
APPROVAL_POLL_SECONDS = 0.3


class EngineError(Exception):
    """A run that cannot start; the message says why."""


def _safe(key: str) -> str:
    """A step key as a file and instance-id fragment."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


# --- laying a run out --------------------------------------------------------------------------


def run_create(
    task_list: TaskList,
    *,
    max_parallelism: int | None = None,
    backend: str = Backend.LOCAL,
    simulate: float | None = None,
    schedule: str = "critical_path",
    resume_of: ExecutionRun | None = None,
) -> ExecutionRun:
    """Create the run, its waves and its wave tasks (each audited from no status)."""
    tasks = list(task_list.tasks.select_related("template", "parent"))
    if not simulate:
        missing = [t.key for t in tasks if t.kind != Task.Kind.GROUP and not t.command.strip()]
        if missing:
            raise EngineError(
                f"step(s) {', '.join(missing[:5])} have no command: import with --command-template or run with --simulate"
            )
    nodes, edges = selectors.task_list_graph(task_list)
    analysis = dag.analyze(nodes, edges)
    old: dict[str, WaveTask] = {}
    old_instances: dict[str, list[WaveTask]] = defaultdict(list)  # for_each step key -> its instances
    if resume_of is not None:
        for wt in WaveTask.objects.filter(execution=resume_of).order_by("id"):
            old[wt.key] = wt
            if wt.parent_id:
                old_instances[wt.key.rsplit("[", 1)[0]].append(wt)
    with transaction.atomic():
        run = ExecutionRun.objects.create(
            task_list=task_list,
            backend=backend,
            max_parallelism=max_parallelism
            or task_list.max_parallelism
            or settings.TIDEWATCH["DEFAULT_MAX_PARALLELISM"],
            simulate_scale=simulate,
            schedule=schedule,
            resumed_from=resume_of,
            attempt=resume_of.attempt + 1 if resume_of else 1,
        )
        waves = ParallelExecutionWave.objects.bulk_create(
            [
                ParallelExecutionWave(execution=run, wave_number=n, max_parallelism=run.max_parallelism)
                for n in range(1, len(analysis.waves) + 1)
            ]
        )
        by_key = {t.key: t for t in tasks}
        rows, instance_rows = [], []
        for number, keys in enumerate(analysis.waves):
            for key in keys:
                row = _carry(
                    WaveTask(wave=waves[number], task=by_key[key], execution=run, key=key), old.get(key)
                )
                rows.append(row)
                for old_wt in old_instances.get(key, ()):
                    instance_rows.append(
                        _carry(
                            WaveTask(
                                wave=waves[number],
                                task=by_key[key],
                                execution=run,
                                key=old_wt.key,
                                item_index=old_wt.item_index,
                                item=old_wt.item,
                            ),
                            old_wt,
                        )
                    )
        reason = f"carried over from run {resume_of.pk}" if resume_of else None
        created = services.wave_tasks_create(rows, reason=reason)
        parents = {wt.key: wt for wt in created}
        for row in instance_rows:
            row.parent = parents[row.key.rsplit("[", 1)[0]]
        services.wave_tasks_create(instance_rows, reason=reason)
    return run


def _carry(row: WaveTask, old: WaveTask | None) -> WaveTask:
    """A resume keeps what succeeded (never re-run) and approvals already given."""
    if old is None:
        return row
    if old.status == S.SUCCEEDED:
        row.status = S.SUCCEEDED
        row.outputs, row.exit_code, row.attempt = old.outputs, old.exit_code, old.attempt
        row.started_at, row.completed_at = old.started_at, old.completed_at
    if old.approval_decision == "approved":
        row.approval_decision, row.approved_at, row.approved_by = "approved", old.approved_at, old.approved_by
    return row


# --- running it ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    wt: WaveTask
    task: Task
    deps: list[str]
    groups: list[str]  # enclosing parallel blocks, innermost first
    priority: float
    order: int
    parent: str | None = None  # the for_each step of an instance
    instances: list[str] | None = None  # the instances of an expanded for_each step
    iteration: int = 1
    tries: int = 0
    handle: str | None = None
    agent: BuildAgentInstance | None = None
    started: float = 0.0
    seconds: float = 0.0  # time spent running, all attempts
    not_before: float = 0.0


@dataclass(eq=False)
class Group:
    task: Task
    children: list[str]
    status: str | None = None


@dataclass
class Summary:
    run_id: int
    status: str
    wall_seconds: float
    task_seconds: float
    speedup: float
    critical_path_seconds: float
    waves: int
    tasks: dict
    peak_concurrency: int

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "wall_seconds": round(self.wall_seconds, 3),
            "task_seconds": round(self.task_seconds, 3),
            "speedup": round(self.speedup, 2),
            "critical_path_seconds": round(self.critical_path_seconds, 3),
            "waves": self.waves,
            "tasks": self.tasks,
            "peak_concurrency": self.peak_concurrency,
        }


@dataclass
class _WaveState:
    wave: ParallelExecutionWave
    keys: set = field(default_factory=set)
    done: int = 0


class Engine:
    def __init__(self, run: ExecutionRun, runner: Runner, *, progress=None):
        self.run = run
        self.runner = runner
        self.progress = progress
        self.stop_reason: str | None = None  # set by a signal handler: cancel
        self.cancelling = False
        self.cancelled_by: str | None = None
        self.seq = itertools.count(1)
        self.captured: list[Captured] = []
        # Work of one turn of the loop: settled by _flush_batches(), written by _record_finished().
        self.to_queue: dict[str, Node] = {}  # insertion-ordered; a step wakes once
        self.succeeded: list[Node] = []
        self.to_record: list[tuple[list[Node], object]] = []  # settled successes, written at turn end
        self.agents_done: list[tuple] = []  # (agent, status, exit code, when)
        self.waves_done: list[tuple[_WaveState, object]] = []
        self.ready: list = []  # heap of (-priority, order, key): ready, waiting for a slot
        self.unqueued: list[Node] = []  # ready this turn, still pending until _dispatch
        self.delayed: list[Node] = []
        self.waiting: dict[int, Node] = {}  # wave task pk -> gate waiting for approval
        self.by_handle: dict[str, Node] = {}
        self.running_by_template: dict[int, int] = defaultdict(int)
        self.running_by_group: dict[str, int] = defaultdict(int)
        self.peak = 0
        self.task_seconds = 0.0
        self.next_heartbeat = self.next_cancel_check = self.next_approval_check = 0.0
        self.t_end: float | None = None
        # One directory per attempt under the run's: $TIDEWATCH_OUTPUT, inputs, events.
        self.work_root = Path(settings.TIDEWATCH["WORK_DIR"]) / f"run-{run.pk}"
        self.work_root.mkdir(parents=True, exist_ok=True)
        self._load()

    # --- loading -----------------------------------------------------------------------------

    def _load(self) -> None:
        tl = self.run.task_list
        tasks = {t.pk: t for t in tl.tasks.select_related("template")}
        by_key = {t.key: t for t in tasks.values()}
        deps: dict[str, list[str]] = defaultdict(list)
        for task_key, dep_key in TaskDependency.objects.filter(task__task_list=tl).values_list(
            "task__key", "depends_on__key"
        ):
            deps[task_key].append(dep_key)
        nodes, edges = selectors.task_list_graph(tl)
        self._edges = edges
        durations = (
            selectors.task_durations(tl)
            if not self.run.simulate_scale
            else {k: by_key[k].estimated_minutes or 1.0 for k in nodes}
        )
        self.analysis = dag.analyze(nodes, edges, durations)
        self.durations = durations
        order = {k: i for i, k in enumerate(nodes)}
        fifo = self.run.schedule == "fifo"

        def enclosing(task: Task) -> list[str]:
            out, parent_id = [], task.parent_id
            while parent_id:
                out.append(tasks[parent_id].key)
                parent_id = tasks[parent_id].parent_id
            return out

        children: dict[int, list[str]] = defaultdict(list)
        for t in tasks.values():
            if t.parent_id:
                children[t.parent_id].append(t.key)
        self.groups = {t.key: Group(t, children[t.pk]) for t in tasks.values() if t.kind == Task.Kind.GROUP}
        self.nodes: dict[str, Node] = {}
        self.waves: dict[int, _WaveState] = {}
        wave_tasks = list(WaveTask.objects.filter(execution=self.run).select_related("wave").order_by("id"))
        for wt in wave_tasks:
            task = tasks[wt.task_id]
            wt.task = task
            self.waves.setdefault(wt.wave_id, _WaveState(wt.wave)).keys.add(wt.key)
            base = wt.key if wt.parent_id is None else wt.key.rsplit("[", 1)[0]
            self.nodes[wt.key] = Node(
                wt=wt,
                task=task,
                deps=deps.get(task.key, []) if wt.parent_id is None else [],
                groups=enclosing(task),
                priority=0.0 if fifo else self.analysis.remaining.get(base, 0.0),
                order=order.get(base, 0) * 100000 + (wt.item_index or 0),
                parent=base if wt.parent_id else None,
            )
        for node in self.nodes.values():
            if node.parent:
                parent = self.nodes[node.parent]
                if parent.instances is None:
                    parent.instances = []
                parent.instances.append(node.wt.key)
        # Steps not final yet; _settled() is the one place a step becomes final.
        self.open = sum(1 for n in self.nodes.values() if n.wt.status not in TERMINAL)
        self.dependents: dict[str, list[str]] = defaultdict(list)
        for key, node in self.nodes.items():
            for dep in node.deps:
                self.dependents[dep].append(key)
        self.steps_ctx = {
            key: {"outputs": n.wt.outputs, "status": n.wt.status}
            for key, n in self.nodes.items()
            if not n.parent
        }
        for wave_state in self.waves.values():
            wave_state.done = sum(1 for k in wave_state.keys if self.nodes[k].wt.status in TERMINAL)
        for key in self.groups:
            self._group_settle(key)

    # --- the loop ------------------------------------------------------------------------------

    def execute(self) -> Summary:
        now = timezone.now()
        host, pid = services.executor_identity()
        self.t0 = time.monotonic()
        with transaction.atomic():
            services.run_update(
                self.run,
                status=RunStatus.RUNNING,
                started_at=now,
                executor_hostname=host,
                executor_pid=pid,
                executor_heartbeat=now,
                now=now,
            )
            session = services.session_join(self.run, now)
            services.session_count(session.pk, waves=len(self.waves), tasks=len(self.nodes))
        self.next_heartbeat = self.t0 + settings.TIDEWATCH["HEARTBEAT_SECONDS"]  # just written
        try:
            events = None
            while True:
                # One transaction per turn: what came back, what it made ready, and the
                # launches that follow, committed together (services.batch() gathers the
                # event-log rows and session counters of the turn into one write each).
                with transaction.atomic(), services.batch():
                    if events is None:
                        self._decide_startable()
                    for event in events or ():
                        if isinstance(event, Output):
                            self._output(event)
                        else:
                            self._finished(event)
                    self._flush_batches()  # before _tick: a cancel must see every success
                    self._tick()
                    self._flush_batches()
                    self._dispatch()
                    self._record_finished()
                    self._flush()
                if not self._unfinished():
                    # The run ends with its last record; stopping the watchdog is not part of it.
                    self.t_end = time.monotonic()
                    break
                timeout = 0.05 if self.by_handle or self.delayed or self.waiting else 0.2
                events = self.runner.poll(timeout)
                if self.progress:
                    self.progress(self)
        finally:
            self.runner.close()
        return self._close()

    def _decide_startable(self) -> None:
        """At the start: decide every top-level step whose dependencies are settled."""
        for node in list(self.nodes.values()):
            if node.wt.status in (S.PENDING, S.QUEUED, S.WAITING_APPROVAL) and not node.parent:
                if all(self._outcome(d) is not None for d in node.deps):
                    self._decide(node)

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: cancel at the next turn of the loop."""
        self.stop_reason = reason

    def _unfinished(self) -> bool:
        return bool(self.by_handle) or self.open > 0

    def _full(self) -> bool:
        return len(self.by_handle) >= self.run.max_parallelism

    # --- deciding what is ready ------------------------------------------------------------------

    def _outcome(self, key: str) -> str | None:
        """The status of a dependency once it is settled, else None."""
        if key in self.groups:
            return self.groups[key].status
        status = self.nodes[key].wt.status
        return status if status in TERMINAL else None

    def _decide(self, node: Node) -> None:
        """All dependencies of a pending step are settled: run it, skip it, or gate it."""
        outcomes = {d: self._outcome(d) for d in node.deps}
        policy = node.task.join_policy
        if self.cancelling:
            return
        if policy == JoinPolicy.ALL:
            bad = [d for d, s in outcomes.items() if s != S.SUCCEEDED]
            if bad:
                return self._settle(node, S.SKIPPED, reason=f"dependency {bad[0]} {outcomes[bad[0]]}")
        elif policy == JoinPolicy.ANY and outcomes and S.SUCCEEDED not in outcomes.values():
            return self._settle(node, S.SKIPPED, reason="no dependency succeeded")
        if node.task.condition:
            try:
                if not evaluate(node.task.condition, self._context(node)):
                    return self._settle(node, S.SKIPPED, reason="condition false")
            except ResolveError as exc:
                return self._settle(node, S.FAILED, reason="condition error", error=str(exc))
        if node.task.approval and node.wt.status != S.QUEUED:
            decision = (
                WaveTask.objects.filter(pk=node.wt.pk).values_list("approval_decision", "approved_by").get()
            )
            if decision[0] == "rejected":
                return self._settle(
                    node, S.FAILED, reason="rejected", error=f"rejected by {decision[1]}", actor=decision[1]
                )
            if decision[0] != "approved":
                if node.wt.status != S.WAITING_APPROVAL:
                    services.transition(node.wt, S.WAITING_APPROVAL, reason="waiting for approval")
                self.waiting[node.wt.pk] = node
                return
        if node.task.for_each is not None and not node.parent:
            return self._expand(node)
        self._queue(node)

    def _queue(self, node: Node, reason: str | None = None) -> None:
        """Make a step ready. Without a reason it joins this turn's batch (see _flush_batches
        and _dispatch); a retry is recorded as queued at once, with its reason."""
        if reason is None:
            if node.wt.key not in self.to_queue:
                self.to_queue[node.wt.key] = node
            return
        services.transition(node.wt, S.QUEUED, reason=reason)
        heapq.heappush(self.ready, (-node.priority, node.order, node.wt.key))

    def _flush_batches(self) -> None:
        """Settle this turn's successes and make ready what they woke.

        Successes count at once in memory, but their rows (and the closed agents') are
        written by _record_finished after _dispatch, in the same transaction: the steps
        they unblock start first. A ready step stays pending here: _dispatch launches what
        fits (pending -> running) and records the rest as queued, waiting for a slot."""
        if self.succeeded:
            now = timezone.now()
            nodes, self.succeeded = self.succeeded, []
            for node in nodes:
                node.wt.status, node.wt.error, node.wt.completed_at = S.SUCCEEDED, "", now
            self.to_record.append((nodes, now))
            for node in nodes:
                self._settled(node, now)
        if self.to_queue:
            nodes, self.to_queue = list(self.to_queue.values()), {}
            for node in nodes:
                heapq.heappush(self.ready, (-node.priority, node.order, node.wt.key))
            self.unqueued += [n for n in nodes if n.wt.status == S.PENDING]

    def _record_finished(self) -> None:
        """Write the agents closed, the successes settled and the waves completed in this
        turn (see _flush_batches)."""
        if self.agents_done:
            done, self.agents_done = self.agents_done, []
            services.agents_finish([d[:3] for d in done], min(d[3] for d in done))
        for nodes, now in self.to_record:
            services.transition(
                [n.wt for n in nodes],
                S.SUCCEEDED,
                now=now,
                error="",
                completed_at=now,
                own_fields=["outputs", "exit_code"],
            )
        self.to_record = []
        for state, now in self.waves_done:
            self._wave_completed(state, now)
        self.waves_done = []

    def _expand(self, node: Node) -> None:
        """for_each: one instance per item, in the step's wave, created at run time."""
        if node.instances is None:
            try:
                items = node.task.for_each
                if isinstance(items, str):
                    items = resolve_value(items, self._context(node))
            except ResolveError as exc:
                return self._settle(node, S.FAILED, reason="for_each error", error=str(exc))
            if not isinstance(items, list):
                return self._settle(
                    node,
                    S.FAILED,
                    reason="for_each error",
                    error=f"for_each of {node.wt.key} must be a list, got {type(items).__name__}: {json.dumps(items)[:200]}",
                )
            rows = [
                WaveTask(
                    wave=node.wt.wave,
                    task=node.task,
                    execution=self.run,
                    key=f"{node.wt.key}[{i}]",
                    parent=node.wt,
                    item_index=i,
                    item=item,
                )
                for i, item in enumerate(items)
            ]
            created = services.wave_tasks_create(rows, reason=f"for_each instance of {node.wt.key}")
            services.session_count(self.run.session_id, tasks=len(created))
            node.instances = []
            state = self.waves[node.wt.wave_id]
            for wt in created:
                wt.task = node.task
                wt.wave = node.wt.wave
                self.nodes[wt.key] = Node(
                    wt=wt,
                    task=node.task,
                    deps=[],
                    groups=node.groups,
                    priority=node.priority,
                    order=node.order + wt.item_index,
                    parent=node.wt.key,
                )
                node.instances.append(wt.key)
                state.keys.add(wt.key)
            self.open += len(created)
        now = timezone.now()
        services.transition(
            node.wt, S.RUNNING, reason=f"for_each over {len(node.instances)} items", now=now, started_at=now
        )
        self._wave_started(node, now)
        for key in node.instances:
            inst = self.nodes[key]
            if inst.wt.status not in TERMINAL:
                self._queue(inst)
        self._fanout_settle(node)

    # --- launching ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.cancelling or self.stop_reason:
            return
        now_mono = time.monotonic()
        for node in [n for n in self.delayed if n.not_before <= now_mono]:
            self.delayed.remove(node)
            heapq.heappush(self.ready, (-node.priority, node.order, node.wt.key))
        blocked, launch = [], []
        free = self.run.max_parallelism - len(self.by_handle)
        while self.ready and len(launch) < free:
            entry = heapq.heappop(self.ready)
            node = self.nodes[entry[2]]
            if node.wt.status not in (S.QUEUED, S.PENDING) or node in launch:
                continue
            if self._limited(node):
                blocked.append(entry)
                continue
            self._reserve(node, +1)
            launch.append(node)
        for entry in blocked:
            heapq.heappush(self.ready, entry)
        if launch:
            self._launch(launch)
        if self.unqueued:
            waiting, self.unqueued = self.unqueued, []
            services.transition([n.wt for n in waiting if n.wt.status == S.PENDING], S.QUEUED)

    def _limited(self, node: Node) -> bool:
        limit = node.task.template.max_concurrency
        if limit and self.running_by_template[node.task.template_id] >= limit:
            return True
        scopes = [(g, self.groups[g].task.max_parallelism) for g in node.groups]
        if node.parent:
            scopes.append((node.parent, node.task.max_parallelism))
        return any(limit and self.running_by_group[g] >= limit for g, limit in scopes)

    def _reserve(self, node: Node, delta: int) -> None:
        self.running_by_template[node.task.template_id] += delta
        for g in node.groups + ([node.parent] if node.parent else []):
            self.running_by_group[g] += delta

    def _launch(self, nodes: list[Node]) -> None:
        now = timezone.now()
        specs = []
        for node in nodes:
            node.wt.attempt += 1
            node.tries += 1
            try:
                specs.append((node, self._spec(node)))
            except ResolveError as exc:
                self._reserve(node, -1)
                self._settle(node, S.FAILED, reason="input error", error=str(exc))
        # Every spec is ready before the first start, so steps launched together start
        # together (and, alike, end together: one turn records them all).
        agents, started = [], []
        for node, spec in specs:
            start = self.runner.launch(spec)
            node.handle, node.started = spec.handle, time.monotonic()
            self.by_handle[spec.handle] = node
            agents.append(
                BuildAgentInstance(
                    instance_id=f"r{self.run.pk}-{_safe(node.wt.key)}-a{node.wt.attempt}",
                    execution=self.run,
                    wave_id=node.wt.wave_id,
                    task=node.task,
                    wave_task=node.wt,
                    attempt=node.wt.attempt,
                    started_at=now,
                    last_heartbeat=now,
                    hostname=start.hostname,
                    pid=start.pid,
                )
            )
            started.append((node, start))
        batches: dict[tuple[str, int], list[WaveTask]] = defaultdict(list)
        for agent, (node, _) in zip(services.agents_start(agents, now), started, strict=True):
            node.agent = agent
            label = f"iteration {node.iteration}, " if node.task.repeat else ""
            batches[(f"{label}attempt {node.wt.attempt}", node.wt.attempt)].append(node.wt)
        for (reason, attempt), wave_tasks in batches.items():
            services.transition(
                wave_tasks,
                S.RUNNING,
                now=now,
                reason=reason,
                started_at=now,
                attempt=attempt,
                completed_at=None,
                exit_code=None,
            )
        for node, start in started:
            self._wave_started(node, now)
            self._system(node, f"attempt {node.wt.attempt} started: pid {start.pid} on {start.hostname}")
        self.peak = max(self.peak, len(self.by_handle))
        if self.run.peak_concurrency < self.peak:
            self.run.peak_concurrency = self.peak
            ExecutionRun.objects.filter(pk=self.run.pk).update(peak_concurrency=self.peak)

    def _spec(self, node: Node) -> LaunchSpec:
        ctx = self._context(node)
        task = node.task
        if self.run.simulate_scale:
            seconds = (task.estimated_minutes or self.durations.get(task.key, 1.0)) * self.run.simulate_scale
            command = f"sleep {seconds:.3f}"
        else:
            command = render_command(task.command, ctx)
        inputs = resolve_value(task.inputs or {}, ctx)
        extra_env = {
            k: str(v) if isinstance(v, str) else json.dumps(v)
            for k, v in resolve_value(task.env or {}, ctx).items()
        }
        work_dir = self.work_root / f"{_safe(node.wt.key)}.attempt-{node.wt.attempt}"
        work_dir.mkdir(exist_ok=True)
        (work_dir / "inputs.json").write_text(json.dumps(inputs))
        env = {**os.environ, **extra_env}
        for name, value in inputs.items():
            env[f"TIDEWATCH_INPUT_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"] = (
                value if isinstance(value, str) else json.dumps(value)
            )
        env.update(
            TIDEWATCH_RUN_ID=str(self.run.pk),
            TIDEWATCH_STEP=node.wt.key,
            TIDEWATCH_ATTEMPT=str(node.wt.attempt),
            TIDEWATCH_ITERATION=str(node.iteration),
            TIDEWATCH_OUTPUT=str(work_dir / "output.json"),
            TIDEWATCH_INPUTS=str(work_dir / "inputs.json"),
            TIDEWATCH_EVENTS=str(work_dir / "events.jsonl"),
        )
        if node.parent:
            env["TIDEWATCH_ITEM"] = json.dumps(node.wt.item)
        return LaunchSpec(f"{node.wt.key}#{node.wt.attempt}", command, env, work_dir, task.timeout_s)

    def _context(self, node: Node) -> dict:
        ctx = {"steps": self.steps_ctx, "iteration": node.iteration}
        if node.parent:
            ctx["item"] = node.wt.item
        return ctx

    # --- what comes back ---------------------------------------------------------------------------

    def _output(self, event: Output) -> None:
        node = self.by_handle.get(event.handle)
        if node:
            self._capture(node, event.stream, event.text)

    def _finished(self, event: Finished) -> None:
        node = self.by_handle.pop(event.handle)
        self._reserve(node, -1)
        now = timezone.now()
        seconds = time.monotonic() - node.started
        self.task_seconds += seconds
        node.seconds += seconds
        for line in event.events:
            self._capture(node, "event", line)
        error = None
        # Killed on purpose: terminated by us, or by the signal that is stopping the run (a
        # task started at that very moment may not have left the executor's process group).
        if event.exit_code != 0 and (
            event.cancelled or (event.exit_code < 0 and (self.stop_reason or self.cancelling))
        ):
            status = AgentStatus.CANCELLED
        else:
            if event.timed_out:
                error = f"timed out after {node.task.timeout_s}s"
            elif event.exit_code != 0:
                error = f"exit code {event.exit_code}"
            elif event.output_error:
                error = event.output_error
            status = AgentStatus.FAILED if error else AgentStatus.SUCCEEDED
        self.agents_done.append((node.agent, status, event.exit_code, now))
        self._system(
            node, f"attempt {node.wt.attempt} {'failed: ' + error if error else status} after {seconds:.2f}s"
        )
        fields = {"exit_code": event.exit_code, "completed_at": now}
        if status == AgentStatus.CANCELLED:
            return self._settle(
                node,
                S.CANCELLED,
                reason=f"cancelled by {self.cancelled_by or self.stop_reason or 'signal'}",
                actor=self.cancelled_by,
                **fields,
            )
        if error:
            if node.tries <= node.task.retries and not self.cancelling:
                return self._queue(node, reason=f"retry {node.tries}/{node.task.retries} after {error}")
            return self._settle(node, S.FAILED, reason=error, error=error, **fields)
        outputs = event.outputs or {}
        repeat = node.task.repeat
        if repeat:
            self.steps_ctx[node.wt.key] = {"outputs": outputs, "status": S.RUNNING}
            try:
                met = evaluate(repeat["until"], self._context(node))
            except ResolveError as exc:
                return self._settle(
                    node, S.FAILED, reason="until error", error=str(exc), outputs=outputs, **fields
                )
            if not met:
                limit = repeat.get("max_iterations", 10)
                if node.iteration >= limit:
                    msg = f"until not met after {limit} iterations"
                    return self._settle(node, S.FAILED, reason=msg, error=msg, outputs=outputs, **fields)
                node.iteration += 1
                node.tries = 0
                node.not_before = time.monotonic() + float(repeat.get("delay", 0) or 0)
                services.transition(
                    node.wt,
                    S.QUEUED,
                    reason=f"repeat: until not met, iteration {node.iteration} next",
                    outputs=outputs,
                )
                self.delayed.append(node)
                return
        node.wt.outputs, node.wt.exit_code = outputs, event.exit_code
        self.succeeded.append(node)  # settled by _flush_batches, written by _record_finished

    # --- settling and propagation --------------------------------------------------------------

    def _settle(
        self, node: Node, status: str, *, reason: str | None, actor: str | None = None, **fields
    ) -> None:
        """A step reached a final status: record it, then wake whatever waited on it."""
        now = timezone.now()
        fields.setdefault("completed_at", now)
        services.transition(node.wt, status, reason=reason, actor=actor, now=now, **fields)
        self._settled(node, now)

    def _settled(self, node: Node, now) -> None:
        """Wake whatever waited on a step whose final status is recorded."""
        status = node.wt.status
        self.open -= 1
        self.waiting.pop(node.wt.pk, None)
        if node.parent:
            self._fanout_settle(self.nodes[node.parent])
        else:
            self.steps_ctx[node.wt.key] = {"outputs": node.wt.outputs, "status": status}
            self._wake(node.wt.key)
            if node.task.parent_id:
                self._group_settle(node.groups[0], wake=True)
        state = self.waves[node.wt.wave_id]
        state.done += 1
        if state.done == len(state.keys):
            self.waves_done.append((state, now))  # written by _record_finished

    def _wake(self, key: str) -> None:
        for dep_key in self.dependents.get(key, ()):
            node = self.nodes[dep_key]
            if (
                node.wt.status == S.PENDING
                and dep_key not in self.to_queue
                and all(self._outcome(d) is not None for d in node.deps)
            ):
                self._decide(node)

    def _group_settle(self, key: str, wake: bool = False) -> None:
        group = self.groups[key]
        if group.status is not None:
            return
        outcomes = [self._outcome(c) for c in group.children]
        if any(o is None for o in outcomes):
            return
        policy = group.task.join_policy
        ok = (
            all(o == S.SUCCEEDED for o in outcomes)
            if policy == JoinPolicy.ALL
            else S.SUCCEEDED in outcomes
            if policy == JoinPolicy.ANY
            else True
        )
        group.status = S.SUCCEEDED if ok else S.FAILED
        self.steps_ctx[key] = {
            "outputs": {c: (self.steps_ctx.get(c) or {}).get("outputs") for c in group.children},
            "status": group.status,
        }
        if wake:
            self._wake(key)
            if group.task.parent_id:
                parent_key = next(g for g, grp in self.groups.items() if grp.task.pk == group.task.parent_id)
                self._group_settle(parent_key, wake=True)

    def _fanout_settle(self, node: Node) -> None:
        """A for_each step ends when all its instances have; its outputs are theirs, in order."""
        instances = [self.nodes[k] for k in node.instances]
        if any(i.wt.status not in TERMINAL for i in instances) or node.wt.status in TERMINAL:
            return
        statuses = [i.wt.status for i in instances]
        policy = node.task.join_policy
        ok = (
            all(s == S.SUCCEEDED for s in statuses)
            if policy == JoinPolicy.ALL
            else (S.SUCCEEDED in statuses or not statuses)
            if policy == JoinPolicy.ANY
            else True
        )
        outputs = [i.wt.outputs for i in instances]
        if self.cancelling and not ok:
            return self._settle(
                node, S.CANCELLED, reason="run cancelled", outputs=outputs, actor=self.cancelled_by
            )
        failed = sum(1 for s in statuses if s != S.SUCCEEDED)
        if ok:
            self._settle(node, S.SUCCEEDED, reason=None, outputs=outputs)
        else:
            msg = f"{failed} of {len(statuses)} instances did not succeed"
            self._settle(node, S.FAILED, reason=msg, error=msg, outputs=outputs)

    # --- waves -------------------------------------------------------------------------------------

    def _wave_started(self, node: Node, now) -> None:
        wave = self.waves[node.wt.wave_id].wave
        if wave.status == WaveStatus.PENDING:
            services.wave_update(wave, status=WaveStatus.RUNNING, started_at=now, now=now)

    def _wave_completed(self, state: _WaveState, now) -> None:
        statuses = {self.nodes[k].wt.status for k in state.keys}
        status = (
            WaveStatus.FAILED
            if statuses & {S.FAILED, S.LOST}
            else WaveStatus.CANCELLED
            if S.CANCELLED in statuses
            else WaveStatus.SUCCEEDED
        )
        services.wave_update(
            state.wave, status=status, started_at=state.wave.started_at or now, completed_at=now, now=now
        )

    # --- periodic work: heartbeats, cancel requests, approvals -------------------------------------

    def _tick(self) -> None:
        now_mono = time.monotonic()
        if self.stop_reason and not self.cancelling:
            self._cancel(self.stop_reason)
        if now_mono >= self.next_cancel_check:
            self.next_cancel_check = now_mono + CANCEL_POLL_SECONDS
            if not self.cancelling:
                requested = (
                    ExecutionRun.objects.filter(pk=self.run.pk)
                    .values_list("cancel_requested_at", "cancel_requested_by")
                    .get()
                )
                if requested[0]:
                    self._cancel(requested[1] or "cancel request")
        if now_mono >= self.next_heartbeat:
            self.next_heartbeat = now_mono + settings.TIDEWATCH["HEARTBEAT_SECONDS"]
            services.agents_heartbeat(
                [n.agent.pk for n in self.by_handle.values() if n.agent], self.run, timezone.now()
            )
        if self.waiting and now_mono >= self.next_approval_check:
            self.next_approval_check = now_mono + APPROVAL_POLL_SECONDS
            self._poll_approvals()

    def _poll_approvals(self) -> None:
        changed = WaveTask.objects.filter(pk__in=list(self.waiting)).exclude(status=S.WAITING_APPROVAL)
        for pk, status, error, by in changed.values_list("pk", "status", "error", "approved_by"):
            node = self.waiting.pop(pk)
            node.wt.status, node.wt.error = status, error
            if status == S.QUEUED:
                self._system(node, f"approved by {by}")
                self._decide(node)
            elif status in TERMINAL:
                # Rejected (or closed elsewhere): the change is recorded already; propagate it.
                self._settled(node, timezone.now())

    def _cancel(self, by: str) -> None:
        """Stop launching, stop what runs, cancel what has not started."""
        self.cancelling = True
        self.cancelled_by = by
        self.runner.terminate_all()
        self.ready.clear()
        self.delayed.clear()
        self.to_queue.clear()
        self.unqueued.clear()
        pending = [
            n
            for n in self.nodes.values()
            if n.wt.status not in TERMINAL and n.handle not in self.by_handle and not n.instances
        ]
        now = timezone.now()
        # One transition for all of them (a list may hold thousands). Instances first: the
        # last instance of a for_each step to settle settles the step.
        for nodes in ([n for n in pending if n.parent], [n for n in pending if not n.parent]):
            nodes = [n for n in nodes if n.wt.status not in TERMINAL]
            services.transition(
                [n.wt for n in nodes],
                S.CANCELLED,
                reason=f"run cancelled by {by}",
                actor=by,
                now=now,
                completed_at=now,
            )
            for node in nodes:
                self._settled(node, now)

    # --- transcripts ---------------------------------------------------------------------------

    def _capture(self, node: Node, kind: str, text: str) -> None:
        self.captured.append(
            Captured(
                execution_id=self.run.pk,
                wave_id=node.wt.wave_id,
                wave_number=node.wt.wave.wave_number,
                task_id=node.task.pk,
                wave_task_id=node.wt.pk,
                agent_id=node.agent.pk if node.agent else None,
                instance_id=node.agent.instance_id if node.agent else "",
                sequence=next(self.seq),
                kind=kind,
                text=text,
                at=timezone.now(),
            )
        )

    def _system(self, node: Node, text: str) -> None:
        self._capture(node, "system", text)

    def _flush(self) -> None:
        if self.captured:
            batch, self.captured = self.captured, []
            output_captured.send(sender=ExecutionRun, execution_id=self.run.pk, records=batch)

    # --- the end -----------------------------------------------------------------------------------

    def _critical_path_seconds(self) -> float:
        """The best any scheduler could have done with the durations measured in this run:
        the longest chain of them (a for_each step counts as its longest instance)."""
        measured = {}
        for key in self.analysis.wave_of:
            node = self.nodes[key]
            measured[key] = (
                max((self.nodes[k].seconds for k in node.instances), default=0.0)
                if node.instances
                else node.seconds
            )
        return dag.analyze(list(self.analysis.wave_of), self._edges, measured).critical_length

    def _close(self) -> Summary:
        now = timezone.now()
        leaves = [n for n in self.nodes.values() if not n.instances]
        counts = defaultdict(int)
        for node in leaves:
            counts[node.wt.status] += 1
        if counts[S.FAILED] or counts[S.LOST]:
            status = RunStatus.FAILED
        elif counts[S.CANCELLED] or self.cancelling:
            status = RunStatus.CANCELLED
        else:
            status = RunStatus.SUCCEEDED
        wall = (self.t_end or time.monotonic()) - self.t0
        services.run_update(
            self.run,
            status=status,
            completed_at=now,
            wall_seconds=wall,
            task_seconds=self.task_seconds,
            executor_heartbeat=now,
            now=now,
        )
        services.session_leave(self.run, now)
        return Summary(
            run_id=self.run.pk,
            status=status,
            wall_seconds=wall,
            task_seconds=self.task_seconds,
            speedup=self.task_seconds / wall if wall > 0 else 0.0,
            critical_path_seconds=self._critical_path_seconds(),
            waves=len(self.waves),
            tasks={k: counts[k] for k in (S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED)},
            peak_concurrency=self.peak,
        )
