"""/api/v2/ run endpoints (executions/api.py): start, list, detail, tasks, waves, timeline,
active agents, audit, events, sessions, resume, cancel, approve, reject; the team rule, bad
ids and parameters, and query counts that do not grow with the rows."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from executions import selectors, services
from executions.engine import Engine
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    RunStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from tests.api.conftest import client_for, token_client
from tests.conftest import database_url_of_current_connection
from tests.executions.fakes import FakeRunner, Script
from tests.executions.helpers import pid_alive, wait_for
from tests.factories import run_with_waves, task_list
from waves.models import Task

pytestmark = pytest.mark.django_db
S = TaskStatus
API = "/api/v2"


# --- builders ------------------------------------------------------------------------------------


def chain(team, title="etl", keys=("a", "b", "c")):
    """A list whose steps run one after the other (one wave each)."""
    return task_list(title, keys=keys, edges=list(zip(keys[1:], keys, strict=False)), team=team)


def executed(tl, scripts=None):
    """A run of `tl` taken to its end by the real engine with a scripted runner."""
    run = services.run_start(tl)
    Engine(run, FakeRunner(scripts)).execute()
    return ExecutionRun.objects.get(pk=run.pk)


def start_running(run, keys, *, seconds_ago=5):
    """Move these steps to running, each with a running agent, as an executor would."""
    at = timezone.now() - timedelta(seconds=seconds_ago)
    rows = list(WaveTask.objects.filter(execution=run, key__in=keys).select_related("wave"))
    services.transition(rows, S.QUEUED, expected=S.PENDING, now=at)
    services.transition(rows, S.RUNNING, expected=S.QUEUED, now=at, started_at=at, attempt=1)
    return services.agents_start(
        [
            BuildAgentInstance(
                instance_id=f"agent-{run.pk}-{wt.key}",
                execution=run,
                wave=wt.wave,
                task_id=wt.task_id,
                wave_task=wt,
                started_at=at,
                last_heartbeat=at,
                hostname="here",
                pid=4242,
            )  # fmt: skip
            for wt in rows
        ]
    )


@pytest.fixture
def red_list(teams):
    return chain(teams[0])


@pytest.fixture
def red_run(red_list):
    """A run of the red team's list: a ok, b failed, c skipped."""
    return executed(red_list, {"b": Script(exit_code=1)})


@pytest.fixture
def spawned(monkeypatch):
    """Record the runs the API asks to execute instead of starting processes."""
    calls = []
    monkeypatch.setattr(services, "run_spawn", lambda run: calls.append(run.pk) or 99999)
    return calls


def get(user, path, **params):
    return client_for(user).get(f"{API}/{path}", params)


def post(user, path, body=None):
    return client_for(user).post(f"{API}/{path}", body, format="json")


# --- the team rule, every endpoint -------------------------------------------------------------

RUN_READS = ("executions/{id}/", "executions/{id}/tasks/", "executions/{id}/waves/", "executions/{id}/timeline/",
             "executions/{id}/agents/active/", "executions/{id}/audit/", "executions/{id}/events/")  # fmt: skip
LISTS = ("executions/", "agents/active/", "sessions/")


def test_every_read_is_refused_to_anonymous_and_404_to_other_teams(
    red_run, member, reader, outsider, superuser
):
    start_running(run_with_waves(red_run.task_list, [["a"]]), ["a"])
    session_id = red_run.session_id
    assert session_id is not None
    paths = [p.format(id=red_run.pk) for p in RUN_READS] + [f"sessions/{session_id}/summary/"]
    for path in paths:
        assert APIClient().get(f"{API}/{path}").status_code in (401, 403), path
        for user in (member, reader, superuser):
            assert get(user, path).status_code == 200, (path, user)
        assert get(outsider, path).status_code == 404, path
    for path in LISTS:
        assert APIClient().get(f"{API}/{path}").status_code in (401, 403), path
        assert get(member, path).json()["count"] >= 1, path
        assert get(superuser, path).json()["count"] >= 1, path
        assert get(outsider, path).json()["count"] == 0, path


def test_tokens_work_too(red_run, member):
    response = token_client(member).get(f"{API}/executions/{red_run.pk}/")
    assert response.status_code == 200 and response.json()["id"] == red_run.pk


