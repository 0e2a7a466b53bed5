"""The Celery task that runs one attempt on a worker (the celery backend).

A worker may be on another machine: it shares only the database with the executor. It runs
the attempt with the local runner (its own session and process group, the timeout, the work
directory, the caps on what it keeps, and a watchdog that kills the group if the worker
process dies, even by kill -9), and writes everything to the attempt's RemoteAttempt row:

- the claim, a conditional UPDATE queued -> running: a message delivered twice (late ack,
  a redelivery) runs the attempt once, and an attempt cancelled or lost is never started;
- the process's pid and host when it starts, its lines as they come (RemoteLine), a
  heartbeat every HEARTBEAT_SECONDS, and how it ended (running -> finished, with outputs and
  $TIDEWATCH_EVENTS lines).

Each write is conditional on the row still being this process's running attempt: once the
executor marked it lost, nothing more is recorded and its process group is killed. A cancel
(the attempt's flag, or the run's cancel request) terminates the group within a second, and
so does the end of the run (an executor that died: its run closed by whoever noticed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

from config.celery import app
from executions.models import RemoteAttempt, RemoteLine, RunStatus
from executions.runners.base import Finished, LaunchSpec, Output, Started
from executions.runners.local import KILL_GRACE_SECONDS, LocalRunner

log = logging.getLogger(__name__)
CHECK_SECONDS = 0.25  # how often the cancel flags are read
POLL_SECONDS = 0.1
WRITE_SECONDS = 0.1
A = RemoteAttempt.State
_runner: LocalRunner | None = None  # one per worker process (made after the fork)


def local_runner() -> LocalRunner:
    global _runner
    if _runner is None:
        _runner = LocalRunner()
    return _runner


@app.task(name="tidewatch.run_attempt", ignore_result=True)
def run_attempt(attempt_id: int, spec: dict) -> str:
    return execute_attempt(attempt_id, LaunchSpec(**spec))


def execute_attempt(attempt_id: int, spec: LaunchSpec) -> str:
    """Run the attempt if it is still queued; returns what happened, for the worker's log."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    run_status = (
        RemoteAttempt.objects.filter(pk=attempt_id).values_list("execution__status", flat=True).first()
    )
    # One table, no join: a join would make Django UPDATE ... WHERE id IN (SELECT ...), and
    # PostgreSQL does not re-check such a subquery when two claims wait on the same row.
    claimed = run_status == RunStatus.RUNNING and RemoteAttempt.objects.filter(
        pk=attempt_id, state=A.QUEUED, cancel_requested=False
    ).update(state=A.RUNNING, worker=me, heartbeat=Now())
    if not claimed:
        return f"attempt {spec.handle} of run {spec.run_id} not run: it is no longer queued"
    mine = RemoteAttempt.objects.filter(pk=attempt_id, state=A.RUNNING, worker=me)
    runner = local_runner()
    runner.launch(spec)
    seq, owned, stopping = 0, True, False
    beat = settings.TIDEWATCH["HEARTBEAT_SECONDS"]
    next_beat = next_check = time.monotonic() + min(beat, CHECK_SECONDS)
    next_write = time.monotonic() + WRITE_SECONDS
    lines: list[Output] = []
    fields: dict = {}
    try:
        while True:
            finished = None
            for e in runner.poll(POLL_SECONDS):
                if isinstance(e, Output):
                    lines.append(e)
                elif isinstance(e, Started):
                    fields.update(pid=e.pid, hostname=e.hostname, started_at=stamp(e.at))
                elif isinstance(e, Finished):
                    finished = e
                    fields.update(state=A.FINISHED, finished_at=stamp(e.at), result=result_of(e))
            now = time.monotonic()
            # What happened is written at most every WRITE_SECONDS (a short attempt: its start
            # and its end in one transaction), its end at once, and the heartbeat in any case.
            if finished or now >= next_beat or ((fields or lines) and now >= next_write):
                next_beat, next_write = now + beat, now + WRITE_SECONDS
                if owned:
                    owned = write(mine, attempt_id, seq, lines, fields)
                    seq += len(lines) if owned else 0
                lines, fields = [], {}
                if not owned and not stopping:
                    log.warning(
                        "attempt %s of run %s was taken away (lost): stopping it", spec.handle, spec.run_id
                    )
                    runner.terminate(spec.handle)
                    stopping = True
            if finished:
                return f"attempt {spec.handle} of run {spec.run_id}: exit {finished.exit_code}"
            if now >= next_check and not stopping:
                next_check = now + CHECK_SECONDS
                asked, run_cancel, run_status = (
                    RemoteAttempt.objects.filter(pk=attempt_id)
                    .values_list("cancel_requested", "execution__cancel_requested_at", "execution__status")
                    .get()
                )
                # A run closed under it (its executor died and the run was reaped) ends it too,
                # as the local runner's watchdog would: a resume must not find it still running.
                if asked or run_cancel or run_status != RunStatus.RUNNING:
                    runner.terminate(spec.handle)
                    stopping = True
    except BaseException:
        # The worker cannot record it: stop the process rather than leave it unwatched.
        runner.terminate(spec.handle)
        end = time.monotonic() + KILL_GRACE_SECONDS + 5
        while spec.handle in runner.attempts and time.monotonic() < end:
            runner.poll(POLL_SECONDS)
        raise


def write(mine, attempt_id: int, seq: int, lines: list[Output], fields: dict) -> bool:
    """The attempt's new lines, fields and heartbeat, only while it is still ours."""
    with transaction.atomic():
        if lines:
            fields["lines"] = seq + len(lines)
        if not mine.update(heartbeat=Now(), **fields):
            transaction.set_rollback(True)
            return False
        # PostgreSQL text cannot hold NUL (the transcript replaces it the same way).
        rows = [
            RemoteLine(
                attempt_id=attempt_id, seq=seq + i, stream=e.stream, text=e.text.replace("\x00", "\ufffd")
            )
            for i, e in enumerate(lines, 1)
        ]
        RemoteLine.objects.bulk_create(rows, batch_size=1000)  # PostgreSQL: at most 65,535 parameters
    return True


def stamp(at: float | None) -> datetime:
    return datetime.fromtimestamp(at if at is not None else time.time(), UTC)


def result_of(event: Finished) -> str:
    fields = dataclasses.asdict(event)
    del fields["handle"]
    return json.dumps(fields)
