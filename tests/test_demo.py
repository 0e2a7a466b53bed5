"""The main job: `tidewatch_demo` (admin user, examples, demo run) and daphne serving the admin."""

import urllib.request
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from executions.management.commands import tidewatch_demo
from executions.models import ExecutionRun
from tests.servers import Daphne
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


def test_every_example_is_imported_once_and_again_only_when_its_file_changes(monkeypatch, tmp_path):
    files = tidewatch_demo.example_files(tidewatch_demo.EXAMPLES_DIR)
    assert files, "examples/ holds no file"
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "pw-for-examples")
    out, err = demo()
    assert "not imported" not in err, err
    assert TaskList.objects.filter(archived_at__isnull=True).count() == len(files), out

    again, _ = demo()  # nothing changed: nothing imported, no archived copy piles up
    assert TaskList.objects.count() == len(files)
    assert again.count("unchanged") == len(files)

    copies = tmp_path / "examples"
    copies.mkdir()
    for path in files:
        (copies / path.name).write_text(path.read_text())
    etl = copies / "etl.yaml"
    etl.write_text(etl.read_text().replace("max_parallelism: 4", "max_parallelism: 3"))
    out, _ = demo("--examples", str(copies))
    assert "imported etl.yaml" in out and out.count("unchanged") == len(files) - 1
    assert TaskList.objects.count() == len(files) + 1  # the old etl archived, the new one live
    assert TaskList.objects.get(title="nightly-etl", archived_at__isnull=True).max_parallelism == 3


def test_start_run_lays_out_a_simulated_run_and_names_its_id(monkeypatch, settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setenv("TIDEWATCH_ADMIN_PASSWORD", "pw-run")
    spawned = []
    monkeypatch.setattr(tidewatch_demo.services, "run_spawn", lambda run: spawned.append(run) or 4242)
    out, _ = demo("--start-run")
    run = ExecutionRun.objects.get()
    assert spawned == [run] and run.status == "pending" and run.simulate_scale == 1.0
    assert run.task_list.title == "multi_platform"
    assert f"Demo run: run {run.pk} of multi_platform started (executor pid 4242" in out
    assert f"run_status {run.pk} --watch" in out
    assert f"Watch it live:  http://127.0.0.1:8000/admin/dashboards/runs/{run.pk}/" in out


def test_the_live_run_view_the_demo_names_is_the_admins():
    from django.urls import reverse

    assert reverse("admin:dashboard_run", args=[7]) == "/admin/dashboards/runs/7/"


def test_start_run_is_skipped_when_the_demo_example_was_not_imported():
    assert "was not imported" in tidewatch_demo.Command().start_run(None, "http://127.0.0.1:8000/admin/")


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_daphne_serves_the_admin_and_its_static_files(child_env, tmp_path):
    """What `make run` serves: daphne has no static handler, whitenoise must serve the admin CSS."""
    daphne = Daphne({**child_env, "DEBUG": "false"}, tmp_path / "daphne.log")
    try:
        status, body = get(f"{daphne.base}/static/admin/css/base.css")
        assert status == 200 and b"body" in body
        status, body = get(f"{daphne.base}/admin/login/")
        assert status == 200 and b"Tidewatch" in body
    finally:
        daphne.stop()