def test_every_write_is_refused_to_anonymous_readers_and_other_teams(
    red_run, red_list, reader, outsider, spawned
):
    writes = [f"task-lists/{red_list.pk}/runs/", f"executions/{red_run.pk}/resume/",
              f"executions/{red_run.pk}/cancel/", f"executions/{red_run.pk}/steps/a/approve/",
              f"executions/{red_run.pk}/steps/a/reject/"]  # fmt: skip
    runs = ExecutionRun.objects.count()
    for path in writes:
        assert APIClient().post(f"{API}/{path}", {}, format="json").status_code in (401, 403), path
        assert post(reader, path, {}).status_code == 403, path
        assert post(outsider, path, {}).status_code == 404, path
    assert ExecutionRun.objects.count() == runs and spawned == []


def test_a_session_user_needs_the_csrf_token_to_write(red_list, member, spawned):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(member)
    refused = client.post(f"{API}/task-lists/{red_list.pk}/runs/", {}, format="json")
    assert refused.status_code == 403 and "csrf" in refused.content.decode().lower()
    assert client.get(f"{API}/executions/").status_code == 200


# --- runs: list and detail -----------------------------------------------------------------------


def test_the_run_list_and_detail_show_the_run_its_speedup_and_steps_per_status(red_run, member):
    listed = get(member, "executions/").json()
    assert listed["count"] == 1
    row = listed["results"][0]
    assert (row["id"], row["status"], row["task_list"], row["task_list_name"]) == (
        red_run.pk, "failed", red_run.task_list_id, "etl",
    )  # fmt: skip
    assert row["url"].endswith(f"/api/v2/executions/{red_run.pk}/")
    detail = get(member, f"executions/{red_run.pk}/").json()
    assert detail["steps"] == {**dict.fromkeys(S.values, 0), "succeeded": 1, "failed": 1, "skipped": 1}
    assert (detail["total"], detail["done"], detail["percent"]) == (3, 2, 66)
    assert detail["speedup"] == selectors.speedup(red_run) and detail["wall_seconds"] == red_run.wall_seconds
    assert detail["links"]["waves"].endswith(f"/executions/{red_run.pk}/waves/")
    for link in detail["links"].values():
        assert client_for(member).get(link).status_code == 200, link


def test_runs_filter_by_status_task_list_and_session(teams, red_run, member):
    other = chain(teams[0], "other", keys=("x",))
    second = executed(other)
    assert [r["id"] for r in get(member, "executions/").json()["results"]] == [second.pk, red_run.pk]
    assert [r["id"] for r in get(member, "executions/", status="failed").json()["results"]] == [red_run.pk]
    assert [r["id"] for r in get(member, "executions/", task_list=other.pk).json()["results"]] == [second.pk]
    by_session = get(member, "executions/", session=red_run.session_id).json()["results"]
    assert red_run.pk in [r["id"] for r in by_session]


@pytest.mark.parametrize(
    ("path", "name"),
    [("executions/abc/", "id"), ("executions/0/", "id"), (f"executions/{2**63}/", "id"),
     ("executions/1.5/tasks/", "execution_id"), ("executions/x/waves/", "execution_id"),
     ("executions/-1/timeline/", "execution_id"), ("executions/abc/agents/active/", "execution_id"),
     (f"executions/{2**64}/audit/", "execution_id"), ("executions/١/events/", "execution_id"),
     ("sessions/abc/summary/", "session_id")],
)  # fmt: skip
def test_a_bad_id_is_400_naming_it(member, path, name):
    response = get(member, path)
    assert response.status_code == 400 and name in response.json(), response.content


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [("executions/", {"status": "done"}, "status"), ("executions/", {"task_list": "abc"}, "task_list"),
     ("executions/", {"session": str(2**63)}, "session"), ("executions/", {"limit": "0"}, "limit"),
     ("executions/", {"offset": "-1"}, "offset"),
     ("executions/{id}/tasks/", {"status": "great"}, "status"), ("executions/{id}/tasks/", {"wave": "-1"}, "wave"),
     ("executions/{id}/tasks/", {"wave": str(2**31)}, "wave"), ("executions/{id}/tasks/", {"key": "a\x00"}, "key"),
     ("executions/{id}/waves/", {"status": "x"}, "status"),
     ("executions/{id}/audit/", {"status": "x"}, "status"), ("executions/{id}/audit/", {"cursor": "zz"}, "cursor"),
     ("executions/{id}/audit/", {"limit": "5000"}, "limit"),
     ("executions/{id}/events/", {"after": "x"}, "after"), ("executions/{id}/events/", {"after": "-1"}, "after"),
     ("executions/{id}/events/", {"after": str(2**63)}, "after"),
     ("agents/active/", {"execution": "abc"}, "execution"), ("agents/active/", {"task_list": "0"}, "task_list"),
     ("sessions/", {"status": "x"}, "status")],
)  # fmt: skip
def test_a_bad_parameter_is_400_naming_it(red_run, member, path, params, name):
    response = get(member, path.format(id=red_run.pk), **params)
    assert response.status_code == 400 and name in response.json(), response.content


