"""The main job: `tidewatch_demo` (admin user, examples, demo run) and daphne serving the admin."""

import socket
import subprocess
import sys
import time
import urllib.request
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands

from executions.management.commands import tidewatch_demo
from waves.models import TaskList

pytestmark = pytest.mark.django_db


def demo(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("tidewatch_demo", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def no_examples(tmp_path):
    """Arguments that point tidewatch_demo at an empty examples directory (admin tests only)."""
    (tmp_path / "no-examples").mkdir()
    return ["--examples", str(tmp_path / "no-examples")]


def test_admin_gets_the_password_from_the_environment_and_reruns_are_idempotent(monkeypatch, no_examples):
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "correct-horse-battery")
    first, _ = demo(*no_examples)
    second, _ = demo(*no_examples)

    users = get_user_model().objects.filter(username="admin")
    assert users.count() == 1
    admin = users.get()
    assert admin.is_superuser and admin.is_staff and admin.is_active
    assert admin.check_password("correct-horse-battery")
    assert "correct-horse-battery" not in first + second  # a password from the env is not echoed
    assert "http://127.0.0.1:8000/admin/" in first


def test_changing_the_environment_password_updates_the_admin(monkeypatch, no_examples):
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "first-password-1")
    demo(*no_examples)
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "second-password-2")
    demo(*no_examples)
    assert get_user_model().objects.get(username="admin").check_password("second-password-2")


def test_a_generated_password_is_printed_once_and_kept(monkeypatch, no_examples):
    monkeypatch.delenv("TIDEWATCH_ADMIN_PASSWORD", raising=False)
    first, _ = demo(*no_examples)
    password = next(line.split()[1] for line in first.splitlines() if line.strip().startswith("password:"))
    assert "shown only once" in first
    assert get_user_model().objects.get(username="admin").check_password(password)

    second, _ = demo(*no_examples)
    assert password not in second
    assert "unchanged" in second
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_every_example_is_imported_and_reimporting_replaces_it(monkeypatch):
    if "import_tasklist" not in get_commands():
        pytest.skip("import_tasklist is not there yet")
    files = tidewatch_demo.example_files(tidewatch_demo.EXAMPLES_DIR)
    if not files:
        pytest.skip("examples/ holds no file yet")
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "pw-for-examples")

    out, err = demo()
    assert "not imported" not in err, err
    live = TaskList.objects.filter(archived_at__isnull=True)
    assert live.count() == len(files), out

    demo()  # --replace: the same live lists, not a second copy of each
    assert TaskList.objects.filter(archived_at__isnull=True).count() == len(files)


def test_missing_commands_are_skipped_with_a_message(monkeypatch):
    monkeypatch.setattr(tidewatch_demo, "command_exists", lambda name: False)
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "pw-skip")
    out, _ = demo("--start-run")
    assert "import_tasklist command is not available yet" in out
    assert "run_tasklist command is not available yet" in out
    assert get_user_model().objects.filter(username="admin").exists()


def test_start_run_launches_a_simulated_pipeline_run_detached(monkeypatch, settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    launched = {}

    class FakePopen:
        pid = 4242

        def __init__(self, args, **kwargs):
            launched.update(args=args, **kwargs)

    monkeypatch.setattr(tidewatch_demo, "command_exists", lambda name: name == "run_tasklist")
    monkeypatch.setattr(tidewatch_demo.subprocess, "Popen", FakePopen)
    note = tidewatch_demo.Command().start_run({"multi_platform.pipeline": "17"})

    assert launched["args"] == [sys.executable, "manage.py", "run_tasklist", "17", "--simulate", "1"]
    assert launched["start_new_session"] is True
    assert launched["stdin"] == subprocess.DEVNULL
    assert "pid 4242" in note and str(tmp_path / "var" / "demo-run.log") in note


def test_start_run_is_skipped_when_the_demo_example_was_not_imported(monkeypatch):
    monkeypatch.setattr(tidewatch_demo, "command_exists", lambda name: True)
    assert "was not imported" in tidewatch_demo.Command().start_run({})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_daphne_serves_the_admin_and_its_static_files(child_env, tmp_path):
    """What `make run` serves: daphne has no static handler, whitenoise must serve the admin CSS."""
    port = free_port()
    log = open(tmp_path / "daphne.log", "w+b")  # closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=tidewatch_demo.settings.BASE_DIR,
        env={**child_env, "DEBUG": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/static/admin/css/base.css")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"daphne did not answer: {log.read().decode()[-2000:]}")
                time.sleep(0.2)
        assert status == 200 and b"body" in body
        status, body = get(f"http://127.0.0.1:{port}/admin/login/")
        assert status == 200 and b"Tidewatch" in body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
