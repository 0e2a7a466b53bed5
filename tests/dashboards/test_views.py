"""The dashboards inside the admin, through Django's test client: every page and JSON view
answers, the team rule holds (another team's run is 404), login is required, the steering
views call the services, and the admin links to the dashboards."""

import json
from datetime import UTC, timedelta

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse
from django.utils import timezone

from executions import transitions
from executions.models import ExecutionRun, RunStatus, TaskStatus, WaveTask
from tests.admin_fixtures import populate
from tests.factories import run_with_waves, task_list
from waves.models import TaskList, TaskTemplate

pytestmark = pytest.mark.django_db

OURS = ("waves", "executions", "observability")


@pytest.fixture
def teams():
    red, blue = Group.objects.create(name="red"), Group.objects.create(name="blue")
    populate(2)
    populate(2)
    red_list, blue_list = TaskList.objects.order_by("pk")[:2]
    TaskList.objects.filter(pk=red_list.pk).update(team=red)
    TaskList.objects.filter(pk=blue_list.pk).update(team=blue)
    user = User.objects.create_user("redadmin", password="pw", is_staff=True)
    user.groups.add(red)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=OURS))
    red_run = ExecutionRun.objects.filter(task_list=red_list).first()
    blue_run = ExecutionRun.objects.filter(task_list=blue_list).first()
    return user, red_list, red_run, blue_list, blue_run


def pages(run, task_list, session_id):
    return [
        reverse("admin:dashboards"),
        reverse("admin:dashboard_agents"),
        reverse("admin:dashboard_concurrency"),
        reverse("admin:dashboard_concurrency") + f"?execution={run.pk}&workflow={task_list.pk}",
        reverse("admin:dashboard_waves"),
        reverse("admin:dashboard_session_waves", args=[session_id]),
        reverse("admin:dashboard_run", args=[run.pk]),
        reverse("admin:dashboard_run_now", args=[task_list.pk]),
    ]


def test_every_dashboard_answers_inside_the_admin(client, teams):
    user, red_list, red_run, _, _ = teams
    client.force_login(user)
    for url in pages(red_run, red_list, red_run.session_id):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert 'id="site-name"' in body, url  # the admin's own header: extends admin/base_site.html
        assert "tidewatch/dashboards.css" in body, url


def test_login_is_required(client, teams):
    _, red_list, red_run, _, _ = teams
    for url in [
        *pages(red_run, red_list, red_run.session_id),
        reverse("admin:dashboard_run_gantt", args=[red_run.pk]),
        reverse("admin:dashboard_concurrency_data"),
    ]:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_another_teams_run_list_and_session_are_not_found(client, teams):
    user, _, _, blue_list, blue_run = teams
    client.force_login(user)
    for url in [
        reverse("admin:dashboard_run", args=[blue_run.pk]),
        reverse("admin:dashboard_run_gantt", args=[blue_run.pk]),
        reverse("admin:dashboard_run_now", args=[blue_list.pk]),
        reverse("admin:dashboard_session_waves", args=[blue_run.session_id]),
        reverse("admin:dashboard_wave_timeline", args=[blue_run.session_id]),
    ]:
        assert client.get(url).status_code == 404, url
    response = client.post(reverse("admin:dashboard_run_action", args=[blue_run.pk, "cancel"]))
    assert response.status_code == 404
    response = client.get(reverse("admin:dashboard_concurrency_data"), {"execution": blue_run.pk})
    assert response.status_code == 400 and "execution" in response.json()


def test_the_gantt_gives_queued_and_running_times(client, teams):
    user, _, red_run, _, _ = teams
    client.force_login(user)
    data = client.get(reverse("admin:dashboard_run_gantt", args=[red_run.pk])).json()
    assert {t["key"] for t in data["tasks"]} == set(red_run.wave_tasks.values_list("key", flat=True))
    assert all(set(t) == {"id", "key", "wave", "status", "queued", "started", "ended"} for t in data["tasks"])


def test_the_concurrency_chart_has_one_x_for_every_series_and_the_limit(client):
    admin_user = User.objects.create_superuser("root", password="pw")
    client.force_login(admin_user)
    tl = task_list("conc", keys=["a", "b", "c"])
    run = run_with_waves(tl, [["a", "b", "c"]])
    transitions.transition(
        list(WaveTask.objects.filter(execution=run)), TaskStatus.RUNNING, expected=TaskStatus.PENDING
    )
    url = reverse("admin:dashboard_concurrency_data")
    data = client.get(
        url, {"time_range": "1h", "granularity": "minute", "agg": "max", "execution": run.pk}
    ).json()
    assert len(data["labels"]) == 61
    assert data["limit"] == run.max_parallelism
    assert data["datasets"] and all(len(d["data"]) == 61 for d in data["datasets"])
    assert sum(d["data"][-1] for d in data["datasets"]) == 3
    assert data["datasets"][0]["borderColor"] == "rgba(102, 194, 165, 1)"  # Set2's first colour
    bad = client.get(url, {"granularity": "fortnight"})
    assert bad.status_code == 400 and "granularity" in bad.json()