def test_a_forged_cursor_position_is_400_not_a_database_error(red_run, member):
    import base64

    for position in ("abc", str(2**70)):
        forged = base64.b64encode(f"p={position}".encode()).decode()
        response = get(member, f"executions/{red_run.pk}/audit/", cursor=forged)
        assert response.status_code == 400 and "cursor" in response.json()


# --- tasks, waves, timeline ---------------------------------------------------------------------


def test_tasks_show_status_attempt_wave_times_exit_code_outputs_and_error(red_list, member):
    run = executed(red_list, {"a": Script(outputs={"n": 1}), "b": Script(exit_code=3)})
    rows = get(member, f"executions/{run.pk}/tasks/").json()["results"]
    assert [(r["key"], r["wave_number"], r["status"]) for r in rows] == [
        ("a", 1, "succeeded"), ("b", 2, "failed"), ("c", 3, "skipped"),
    ]  # fmt: skip
    a, b, c = rows
    assert (a["attempt"], a["exit_code"], a["outputs"], a["title"], a["kind"]) == (
        1,
        0,
        {"n": 1},
        "A",
        "task",
    )
    assert a["duration_seconds"] is not None and a["started_at"].endswith("Z")
    assert b["exit_code"] == 3 and b["error"]
    assert c["started_at"] is None and c["duration_seconds"] is None
    only = get(member, f"executions/{run.pk}/tasks/", status="failed").json()["results"]
    assert [r["key"] for r in only] == ["b"]
    assert [r["key"] for r in get(member, f"executions/{run.pk}/tasks/", wave=3).json()["results"]] == ["c"]


def test_wave_progress_counts_steps_per_status_with_for_each_instances_and_agents(teams, member):
    tl = task_list("fan", keys=("a", "b", "c"), team=teams[0])
    run = run_with_waves(tl, [["a", "b"], ["c"]])
    parent = WaveTask.objects.get(execution=run, key="a")
    services.wave_tasks_create(
        [WaveTask(wave_id=parent.wave_id, task_id=parent.task_id, execution=run, key=f"a[{i}]", parent=parent,
                  item_index=i, item=i) for i in range(3)]
    )  # fmt: skip
    start_running(run, ["a[0]", "a[1]"])
    b = WaveTask.objects.get(execution=run, key="b")
    services.transition(b, S.RUNNING, expected=S.PENDING, started_at=timezone.now())
    services.transition(b, S.FAILED, expected=S.RUNNING, completed_at=timezone.now())
    waves = get(member, f"executions/{run.pk}/waves/").json()["results"]
    first, second = waves
    assert first["wave_number"] == 0 and second["wave_number"] == 1
    # a is counted by its three instances, not itself.
    assert (first["task_count"], first["running_count"], first["pending_count"], first["failed_count"]) == (
        4,
        2,
        1,
        1,
    )
    assert (first["completed_count"], first["done"], first["percent"], first["pass_rate"]) == (0, 0, 0, 0.0)
    assert first["agent_count"] == 2 and first["execution_status"] == "running"
    assert first["task_list_title"] == "fan"
    assert (second["task_count"], second["pending_count"], second["agent_count"], second["pass_rate"]) == (
        1,
        1,
        0,
        None,
    )
    detail = get(member, f"executions/{run.pk}/").json()
    assert detail["total"] == 5 and detail["steps"]["running"] == 2


