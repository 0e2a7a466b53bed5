"""The parallel executor: a loop around the scheduler and a runner.

`Engine(run, runner).execute()` claims a laid-out run (executions.services.run_start /
run_resume) and runs it. Each turn of the loop, in one transaction: what the runner
reported (attempts started, lines printed, attempts ended) goes to the scheduler, which
answers with decisions; requests from other processes (cancel, approvals) are read; the
scheduler fills the free slots; the engine starts those attempts at once, then records
every decision of the turn (executions.transitions: status, audit and event together).
Attempts start before the turn's records are written, so a success unblocks its
dependents as early as possible; the records still read in time order.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from executions import ownership, services
from executions.capture import Captured
from executions.errors import OwnershipLost, ServiceError
from executions.models import AgentStatus, ExecutionRun, RunStatus, TaskStatus, WaveTask
from executions.resolve import ResolveError
from executions.runners.base import Finished, LaunchSpec, Output, Runner, Started
from executions.scheduler import Expand, Gate, Launch, Queue, Scheduler, Settle
from executions.signals import output_captured
from executions.steps import Node, launch_spec, load_steps, safe  # noqa: F401 (safe: used by callers)
from executions.writes import Writes
from waves import dag

S = TaskStatus
TERMINAL = S.terminal()
CANCEL_POLL_SECONDS = 0.2
APPROVAL_POLL_SECONDS = 0.3
log = logging.getLogger(__name__)


def when(at: float | None, default: datetime) -> datetime:
    """A runner's time.time() as an aware datetime (its report's own time when it gave one)."""
    return datetime.fromtimestamp(at, UTC) if at is not None else default


class EngineError(ServiceError):
    """A run that cannot start; the message says why."""


class EngineCrash(Exception):
    """The loop failed on something it could not recover from; the run is closed as failed."""


@dataclass
class Summary:
    run_id: int
    status: str
    wall_seconds: float
    task_seconds: float
    gate_wait_seconds: float
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
            "gate_wait_seconds": round(self.gate_wait_seconds, 3),
            "speedup": round(self.speedup, 2),
            "critical_path_seconds": round(self.critical_path_seconds, 3),
            "waves": self.waves,
            "tasks": self.tasks,
            "peak_concurrency": self.peak_concurrency,
        }


class Engine:
    def __init__(self, run: ExecutionRun, runner: Runner, *, progress=None):
        self.run = run
        self.runner = runner
        self.progress = progress
        self.stop_reason: str | None = None  # set by a signal handler
        self.seq = itertools.count(1)
        self.captured: list[Captured] = []
        self.by_handle: dict[str, Node] = {}
        self.in_queue = 0  # launched on a queueing runner, not yet started
        self.task_seconds = 0.0
        self.gate_wait = 0.0
        self.idle_since: float | None = None
        self.peak = 0
        self.next_cancel_check = self.next_approval_check = 0.0
        self.t_end: float | None = None
        loaded = load_steps(run)
        self.nodes: dict[str, Node] = {k: Node(wt, task) for k, (wt, task) in loaded.rows.items()}
        for key, node in self.nodes.items():
            if node.wt.parent_id:
                self.nodes[key.rsplit("[", 1)[0]].instances.append(key)
        self.sched = Scheduler(loaded.steps, loaded.groups, max_parallelism=run.max_parallelism)
        self.edges, self.durations = loaded.edges, loaded.durations
        self.writes = Writes(run, self.nodes)

    # --- the loop ------------------------------------------------------------------------------

    def execute(self) -> Summary:
        self.t0 = time.monotonic()
        try:
            self._claim()
        except BaseException:
            self.runner.close()
            raise
        self.heartbeat = ownership.Heartbeat(self.run)
        self.heartbeat.start()
        try:
            self._loop()
        except BaseException as exc:
            self._crash(exc)
            raise EngineCrash(f"run {self.run.pk} failed: the executor stopped on {type(exc).__name__}: {exc}") from exc
        finally:
            self.heartbeat.stop()
            self.runner.close()
        return self._close()

    def _claim(self) -> None:
        now = timezone.now()
        services.reap_abandoned_runs()  # a session counts only live work
        with transaction.atomic():
            ownership.run_claim(self.run, now)
            session = services.session_join(self.run, now)
            services.session_count(session.pk, waves=len(self.writes.waves), tasks=len(self.nodes))

    def _loop(self) -> None:
        events = None
        while True:
            with transaction.atomic(), services.batch():
                self.now = timezone.now()
                if events is None:
                    self._apply(self.sched.start())
                    self.writes.waves_settled_at_start(self.now)
                if self.stop_reason and not self.sched.cancelling:
                    self._cancel(self.stop_reason)  # before the turn's exits: they are its doing
                for event in events or ():
                    self._event(event)
                self._tick()
                self._dispatch()
                self._flush()
            if not (self.sched.unfinished or self.by_handle):
                self.t_end = time.monotonic()
                return
            self._idle_on_gates(time.monotonic())
            busy = self.by_handle or self.sched.delayed or self.sched.waiting
            events = self.runner.poll(0.05 if busy else 0.2)
            if self.progress:
                self.progress(self)

    def _dispatch(self) -> None:
        """Fill the free slots, start those attempts, then write the turn's records (a gate
        found already decided can free more work: go round until nothing changes)."""
        while True:
            if not (self.sched.cancelling or self.stop_reason):
                self.now_launch = timezone.now()
                self._apply(self.sched.dispatch(time.monotonic()))
            more = self.writes.flush(self._gate_found_decided)
            if self.peak < len(self.by_handle) - self.in_queue:
                self.peak = len(self.by_handle) - self.in_queue
                services.run_update(self.run, peak_concurrency=self.peak, now=self.now)
            if not more:
                return

    # --- what the runner reports ------------------------------------------------------------------

    def _event(self, event) -> None:
        node = self.by_handle.get(event.handle)
        if node is None:
            return
        if isinstance(event, Started):
            at = when(event.at, self.now)
            if node.waiting is not None:  # it waited in a queue: running from its start
                iteration, sent = node.waiting
                at = min(max(at, sent), self.now)  # another host's clock may differ from ours
                self.writes.launch(node, iteration, at)
                node.waiting, self.in_queue = None, self.in_queue - 1
                node.started = time.monotonic() - max(0.0, time.time() - at.timestamp())
            node.agent = self.writes.agent_started(node, event, at)
            self._system(node, f"attempt {node.wt.attempt} started: pid {event.pid} on {event.hostname}")
        elif isinstance(event, Output):
            self._capture(node, "system" if event.stream == "system" else event.stream, event.text)
        elif isinstance(event, Finished):
            self._finished(node, event)

    def _finished(self, node: Node, event: Finished) -> None:
        del self.by_handle[event.handle]
        # Recorded at its own end (not when this executor read it), after its start or its send.
        since = node.agent.started_at if node.agent is not None else node.waiting[1] if node.waiting else self.now
        ended = min(max(when(event.at, self.now), since), self.now)
        if node.waiting is not None:  # ended in the queue (cancelled, lost): it never ran
            node.waiting, self.in_queue = None, self.in_queue - 1
        seconds = time.monotonic() - node.started
        self.task_seconds += seconds
        node.seconds += seconds
        for line in event.events:
            self._capture(node, "event", line)
        stopping = self.stop_reason or self.sched.cancelling
        killed = event.exit_code is not None and event.exit_code < 0 and stopping
        cancelled = event.exit_code != 0 and (event.cancelled or bool(killed)) and not event.lost
        error = None
        if not cancelled:
            if event.lost:
                error = event.error or "lost"
            elif event.error:
                error = event.error
            elif event.timed_out:
                error = f"timed out after {node.task.timeout_s}s"
            elif event.exit_code != 0:
                error = f"exit code {event.exit_code}"
            elif event.output_error:
                error = event.output_error
        status = (
            AgentStatus.CANCELLED if cancelled else AgentStatus.LOST if event.lost
            else AgentStatus.FAILED if error else AgentStatus.SUCCEEDED
        )  # fmt: skip
        if node.agent is not None:
            self.writes.agent_finished(node.agent, status, event.exit_code, ended)
        outcome = f"lost: {error}" if event.lost else f"failed: {error}" if error else status
        self._system(node, f"attempt {node.wt.attempt} {outcome} after {seconds:.2f}s")
        node.wt.exit_code = event.exit_code
        self._apply(
            self.sched.finished(
                node.wt.key,
                error=error,
                cancelled=cancelled,
                retry=not event.error,  # a command that cannot start will not start next time
                outputs=event.outputs or {},
                now=time.monotonic(),
                lost=event.lost,
            ),
            at=ended,
        )

    # --- carrying out decisions ----------------------------------------------------------------

    def _apply(self, decisions, at: datetime | None = None) -> None:
        """Carry out the scheduler's decisions; what they record happened `at` (default: now)."""
        at = at or self.now
        for d in decisions:
            node = self.nodes.get(d.key)
            if isinstance(d, Launch):
                self._launch(node, d.iteration)
            elif isinstance(d, Settle):
                self.writes.settle(node, d, at)
            elif isinstance(d, Queue):
                self.writes.queue(node, d, at)
            elif isinstance(d, Gate):
                self.writes.gate(node)
            elif isinstance(d, Expand):
                for inst in self.writes.expand(node, d, at):
                    self.nodes[inst.wt.key] = inst
                    node.instances.append(inst.wt.key)

    def _gate_found_decided(self, key: str, decision: str, by: str) -> None:
        """A gate the run reached already had its decision on record: act on it."""
        self._system(self.nodes[key], f"{decision} by {by or 'someone'} before the run reached it")
        self._apply(self.sched.gate_decided(key, approved=decision == "approved", by=by))

    def _launch(self, node: Node, iteration: int) -> None:
        node.wt.attempt += 1
        try:
            spec = self._spec(node, iteration)
        except Exception as exc:  # whatever its values hold, only this step fails
            node.wt.attempt -= 1
            reason = str(exc) if isinstance(exc, ResolveError) else f"{type(exc).__name__}: {exc}"
            return self._apply(self.sched.fail(node.wt.key, "input error", reason[:2000]))
        self.runner.launch(spec)
        node.handle, node.started, node.agent = spec.handle, time.monotonic(), None
        self.by_handle[spec.handle] = node
        if getattr(self.runner, "queues", False):
            node.waiting, self.in_queue = (iteration, self.now_launch), self.in_queue + 1  # until it starts
            self.writes.sent(node, self.now_launch)
        else:
            self.writes.launch(node, iteration, self.now_launch)

    def _spec(self, node: Node, iteration: int) -> LaunchSpec:
        ctx = self.sched.context(node.wt.key)
        return launch_spec(self.run, node, ctx, iteration, self.durations)

    # --- periodic work: cancel requests, approvals, the heartbeat ------------------------------------

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: cancel at the next turn of the loop."""
        self.stop_reason = reason

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stop_reason and not self.sched.cancelling:
            self._cancel(self.stop_reason)
        if now >= self.next_cancel_check and not self.sched.cancelling:
            self.next_cancel_check = now + CANCEL_POLL_SECONDS
            at, by = ExecutionRun.objects.filter(pk=self.run.pk).values_list(
                "cancel_requested_at", "cancel_requested_by"
            ).get()
            if at:
                self._cancel(by or "cancel request")
        if self.heartbeat.inline and now >= self.heartbeat.next_inline:
            self.heartbeat.next_inline = now + self.heartbeat.interval
            self.heartbeat.beat()
        if self.heartbeat.lost:
            raise OwnershipLost(f"run {self.run.pk} was closed by another process")
        if self.sched.waiting and now >= self.next_approval_check:
            self.next_approval_check = now + APPROVAL_POLL_SECONDS
            self._poll_approvals()

    def _poll_approvals(self) -> None:
        """Gates decided by another process while they waited (it recorded the change)."""
        recorded = (self.nodes[k] for k in self.sched.waiting)
        waiting = {n.wt.pk: n.wt.key for n in recorded if n.wt.status == S.WAITING_APPROVAL}
        decided = (S.QUEUED, S.FAILED, S.CANCELLED)  # what step_decide (or a cancel) moves it to
        changed = WaveTask.objects.filter(pk__in=list(waiting), status__in=decided)
        for pk, status, error, by in changed.values_list("pk", "status", "error", "approved_by"):
            node = self.nodes[waiting[pk]]
            node.wt.status, node.wt.error = status, error
            self.writes.status_seen(node, status)
            self._system(node, f"{'approved' if status == S.QUEUED else status} by {by or 'someone'}")
            self._apply(
                self.sched.gate_decided(node.wt.key, approved=status == S.QUEUED, by=by, recorded=status)
            )

    def _cancel(self, by: str) -> None:
        """Stop launching, stop what runs, cancel what has not started."""
        self.runner.terminate_all()
        self._apply(self.sched.cancel(by))

    def _idle_on_gates(self, now: float) -> None:
        """Time when nothing but an approval can move the run on is not charged to it."""
        if self.sched.idle_on_gates and not self.by_handle:
            if self.idle_since is None:
                self.idle_since = now
        elif self.idle_since is not None:
            self.gate_wait += now - self.idle_since
            self.idle_since = None

    def waiting_gates(self) -> list[str]:
        return sorted(self.sched.waiting)

    # --- transcripts -------------------------------------------------------------------------------

    def _capture(self, node: Node, kind: str, text: str) -> None:
        wt = node.wt
        self.captured.append(
            Captured(
                execution_id=self.run.pk, wave_id=wt.wave_id, wave_number=self.writes.wave_number(wt),
                task_id=node.task.pk, wave_task_id=wt.pk, agent_id=node.agent.pk if node.agent else None,
                instance_id=node.agent.instance_id if node.agent else "", sequence=next(self.seq),
                kind=kind, text=text, at=self.now,
            )  # fmt: skip
        )

    def _system(self, node: Node, text: str) -> None:
        self._capture(node, "system", text)

    def _flush(self) -> None:
        if self.captured:
            captured, self.captured = self.captured, []
            output_captured.send(sender=ExecutionRun, execution_id=self.run.pk, records=captured)

    # --- the end -----------------------------------------------------------------------------------

    def _crash(self, exc: BaseException) -> None:
        """Last resort: whatever went wrong in the loop, stop the task processes and close
        the run as failed with the error (the turn that failed was rolled back)."""
        # The caller reports it in one line; the traceback is for LOG_LEVEL=INFO.
        log.info("run %s: the executor stopped on %r", self.run.pk, exc, exc_info=exc)
        try:
            self.runner.terminate_all()
            self.runner.close()
        except Exception:
            log.exception("run %s: stopping the task processes failed", self.run.pk)
        try:
            ownership.run_close_abandoned(
                self.run, status=RunStatus.FAILED, reason=f"executor error: {type(exc).__name__}: {exc}"[:2000],
                mine=True,
            )  # fmt: skip
        except Exception:
            log.exception("run %s: closing the run failed", self.run.pk)

    def _critical_path_seconds(self) -> float:
        """The best any scheduler could have done with the durations measured in this run:
        the longest chain of them (a for_each step counts as its longest instance)."""
        measured = {}
        for key, node in self.nodes.items():
            if not node.wt.parent_id:
                seconds = [self.nodes[k].seconds for k in node.instances] or [node.seconds]
                measured[key] = max(seconds)
        keys = [k for k, n in self.nodes.items() if not n.wt.parent_id]
        return dag.analyze(keys, self.edges, measured).critical_length

    def _close(self) -> Summary:
        now = timezone.now()
        self._idle_on_gates(self.t_end or time.monotonic())
        counts = defaultdict(int)
        for node in self.nodes.values():
            if not node.instances:
                counts[node.wt.status] += 1
        if counts[S.FAILED] or counts[S.LOST]:
            status = RunStatus.FAILED
        elif counts[S.CANCELLED] or self.sched.cancelling:
            status = RunStatus.CANCELLED
        else:
            status = RunStatus.SUCCEEDED
        wall = (self.t_end or time.monotonic()) - self.t0
        working = wall - self.gate_wait
        # The loop saw its attempts at each turn; the agents' recorded lifetimes are exact.
        self.peak = services.run_agents_peak(self.run.pk)
        with transaction.atomic():
            services.run_update(
                self.run, status=status, completed_at=now, wall_seconds=wall, task_seconds=self.task_seconds,
                gate_wait_seconds=self.gate_wait, executor_heartbeat=now, peak_concurrency=self.peak, now=now,
            )  # fmt: skip
        services.session_leave(self.run, now)
        return Summary(
            run_id=self.run.pk,
            status=status,
            wall_seconds=wall,
            task_seconds=self.task_seconds,
            gate_wait_seconds=self.gate_wait,
            speedup=self.task_seconds / working if working > 0 else 0.0,
            critical_path_seconds=self._critical_path_seconds(),
            waves=len(self.writes.waves),
            tasks={k: counts[k] for k in (S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED)}
            | ({S.LOST: counts[S.LOST]} if counts[S.LOST] else {}),  # a worker lost (celery backend)
            peak_concurrency=self.peak,
        )
