from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from executions.admin import EstimatedCountPaginator
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from observability.models import (
    ActiveAgent,
    AssertionResult,
    SkillTrace,
    ToolUse,
    TranscriptEntry,
    WaveProgress,
    WaveStatistics,
)
from tests.admin_fixtures import populate

pytestmark = pytest.mark.django_db

OURS = {"waves", "executions", "observability"}
MODELS = sorted((m for m in admin.site._registry if m._meta.app_label in OURS), key=lambda m: m._meta.label)
EXPECTED = {
    "waves.TaskTemplate",
    "waves.TaskList",
    "waves.Task",
    "waves.TaskDependency",
    "executions.ConcurrentExecutionSession",
    "executions.ExecutionRun",
    "executions.ParallelExecutionWave",
    "executions.WaveTask",
    "executions.BuildAgentInstance",
    "executions.TaskStatusAudit",
    "executions.Event",
    "observability.TranscriptEntry",
    "observability.ToolUse",
    "observability.AssertionResult",
    "observability.SkillTrace",
    "observability.WaveStatistics",
    "observability.WaveProgress",
    "observability.ActiveAgent",
}
RECORDS = [
    TaskStatusAudit,
    Event,
    TranscriptEntry,
    ToolUse,
    AssertionResult,
    SkillTrace,
    WaveStatistics,
    WaveProgress,
    ActiveAgent,
    BuildAgentInstance,
    ParallelExecutionWave,
    WaveTask,
    ExecutionRun,
    ConcurrentExecutionSession,
]


@pytest.fixture
def superuser_client(client):
    # No password: hashing one costs a second per test, and force_login needs none.
    user = User.objects.create(username="root", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def queries_for(client, path) -> int:
    client.get(path)  # warm caches (content types, sessions) so both counts compare like with like
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path)
    assert response.status_code == 200, f"{path}: {response.status_code}"
    return len(ctx.captured_queries)


def pages(client, model) -> dict[str, int]:
    """Query counts of the changelist and of the change page of the newest row."""
    latest = model._default_manager.order_by("-pk").first()
    assert latest is not None, f"no {model._meta.label} rows in the fixture"
    counts = {
        "changelist": queries_for(client, url(model, "changelist")),
        "change": queries_for(client, url(model, "change", latest.pk)),
    }
    if admin.site._registry[model].has_add_permission(_request(client)):
        counts["add"] = queries_for(client, url(model, "add"))
    return counts


def _request(client):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = User.objects.get(username="root")
    return request


def test_every_model_is_registered():
    assert {m._meta.label for m in MODELS} == EXPECTED


def test_pages_render_with_query_count_independent_of_rows(superuser_client):
    """Every changelist, change page (its inlines included) and add page renders, and its
    query count is the same with 2 rows of everything as with 12 (no N+1)."""
    populate(2)
    small = {m._meta.label: pages(superuser_client, m) for m in MODELS}
    before = {m._meta.label: m._default_manager.count() for m in MODELS}
    populate(10)
    large = {m._meta.label: pages(superuser_client, m) for m in MODELS}
    assert all(m._default_manager.count() > before[m._meta.label] for m in MODELS)
    grown = {label: (small[label], large[label]) for label in large if large[label] != small[label]}
    assert grown == {}, "query counts grow with rows"
    assert max(n for counts in large.values() for n in counts.values()) <= 20


@pytest.mark.parametrize("model", RECORDS, ids=lambda m: m._meta.label)
def test_records_refuse_add_change_and_delete(superuser_client, model):
    populate(1)
    obj = model._default_manager.order_by("-pk").first()
    assert superuser_client.get(url(model, "add")).status_code == 403
    assert superuser_client.post(url(model, "delete", obj.pk)).status_code == 403
    response = superuser_client.get(url(model, "change", obj.pk))
    assert response.status_code == 200
    assert b'name="_save"' not in response.content  # view-only: every field read-only
    before = model._default_manager.count()
    response = superuser_client.post(
        url(model, "changelist"), {"action": "delete_selected", "_selected_action": [obj.pk]}
    )
    assert model._default_manager.count() == before