def test_wave_progress_of_a_finished_run(red_run, member):
    waves = get(member, f"executions/{red_run.pk}/waves/").json()["results"]
    assert [(w["wave_number"], w["status"]) for w in waves] == [
        (1, "succeeded"),
        (2, "failed"),
        (3, "skipped"),
    ]
    assert [(w["completed_count"], w["failed_count"], w["skipped_count"]) for w in waves] == [
        (1, 0, 0), (0, 1, 0), (0, 0, 1),
    ]  # fmt: skip
    assert [w["pass_rate"] for w in waves] == [1.0, 0.0, None]
    assert [w["percent"] for w in waves] == [100, 0, 100]
    assert [w["agent_count"] for w in waves] == [1, 1, 0]
    assert [
        w["status"] for w in get(member, f"executions/{red_run.pk}/waves/", status="failed").json()["results"]
    ] == ["failed"]


def test_the_timeline_lists_tasks_by_start_with_queue_time_and_duration(teams, member):
    tl = task_list("par", keys=("a", "b", "c"), team=teams[0])
    run = run_with_waves(tl, [["a", "b", "c"]])
    start_running(run, ["b"], seconds_ago=20)
    start_running(run, ["a"], seconds_ago=10)
    rows = get(member, f"executions/{run.pk}/timeline/").json()["results"]
    assert [r["key"] for r in rows] == ["b", "a", "c"]
    b = rows[0]
    assert b["status"] == "running" and b["queued_at"] and b["started_at"] and b["duration_seconds"] is None
    assert rows[2]["queued_at"] is None and rows[2]["started_at"] is None


# --- active agents ------------------------------------------------------------------------------


def test_active_agents_of_a_run_and_of_every_visible_run(teams, member, outsider, superuser):
    red = run_with_waves(chain(teams[0]), [["a"], ["b"], ["c"]])
    blue = run_with_waves(chain(teams[1], "blue"), [["a", "b", "c"]])
    start_running(red, ["a"], seconds_ago=30)
    start_running(blue, ["a", "b"])
    rows = get(member, f"executions/{red.pk}/agents/active/").json()["results"]
    assert len(rows) == 1
    agent = rows[0]
    assert (agent["task_key"], agent["task_title"], agent["wave_number"], agent["execution"]) == (
        "a",
        "A",
        0,
        red.pk,
    )
    assert (agent["status"], agent["hostname"], agent["task_list_title"]) == ("running", "here", "etl")
    assert 29 <= agent["running_seconds"] < 120 and agent["last_heartbeat"]
    assert [r["execution"] for r in get(member, "agents/active/").json()["results"]] == [red.pk]
    assert {r["execution"] for r in get(outsider, "agents/active/").json()["results"]} == {blue.pk}
    everyone = get(superuser, "agents/active/").json()
    assert everyone["count"] == 3 and everyone["results"][0]["execution"] == red.pk  # oldest first
    assert get(superuser, "agents/active/", execution=blue.pk).json()["count"] == 2
    assert get(superuser, "agents/active/", task_list=red.task_list_id).json()["count"] == 1
    # Finished agents are not active.
    services.agents_finish(
        [(a, "succeeded", 0, timezone.now()) for a in BuildAgentInstance.objects.filter(execution=red)]
    )
    assert get(member, f"executions/{red.pk}/agents/active/").json()["count"] == 0


# --- audit and events ---------------------------------------------------------------------------


def test_the_audit_pages_by_cursor_in_order_and_filters(red_run, member):
    expected = list(
        TaskStatusAudit.objects.filter(execution=red_run).order_by("id").values_list("id", flat=True)
    )
    assert len(expected) > 4
    seen, url = [], f"{API}/executions/{red_run.pk}/audit/?limit=2"
    while url:
        page = client_for(member).get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert seen == expected
    rows = get(member, f"executions/{red_run.pk}/audit/", status="failed").json()["results"]
    assert [(r["key"], r["previous_status"], r["new_status"]) for r in rows] == [("b", "running", "failed")]
    first = get(member, f"executions/{red_run.pk}/audit/", key="a").json()["results"][0]
    assert (first["previous_status"], first["new_status"], first["attempt"]) == (None, "pending", 0)


