"""Services of the executions app: start, resume, cancel and approve, called alike by the
commands, the admin, the API and Celery. Each checks what it is asked, then makes the change
through the modules that own it:

- `executions.transitions`: the one place statuses change (tasks in a run, waves, agents),
  each change with its audit row and its event-log row, in one transaction;
- `executions.ownership`: who owns a run (the claim, the heartbeat) and closing the runs of
  executors that died;
- `executions.sessions`: concurrent execution sessions;
- `executions.layout`: a new run's waves and wave tasks, and what a resume carries over.

Their functions are re-exported here, so callers need only `executions.services`.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from executions.errors import NotFound, OwnershipLost, ServiceError
from executions.layout import run_layout
from executions.models import Backend, ExecutionRun, RunStatus, TaskStatus, WaveTask
from executions.ownership import (
    executor_identity,
    executor_is_gone,
    owner_text,
    reap_abandoned_runs,
    run_claim,
    run_close_abandoned,
    run_payload,
    run_update,
)
from executions.records import batch, events_write, iso
from executions.sessions import run_agents_peak, session_count, session_join, session_leave
from executions.transitions import (
    CHUNK,
    agents_finish,
    agents_start,
    task_event,
    transition,
    wave_tasks_create,
    wave_update,
)
from waves.models import Task, TaskList

__all__ = [
    "CHUNK", "NotFound", "OwnershipLost", "ServiceError", "agents_finish", "agents_start", "batch",
    "events_write", "executor_identity", "executor_is_gone", "iso", "reap_abandoned_runs", "run_claim",
    "run_agents_peak", "run_close_abandoned", "run_get", "run_payload", "run_request_cancel", "run_resume", "run_spawn",
    "run_start", "run_update", "session_count", "session_join", "session_leave", "step_decide",
    "transition", "wave_tasks_create", "wave_update",
]  # fmt: skip

MAX_PARALLELISM = 10_000
SIMULATE_MAX = 3600.0  # seconds per estimated minute
SCHEDULES = ("critical_path", "fifo")


def run_get(run_id: int | str) -> ExecutionRun:
    """The run with this id, or NotFound (also for ids no database column can hold)."""
    text = str(run_id).strip()
    if not text.isdigit() or int(text) >= 2**63:
        raise NotFound(f"run {text} does not exist")
    run = ExecutionRun.objects.select_related("task_list").filter(pk=int(text)).first()
    if run is None:
        raise NotFound(f"run {text} does not exist")
    return run


def _options(max_parallelism, backend, simulate, schedule) -> None:
    if max_parallelism is not None and not (
        isinstance(max_parallelism, int) and 1 <= max_parallelism <= MAX_PARALLELISM
    ):
        raise ServiceError(f"max_parallelism must be a whole number from 1 to {MAX_PARALLELISM}")
    if backend not in Backend.values:
        raise ServiceError(f"unknown backend {backend!r} (use {' or '.join(Backend.values)})")
    if backend == Backend.CELERY and not settings.CELERY_BROKER_URL:
        raise ServiceError("the celery backend needs CELERY_BROKER_URL (redis://HOST:6379/0 or amqp://...)")
    if simulate is not None and not (
        isinstance(simulate, int | float) and math.isfinite(simulate) and 0 < simulate <= SIMULATE_MAX
    ):
        raise ServiceError(f"simulate must be a number of seconds per minute above 0 and at most {SIMULATE_MAX:g}")
    if schedule not in SCHEDULES:
        raise ServiceError(f"schedule must be one of {', '.join(SCHEDULES)}")


def run_start(
    task_list: TaskList,
    *,
    max_parallelism: int | None = None,
    backend: str = Backend.LOCAL,
    simulate: float | None = None,
    schedule: str = "critical_path",
) -> ExecutionRun:
    """Lay out a new run of a task list, pending until an executor claims it."""
    _options(max_parallelism, backend, simulate, schedule)
    if not simulate:
        missing = list(
            task_list.tasks.exclude(kind=Task.Kind.GROUP).filter(command__regex=r"^\s*$").values_list("key", flat=True)[:6]
        )
        if missing:
            raise ServiceError(
                f"step(s) {', '.join(missing[:5])} have no command: import with --command-template "
                "or run with --simulate"
            )
    with transaction.atomic():
        return run_layout(
            task_list,
            backend=backend,
            max_parallelism=max_parallelism or task_list.max_parallelism or settings.TIDEWATCH["DEFAULT_MAX_PARALLELISM"],
            simulate_scale=simulate,
            schedule=schedule,
        )


def run_resume(
    run: ExecutionRun,
    *,
    task_list: str | None = None,
    max_parallelism: int | None = None,
    backend: str | None = None,
    simulate: float | None = None,
    schedule: str | None = None,
) -> ExecutionRun:
    """Lay out a run that re-runs what `run` did not finish; options it is not given are
    inherited. Refused, with the reason, when `run` is still owned by a live executor, has
    succeeded, or was resumed already: the claim is a conditional UPDATE of `run`, so of two
    resumes racing in any processes or machines exactly one goes ahead."""
    reap_abandoned_runs()  # a resume right after a kill: the dead executor's run is closed now
    run.refresh_from_db()
    tl = run.task_list
    if task_list is not None and str(task_list).strip() not in (str(tl.pk), tl.title):
        raise ServiceError(f"run {run.pk} is a run of {tl.title!r}, not {task_list!r}")
    if run.status == RunStatus.PENDING and not run.executor_pid:
        raise ServiceError(f"run {run.pk} has not started yet: there is nothing to resume")
    if run.status in (RunStatus.PENDING, RunStatus.RUNNING):
        raise ServiceError(f"run {run.pk} is still running{owner_text(run)}; cancel it first")
    if run.status == RunStatus.SUCCEEDED:
        raise ServiceError(f"run {run.pk} succeeded; there is nothing to resume")
    if run.resumed_by_id:
        raise ServiceError(
            f"run {run.pk} was already resumed by run {run.resumed_by_id}; resume run {run.resumed_by_id} instead"
        )
    options = dict(
        max_parallelism=max_parallelism or run.max_parallelism,
        backend=backend or run.backend,
        simulate=simulate if simulate is not None else run.simulate_scale,
        schedule=schedule or run.schedule,
    )
    _options(**options)
    with transaction.atomic():
        new = run_layout(
            tl,
            resume_of=run,
            backend=options["backend"],
            max_parallelism=options["max_parallelism"],
            simulate_scale=options["simulate"],
            schedule=options["schedule"],
        )
        claimed = ExecutionRun.objects.filter(
            pk=run.pk, resumed_by__isnull=True, status__in=[RunStatus.FAILED, RunStatus.CANCELLED]
        ).update(resumed_by=new)
        if not claimed:
            run.refresh_from_db()
            transaction.set_rollback(True)
            by = f" by run {run.resumed_by_id}" if run.resumed_by_id else ""
            raise ServiceError(f"run {run.pk} was resumed{by} at the same moment; resume that one instead")
        run.resumed_by = new
        events_write([(run.pk, "run.update", run_payload(run))], timezone.now())
    return new


def run_spawn(run: ExecutionRun) -> int:
    """Start a detached executor process for a laid-out run (`manage.py execute_run`); it
    outlives the caller and logs to var/runs/run-ID.log. Returns its pid."""
    log_path = Path(settings.VAR_DIR) / "runs" / f"run-{run.pk}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "execute_run", str(run.pk)],
            cwd=settings.BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: the caller's ^C or exit does not stop it
        )
    return proc.pid


# --- requests from anywhere: cancel and approve ---------------------------------------------


def run_request_cancel(run: ExecutionRun, *, actor: str = "") -> bool:
    """Ask the executor that owns the run to cancel it (it acts within a second). Returns
    False if the run had ended. A run whose executor is gone, or that no executor has
    claimed yet, is closed here directly."""
    now = timezone.now()
    with transaction.atomic():
        updated = ExecutionRun.objects.filter(
            pk=run.pk, status__in=[RunStatus.PENDING, RunStatus.RUNNING], cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, cancel_requested_by=actor[:150])
        run.refresh_from_db()
        if not updated:
            return run.status not in RunStatus.terminal()
        events_write([(run.pk, "run.update", run_payload(run))], now)
    if not run.executor_pid or executor_is_gone(run, now):
        run_close_abandoned(run, status=RunStatus.CANCELLED, reason="cancelled", actor=actor or None, unowned=True)
    return True


def step_decide(run: ExecutionRun, key: str, *, approve: bool, actor: str) -> WaveTask:
    """Approve or reject an approval step of a run (command line, admin, API).

    A step already waiting moves on at once (approved -> queued, rejected -> failed); a
    step the run has not reached yet keeps the decision and acts on it when it gets there.
    The row is locked: the executor reads the decision under the same lock when it reaches
    the gate, so a decision is never lost between its read and its move to waiting."""
    decision = "approved" if approve else "rejected"
    now = timezone.now()
    with transaction.atomic():
        wt = WaveTask.objects.select_for_update().filter(execution=run, key=key).first()
        if wt is None:
            raise NotFound(f"run {run.pk} has no step {key!r}")
        if not Task.objects.filter(pk=wt.task_id, approval=True).exists():
            raise ServiceError(f"step {key!r} of run {run.pk} is not an approval step")
        if wt.approval_decision:
            raise ServiceError(
                f"step {key!r} of run {run.pk} was already {wt.approval_decision} by {wt.approved_by or 'someone'}"
            )
        if wt.status in TaskStatus.terminal() or wt.status == TaskStatus.RUNNING:
            raise ServiceError(f"step {key!r} of run {run.pk} is {wt.status}; there is nothing to approve")
        WaveTask.objects.filter(pk=wt.pk).update(
            approval_decision=decision, approved_at=now, approved_by=actor[:150]
        )
        wt.approval_decision, wt.approved_at, wt.approved_by = decision, now, actor
        if wt.status == TaskStatus.WAITING_APPROVAL:
            if approve:
                transition(wt, TaskStatus.QUEUED, expected=TaskStatus.WAITING_APPROVAL, actor=actor,
                           reason="approved", now=now)  # fmt: skip
            else:
                transition(
                    wt, TaskStatus.FAILED, expected=TaskStatus.WAITING_APPROVAL, actor=actor,
                    reason="rejected", now=now, completed_at=now, error=f"rejected by {actor}",
                )  # fmt: skip
        else:
            events_write([task_event(wt, wt.status, actor, f"{decision} in advance", now)], now)
    return wt
