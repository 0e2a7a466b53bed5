"""Attempts on Celery workers (`run_tasklist --backend celery`), seen from the executor.

`launch()` inserts the attempt's RemoteAttempt row (queued) in the engine's turn, and sends
the task (executions/tasks.py) to the template's queue, or CELERY_TASK_DEFAULT_QUEUE, once
that turn has committed, so the worker always finds the row. The worker writes what happens
to the row; `poll()` reads the rows of the attempts in flight and turns them into the
runner events: Started when a pid appears, Output for each new line (in order, by the
line's number within its attempt), Finished once the row is final. Each attempt finishes
exactly once here, whatever the broker delivered.

A running attempt whose heartbeat (written by the worker, compared on the database's own
clock) is older than STALE_AFTER_SECONDS is marked lost: its worker died or was cut off.
`terminate()` sets the attempt's cancel flag, which the worker reads while the attempt
runs, cancels it outright if no worker has taken it yet, and revokes the Celery task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from executions.models import RemoteAttempt, RemoteLine
from executions.runners.base import Finished, LaunchSpec, Output, RunnerEvent, Started
from executions.runners.workdir import AttemptResult

log = logging.getLogger(__name__)
A = RemoteAttempt.State
TASK_NAME = "tidewatch.run_attempt"
POLL_SECONDS = 0.05  # between reads of the database while poll() waits
STALE_CHECK_SECONDS = 1.0


@dataclass
class _InFlight:
    pk: int
    task_id: str
    started: bool = False
    seen: int = 0  # lines passed on
    cancel: bool = False


class CeleryRunner:
    queues = True  # an attempt waits in the broker until a worker takes it

    def __init__(self):
        from config.celery import app  # imported here: celery is only needed by this backend

        self.app = app
        self.stale = timedelta(seconds=settings.TIDEWATCH["STALE_AFTER_SECONDS"])
        self.inflight: dict[str, _InFlight] = {}
        self.next_stale_check = 0.0

    # --- the Runner interface -------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> None:
        queue = spec.queue or settings.CELERY_TASK_DEFAULT_QUEUE
        task_id = str(uuid.uuid4())
        row = RemoteAttempt.objects.create(
            execution_id=spec.run_id, key=spec.key, attempt=spec.attempt, queue=queue, task_id=task_id
        )
        self.inflight[spec.handle] = _InFlight(row.pk, task_id)
        args = [row.pk, dataclasses.asdict(spec)]
        transaction.on_commit(lambda: self._send(row.pk, args, queue, task_id))

    def poll(self, timeout: float) -> list[RunnerEvent]:
        deadline = time.monotonic() + timeout
        while True:
            events = self._read()
            left = deadline - time.monotonic()
            if events or left <= 0:
                return events
            time.sleep(min(left, POLL_SECONDS))

    def terminate(self, handle: str) -> None:
        f = self.inflight.get(handle)
        if f is None:
            return
        # Written again on every call: a turn that rolled back took the last write with it.
        RemoteAttempt.objects.filter(pk=f.pk).update(cancel_requested=True)
        RemoteAttempt.objects.filter(pk=f.pk, state=A.QUEUED).update(state=A.CANCELLED, finished_at=Now())
        if f.cancel:
            return
        f.cancel = True
        try:
            self.app.control.revoke(f.task_id)
        except Exception as exc:  # the flag above is what stops it; the revoke only saves a delivery
            log.warning("revoking %s failed: %s", f.task_id, exc)

    def terminate_all(self) -> None:
        for handle in list(self.inflight):
            self.terminate(handle)

    def close(self) -> None:
        self.terminate_all()  # only after a failure: the engine ends with nothing in flight

    # --- internals -----------------------------------------------------------------------

    def _send(self, pk: int, args: list, queue: str, task_id: str) -> None:
        try:
            self.app.send_task(TASK_NAME, args=args, queue=queue, task_id=task_id)
        except Exception as exc:
            error = json.dumps({"exit_code": None, "error": f"could not send it to the broker: {exc}"})
            RemoteAttempt.objects.filter(pk=pk, state=A.QUEUED).update(
                state=A.FINISHED, finished_at=Now(), result=error
            )

    def _read(self) -> list[RunnerEvent]:
        if not self.inflight:
            return []
        by_pk = {f.pk: (handle, f) for handle, f in self.inflight.items()}
        rows = RemoteAttempt.objects.filter(pk__in=list(by_pk)).values_list(
            "pk", "state", "pid", "hostname", "started_at", "lines"
        )
        started, lines, ended = [], {}, []
        final = (A.FINISHED, A.CANCELLED, A.LOST)
        running = []
        for pk, state, pid, hostname, started_at, count in rows:
            handle, f = by_pk[pk]
            if pid and not f.started:
                f.started = True
                started.append(Started(handle, pid, hostname, at=started_at.timestamp()))
            if count > f.seen:
                lines[pk] = f.seen
            if state in final:
                ended.append((pk, state))
            elif state == A.RUNNING:
                running.append(pk)
        outputs = self._lines(lines, by_pk) if lines else []
        finished = self._finished(ended, by_pk)
        if running and time.monotonic() >= self.next_stale_check:
            self.next_stale_check = time.monotonic() + STALE_CHECK_SECONDS
            finished += self._lost(running, by_pk)
        for event in finished:
            del self.inflight[event.handle]
        return started + outputs + finished

    def _lines(self, after: dict[int, int], by_pk) -> list[Output]:
        query = Q()
        for pk, seen in after.items():
            query |= Q(attempt_id=pk, seq__gt=seen)
        out = []
        for pk, seq, stream, text in (
            RemoteLine.objects.filter(query)
            .order_by("attempt_id", "seq")
            .values_list("attempt_id", "seq", "stream", "text")
        ):
            handle, f = by_pk[pk]
            if seq == f.seen + 1:
                f.seen = seq
                out.append(Output(handle, stream, text))
        return out

    def _finished(self, ended: list[tuple[int, str]], by_pk) -> list[Finished]:
        if not ended:
            return []
        results = dict(
            RemoteAttempt.objects.filter(pk__in=[pk for pk, _ in ended]).values_list("pk", "result")
        )
        out = []
        for pk, state in ended:
            handle, f = by_pk[pk]
            if state == A.CANCELLED:
                out.append(Finished(handle, None, cancelled=True))
            elif state == A.LOST:
                out.append(Finished(handle, None, lost=True, error="its worker was lost"))
            else:
                out.append(Finished(handle, **json.loads(results[pk])))
        return out

    def _lost(self, running: list[int], by_pk) -> list[Finished]:
        """Running attempts whose worker stopped heartbeating: marked lost, one by one with
        a conditional UPDATE (a worker that beats at the last moment keeps its attempt)."""
        stale = Q(state=A.RUNNING, heartbeat__lt=Now() - self.stale)
        out = []
        for pk, worker, beat in RemoteAttempt.objects.filter(stale, pk__in=running).values_list(
            "pk", "worker", "heartbeat"
        ):
            if RemoteAttempt.objects.filter(stale, pk=pk).update(state=A.LOST, finished_at=Now()):
                handle, _ = by_pk[pk]
                error = (
                    f"worker lost: {worker} has not heartbeaten since {beat:%H:%M:%S} UTC "
                    f"(more than {self.stale.total_seconds():g}s)"
                )
                out.append(Finished(handle, None, lost=True, error=error))
        return out


def attempt_result(run_id: int, key: str, attempt: int) -> AttemptResult | None:
    """How an attempt a worker ran for an earlier run ended (None: it did not finish)."""
    text = (
        RemoteAttempt.objects.filter(execution_id=run_id, key=key, attempt=attempt, state=A.FINISHED)
        .values_list("result", flat=True)
        .first()
    )
    if not text:
        return None
    result = json.loads(text)
    if result.get("exit_code") is None or result["exit_code"] < 0:  # killed by a signal: it did not finish
        return None
    return AttemptResult(result["exit_code"], result.get("outputs"), result.get("output_error"))