def test_events_after_an_id_in_order(red_run, member):
    ids = list(Event.objects.filter(execution=red_run).order_by("id").values_list("id", flat=True))
    assert len(ids) > 3
    rows = get(member, f"executions/{red_run.pk}/events/", after=ids[1]).json()["results"]
    assert [r["id"] for r in rows] == ids[2:]
    assert {"id", "type", "payload", "created_at"} <= set(rows[0])
    assert get(member, f"executions/{red_run.pk}/events/", after=ids[-1]).json()["results"] == []
    assert [
        r["id"] for r in get(member, f"executions/{red_run.pk}/events/", after=0).json()["results"]
    ] == ids
    typed = get(member, f"executions/{red_run.pk}/events/", type="run.update").json()["results"]
    assert typed and {r["type"] for r in typed} == {"run.update"}


# --- sessions -----------------------------------------------------------------------------------


def test_sessions_are_seen_through_their_runs_and_summarised_over_visible_runs(
    teams, member, outsider, superuser
):
    now = timezone.now()
    session = ConcurrentExecutionSession.objects.create(started_at=now, peak_concurrent_agents=5)
    red = run_with_waves(chain(teams[0]), [["a"], ["b", "c"]], status=RunStatus.SUCCEEDED)
    red2 = run_with_waves(chain(teams[0], "etl2", keys=("x",)), [["x"]])
    blue = run_with_waves(chain(teams[1], "blue", keys=("p", "q")), [["p", "q"]])
    ExecutionRun.objects.filter(pk__in=[red.pk, red2.pk, blue.pk]).update(session=session)
    ConcurrentExecutionSession.objects.create(started_at=now)  # no run: seen by nobody
    start_running(red2, ["x"])
    assert [s["id"] for s in get(member, "sessions/").json()["results"]] == [session.pk]
    assert get(superuser, "sessions/").json()["count"] == 1
    summary = get(member, f"sessions/{session.pk}/summary/").json()
    assert summary["session_id"] == session.pk and summary["peak_concurrent_agents"] == 5
    assert [t["title"] for t in summary["task_lists"]] == ["etl", "etl2"]
    assert (summary["execution_count"], summary["total_waves"], summary["total_tasks"], summary["total_agents"]) == (
        2, 3, 4, 1,
    )  # fmt: skip
    assert summary["executions"]["succeeded"] == 1 and summary["executions"]["running"] == 1
    assert client_for(member).get(summary["runs"]).json()["count"] == 2
    theirs = get(outsider, f"sessions/{session.pk}/summary/").json()
    assert [t["title"] for t in theirs["task_lists"]] == ["blue"] and theirs["total_tasks"] == 2
    assert get(superuser, f"sessions/{session.pk}/summary/").json()["execution_count"] == 3
    assert get(member, "sessions/", status="active").json()["count"] == 1
    assert get(member, "sessions/", status="completed").json()["count"] == 0


# --- start --------------------------------------------------------------------------------------


def test_starting_a_run_lays_it_out_and_hands_it_to_an_executor(red_list, member, spawned):
    response = post(member, f"task-lists/{red_list.pk}/runs/", {"max_parallelism": 2, "schedule": "fifo"})
    assert response.status_code == 202, response.content
    body = response.json()
    run = ExecutionRun.objects.get(pk=body["run_id"])
    assert body["url"].endswith(f"/api/v2/executions/{run.pk}/") and response["Location"] == body["url"]
    assert spawned == [run.pk]
    assert (run.status, run.max_parallelism, run.schedule, run.task_list_id) == (
        "pending",
        2,
        "fifo",
        red_list.pk,
    )
    assert WaveTask.objects.filter(execution=run).count() == 3
    simulated = post(member, f"task-lists/{red_list.pk}/runs/", {"simulate": 0.5}).json()
    assert ExecutionRun.objects.get(pk=simulated["run_id"]).simulate_scale == 0.5
    plain = client_for(member).post(f"{API}/task-lists/{red_list.pk}/runs/")  # no body at all
    assert (
        plain.status_code == 202 and ExecutionRun.objects.get(pk=plain.json()["run_id"]).max_parallelism == 4
    )


