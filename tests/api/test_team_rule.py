"""The team rule written on the task list a query joins (waves.teams.team_rule) selects the
same rows as the subquery form (`task_list__in=visible_task_lists(user)`) for every kind of
user: superuser, member, member of another team, member of no team, anonymous."""

import pytest
from django.contrib.auth.models import AnonymousUser, User

from executions import selectors
from executions.models import ExecutionRun, ParallelExecutionWave
from observability import selectors as observability_selectors
from tests.api.conftest import _user
from tests.api.test_executions_api import start_running
from tests.factories import run_with_waves, task_list
from waves.teams import visible_task_lists

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(teams):
    red, blue = teams
    made = []
    for title, team in (("red-etl", red), ("blue-etl", blue), ("no-team", None)):
        tl = task_list(title, keys=("a", "b"), team=team)
        for _ in range(2):
            run = run_with_waves(tl, [["a"], ["b"]])
            start_running(run, ["a"])
            made.append(run)
    return made


@pytest.fixture
def users(teams):
    return {
        "superuser": _user("root", superuser=True),
        "member": _user("mia", teams[0]),
        "both teams": _user("bo", *teams),
        "outsider": _user("otto", teams[1]),
        "no team": _user("nemo"),
        "anonymous": AnonymousUser(),
    }


def ids(queryset) -> set[int]:
    return set(queryset.values_list("pk", flat=True))


def test_every_kind_of_user_sees_the_same_rows_as_through_the_subquery(runs, users):
    assert len(runs) == 6
    for who, user in users.items():
        lists = visible_task_lists(user)
        expected_runs = ids(ExecutionRun.objects.filter(task_list__in=lists))
        expected_waves = ids(ParallelExecutionWave.objects.filter(execution__task_list__in=lists))
        expected_agents = ids(selectors.active_agents(ExecutionRun.objects.filter(task_list__in=lists)))
        assert ids(selectors.visible_runs(user)) == expected_runs, who
        assert ids(observability_selectors.visible_runs(user)) == expected_runs, who
        assert ids(observability_selectors.visible_waves(user)) == expected_waves, who
        assert ids(selectors.visible_active_agents(user)) == expected_agents, who
        assert len(expected_agents) == {"superuser": 6, "member": 2, "both teams": 4, "outsider": 2}.get(
            who, 0
        )
        for run in runs:
            one = ids(selectors.active_agents(ExecutionRun.objects.filter(pk=run.pk)))
            assert ids(selectors.visible_active_agents(user, run)) == one


def test_a_user_in_two_teams_sees_each_row_once(runs, users):
    user = User.objects.get(pk=users["both teams"].pk)
    assert selectors.visible_runs(user).count() == len(set(selectors.visible_runs(user).values_list("pk")))
    assert selectors.visible_active_agents(user).count() == 4