def test_the_concurrency_chart_gives_the_total_as_one_series(client):
    """group=total: one dataset, "Total", over every template; with agg=max the peak of the
    total, which two templates running one after the other in a bucket keep at 1 where their
    stacked peaks read 2."""
    client.force_login(User.objects.create_superuser("root", password="pw"))
    tl = task_list("conc-total", keys=["a", "b"])
    run = run_with_waves(tl, [["a", "b"]])
    TaskTemplate.objects.bulk_create([TaskTemplate(name="tpl-a"), TaskTemplate(name="tpl-b")])
    for key in ("a", "b"):
        tl.tasks.filter(key=key).update(template=TaskTemplate.objects.get(name=f"tpl-{key}"))
    a, b = (WaveTask.objects.get(execution=run, key=key) for key in ("a", "b"))
    start = timezone.now() - timedelta(minutes=30)
    transitions.transition([a], TaskStatus.RUNNING, expected=TaskStatus.PENDING, now=start)
    transitions.transition(
        [a], TaskStatus.SUCCEEDED, expected=TaskStatus.RUNNING, now=start + timedelta(minutes=5)
    )
    transitions.transition(
        [b], TaskStatus.RUNNING, expected=TaskStatus.PENDING, now=start + timedelta(minutes=10)
    )
    url = reverse("admin:dashboard_concurrency_data")
    # One bucket, an hour from a minute before a started.
    first = (start - timedelta(minutes=1)).isoformat()
    window = {"start": first, "end": first, "granularity": "1h", "execution": run.pk}
    peaks = client.get(url, {**window, "agg": "max"}).json()
    total = client.get(url, {**window, "agg": "max", "group": "total"}).json()
    assert [d["label"] for d in peaks["datasets"]] == ["tpl-a", "tpl-b"]
    assert [d["label"] for d in total["datasets"]] == ["Total"]
    assert total["labels"] == peaks["labels"] and total["limit"] == peaks["limit"] == run.max_parallelism
    stacked = [sum(d["data"][k] for d in peaks["datasets"]) for k in range(len(peaks["labels"]))]
    assert max(stacked) == 2 and max(total["datasets"][0]["data"]) == 1
    minutes = {"start": first, "end": (start + timedelta(minutes=15)).isoformat(), "execution": run.pk}
    sample = client.get(url, {**minutes, "agg": "sample"}).json()
    sample_total = client.get(url, {**minutes, "agg": "sample", "group": "total"}).json()
    assert len(sample["datasets"]) == 2 and max(sample_total["datasets"][0]["data"]) == 1
    assert sample_total["datasets"][0]["data"] == [
        sum(d["data"][k] for d in sample["datasets"]) for k in range(len(sample["labels"]))
    ]
    bad = client.get(url, {**window, "group": "all"})
    assert bad.status_code == 400 and "group" in bad.json()


def test_the_wave_timeline_lists_the_sessions_waves(client, teams):
    user, red_list, red_run, _, _ = teams
    client.force_login(user)
    data = client.get(reverse("admin:dashboard_wave_timeline", args=[red_run.session_id])).json()
    assert data["waves"] and {w["task_list"] for w in data["waves"]} == {red_list.title}
    assert all(w["tasks"] >= 1 for w in data["waves"])


def test_run_now_starts_a_run_and_leads_to_its_live_view(client, teams, monkeypatch):
    from executions import services

    spawned = []
    monkeypatch.setattr(services, "run_spawn", lambda run: spawned.append(run.pk) or 1)
    user, red_list, _, _, _ = teams
    client.force_login(user)
    url = reverse("admin:dashboard_run_now", args=[red_list.pk])
    response = client.post(
        url, {"max_parallelism": 3, "schedule": "fifo", "simulate": "0.01", "backend": "local"}
    )
    run = ExecutionRun.objects.order_by("-id").first()
    assert response.status_code == 302 and response["Location"] == reverse(
        "admin:dashboard_run", args=[run.pk]
    )
    assert spawned == [run.pk] and (run.max_parallelism, run.schedule) == (3, "fifo")
    response = client.post(url, {"max_parallelism": 0, "schedule": "fifo", "backend": "local"})
    assert response.status_code == 200 and b"errorlist" in response.content


