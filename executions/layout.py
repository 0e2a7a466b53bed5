"""Laying a run out: the run row, its waves (the DAG's generations) and one wave task per step.

A resume lays out a new run of the same task list and carries over what needs no new work:
steps that succeeded (never run again), attempts that finished while their executor was
dying (their exit status and outputs are in their work directory), for_each instances, and
approvals already given. A wave whose every step is carried over starts out as it ended.
"""

from __future__ import annotations

from collections import defaultdict

from executions import runners
from executions.models import (
    ExecutionRun,
    ParallelExecutionWave,
    TaskStatus,
    WaveStatus,
    WaveTask,
)
from executions.transitions import wave_tasks_create
from waves import dag, selectors
from waves.models import TaskList

S = TaskStatus


def run_layout(task_list: TaskList, *, resume_of: ExecutionRun | None = None, **run_fields) -> ExecutionRun:
    """Create the run (pending, no owner yet), its waves and its wave tasks, each audited
    from no status. Call inside a transaction."""
    tasks = {t.key: t for t in task_list.tasks.all()}
    nodes, edges = selectors.task_list_graph(task_list)
    generations = dag.analyze(nodes, edges).waves
    old = _previous(resume_of) if resume_of else {}
    old_waves = {w.wave_number: w for w in resume_of.waves.all()} if resume_of else {}
    run = ExecutionRun.objects.create(
        task_list=task_list,
        resumed_from=resume_of,
        attempt=resume_of.attempt + 1 if resume_of else 1,
        **run_fields,
    )
    carry = _Carry(resume_of)
    steps, instances, waves = [], [], []
    for number, keys in enumerate(generations, 1):
        wave = ParallelExecutionWave(execution=run, wave_number=number, max_parallelism=run.max_parallelism)
        mine = []
        for key in keys:
            row, old_instances = old.get(key, (None, []))
            mine.append(carry(WaveTask(wave=wave, task=tasks[key], execution=run, key=key), row))
            mine += [
                carry(
                    WaveTask(
                        wave=wave, task=tasks[key], execution=run, key=inst.key,
                        item_index=inst.item_index, item=inst.item,
                    ),
                    inst,
                )  # fmt: skip
                for inst in old_instances
            ]
        if resume_of and all(row.status == S.SUCCEEDED for row, _ in mine):
            # Every step of it carried over as a success: the wave is what it was.
            before = old_waves.get(number)
            wave.status = WaveStatus.SUCCEEDED
            wave.started_at = before.started_at if before else None
            wave.completed_at = before.completed_at if before else None
        waves.append(wave)
        for pair in mine:
            (instances if pair[0].item_index is not None else steps).append(pair)
    ParallelExecutionWave.objects.bulk_create(waves)
    parents = {wt.key: wt for wt in _create(steps)}
    for row, _ in instances:
        row.parent = parents[row.key.rsplit("[", 1)[0]]
    _create(instances)
    return run


def _create(pairs: list[tuple[WaveTask, str | None]]) -> list[WaveTask]:
    """Insert rows, one write per distinct reason (their first audit rows say why)."""
    by_reason: dict[str | None, list[WaveTask]] = defaultdict(list)
    for row, reason in pairs:
        by_reason[reason].append(row)
    return [wt for reason, rows in by_reason.items() for wt in wave_tasks_create(rows, reason=reason)]


def _previous(run: ExecutionRun) -> dict[str, tuple[WaveTask, list[WaveTask]]]:
    """The old run's steps by key, each with its for_each instances."""
    rows = list(WaveTask.objects.filter(execution=run).select_related("task").order_by("id"))
    instances: dict[str, list[WaveTask]] = defaultdict(list)
    for wt in rows:
        if wt.parent_id:
            instances[wt.key.rsplit("[", 1)[0]].append(wt)
    return {wt.key: (wt, instances.get(wt.key, [])) for wt in rows if not wt.parent_id}


class _Carry:
    """What a resume keeps of an old row: a success (never re-run), an attempt that finished
    while its executor died, and an approval already given. Returns (row, audit reason)."""

    def __init__(self, resume_of: ExecutionRun | None):
        self.resume_of = resume_of
        self.reason = f"carried over from run {resume_of.pk}" if resume_of else None

    def __call__(self, row: WaveTask, old: WaveTask | None) -> tuple[WaveTask, str | None]:
        if old is None:
            return row, self.reason
        reason = self.reason
        status, outputs = old.status, old.outputs
        attempt = old.attempt
        if status in (S.LOST, S.RUNNING, S.QUEUED) and not old.task.repeat:
            # Its executor died with it: did the attempt finish first? It left its exit status.
            # A queued step's attempt may have started (on a worker) and ended before its
            # executor recorded it: that one is the next after the attempt on record.
            for tried in (old.attempt + 1, old.attempt):
                result = tried and runners.attempt_result(self.resume_of.backend, old.execution_id, old.key, tried)
                if result and result.exit_code == 0 and not result.output_error:
                    status, outputs, attempt = S.SUCCEEDED, result.outputs, tried
                    reason = (
                        f"attempt {tried} of run {old.execution_id} finished (exit 0) while its "
                        "executor was stopping: not run again"
                    )
                    break
        if status == S.SUCCEEDED:
            row.status, row.outputs, row.exit_code, row.attempt = S.SUCCEEDED, outputs, 0, attempt
            row.started_at, row.completed_at = old.started_at, old.completed_at or old.started_at
        if old.approval_decision == "approved":
            row.approval_decision, row.approved_at = "approved", old.approved_at
            row.approved_by = old.approved_by
        return row, reason