def test_wave_links_reach_tasks_and_transcripts_in_two_clicks(superuser_client):
    populate(2)
    wave = ParallelExecutionWave.objects.filter(wave_number=0).first()
    wt = WaveTask.objects.filter(wave=wave).first()
    waves_page = superuser_client.get(url(ParallelExecutionWave, "changelist")).content.decode()
    tasks_url = f"{url(WaveTask, 'changelist')}?wave__id__exact={wave.pk}"
    assert tasks_url in waves_page
    assert f"{url(TranscriptEntry, 'changelist')}?wave__id__exact={wave.pk}" in waves_page
    assert f"{url(ToolUse, 'changelist')}?wave__id__exact={wave.pk}" in waves_page
    assert f"{url(BuildAgentInstance, 'changelist')}?wave__id__exact={wave.pk}" in waves_page
    tasks_page = superuser_client.get(tasks_url)
    assert tasks_page.status_code == 200
    assert list(tasks_page.context["cl"].result_list) == list(
        WaveTask.objects.filter(wave=wave).order_by("id")
    )
    transcript_url = f"{url(TranscriptEntry, 'changelist')}?wave_task__id__exact={wt.pk}"
    assert transcript_url in tasks_page.content.decode()
    transcript = superuser_client.get(transcript_url)
    assert transcript.status_code == 200
    assert {e.pk for e in transcript.context["cl"].result_list} == set(
        TranscriptEntry.objects.filter(wave_task=wt).values_list("pk", flat=True)
    )


def test_run_links_to_its_waves(superuser_client):
    populate(2)
    run = ExecutionRun.objects.order_by("-pk").first()
    page = superuser_client.get(url(ExecutionRun, "changelist")).content.decode()
    assert f"{url(ParallelExecutionWave, 'changelist')}?execution__id__exact={run.pk}" in page
    change = superuser_client.get(url(ExecutionRun, "change", run.pk)).content.decode()
    assert "Wave 0 of run" in change or "wave_number" in change


def test_task_list_and_task_pages_link_to_their_runs(superuser_client):
    from waves.models import Task, TaskList

    populate(2)
    run = ExecutionRun.objects.order_by("-pk").first()
    tl = run.task_list
    page = superuser_client.get(url(TaskList, "changelist")).content.decode()
    runs = ExecutionRun.objects.filter(task_list=tl).count()
    assert f'{url(ExecutionRun, "changelist")}?task_list__id__exact={tl.pk}">{runs}</a>' in page
    change = superuser_client.get(url(TaskList, "change", tl.pk))
    assert change.status_code == 200 and f"task_list__id__exact={tl.pk}" in change.content.decode()
    assert superuser_client.get(url(TaskList, "add")).status_code == 200
    task = Task.objects.filter(task_list=tl).first()
    tasks = superuser_client.get(url(Task, "changelist")).content.decode()
    assert f"{url(WaveTask, 'changelist')}?task__id__exact={task.pk}" in tasks


def test_large_tables_use_the_estimated_count_paginator():
    for model in (TranscriptEntry, ToolUse, TaskStatusAudit, Event, BuildAgentInstance):
        model_admin = admin.site._registry[model]
        assert model_admin.paginator is EstimatedCountPaginator
        assert model_admin.show_full_result_count is False


def test_estimated_count_paginator_caps_filtered_counts(monkeypatch):
    populate(2)
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 3)
    assert EstimatedCountPaginator(TranscriptEntry.objects.filter(entry_type="stdout"), 100).count == 4
    assert EstimatedCountPaginator(TranscriptEntry.objects.all()[:0].model.objects.none(), 100).count == 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class estimate is PostgreSQL only")
def test_estimated_count_paginator_uses_reltuples_unfiltered(monkeypatch):
    populate(2)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE transcript_entries")
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 1)
    with CaptureQueriesContext(connection) as ctx:
        count = EstimatedCountPaginator(TranscriptEntry.objects.all(), 100).count
    assert count == TranscriptEntry.objects.count()
    assert "pg_class" in ctx.captured_queries[0]["sql"]
    assert not any("COUNT(" in q["sql"].upper() for q in ctx.captured_queries)


# --- actions --------------------------------------------------------------------------------


def waiting_gate():
    """A run whose gate step waits for approval (set directly: the executor would have)."""
    populate(1)
    WaveTask.objects.filter(key="gate").update(status=TaskStatus.WAITING_APPROVAL)
    return WaveTask.objects.get(key="gate")