@pytest.mark.parametrize(
    ("body", "name"),
    [({"max_parallelism": 0}, "max_parallelism"), ({"max_parallelism": "many"}, "max_parallelism"),
     ({"max_parallelism": 10_001}, "max_parallelism"), ({"schedule": "random"}, "schedule"),
     ({"simulate": 0}, "simulate"), ({"simulate": -1}, "simulate"), ({"simulate": 1e9}, "simulate"),
     ({"parallelism": 3}, "parallelism"), ([1, 2], "non_field_errors")],
)  # fmt: skip
def test_bad_run_options_are_400_naming_them_and_start_nothing(red_list, member, spawned, body, name):
    response = post(member, f"task-lists/{red_list.pk}/runs/", body)
    assert response.status_code == 400 and name in response.json(), response.content
    assert ExecutionRun.objects.count() == 0 and spawned == []


def test_a_body_that_is_not_json_is_refused(red_list, member, spawned):
    client = client_for(member)
    bad = client.generic(
        "POST", f"{API}/task-lists/{red_list.pk}/runs/", "{nope", content_type="application/json"
    )
    assert bad.status_code == 400
    nan = client.generic(
        "POST", f"{API}/task-lists/{red_list.pk}/runs/", '{"simulate": NaN}', content_type="application/json"
    )
    assert nan.status_code == 400
    form = client.post(f"{API}/task-lists/{red_list.pk}/runs/", {"max_parallelism": "2"})  # multipart
    assert form.status_code == 415
    assert ExecutionRun.objects.count() == 0 and spawned == []


def test_a_run_the_service_refuses_is_400_with_its_reason(red_list, member, spawned):
    Task.objects.filter(task_list=red_list, key="b").update(command="")
    response = post(member, f"task-lists/{red_list.pk}/runs/", {})
    assert response.status_code == 400 and "have no command" in response.json()["detail"]
    assert ExecutionRun.objects.count() == 0 and spawned == []


def test_bad_and_unknown_task_list_ids(member, superuser, spawned):
    assert post(member, "task-lists/abc/runs/", {}).status_code == 400
    assert "task_list_id" in post(member, f"task-lists/{2**63}/runs/", {}).json()
    assert post(superuser, "task-lists/987654/runs/", {}).status_code == 404


def test_an_executor_that_cannot_start_leaves_no_run_waiting(red_list, member, monkeypatch):
    def broken(run):
        raise OSError("no more processes")

    monkeypatch.setattr(services, "run_spawn", broken)
    response = post(member, f"task-lists/{red_list.pk}/runs/", {})
    assert response.status_code == 503 and "no more processes" in response.json()["detail"]
    assert ExecutionRun.objects.get().status == RunStatus.CANCELLED


# --- resume -------------------------------------------------------------------------------------


def test_resume_lays_out_a_new_run_and_a_second_resume_is_a_conflict(red_run, member, spawned):
    response = post(member, f"executions/{red_run.pk}/resume/", {"max_parallelism": 1})
    assert response.status_code == 202, response.content
    new = ExecutionRun.objects.get(pk=response.json()["run_id"])
    assert (new.resumed_from_id, new.attempt, new.max_parallelism) == (red_run.pk, 2, 1)
    assert spawned == [new.pk]
    assert WaveTask.objects.get(execution=new, key="a").status == S.SUCCEEDED  # never re-run
    again = post(member, f"executions/{red_run.pk}/resume/")
    assert again.status_code == 409 and f"already resumed by run {new.pk}" in again.json()["detail"]
    assert spawned == [new.pk]


def test_resume_of_a_running_or_succeeded_run_is_a_conflict_with_the_reason(red_list, member, spawned):
    done = executed(red_list)
    refused = post(member, f"executions/{done.pk}/resume/")
    assert refused.status_code == 409 and "succeeded" in refused.json()["detail"]
    running = run_with_waves(red_list, [["a"], ["b"], ["c"]])
    ExecutionRun.objects.filter(pk=running.pk).update(executor_pid=1, executor_hostname="elsewhere",
                                                      executor_heartbeat=timezone.now())  # fmt: skip
    refused = post(member, f"executions/{running.pk}/resume/")
    assert refused.status_code == 409 and "still running" in refused.json()["detail"]
    assert post(member, f"executions/{running.pk}/resume/", {"schedule": "x"}).status_code == 400
    assert spawned == []


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_of_a_run_no_executor_owns_closes_it_and_an_ended_run_is_a_conflict(red_list, member):
    run = run_with_waves(red_list, [["a"], ["b"], ["c"]])
    response = post(member, f"executions/{run.pk}/cancel/")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["run_id"], body["status"]) == (run.pk, "cancelled") and body["cancel_requested_at"]
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.cancel_requested_by == "mia"
    again = post(member, f"executions/{run.pk}/cancel/")
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]


