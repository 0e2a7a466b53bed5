import uuid

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

from tests.factories import run_with_waves, task_list


@pytest.fixture(autouse=True)
def live_settings(settings):
    """A fresh channel layer per test (in-memory, or channels-redis with a private prefix when
    REDIS_URL is set) and a fast poll."""
    from observability import services

    settings.TIDEWATCH_LIVE = {"POLL_SECONDS": 0.01}
    settings.CHANNEL_LAYERS = layers()
    # stats.update promises of other tests' (rolled back) transactions, on run ids reused here.
    services._scheduled.clear()
    services._announced.clear()
    yield


def layers(**config):
    if django_settings.REDIS_URL:
        return {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": django_settings.REDIS_URL, "socket_timeout": None}],
                    "prefix": f"twtest{uuid.uuid4().hex[:8]}",
                    **config,
                },
            }
        }
    return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": config}}


@pytest.fixture
def teams(db):
    return Group.objects.create(name="red"), Group.objects.create(name="blue")


@pytest.fixture
def member(teams):
    user = User.objects.create_user("mia", password="pw")
    user.groups.add(teams[0])
    return user


@pytest.fixture
def outsider(teams):
    user = User.objects.create_user("otto", password="pw")
    user.groups.add(teams[1])
    return user


@pytest.fixture
def token(member):
    return Token.objects.create(user=member).key


@pytest.fixture
def red_run(teams):
    return run_with_waves(task_list("red-list", team=teams[0]), [["a", "b"], ["c"]])


@pytest.fixture
def blue_run(teams):
    return run_with_waves(task_list("blue-list", team=teams[1]), [["a"]])