def act(client, model, action, pks):
    return client.post(
        url(model, "changelist"), {"action": action, "_selected_action": list(pks)}, follow=True
    )


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def test_approve_action_on_wave_tasks_moves_gate_on_with_actor(superuser_client):
    gate = waiting_gate()
    response = act(superuser_client, WaveTask, "approve_steps", [gate.pk])
    gate.refresh_from_db()
    assert gate.status == TaskStatus.QUEUED
    assert (gate.approval_decision, gate.approved_by) == ("approved", "root")
    last = TaskStatusAudit.objects.filter(wave_task=gate).order_by("-id").first()
    assert (last.new_status, last.actor, last.reason) == (TaskStatus.QUEUED, "root", "approved")
    assert any("Approved 1 step" in m for m in messages_of(response))


def test_reject_action_on_runs_fails_waiting_gates(superuser_client):
    gate = waiting_gate()
    response = act(superuser_client, ExecutionRun, "reject_waiting_steps", [gate.execution_id])
    gate.refresh_from_db()
    assert gate.status == TaskStatus.FAILED
    last = TaskStatusAudit.objects.filter(wave_task=gate).order_by("-id").first()
    assert (last.new_status, last.actor, last.reason) == (TaskStatus.FAILED, "root", "rejected")
    assert any("Rejected 1 step" in m for m in messages_of(response))
    assert response.redirect_chain[-1][0] == f"/admin/dashboards/runs/{gate.execution_id}/"


def test_approve_action_reports_service_errors(superuser_client):
    populate(1)
    plain = WaveTask.objects.get(key="t0")
    response = act(superuser_client, WaveTask, "approve_steps", [plain.pk])
    assert any("is not an approval step" in m for m in messages_of(response))
    assert WaveTask.objects.get(pk=plain.pk).status == TaskStatus.PENDING


def test_approve_on_runs_without_waiting_steps_warns(superuser_client):
    populate(1)
    run = ExecutionRun.objects.get()
    response = act(superuser_client, ExecutionRun, "approve_waiting_steps", [run.pk])
    assert any("No step" in m for m in messages_of(response))


def test_cancel_action_records_request(superuser_client):
    populate(1)
    run = ExecutionRun.objects.get()
    ExecutionRun.objects.filter(pk=run.pk).update(executor_heartbeat=timezone.now())
    response = act(superuser_client, ExecutionRun, "request_cancel", [run.pk])
    run.refresh_from_db()
    assert run.cancel_requested_at is not None and run.cancel_requested_by == "root"
    assert any("cancel requested" in m for m in messages_of(response))
    assert response.redirect_chain[-1][0] == f"/admin/dashboards/runs/{run.pk}/"  # on to its live view


def test_cancel_action_closes_an_abandoned_run_with_audited_actor(superuser_client):
    populate(1)
    run = ExecutionRun.objects.get()
    long_ago = timezone.now() - timedelta(hours=1)
    ExecutionRun.objects.filter(pk=run.pk).update(started_at=long_ago, executor_heartbeat=long_ago)
    act(superuser_client, ExecutionRun, "request_cancel", [run.pk])
    run.refresh_from_db()
    assert run.status == "cancelled"
    cancelled = TaskStatusAudit.objects.filter(execution=run, new_status=TaskStatus.CANCELLED)
    assert cancelled.count() == WaveTask.objects.filter(execution=run).count()
    assert set(cancelled.values_list("actor", flat=True)) == {"root"}


def test_actions_need_the_right_to_change_runs(client):
    gate = waiting_gate()
    viewer = User.objects.create(username="viewer", is_staff=True)
    from django.contrib.auth.models import Permission

    viewer.user_permissions.add(Permission.objects.get(codename="view_wavetask"))
    client.force_login(viewer)
    page = client.get(url(WaveTask, "changelist"))
    assert page.status_code == 200
    assert b"approve_steps" not in page.content
    act(client, WaveTask, "approve_steps", [gate.pk])
    assert WaveTask.objects.get(pk=gate.pk).status == TaskStatus.WAITING_APPROVAL


def test_approval_filter_lists_waiting_steps(superuser_client):
    gate = waiting_gate()
    page = superuser_client.get(url(WaveTask, "changelist") + "?approval=waiting")
    assert list(page.context["cl"].result_list) == [gate]


# --- layering: observability adds its columns to executions' pages ------------------------------


