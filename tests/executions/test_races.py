"""Races between processes and connections: approvals against the engine reaching a gate,
two resumes of one run, two executors claiming one run. Real second connections (threads)
and real second processes, on SQLite and on PostgreSQL."""

import subprocess
import sys
import threading

import pytest
from django.db import connection, transaction

from executions import services
from executions.models import ExecutionRun, RunStatus, TaskStatus, TaskStatusAudit, WaveTask
from executions.steps import Node, load_steps
from executions.writes import Writes
from tests.conftest import ROOT
from tests.executions.fakes import FakeRunner, Script
from tests.factories import task_list
from waves.models import Task

pytestmark = pytest.mark.django_db(transaction=True)
S = TaskStatus


def gated_run():
    tl = task_list(keys=("gate",))
    Task.objects.filter(key="gate").update(approval=True)
    run = services.run_start(tl)
    loaded = load_steps(run)
    nodes = {key: Node(wt, task) for key, (wt, task) in loaded.rows.items()}
    return run, Writes(run, nodes), nodes["gate"]


def in_thread(fn):
    """Run fn on a connection of its own; returns the thread and a box for its result."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as exc:  # reported to the test
            box["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def audit(run, key):
    rows = TaskStatusAudit.objects.filter(execution=run, wave_task__key=key).order_by("id")
    return [(r.new_status, r.actor) for r in rows]


def test_an_approval_made_while_the_engine_reaches_the_gate_waits_for_it_and_is_not_lost():
    run, writes, gate = gated_run()
    found = []
    with transaction.atomic():
        writes.gate(gate)
        writes.flush(lambda *decided: found.append(decided))  # reads the decision, moves to waiting
        approver, box = in_thread(lambda: services.step_decide(run, "gate", approve=True, actor="ann"))
        approver.join(0.5)
        assert approver.is_alive(), "the approval went through while the engine held the gate"
    approver.join(30)
    assert "error" not in box, box
    assert found == []
    assert WaveTask.objects.get(execution=run, key="gate").status == S.QUEUED
    assert audit(run, "gate") == [("pending", None), ("waiting_approval", None), ("queued", "ann")]


def test_an_approval_committed_before_the_engine_reaches_the_gate_is_acted_on():
    run, writes, gate = gated_run()
    approver, box = in_thread(lambda: services.step_decide(run, "gate", approve=False, actor="bob"))
    approver.join(30)
    assert "error" not in box, box
    found = []
    with transaction.atomic():
        writes.gate(gate)
        writes.flush(lambda *decided: found.append(decided))
    assert found == [("gate", "rejected", "bob")]
    assert WaveTask.objects.get(execution=run, key="gate").status == S.PENDING, "it never waited"


RACER = """
import os, sys, time, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
sys.path.insert(0, {root!r})
django.setup()
from pathlib import Path
from django.core.management import execute_from_command_line
from executions import services
barrier, me = Path(sys.argv[1]), sys.argv[2]

def meet(real):
    def wrapper(*args, **kwargs):
        # Both racers get here past every check that reads first; then both write.
        (barrier / me).touch()
        deadline = time.time() + 30
        while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.005)
        return real(*args, **kwargs)
    return wrapper

services.{patched} = meet(services.{patched})
execute_from_command_line(["manage.py", *sys.argv[3:]])
"""


def race(child_env, tmp_path, patched: str, *argv) -> list[subprocess.CompletedProcess]:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    code = RACER.format(root=str(ROOT), patched=patched)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(barrier), name, *map(str, argv)],
            env=child_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for name in ("one", "two")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]


def failed_run():
    tl = task_list(keys=("a",))
    run = services.run_start(tl)
    from executions.engine import Engine

    Engine(run, FakeRunner({"a": Script(exit_code=1)})).execute()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    return run


def test_two_processes_resuming_one_run_at_once_only_one_goes_ahead(child_env, tmp_path):
    run = failed_run()
    results = race(child_env, tmp_path, "_options", "run_tasklist", "--resume", run.pk, "--json")
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [(r.returncode, r.stderr[-2000:]) for r in results]
    refused = next(r for r in results if r.returncode == 2)
    assert f"run {run.pk} was" in refused.stderr and "resume" in refused.stderr
    run.refresh_from_db()
    assert ExecutionRun.objects.filter(resumed_from=run).count() == 1
    assert run.resumed_by == ExecutionRun.objects.get(resumed_from=run)


def test_two_executors_claiming_one_run_at_once_only_one_runs_it(child_env, tmp_path):
    tl = task_list(keys=("a", "b"))
    run = services.run_start(tl)
    results = race(child_env, tmp_path, "reap_abandoned_runs", "execute_run", run.pk, "--json")
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [(r.returncode, r.stderr[-500:]) for r in results]
    refused = next(r for r in results if r.returncode == 2)
    # The loser finds it running, or already ended when the winner was that fast.
    assert f"run {run.pk} cannot be started: it is " in refused.stderr
    assert "(executor pid" in refused.stderr
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert WaveTask.objects.get(execution=run, key="a").attempt == 1
