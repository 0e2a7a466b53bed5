"""Who calls the API: anonymous, a member of the list's team, a member of another team, a
superuser. Each is a DRF APIClient; `token_client` authenticates with a token header."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

WRITE_PERMISSIONS = (
    ("waves", "add_tasklist"),
    ("executions", "add_executionrun"),
    ("executions", "change_executionrun"),
    ("executions", "change_wavetask"),
    ("observability", "add_transcriptentry"),
)


@pytest.fixture
def teams(db):
    return Group.objects.create(name="red"), Group.objects.create(name="blue")


def _user(name, *groups, superuser=False, writer=True) -> User:
    user = User.objects.create_user(name, password="pw", is_superuser=superuser, is_staff=superuser)
    user.groups.set(groups)
    if writer and not superuser:
        for app, codename in WRITE_PERMISSIONS:
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


@pytest.fixture
def member(teams):
    return _user("mia", teams[0])


@pytest.fixture
def reader(teams):
    """In the team, without write permissions."""
    return _user("rita", teams[0], writer=False)


@pytest.fixture
def outsider(teams):
    return _user("otto", teams[1])


@pytest.fixture
def superuser(db):
    return _user("root", superuser=True)


def client_for(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def as_user():
    return client_for


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
