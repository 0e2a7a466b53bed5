"""The foundation: migrations, constraints, seed 000's query patterns and views on both databases."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from executions import services
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    ParallelExecutionWave,
    WaveStatus,
    WaveTask,
)
from observability.models import ActiveAgent, ToolUse, TranscriptEntry, WaveProgress, WaveStatistics
from tests.factories import run_with_waves, task_list
from waves.models import Task, TaskList, TaskTemplate

pytestmark = pytest.mark.django_db


def rows(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- migrations ----------------------------------------------------------------------------


def test_every_migration_is_applied_and_the_views_exist():
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    tables = set(connection.introspection.table_names(include_views=True))
    expected = {
        "task_template",
        "task_lists_v2",
        "tasks",
        "task_dependencies",
        "concurrent_execution_sessions",
        "task_list_execution_runs",
        "parallel_execution_waves",
        "wave_tasks",
        "build_agent_instances",
        "task_status_audit",
        "event_log",
        "transcript_entries",
        "tool_uses",
        "assertion_results",
        "skill_traces",
        "wave_statistics",
        "v_wave_progress",
        "v_active_agents",
    }
    assert expected <= tables


def test_models_and_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


# --- constraints ---------------------------------------------------------------------------


def assert_refused(create):
    with pytest.raises(IntegrityError), transaction.atomic():
        create()


def test_task_key_is_unique_in_its_list():
    tl = task_list(keys=("a",))
    other = task_list("other", keys=("a",))  # the same key in another list is fine
    template = TaskTemplate.objects.get()
    assert other.tasks.get().key == "a"
    assert_refused(lambda: Task.objects.create(task_list=tl, key="a", template=template))


def test_wave_number_is_unique_in_its_run():
    run = run_with_waves(task_list(), [["a"]])
    assert_refused(lambda: ParallelExecutionWave.objects.create(execution=run, wave_number=0))


def test_one_statistics_row_per_wave():
    run = run_with_waves(task_list(), [["a"]])
    wave = run.waves.get()
    WaveStatistics.objects.get_or_create(wave=wave, defaults={"execution": run})
    assert_refused(lambda: WaveStatistics.objects.create(wave=wave, execution=run))


def test_live_task_list_title_is_unique_but_archived_ones_may_repeat_it():
    TaskList.objects.create(title="nightly", archived_at=timezone.now())
    TaskList.objects.create(title="nightly", archived_at=timezone.now())
    TaskList.objects.create(title="nightly")
    assert_refused(lambda: TaskList.objects.create(title="nightly"))


def test_wave_task_key_is_unique_in_its_run():
    run = run_with_waves(task_list(), [["a"]])
    wave, task = run.waves.get(), Task.objects.get(key="a")
    assert_refused(
        lambda: services.wave_tasks_create([WaveTask(wave=wave, task=task, execution=run, key="a")])
    )
    other = run_with_waves(TaskList.objects.get(), [["a"]])  # the same key in another run is fine
    assert other.wave_tasks.get().key == "a"


# --- seed 000 §7 on a small run ------------------------------------------------------------


@pytest.fixture
def scenario():
    """Two runs in one session. Run `etl`: wave 0 = a (done), wave 1 = b, c (running).
    Run `load`: wave 0 = x. Records are inserted out of order to exercise ORDER BY."""
    now = timezone.now()
    t0 = now - timedelta(minutes=10)
    session = ConcurrentExecutionSession.objects.create(started_at=t0, peak_concurrent_agents=3)
    etl = run_with_waves(task_list("etl", edges=[("b", "a"), ("c", "a")]), [["a"], ["b", "c"]])
    load = run_with_waves(task_list("load", keys=("x",)), [["x"]])
    ExecutionRun.objects.filter(pk__in=[etl.pk, load.pk]).update(session=session)
    w0, w1 = etl.waves.order_by("wave_number")
    (lw0,) = load.waves.all()
    services.wave_update(
        w0, status=WaveStatus.SUCCEEDED, started_at=t0, completed_at=t0 + timedelta(minutes=2)
    )
    services.wave_update(w1, status=WaveStatus.RUNNING, started_at=t0 + timedelta(minutes=2))
    services.wave_update(lw0, status=WaveStatus.RUNNING, started_at=t0 + timedelta(minutes=1))
    wts = {wt.key: wt for wt in WaveTask.objects.filter(execution__in=[etl, load])}

    def agent(key, status, started):
        wt = wts[key]
        return BuildAgentInstance.objects.create(
            instance_id=f"ba-{key}",
            execution_id=wt.execution_id,
            wave_id=wt.wave_id,
            task_id=wt.task_id,
            wave_task=wt,
            status=status,
            started_at=started,
        )

    agents = {
        "a": agent("a", AgentStatus.SUCCEEDED, t0),
        "c": agent("c", AgentStatus.RUNNING, t0 + timedelta(minutes=3)),
        "b": agent("b", AgentStatus.RUNNING, t0 + timedelta(minutes=2)),
        "x": agent("x", AgentStatus.RUNNING, t0 + timedelta(minutes=1)),
    }
    for seq, key in [(3, "c"), (1, "b"), (2, "b"), (0, "a")]:
        wt = wts[key]
        TranscriptEntry.objects.create(
            execution=etl,
            wave_id=wt.wave_id,
            wave_number=wt.wave.wave_number,
            task_id=wt.task_id,
            wave_task=wt,
            agent=agents[key],
            instance_id=agents[key].instance_id,
            sequence=seq,
            entry_type="stdout",
            content=f"{key} says {seq}",
            created_at=now,
        )
    for name, key, error, offset in [
        ("late", "c", True, 30),
        ("ok", "b", False, 10),
        ("early", "b", True, 20),
    ]:
        wt = wts[key]
        ToolUse.objects.create(
            execution=etl,
            wave_id=wt.wave_id,
            task_id=wt.task_id,
            wave_task=wt,
            tool_name=name,
            is_error=error,
            start_time=t0 + timedelta(seconds=offset),
        )
    for wave, count, done, rate in [(w0, 1, 1, 1.0), (w1, 2, 0, None), (lw0, 1, 0, None)]:
        WaveStatistics.objects.update_or_create(
            wave=wave,
            defaults=dict(
                execution_id=wave.execution_id, task_count=count, completed_count=done, pass_rate=rate
            ),
        )
    return {"session": session, "etl": etl, "load": load, "w0": w0, "w1": w1}


def test_7_1_wave_progress_for_execution(scenario):
    result = rows(
        "SELECT * FROM v_wave_progress WHERE execution_id = %s ORDER BY wave_number", [scenario["etl"].pk]
    )
    assert [(r["wave_number"], r["status"], r["task_count"], r["completed_count"]) for r in result] == [
        (0, "succeeded", 1, 1),
        (1, "running", 2, 0),
    ]
    assert {r["task_list_title"] for r in result} == {"etl"}
    assert result[0]["pass_rate"] == 1.0 and result[1]["pass_rate"] is None


def test_7_2_active_agents_with_context(scenario):
    result = rows("SELECT * FROM v_active_agents WHERE execution_id = %s", [scenario["etl"].pk])
    assert [r["instance_id"] for r in result] == ["ba-b", "ba-c"]  # running only, oldest first
    assert {(r["wave_number"], r["task_list_title"]) for r in result} == {(1, "etl")}
    assert all(r["running_seconds"] >= 0 for r in result)


def test_7_3_transcript_entries_by_wave(scenario):
    result = rows(
        "SELECT * FROM transcript_entries WHERE wave_id = %s ORDER BY sequence", [scenario["w1"].pk]
    )
    assert [(r["sequence"], r["content"]) for r in result] == [
        (1, "b says 1"),
        (2, "b says 2"),
        (3, "c says 3"),
    ]


def test_7_4_tool_uses_by_wave_with_errors(scenario):
    result = rows(
        "SELECT * FROM tool_uses WHERE wave_id = %s AND is_error = 1 ORDER BY start_time", [scenario["w1"].pk]
    )
    assert [r["tool_name"] for r in result] == ["early", "late"]


def test_7_5_wave_timeline(scenario):
    result = rows(
        """
        SELECT
            pew.wave_number,
            pew.started_at,
            pew.completed_at,
            ws.task_count,
            ws.completed_count,
            ws.pass_rate,
            (SELECT COUNT(*) FROM build_agent_instances WHERE wave_id = pew.id) as agent_count
        FROM parallel_execution_waves pew
        LEFT JOIN wave_statistics ws ON ws.wave_id = pew.id
        WHERE pew.execution_id = %s
        ORDER BY pew.wave_number
        """,
        [scenario["etl"].pk],
    )
    assert [(r["wave_number"], r["task_count"], r["completed_count"], r["agent_count"]) for r in result] == [
        (0, 1, 1, 1),
        (1, 2, 0, 2),
    ]
    assert result[0]["completed_at"] is not None and result[1]["completed_at"] is None


def test_7_6_concurrent_execution_summary(scenario):
    session = scenario["session"]
    (result,) = rows(
        """
        SELECT
            ces.id as session_id,
            ces.started_at,
            ces.peak_concurrent_agents,
            GROUP_CONCAT(tl.title, ', ') as task_lists,
            COUNT(DISTINCT tler.id) as execution_count,
            SUM(ws.task_count) as total_tasks
        FROM concurrent_execution_sessions ces
        JOIN task_list_execution_runs tler ON tler.session_id = ces.id
        JOIN task_lists_v2 tl ON tl.id = tler.task_list_id
        LEFT JOIN parallel_execution_waves pew ON pew.execution_id = tler.id
        LEFT JOIN wave_statistics ws ON ws.wave_id = pew.id
        WHERE ces.id = %s
        GROUP BY ces.id
        """,
        [session.pk],
    )
    assert result["session_id"] == session.pk
    assert result["peak_concurrent_agents"] == 3
    assert result["execution_count"] == 2
    assert result["total_tasks"] == 4
    # One title per joined wave row: etl twice (two waves), load once.
    assert sorted(result["task_lists"].split(", ")) == ["etl", "etl", "load"]


# --- the views through their models, and IntBooleanField ----------------------------------


def test_wave_progress_model_reads_the_view(scenario):
    progress = list(WaveProgress.objects.filter(execution=scenario["etl"]).order_by("wave_number"))
    assert [(p.wave_id, p.task_count, p.task_list_title, p.execution_status) for p in progress] == [
        (scenario["w0"].pk, 1, "etl", "running"),
        (scenario["w1"].pk, 2, "etl", "running"),
    ]
    assert WaveProgress.objects.count() == ParallelExecutionWave.objects.count()


def test_active_agent_model_reads_the_view(scenario):
    agents = ActiveAgent.objects.order_by("started_at")
    assert [a.instance_id for a in agents] == ["ba-x", "ba-b", "ba-c"]
    b = ActiveAgent.objects.select_related("wave", "task").get(instance_id="ba-b")
    assert (b.wave, b.task.key, b.task_list_title, b.execution_id) == (
        scenario["w1"],
        "b",
        "etl",
        scenario["etl"].pk,
    )
    # A float on both databases (PostgreSQL's ROUND returns numeric unless cast).
    assert type(b.running_seconds) is float and b.running_seconds >= 0


def test_int_boolean_field_round_trips_and_filters(scenario):
    errors = ToolUse.objects.filter(is_error=True)
    assert sorted(errors.values_list("tool_name", flat=True)) == ["early", "late"]
    assert ToolUse.objects.filter(is_error=False).get().tool_name == "ok"
    late = ToolUse.objects.get(tool_name="late")
    assert late.is_error is True and late.is_blocked is False
    assert rows("SELECT is_error, is_blocked FROM tool_uses WHERE id = %s", [late.pk]) == [
        {"is_error": 1, "is_blocked": 0}
    ]
