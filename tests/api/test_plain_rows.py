"""The list endpoints read their pages as plain rows (executions.api.common.PlainList): each
answers byte for byte what its DRF serializer answered over the same rows, nulls and odd
values included, on every page and with every filter."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Count
from django.utils import timezone
from rest_framework.mixins import ListModelMixin
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIRequestFactory

from executions import selectors, services
from executions.api.common import PlainList
from executions.api.runs import RunDetailSerializer, RunWaveSerializer
from executions.engine import Engine
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from observability.models import AssertionResult, ToolUse, TranscriptEntry
from tests.admin_fixtures import populate
from tests.api.conftest import token_client
from tests.executions.fakes import FakeRunner, Script
from tests.factories import task_list
from waves.api import TaskListViewSet
from waves.models import TaskList

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
ODD = 'é ü 中文 🙂 "quoted" \\ back\nslash <b>&amp;</b>\t\u2028'
ODD_JSON = {"nested": [1, 2.5, None, True, {"k": ODD}], "empty": {}, "big": 2**53 + 1, "neg": -0.0}


def world(teams) -> dict:
    """Rows with every nullable column null somewhere and set somewhere, odd text and JSON,
    times with and without microseconds."""
    red = teams[0]
    session = populate(2)  # agents, transcripts, tool uses, assertions (every link set)

    # A run taken to its end (audit, events, times, wall and task seconds), one failed step.
    chain = task_list(ODD[:30], keys=("a", "b", "c"), edges=[("b", "a"), ("c", "b")], team=red)
    done = services.run_start(chain)
    Engine(done, FakeRunner({"a": Script(lines=["out"]), "b": Script(exit_code=-9)})).execute()
    ExecutionRun.objects.filter(pk=done.pk).update(
        simulate_scale=0.001, cancel_requested_at=NOW.replace(microsecond=0), cancel_requested_by=ODD[:100],
        error=ODD, executor_pid=None, resumed_from=None,
    )  # fmt: skip
    resumed = ExecutionRun.objects.create(
        task_list=chain, status=RunStatus.PENDING, resumed_from=done, attempt=2, session=None
    )
    ExecutionRun.objects.filter(pk=done.pk).update(resumed_by=resumed)
    ExecutionRun.objects.create(task_list=chain, status=RunStatus.RUNNING, wall_seconds=10.0, task_seconds=0.01,
                                gate_wait_seconds=20.0)  # fmt: skip

    # Odd wave tasks: a for_each parent with instances, JSON items and outputs, a decision.
    a = WaveTask.objects.get(execution=done, key="a")
    services.wave_tasks_create(
        [WaveTask(wave_id=a.wave_id, task_id=a.task_id, execution=done, key=f"a[{i}]", parent=a, item_index=i,
                  item=item) for i, item in enumerate((ODD_JSON, None, "", [ODD]))]
    )  # fmt: skip
    WaveTask.objects.filter(pk=a.pk).update(
        outputs=ODD_JSON, approval_decision="approved", approved_by=ODD[:100], approved_at=NOW, error=ODD
    )

    # Audit and events: nulls and odd text.
    TaskStatusAudit.objects.create(
        wave_task=a, task_id=a.task_id, execution=done, attempt=3, previous_status=None, new_status=TaskStatus.LOST,
        changed_at=NOW, actor=None, reason=None,
    )  # fmt: skip
    TaskStatusAudit.objects.create(
        wave_task=a, task_id=a.task_id, execution=done, attempt=0, previous_status=TaskStatus.LOST,
        new_status=TaskStatus.QUEUED, changed_at=NOW.replace(microsecond=0), actor=ODD[:150], reason=ODD,
    )  # fmt: skip
    Event.objects.create(execution=done, type=ODD[:40], payload=ODD_JSON, created_at=NOW)
    Event.objects.create(execution=done, type="x", payload=[], created_at=NOW.replace(microsecond=0))

    # Agents: no heartbeat, no pid, odd host; a session still open and one closed.
    running = BuildAgentInstance.objects.filter(status=AgentStatus.RUNNING).order_by("pk")
    BuildAgentInstance.objects.filter(pk__in=running.values("pk")[:2]).update(
        last_heartbeat=None, pid=None, hostname=ODD[:200]
    )
    ConcurrentExecutionSession.objects.create(started_at=NOW, completed_at=NOW + timedelta(seconds=1))

    # Task lists: one without tasks, archived and replaced, with an odd description.
    old = task_list(ODD[:29], keys=(), description=ODD, max_parallelism=7)
    TaskList.objects.filter(pk=old.pk).update(archived_at=NOW, replaced_by=chain, source_format="pipeline")

    # Records without an agent or a step, and with every optional column set.
    populated = ExecutionRun.objects.filter(session=session).order_by("pk").first()
    wt = WaveTask.objects.filter(execution=populated).select_related("wave").first()
    links = dict(execution=populated, wave=wt.wave, task_id=None, wave_task=None, agent=None)
    TranscriptEntry.objects.create(**links, wave_number=None, instance_id="", sequence=2**40, entry_type="system",
                                   content=ODD, created_at=NOW)  # fmt: skip
    ToolUse.objects.create(**links, tool_name=ODD[:200], input=None, output=ODD_JSON, is_error=True,
                           is_blocked=True, start_time=NOW, end_time=NOW + timedelta(microseconds=1),
                           duration_ms=None)  # fmt: skip
    ToolUse.objects.create(**{**links, "wave_task": wt, "task_id": wt.task_id}, tool_name="", input=[ODD],
                           output="", start_time=NOW.replace(microsecond=0), end_time=None, duration_ms=0)  # fmt: skip
    AssertionResult.objects.create(**links, name=ODD[:200], passed=False, message=ODD, created_at=NOW)
    return {"run": done.pk, "running": populated.pk, "wave": wt.wave_id, "other_wave": a.wave_id}


def paths(w: dict) -> list[str]:
    run, wave = w["run"], w["wave"]
    return [
        "executions/", "executions/?status=failed", "executions/?limit=2&offset=1",
        f"executions/{run}/tasks/", f"executions/{run}/tasks/?status=failed", f"executions/{run}/tasks/?limit=3",
        f"executions/{run}/timeline/", f"executions/{run}/timeline/?limit=2&offset=2",
        "agents/active/", f"agents/active/?execution={w['running']}", f"executions/{w['running']}/agents/active/",
        f"executions/{run}/audit/", f"executions/{run}/audit/?limit=2", f"executions/{run}/audit/?status=lost",
        f"executions/{run}/events/", f"executions/{run}/events/?limit=1",
        "sessions/", "sessions/?status=active",
        f"waves/{wave}/transcript/", f"waves/{wave}/transcript/?limit=2", f"waves/{wave}/transcript/?task=t0",
        f"waves/{wave}/tool-uses/", f"waves/{wave}/tool-uses/?limit=1", f"waves/{wave}/tool-uses/?is_error=true",
        f"waves/{wave}/assertions/", f"waves/{wave}/assertions/?passed=false",
        f"waves/{w['other_wave']}/transcript/",
        "task-lists/", "task-lists/?limit=1&offset=1", "task-lists/?archived=true", f"task-lists/?name={ODD[:3]}",
    ]  # fmt: skip


def follow(client, path: str, pages: int = 4) -> list[bytes]:
    """The body of `path` and of up to `pages` - 1 pages after it (by the `next` link)."""
    bodies, url = [], f"/api/v2/{path}"
    while url and len(bodies) < pages:
        response = client.get(url)
        assert response.status_code == 200, (url, response.content)
        bodies.append(response.content)
        url = response.json().get("next")
    return bodies


def test_every_list_answers_what_its_serializer_answered(teams, superuser, monkeypatch):
    w = world(teams)
    monkeypatch.setattr(timezone, "now", lambda: NOW + timedelta(seconds=12.3456789))
    client = token_client(superuser)
    fast = {path: follow(client, path) for path in paths(w)}
    monkeypatch.setattr(PlainList, "list", ListModelMixin.list)  # the serializers, as before
    monkeypatch.setattr(TaskListViewSet, "list", ListModelMixin.list)
    for path, bodies in fast.items():
        assert b'"results":[]' not in bodies[0], path
        assert follow(client, path) == bodies, path


def test_wave_progress_answers_what_its_serializer_answered_over_the_wave_progress_selector(teams, superuser):
    """The view reads the waves and their steps per status apart (two light queries instead
    of one grouped twice, for the page and its count)."""
    w = world(teams)
    for run in ExecutionRun.objects.filter(pk__in=(w["run"], w["running"])):
        for status in ("", "succeeded", "pending"):
            response = token_client(superuser).get(f"/api/v2/executions/{run.pk}/waves/", {"status": status})
            waves = selectors.wave_progress(run).filter(**({"status": status} if status else {}))
            expected = JSONRenderer().render(RunWaveSerializer(waves, many=True).data)
            assert JSONRenderer().render(response.json()["results"]) == expected, (run.pk, status)
            assert b'"results":[]' not in response.content or status


def test_the_rows_hold_nulls_and_odd_values(teams, superuser):
    """The comparison above is over rows that have them."""
    w = world(teams)
    client = token_client(superuser)
    tools = client.get(f"/api/v2/waves/{w['wave']}/tool-uses/").json()["results"]
    assert {t["agent_id"] is None for t in tools} == {True, False}
    assert {t["end_time"] is None for t in tools} == {True, False}
    runs = client.get("/api/v2/executions/").json()["results"]
    assert {r["started_at"] is None for r in runs} == {True, False}
    assert any(r["error"] == ODD for r in runs) and any(r["speedup"] is None for r in runs)
    audit = client.get(f"/api/v2/executions/{w['run']}/audit/?limit=1000").json()["results"]
    assert any(row["previous_status"] is None and row["actor"] is None for row in audit)
    agents = client.get("/api/v2/agents/active/").json()["results"]
    assert any(a["last_heartbeat"] is None and a["pid"] is None for a in agents)


@pytest.mark.parametrize("ids_max", [selectors.SUMMARY_IDS_MAX, 1])  # by ids; grouped in SQL
def test_a_session_summary_counts_as_one_query_per_figure_did(teams, member, superuser, monkeypatch, ids_max):
    """The summary reads the session's runs once, the task lists, the runs per status and the
    totals of waves, steps and agents over the runs the user may see."""
    monkeypatch.setattr(selectors, "SUMMARY_IDS_MAX", ids_max)
    w = world(teams)
    other = task_list("second", keys=("x",), team=teams[0])
    for user in (member, superuser):
        for session in ConcurrentExecutionSession.objects.all():
            ExecutionRun.objects.create(task_list=other, status=RunStatus.CANCELLED, session=session)
            response = token_client(user).get(f"/api/v2/sessions/{session.pk}/summary/")
            if response.status_code == 404:
                continue
            mine = selectors.visible_runs(user).filter(session=session)
            by_status = dict(mine.order_by().values_list("status").annotate(Count("pk")))
            lists = mine.order_by("task_list__title", "task_list_id").values_list(
                "task_list_id", "task_list__title"
            )
            body = response.json()
            assert body["task_lists"] == [{"id": pk, "title": title} for pk, title in dict.fromkeys(lists)]
            assert body["executions"] == {**dict.fromkeys(RunStatus.values, 0), **by_status}
            assert body["execution_count"] == mine.count() > 0, w
            assert body["total_waves"] == ParallelExecutionWave.objects.filter(execution__in=mine).count()
            parents = WaveTask.objects.filter(parent__isnull=False).values("parent_id")  # fan-outs: their instances count
            assert body["total_tasks"] == WaveTask.objects.filter(execution__in=mine).exclude(pk__in=parents).count()
            assert body["total_agents"] == BuildAgentInstance.objects.filter(execution__in=mine).count()


def test_a_run_detail_answers_what_its_serializer_answered(teams, superuser):
    w = world(teams)
    request = APIRequestFactory().get("/")
    for run in ExecutionRun.objects.select_related("task_list"):
        response = token_client(superuser).get(f"/api/v2/executions/{run.pk}/")
        context = {"request": request, "steps": selectors.run_step_counts(run)}
        assert response.content == JSONRenderer().render(RunDetailSerializer(run, context=context).data), w
