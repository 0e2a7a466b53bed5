"""A team admin sees and acts on only their teams' task lists and everything under them;
a superuser sees all. Another team's rows are absent from lists and unreachable by id."""

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse

from executions.models import ExecutionRun
from tests.admin_fixtures import populate
from waves.models import TaskList

pytestmark = pytest.mark.django_db

OURS = ("waves", "executions", "observability")


def url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def two_teams():
    red, blue = Group.objects.create(name="red"), Group.objects.create(name="blue")
    populate(2)
    populate(2)
    lists = list(TaskList.objects.order_by("pk"))
    TaskList.objects.filter(pk=lists[0].pk).update(team=red)
    TaskList.objects.filter(pk=lists[1].pk).update(team=blue)
    admin_user = User.objects.create_user("redadmin", password="pw", is_staff=True)
    admin_user.groups.add(red)
    admin_user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=OURS))
    return admin_user, lists[0], lists[1]


def team_of(obj, path: str):
    for part in path.split("__"):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(
    "model_name",
    ["TaskList", "Task", "ExecutionRun", "ParallelExecutionWave", "WaveTask", "BuildAgentInstance",
     "TaskStatusAudit", "TranscriptEntry", "ToolUse", "AssertionResult", "SkillTrace", "WaveStatistics"],
)  # fmt: skip
def test_a_team_admin_sees_only_their_teams_rows(client, two_teams, model_name):
    from django.contrib import admin

    admin_user, red_list, blue_list = two_teams
    client.force_login(admin_user)
    model = next(m for m in apps.get_models() if m.__name__ == model_name and m._meta.app_label in OURS)
    model_admin = admin.site._registry[model]
    response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert shown, f"{model_name}: the team's own rows are listed"
    path = model_admin.team_path
    assert all((team_of(row, path) if path else row).pk == red_list.pk for row in shown)
    hidden = model._default_manager.exclude(pk__in=[r.pk for r in shown]).first()
    assert hidden is not None
    assert client.get(url(model, "change", hidden.pk)).status_code in (302, 404)


def test_sessions_show_once_when_they_hold_a_run_of_the_team(client, two_teams):
    from executions.models import ConcurrentExecutionSession

    admin_user, red_list, _ = two_teams
    client.force_login(admin_user)
    shown = list(client.get(url(ConcurrentExecutionSession, "changelist")).context["cl"].result_list)
    assert shown == list(ConcurrentExecutionSession.objects.filter(runs__task_list=red_list).distinct())


def test_an_action_on_another_teams_run_does_nothing(client, two_teams):
    admin_user, _, blue_list = two_teams
    client.force_login(admin_user)
    blue_run = ExecutionRun.objects.filter(task_list=blue_list).first()
    client.post(url(ExecutionRun, "changelist"), {"action": "request_cancel", "_selected_action": [blue_run.pk]})
    blue_run.refresh_from_db()
    assert blue_run.cancel_requested_at is None


def test_a_superuser_sees_every_team(client, two_teams):
    root = User.objects.create_superuser("root", password="pw")
    client.force_login(root)
    shown = client.get(url(ExecutionRun, "changelist")).context["cl"].result_list
    assert len(list(shown)) == ExecutionRun.objects.count()
