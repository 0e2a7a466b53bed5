import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured

from config.env import database_from_url, env_bool, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent
BASE = Path("/srv/tidewatch")


@pytest.mark.parametrize("raw", ["maybe", "2", "tru"])
def test_bad_boolean_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("DEBUG", raw)
    with pytest.raises(ImproperlyConfigured, match="DEBUG"):
        env_bool("DEBUG")


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("Yes", True), ("off", False), ("", False)])
def test_booleans_parse(monkeypatch, raw, value):
    monkeypatch.setenv("DEBUG", raw)
    assert env_bool("DEBUG", default=not value) is value


def test_unset_boolean_takes_the_default(monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    assert env_bool("DEBUG", default=True) is True


def test_bad_integer_names_the_variable(monkeypatch):
    monkeypatch.setenv("TIDEWATCH_HEARTBEAT_SECONDS", "two")
    with pytest.raises(ImproperlyConfigured, match="TIDEWATCH_HEARTBEAT_SECONDS"):
        env_int("TIDEWATCH_HEARTBEAT_SECONDS", 2)


def test_integer_below_minimum_names_the_variable(monkeypatch):
    monkeypatch.setenv("TIDEWATCH_STALE_AFTER_SECONDS", "1")
    with pytest.raises(ImproperlyConfigured, match="TIDEWATCH_STALE_AFTER_SECONDS.*at least 2"):
        env_int("TIDEWATCH_STALE_AFTER_SECONDS", 15, minimum=2)


def test_integers_and_lists_parse(monkeypatch):
    monkeypatch.setenv("N", " 7 ")
    monkeypatch.setenv("HOSTS", "a.example, b.example,,")
    assert env_int("N", 1) == 7
    assert env_list("HOSTS", []) == ["a.example", "b.example"]


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://localhost/0", "nonsense"])
def test_bad_database_url_scheme_names_the_variable(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL.*scheme"):
        database_from_url("DATABASE_URL", url, BASE)


@pytest.mark.parametrize("url", ["sqlite://", "postgres://h:5432/", "postgres://h:port/db"])
def test_incomplete_database_url_names_the_variable(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url("DATABASE_URL", url, BASE)


def test_sqlite_urls_parse_relative_and_absolute():
    relative = database_from_url("DATABASE_URL", "sqlite:///var/db.sqlite3", BASE)
    absolute = database_from_url("DATABASE_URL", "sqlite:////tmp/x/db.sqlite3", BASE)
    assert relative["ENGINE"] == "django.db.backends.sqlite3"
    assert relative["NAME"] == str(BASE / "var/db.sqlite3")
    assert absolute["NAME"] == "/tmp/x/db.sqlite3"
    assert absolute["TEST"]["NAME"] == "/tmp/x/test_db.sqlite3"
    assert absolute["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_urls_parse(scheme):
    db = database_from_url(
        "DATABASE_URL", f"{scheme}://tw:p%40ss@db.example:6543/tidewatch?sslmode=require", BASE
    )
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "tidewatch",
        "tw",
        "p@ss",
        "db.example",
        "6543",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_settings_refuse_to_load_with_a_bad_variable(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "sometimes", "TIDEWATCH_VAR_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr and "DEBUG='sometimes'" in proc.stderr


def w001(**kwargs):
    return [m for m in run_checks(include_deployment_checks=True, **kwargs) if m.id == "tidewatch.W001"]


IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://x"]}}}


def test_in_memory_layer_with_debug_off_warns(settings):
    settings.DEBUG, settings.CHANNEL_LAYERS = False, IN_MEMORY
    (warning,) = w001()
    assert "in-memory channel layer" in warning.msg and "REDIS_URL" in warning.hint


def test_in_memory_layer_is_fine_in_debug_and_redis_is_fine_in_production(settings):
    settings.DEBUG, settings.CHANNEL_LAYERS = True, IN_MEMORY
    assert w001() == []
    settings.DEBUG, settings.CHANNEL_LAYERS = False, REDIS
    assert w001() == []


def test_w001_is_a_deploy_check_only(settings):
    settings.DEBUG, settings.CHANNEL_LAYERS = False, IN_MEMORY
    assert [m for m in run_checks() if m.id == "tidewatch.W001"] == []


def test_a_pool_size_pools_postgres_connections_and_leaves_sqlite_alone():
    db = database_from_url("DATABASE_URL", "postgres://tw@db.example/tidewatch", BASE, pool=16)
    assert db["OPTIONS"]["pool"]["max_size"] == 16 and db["CONN_MAX_AGE"] == 0
    assert "pool" not in database_from_url("DATABASE_URL", "postgres://tw@db.example/tidewatch", BASE)["OPTIONS"]
    assert "pool" not in database_from_url("DATABASE_URL", "sqlite:////tmp/x/db.sqlite3", BASE, pool=16)["OPTIONS"]


def test_the_web_server_pools_its_connections_and_what_it_spawns_does_not(tmp_path):
    """config.asgi turns the pool on for its own settings only: an executor the server spawns
    (a run started over the API) does not inherit TIDEWATCH_DB_POOL."""
    script = (
        "import os, config.asgi; from django.conf import settings; "
        "print(settings.DATABASES['default']['OPTIONS'].get('pool', {}).get('max_size'), "
        "os.environ.get('TIDEWATCH_DB_POOL'))"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgres://tw@127.0.0.1:1/never_connected",
        "TIDEWATCH_VAR_DIR": str(tmp_path),
    }
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["16", "None"]


def test_the_redis_visibility_timeout_comes_from_the_environment(tmp_path):
    script = "from config.celery import app; print(app.conf.broker_transport_options['visibility_timeout'])"
    env = {"PATH": "/usr/bin:/bin", "TIDEWATCH_VAR_DIR": str(tmp_path)}
    for value, expected in ((None, "3600"), ("120", "120")):
        run_env = env if value is None else {**env, "CELERY_VISIBILITY_TIMEOUT": value}
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=run_env, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr
    bad = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**env, "CELERY_VISIBILITY_TIMEOUT": "soon"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "CELERY_VISIBILITY_TIMEOUT" in bad.stderr