def test_executions_pages_carry_no_observability_columns_and_observability_adds_them():
    import executions.admin as executions_admin
    import observability.admin as observability_admin

    wave_admin = admin.site._registry[ParallelExecutionWave]
    assert type(wave_admin) is observability_admin.WaveAdmin
    assert isinstance(wave_admin, executions_admin.ParallelExecutionWaveAdmin)
    base = executions_admin.ParallelExecutionWaveAdmin
    assert not {"transcript_link", "tool_uses_link", "pass_rate"} & set(base.list_display)
    assert base.list_select_related is False  # no join onto observability's statistics table
    assert {"transcript_link", "tool_uses_link", "pass_rate"} <= set(wave_admin.list_display)
    assert "transcript" not in executions_admin.WaveTaskAdmin.list_display
    assert "transcript" in admin.site._registry[WaveTask].list_display
    assert "transcript" not in executions_admin.BuildAgentInstanceAdmin.list_display
    assert "transcript" in admin.site._registry[BuildAgentInstance].list_display
    assert not any(
        label.startswith("observability_") for label, _ in executions_admin.ExecutionRunAdmin.record_links
    )


def test_wave_changelist_shows_counters_from_the_statistics_row(superuser_client):
    populate(2)
    wave = ParallelExecutionWave.objects.filter(wave_number=0).first()
    WaveStatistics.objects.filter(wave=wave).update(tool_error_count=1, pass_rate=0.5)
    page = superuser_client.get(url(ParallelExecutionWave, "changelist")).content.decode()
    assert f'?wave__id__exact={wave.pk}">4 entries</a>' in page
    assert f'?wave__id__exact={wave.pk}">2 (1 errors)</a>' in page
    assert "50%" in page


def test_run_page_links_to_the_records_of_both_apps(superuser_client):
    populate(1)
    run = ExecutionRun.objects.get()
    page = superuser_client.get(url(ExecutionRun, "change", run.pk)).content.decode()
    for model in (
        ParallelExecutionWave,
        WaveTask,
        TaskStatusAudit,
        Event,
        TranscriptEntry,
        ToolUse,
        SkillTrace,
    ):
        assert f"{url(model, 'changelist')}?execution__id__exact={run.pk}" in page


@pytest.mark.parametrize(
    "wall, task, gate_wait, shown",
    [
        (10.0, 25.0, 0.0, "2.50x"),
        (100.0, 90.0, 70.0, "3.00x"),  # 70 s at a gate is not charged to the run
        (100.0, 90.0, 100.0, "-"),  # all of it at a gate: nothing to divide by
        (5000.0, 0.001, 0.0, "-"),  # never "0.00x"
    ],
)
def test_run_changelist_speedup_leaves_out_gate_wait_and_never_shows_zero(
    superuser_client, wall, task, gate_wait, shown
):
    populate(1)
    run = ExecutionRun.objects.get()
    ExecutionRun.objects.filter(pk=run.pk).update(
        wall_seconds=wall, task_seconds=task, gate_wait_seconds=gate_wait
    )
    page = superuser_client.get(url(ExecutionRun, "changelist"))
    assert admin.site._registry[ExecutionRun].speedup(page.context["cl"].result_list[0]) == shown
    assert b"0.00x" not in page.content


def test_start_and_resume_actions_go_through_the_services(superuser_client, monkeypatch):
    from executions import services
    from waves.models import TaskList

    spawned = []
    monkeypatch.setattr(services, "run_spawn", lambda run: spawned.append(run.pk) or 4242)
    populate(1)
    tl = TaskList.objects.first()
    response = act(superuser_client, TaskList, "start_runs", [tl.pk])
    started = ExecutionRun.objects.filter(task_list=tl, status="pending").order_by("-pk").first()
    assert started is not None and spawned == [started.pk]
    assert any(f"run {started.pk} started" in m for m in messages_of(response))
    assert response.redirect_chain[-1][0] == f"/admin/dashboards/runs/{started.pk}/"

    failed = ExecutionRun.objects.filter(task_list=tl).exclude(pk=started.pk).first()
    ExecutionRun.objects.filter(pk=failed.pk).update(status="failed")
    response = act(superuser_client, ExecutionRun, "resume_runs", [failed.pk])
    resumed = ExecutionRun.objects.get(resumed_from=failed)
    assert spawned == [started.pk, resumed.pk]
    assert any(f"Run {failed.pk}: run {resumed.pk} started" in m for m in messages_of(response))
    assert response.redirect_chain[-1][0] == f"/admin/dashboards/runs/{resumed.pk}/"
    again = act(superuser_client, ExecutionRun, "resume_runs", [failed.pk])  # refused, with the reason
    assert any(f"run {failed.pk} was already resumed by run {resumed.pk}" in m for m in messages_of(again))
    assert ExecutionRun.objects.filter(resumed_from=failed).count() == 1