def test_cancel_of_an_owned_run_is_recorded_for_its_executor(red_list, member):
    run = run_with_waves(red_list, [["a"], ["b"], ["c"]])
    host, pid = services.executor_identity()
    ExecutionRun.objects.filter(pk=run.pk).update(executor_pid=pid, executor_hostname=host,
                                                  executor_heartbeat=timezone.now())  # fmt: skip
    response = post(member, f"executions/{run.pk}/cancel/")
    assert response.status_code == 202 and response.json()["status"] == "running"
    run.refresh_from_db()
    assert run.cancel_requested_at is not None and run.status == RunStatus.RUNNING
    assert post(member, f"executions/{run.pk}/cancel/").status_code == 202  # asked again: still going


# --- approve and reject -------------------------------------------------------------------------


@pytest.fixture
def gated(teams):
    tl = chain(teams[0], "gated", keys=("build", "gate", "ship"))
    Task.objects.filter(task_list=tl, key="gate").update(approval=True)
    run = run_with_waves(tl, [["build"], ["gate"], ["ship"]])
    gate = WaveTask.objects.get(execution=run, key="gate")
    services.transition(gate, S.WAITING_APPROVAL, expected=S.PENDING)
    return run


def test_approve_moves_a_waiting_step_on_and_records_who(gated, member):
    response = post(member, f"executions/{gated.pk}/steps/gate/approve/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["key"], body["status"], body["approval_decision"], body["approved_by"]) == (
        "gate", "queued", "approved", "mia",
    )  # fmt: skip
    audit = TaskStatusAudit.objects.filter(wave_task__key="gate", execution=gated).order_by("id").last()
    assert (audit.new_status, audit.actor, audit.reason) == ("queued", "mia", "approved")
    again = post(member, f"executions/{gated.pk}/steps/gate/reject/")
    assert again.status_code == 409 and "already approved by mia" in again.json()["detail"]


def test_reject_fails_the_step(gated, superuser):
    response = post(superuser, f"executions/{gated.pk}/steps/gate/reject/")
    assert response.status_code == 200 and response.json()["status"] == "failed"
    assert WaveTask.objects.get(execution=gated, key="gate").error == "rejected by root"


def test_a_step_that_is_no_gate_or_unknown_or_badly_named(gated, member):
    not_gate = post(member, f"executions/{gated.pk}/steps/build/approve/")
    assert not_gate.status_code == 409 and "not an approval step" in not_gate.json()["detail"]
    unknown = post(member, f"executions/{gated.pk}/steps/nope/approve/")
    assert unknown.status_code == 404 and "no step 'nope'" in unknown.json()["detail"]
    bad = post(member, f"executions/{gated.pk}/steps/a%00b/approve/")
    assert bad.status_code == 400 and "key" in bad.json()
    assert post(member, f"executions/{'x' * 221}/steps/gate/approve/").status_code == 400
    assert post(member, f"executions/{gated.pk}/steps/{'k' * 221}/approve/").status_code == 400


def test_a_gate_past_its_wait_is_a_conflict(gated, member):
    gate = WaveTask.objects.get(execution=gated, key="gate")
    services.transition(gate, S.CANCELLED, expected=S.WAITING_APPROVAL)
    response = post(member, f"executions/{gated.pk}/steps/gate/approve/")
    assert response.status_code == 409 and "is cancelled" in response.json()["detail"]


# --- queries do not grow with the rows ----------------------------------------------------------


def _runs(team, n):
    tl = chain(team, f"runs{n}", keys=("a",))
    for _ in range(n):
        run_with_waves(tl, [["a"]])
    return "executions/", {"task_list": tl.pk}