def test_run_now_says_when_no_executor_can_start_and_cancels_the_run(client, teams, monkeypatch):
    from executions import services

    def fail(run):
        raise OSError("no such file")

    monkeypatch.setattr(services, "run_spawn", fail)
    user, red_list, _, _, _ = teams
    client.force_login(user)
    url = reverse("admin:dashboard_run_now", args=[red_list.pk])
    response = client.post(url, {"schedule": "fifo", "simulate": "0.01", "backend": "local"})
    run = ExecutionRun.objects.order_by("-id").first()
    assert (
        response.status_code == 200
        and f"could not start an executor for run {run.pk}" in response.content.decode()
    )
    assert run.status == RunStatus.CANCELLED or run.cancel_requested_at is not None


def test_the_run_now_action_goes_to_the_form(client, teams):
    user, red_list, _, _, _ = teams
    client.force_login(user)
    response = client.post(
        reverse("admin:waves_tasklist_changelist"), {"action": "run_now", "_selected_action": [red_list.pk]}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:dashboard_run_now", args=[red_list.pk])


def test_buttons_approve_a_gate_and_cancel(client, teams):
    user, _, red_run, _, _ = teams
    client.force_login(user)
    gate = WaveTask.objects.get(execution=red_run, key="gate")
    transitions.transition([gate], TaskStatus.WAITING_APPROVAL, expected=gate.status)
    live = reverse("admin:dashboard_run", args=[red_run.pk])
    response = client.post(
        reverse("admin:dashboard_run_action", args=[red_run.pk, "approve"]), {"key": "gate"}
    )
    assert response.status_code == 302 and response["Location"] == live
    gate.refresh_from_db()
    assert gate.approval_decision == "approved"
    response = client.post(reverse("admin:dashboard_run_action", args=[red_run.pk, "cancel"]))
    assert response.status_code == 302
    red_run.refresh_from_db()
    assert red_run.cancel_requested_at is not None or red_run.status == RunStatus.CANCELLED


def test_steering_needs_the_permission(client, teams):
    user, _, red_run, _, _ = teams
    user.user_permissions.remove(Permission.objects.get(codename="change_executionrun"))
    client.force_login(user)
    client.post(reverse("admin:dashboard_run_action", args=[red_run.pk, "cancel"]))
    red_run.refresh_from_db()
    assert red_run.cancel_requested_at is None


def test_the_admin_links_to_the_dashboards(client, teams):
    user, red_list, red_run, _, _ = teams
    client.force_login(user)
    index = client.get(reverse("admin:index")).content.decode()
    for name in ("dashboards", "dashboard_agents", "dashboard_concurrency", "dashboard_waves"):
        assert reverse(f"admin:{name}") in index
    live = reverse("admin:dashboard_run", args=[red_run.pk])
    assert (
        live
        in client.get(reverse("admin:executions_executionrun_change", args=[red_run.pk])).content.decode()
    )
    wave = red_run.waves.first()
    assert (
        live
        in client.get(
            reverse("admin:executions_parallelexecutionwave_change", args=[wave.pk])
        ).content.decode()
    )
    session = client.get(
        reverse("admin:executions_concurrentexecutionsession_change", args=[red_run.session_id])
    ).content.decode()
    assert reverse("admin:dashboard_session_waves", args=[red_run.session_id]) in session
    page = client.get(reverse("admin:waves_tasklist_change", args=[red_list.pk])).content.decode()
    assert reverse("admin:dashboard_run_now", args=[red_list.pk]) in page
    assert 'class="tw-json"' in page and "critical path" in page
    assert 'class="tw-mermaid"' in page and "flowchart TD" in page
    assert 'name="definition"' not in page  # read-only, not a textarea
    assert json.dumps(red_list.definition, indent=2)[:1] in page


def test_the_template_filter_offers_only_the_teams_templates(client, teams):
    user, red_list, _, blue_list, _ = teams
    client.force_login(user)
    offered = set(client.get(reverse("admin:dashboard_concurrency")).context["templates"])
    ours = set(red_list.tasks.values_list("template__name", flat=True))
    assert offered == ours
    TaskTemplate.objects.create(name="blue-only")
    blue_list.tasks.filter(key="t0").update(template=TaskTemplate.objects.get(name="blue-only"))
    assert "blue-only" not in client.get(reverse("admin:dashboard_concurrency")).context["templates"]


def test_the_run_views_concurrency_link_frames_the_run(client, teams):
    user, _, red_run, _, _ = teams
    client.force_login(user)
    link = client.get(reverse("admin:dashboard_run", args=[red_run.pk])).context["urls"]["concurrency"]
    start = (red_run.started_at - timedelta(minutes=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    assert f"execution={red_run.pk}" in link and "granularity=30s" in link and "time_range=&" in link
    assert "start=" + start.replace(":", "%3A") in link
    page = client.get(link).content.decode()
    assert f'name="start" value="{start}"' in page and '<option value="" selected>custom</option>' in page
