"""A small soak: three runs at once, each by its own executor process on two Celery workers,
against PostgreSQL and Redis, while websocket clients on two daphne processes watch them.
`benchmarks/bench_celery.py --soak` is the same at scale (and times it).

Every client gets every event of the run it watches, once, in id order; no audit row is lost;
statistics equal a recompute; the runs share one session whose peaks are those of the records.
"""

import asyncio
import subprocess
import sys

import pytest
from django.contrib.auth.models import Group, User
from django.forms.models import model_to_dict
from rest_framework.authtoken.models import Token

from executions import services
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    RunStatus,
    TaskStatusAudit,
    WaveTask,
)
from observability import services as observability
from observability.models import WaveStatistics
from tests.conftest import ROOT
from tests.executions.helpers import assert_audit_replays
from tests.factories import task_list
from tests.live.test_end_to_end import listen
from tests.servers import Daphne
from waves.models import Task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RUNS, CLIENTS = 3, 9


def highest(moves) -> int:
    """The highest running sum of (time, +1/-1) moves, an end before a start at one instant."""
    peak = current = 0
    for _, d in sorted(moves):
        current += d
        peak = max(peak, current)
    return peak


def test_runs_on_two_workers_watched_by_clients_lose_nothing(tmp_path, celery_env, workers):
    team = Group.objects.create(name="soak")
    user = User.objects.create_user("soak", password="pw")
    user.groups.add(team)
    token = Token.objects.create(user=user).key
    keys = [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)]
    edges = [(f"b{i}", f"a{j}") for i in range(3) for j in range(3)]
    runs = []
    for n in range(RUNS):
        tl = task_list(f"soak{n}", team=team, keys=keys, edges=edges, max_parallelism=3)
        Task.objects.filter(task_list=tl).update(
            command="""echo step; echo '{"type": "assertion", "name": "ok", "passed": true}' >> "$TIDEWATCH_EVENTS"; sleep 0.2"""
        )
        runs.append(services.run_start(tl, backend="celery"))
    workers(), workers()
    servers = [Daphne(celery_env, tmp_path / "daphne.log") for _ in range(2)]

    async def scenario():
        inboxes = [[] for _ in range(CLIENTS)]
        listeners = [
            asyncio.create_task(
                listen(servers[i % 2].url(f"/ws/executions/{runs[i % RUNS].pk}/"), token, inboxes[i], timeout=240)
            )
            for i in range(CLIENTS)
        ]
        while not all(inboxes):  # every snapshot in: the sockets are live
            await asyncio.sleep(0.02)
        procs = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "execute_run", str(run.pk), "--json"],
                env=celery_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            for run in runs
        ]
        outs = await asyncio.gather(*(asyncio.to_thread(p.communicate, timeout=240) for p in procs))
        assert all(p.returncode == 0 for p in procs), outs
        await asyncio.gather(*listeners)
        return inboxes

    try:
        inboxes = asyncio.run(scenario())
    finally:
        for server in servers:
            server.stop()
    for i, inbox in enumerate(inboxes):
        run = runs[i % RUNS]
        snapshot, events = inbox[0], [m for m in inbox if "id" in m]
        assert snapshot["type"] == "snapshot"
        logged = Event.objects.filter(execution=run, id__gt=snapshot["after"]).order_by("id")
        assert [e["id"] for e in events] == list(logged.values_list("id", flat=True))
    ids = [run.pk for run in runs]
    for run in ExecutionRun.objects.filter(pk__in=ids):
        assert run.status == RunStatus.SUCCEEDED
        assert_audit_replays(run)
        assert WaveTask.objects.filter(execution=run, status="succeeded").count() == len(keys)
        before = [model_to_dict(s, exclude=["id", "updated_at"]) for s in WaveStatistics.objects.filter(execution=run)]
        observability.statistics_recompute(execution_id=run.pk)
        after = [model_to_dict(s, exclude=["id", "updated_at"]) for s in WaveStatistics.objects.filter(execution=run)]
        assert before == after and before
    sessions = set(ExecutionRun.objects.filter(pk__in=ids).values_list("session_id", flat=True))
    assert len(sessions) == 1
    session = ConcurrentExecutionSession.objects.get(pk=sessions.pop())
    agents = [
        move
        for started, ended in BuildAgentInstance.objects.filter(execution_id__in=ids).values_list(
            "started_at", "completed_at"
        )
        for move in ((started, 1), (ended, -1))
    ]
    running = [
        (at, 1 if new == "running" else -1)
        for at, previous, new in TaskStatusAudit.objects.filter(execution_id__in=ids).values_list(
            "changed_at", "previous_status", "new_status"
        )
        if (new == "running") != (previous == "running")
    ]
    # Two solo workers run one attempt each at a time: that is the most that ran at once.
    assert session.peak_concurrent_agents == highest(agents) <= 2
    assert session.peak_concurrent_tasks == highest(running) <= 2
    assert (session.running_tasks, session.running_agents, session.status) == (0, 0, "completed")