def _one_run(team, n, *, waves=False, agents=False):
    keys = tuple(f"k{i}" for i in range(n))
    tl = task_list(f"wide{n}{waves}{agents}", keys=keys, team=team)
    run = run_with_waves(tl, [[k] for k in keys] if waves else [list(keys)])
    if agents:
        start_running(run, keys)
    return run


def _sessions(team, n):
    tl = chain(team, f"s{n}", keys=("a",))
    for _ in range(n):
        run = run_with_waves(tl, [["a"]])
        session = ConcurrentExecutionSession.objects.create(started_at=timezone.now())
        ExecutionRun.objects.filter(pk=run.pk).update(session=session)
    return "sessions/", {}


def _summary(team, n):
    tl = chain(team, f"sum{n}", keys=("a", "b"))
    session = ConcurrentExecutionSession.objects.create(started_at=timezone.now())
    for _ in range(n):
        start_running(run_with_waves(tl, [["a", "b"]]), ["a"])
    ExecutionRun.objects.filter(task_list=tl).update(session=session)
    return f"sessions/{session.pk}/summary/", {}


BUILDERS = {
    "runs": _runs,
    "tasks": lambda team, n: (f"executions/{_one_run(team, n).pk}/tasks/", {}),
    "waves": lambda team, n: (f"executions/{_one_run(team, n, waves=True, agents=True).pk}/waves/", {}),
    "timeline": lambda team, n: (f"executions/{_one_run(team, n, agents=True).pk}/timeline/", {}),
    "run agents": lambda team, n: (f"executions/{_one_run(team, n, agents=True).pk}/agents/active/", {}),
    "agents": lambda team, n: ("agents/active/", {"execution": _one_run(team, n, agents=True).pk}),
    "audit": lambda team, n: (f"executions/{_one_run(team, n, agents=True).pk}/audit/", {}),
    "events": lambda team, n: (f"executions/{_one_run(team, n, agents=True).pk}/events/", {}),
    "sessions": _sessions,
    "summary": _summary,
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_queries_per_request_do_not_grow_with_the_rows(teams, member, name):
    counts = {}
    for n in (2, 20):
        if name == "sessions":  # the list is every visible session: start from none
            ConcurrentExecutionSession.objects.all().delete()
        path, params = BUILDERS[name](teams[0], n)
        client = client_for(member)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"{API}/{path}", params)
        assert response.status_code == 200, response.content
        body = response.json()
        if "results" in body:
            assert len(body["results"]) >= n, (name, n, len(body["results"]))
        counts[n] = len(queries)
    assert counts[2] == counts[20], counts


# --- a real executor ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_started_over_http_executes_in_a_detached_process(teams, member, monkeypatch, tmp_path):
    """The spawned `manage.py execute_run` inherits this process's environment: point it at
    the test database (run_spawn passes no environment of its own)."""
    monkeypatch.setenv("DATABASE_URL", database_url_of_current_connection())
    monkeypatch.setenv("TIDEWATCH_VAR_DIR", str(tmp_path / "child-var"))
    tl = chain(teams[0], "real", keys=("hello", "bye"))
    Task.objects.filter(task_list=tl, key="hello").update(command="echo hello")
    pids = []
    real_spawn = services.run_spawn
    monkeypatch.setattr(services, "run_spawn", lambda run: pids.append(real_spawn(run)) or pids[-1])
    response = token_client(member).post(f"{API}/task-lists/{tl.pk}/runs/", {}, format="json")
    assert response.status_code == 202, response.content
    run_id = response.json()["run_id"]
    try:
        wait_for(
            lambda: ExecutionRun.objects.get(pk=run_id).status in RunStatus.terminal(),
            timeout=60,
            what="the run's end",
        )
    finally:
        wait_for(lambda: not pid_alive(pids[0]), timeout=30, what="the executor's exit")
    detail = token_client(member).get(f"{API}/executions/{run_id}/").json()
    assert detail["status"] == "succeeded", json.dumps(detail)
    assert detail["steps"]["succeeded"] == 2 and detail["executor_pid"] == pids[0]
    tasks = token_client(member).get(f"{API}/executions/{run_id}/tasks/").json()["results"]
    assert [(t["key"], t["exit_code"]) for t in tasks] == [("hello", 0), ("bye", 0)]
