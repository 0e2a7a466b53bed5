"""The team rule: a task list belongs to a team (an auth Group), and a user sees the task
lists of their teams and everything under them. Superusers see all. A list with no team is
seen by superusers only."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db.models import Q

from waves.models import TaskList


class TeamError(ValueError):
    """The team a write names cannot be used by this user; the message says why."""


def visible_task_lists(user):
    """Every task list (live and archived) `user` may see."""
    if user.is_superuser:
        return TaskList.objects.all()
    if not user.is_authenticated:
        return TaskList.objects.none()
    return TaskList.objects.filter(team__in=user.groups.all())


def team_rule(user, path: str) -> Q:
    """The same rule as a condition on rows that reach their task list through `path` (a lookup
    such as "task_list" or "execution__task_list"): nothing to check for a superuser (every run
    has a task list), nothing passes for an anonymous user, else the list's team is one of the
    user's. On a list the query joins anyway it adds no subquery over runs and task lists, which
    PostgreSQL would have to plan as two more joins."""
    if user.is_superuser:
        return Q()
    if not user.is_authenticated:
        return Q(pk__in=[])
    return Q(**{f"{path}__team__in": user.groups.all()})


def may_see(user, task_list: TaskList) -> bool:
    return user.is_superuser or (
        task_list.team_id is not None and user.groups.filter(pk=task_list.team_id).exists()
    )


def team_for_import(user, name: str | None) -> Group | None:
    """The team a list imported by `user` belongs to: the one named, else the user's only
    team. Superusers may name any team, or none."""
    if name:
        team = Group.objects.filter(name=name).first()
        if team is None or not (user.is_superuser or user.groups.filter(pk=team.pk).exists()):
            raise TeamError(f"you are not a member of a team named {name!r}")
        return team
    if user.is_superuser:
        return None
    teams = list(user.groups.all()[:2])
    if len(teams) != 1:
        raise TeamError(
            "you belong to no team" if not teams else "you belong to several teams: name one with ?team="
        )
    return teams[0]
