"""`run_status` and the selector behind it (seed 003 "Status Display")."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from executions import selectors, services
from executions.management.commands import run_status as run_status_command
from executions.models import RunStatus, TaskStatus, WaveStatus, WaveTask
from tests.factories import run_with_waves, task_list
from waves.models import Task

pytestmark = pytest.mark.django_db

BACKEND = ["be1", "be2"]
WEB = [f"web{i}" for i in range(1, 8)]
MOBILE = [f"mob{i}" for i in range(1, 8)]


def set_groups(tl, groups: dict[str, list[str]]) -> None:
    """Definition data: put tasks of `tl` into pipeline groups."""
    for name, keys in groups.items():
        Task.objects.filter(task_list=tl, key__in=keys).update(parallel_group=name)


def move(run, keys, *statuses) -> None:
    """Walk the named wave tasks through `statuses`, through the status service only."""
    wts = list(WaveTask.objects.filter(execution=run, key__in=keys))
    assert len(wts) == len(keys), keys
    for status in statuses:
        services.transition(wts, status)


def finish(run, keys, status=TaskStatus.SUCCEEDED) -> None:
    move(run, keys, TaskStatus.RUNNING, status)


def seed_run():
    """Seed 003's example: backend done, web 5/7, mobile 4/7 -> 11/16 (68%)."""
    tl = task_list("constellation", keys=[*BACKEND, *WEB, *MOBILE])
    set_groups(tl, {"backend": BACKEND, "web-features": WEB, "mobile-features": MOBILE})
    run = run_with_waves(tl, [BACKEND, WEB + MOBILE])
    finish(run, BACKEND)
    finish(run, WEB[:4])
    finish(run, WEB[4:5], TaskStatus.SKIPPED)
    move(run, WEB[5:7], TaskStatus.QUEUED, TaskStatus.RUNNING)
    finish(run, MOBILE[:4])
    finish(run, MOBILE[4:5], TaskStatus.FAILED)
    move(run, MOBILE[5:6], TaskStatus.WAITING_APPROVAL)
    waves = list(run.waves.order_by("wave_number"))
    services.wave_update(waves[0], status=WaveStatus.SUCCEEDED, completed_at=timezone.now())
    services.wave_update(waves[1], status=WaveStatus.RUNNING, started_at=timezone.now())
    return run


def run_output(*args, **options) -> str:
    out = StringIO()
    call_command("run_status", *map(str, args), stdout=out, **options)
    return out.getvalue()


# --- the selector ------------------------------------------------------------------------------


def test_view_counts_groups_steps_and_percentage():
    run = seed_run()
    view = selectors.run_status_view(selectors.run_get(run.pk))
    assert (view["done"], view["total"], view["percent"]) == (11, 16, 68)
    assert [w["wave_number"] for w in view["waves"]] == [0, 1]
    assert [w["status"] for w in view["waves"]] == ["succeeded", "running"]
    backend, web, mobile = view["waves"][0]["groups"] + view["waves"][1]["groups"]
    assert (backend["name"], backend["status"], backend["done"], backend["total"]) == (
        "backend",
        "done",
        2,
        2,
    )
    assert (web["name"], web["status"], web["done"], web["total"]) == ("web-features", "in_progress", 5, 7)
    assert web["running"] == ["web6", "web7"]
    assert (mobile["name"], mobile["status"], mobile["done"], mobile["total"]) == (
        "mobile-features",
        "failed",
        4,
        7,
    )
    assert mobile["failed"] == ["mob5"]
    assert mobile["waiting_approval"] == ["mob6"]
    assert view["steps"] == {
        "succeeded": 10,
        "skipped": 1,
        "running": 2,
        "failed": 1,
        "waiting_approval": 1,
        "pending": 1,
    }
    assert view["status"] == RunStatus.RUNNING and view["finished"] is False
    json.dumps(view)  # JSON-ready


def test_view_reads_a_fixed_number_of_queries(django_assert_max_num_queries):
    run = selectors.run_get(seed_run().pk)
    with django_assert_max_num_queries(2):
        small = selectors.run_status_view(run)
    tl = task_list("big", keys=[f"t{i}" for i in range(60)])
    set_groups(tl, {"g1": [f"t{i}" for i in range(30)], "g2": [f"t{i}" for i in range(30, 50)]})
    big = selectors.run_get(
        run_with_waves(tl, [[f"t{i}" for i in range(w * 20, w * 20 + 20)] for w in range(3)]).pk
    )
    with django_assert_max_num_queries(2):
        view = selectors.run_status_view(big)
    assert small["total"] == 16 and view["total"] == 60


def test_ungrouped_tasks_are_serial_steps_and_blocks_are_groups():
    tl = task_list("mixed", keys=["setup", "fanout", "x", "y", "check"])
    block = Task.objects.get(task_list=tl, key="fanout")
    Task.objects.filter(pk=block.pk).update(kind=Task.Kind.GROUP)
    Task.objects.filter(task_list=tl, key__in=["x", "y"]).update(parent=block, parallel_group="fanout")
    run = run_with_waves(tl, [["setup"], ["x", "y"], ["check"]])
    finish(run, ["setup"])
    finish(run, ["x"])
    view = selectors.run_status_view(run)
    groups = [
        [(g["kind"], g["name"], g["done"], g["total"], g["status"]) for g in w["groups"]]
        for w in view["waves"]
    ]
    assert groups == [
        [("serial", "setup", 1, 1, "done")],
        [("group", "fanout", 1, 2, "in_progress")],
        [("serial", "check", 0, 1, "pending")],
    ]
    assert (view["done"], view["total"], view["percent"]) == (2, 4, 50)


def instances(run, key: str, count: int) -> None:
    """Create `count` for_each instances of step `key` (as the executor does at run time)."""
    parent = WaveTask.objects.get(execution=run, key=key)
    services.wave_tasks_create(
        [
            WaveTask(
                wave=parent.wave,
                task=parent.task,
                execution=run,
                key=f"{key}[{i}]",
                parent=parent,
                item_index=i,
            )
            for i in range(count)
        ]
    )


def test_for_each_instances_count_as_steps_of_their_parents_group():
    tl = task_list("fan", keys=["load", "other"])
    set_groups(tl, {"loaders": ["load", "other"]})
    run = run_with_waves(tl, [["load", "other"]])
    instances(run, "load", 3)
    finish(run, ["load[0]", "load[1]"])
    move(run, ["load", "load[2]"], TaskStatus.RUNNING)
    [wave] = selectors.run_status_view(run)["waves"]
    [group] = wave["groups"]
    assert (group["name"], group["done"], group["total"]) == ("loaders", 2, 4)
    assert group["running"] == ["load[2]"]


def test_for_each_outside_a_group_shows_its_instances():
    tl = task_list("fan2", keys=["load"])
    run = run_with_waves(tl, [["load"]])
    instances(run, "load", 2)
    finish(run, ["load[0]"])
    assert "✅" not in run_output(run.pk)
    assert "Step: load (1/2 instances complete)" in run_output(run.pk)


# --- the command -----------------------------------------------------------------------------


def test_command_prints_seed_003_display():
    run = seed_run()
    out = run_output(run.pk)
    assert f"Run {run.pk} of constellation: IN PROGRESS" in out
    assert "Wave 0: backend\n  ✅ Group: backend (2/2 steps complete)" in out
    assert "Wave 1: web-features + mobile-features (IN PROGRESS)" in out
    assert "🔄 Group: web-features (5/7 steps complete)" in out
    assert "running: web6, web7" in out
    assert "❌ Group: mobile-features (4/7 steps complete)" in out
    assert "failed: mob5" in out
    assert "waiting for approval: mob6" in out
    assert out.rstrip().endswith("Overall: 11/16 steps complete (68%)")


def test_command_json_prints_the_view():
    run = seed_run()
    data = json.loads(run_output(run.pk, "--json"))
    assert data == json.loads(json.dumps(selectors.run_status_view(run)))
    assert (data["run_id"], data["done"], data["total"], data["percent"]) == (run.pk, 11, 16, 68)


def test_command_defaults_to_the_newest_run():
    tl = task_list("first", keys=["a"])
    old = run_with_waves(tl, [["a"]])
    new = run_with_waves(task_list("second", keys=["b"]), [["b"]])
    assert selectors.run_latest().pk == new.pk
    assert f"Run {new.pk} of second" in run_output()
    assert json.loads(run_output("--json"))["run_id"] == new.pk
    assert f"Run {old.pk} of first" in run_output(old.pk)


def test_command_unknown_run_id_is_an_error_naming_it():
    run_with_waves(task_list(), [["a"]])
    with pytest.raises(CommandError, match="run 987654 does not exist") as err:
        run_output(987654)
    assert err.value.returncode == 2


def test_command_without_runs_says_so():
    assert selectors.run_latest() is None
    assert "No runs yet" in run_output()


def test_watch_ends_at_once_when_the_run_is_finished(monkeypatch):
    run = run_with_waves(task_list(), [["a", "b"]], status=RunStatus.SUCCEEDED)
    finish(run, ["a", "b"])
    monkeypatch.setattr(run_status_command.time, "sleep", lambda s: pytest.fail("slept on a finished run"))
    out = run_output(run.pk, "--watch", "--interval", "0.01")
    assert out.count("Overall: 2/2 steps complete (100%)") == 1
    assert out.startswith(run_status_command.CLEAR)


def test_watch_redraws_until_the_run_ends(monkeypatch):
    run = run_with_waves(task_list(), [["a", "b"]])
    finish(run, ["a"])
    sleeps = []

    def progress(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 1:
            finish(run, ["b"])
        else:
            services.run_update(run, status=RunStatus.SUCCEEDED, completed_at=timezone.now())

    monkeypatch.setattr(run_status_command.time, "sleep", progress)
    out = run_output(run.pk, "--watch", "--interval", "0.5")
    assert sleeps == [0.5, 0.5]
    frames = out.split(run_status_command.CLEAR)[1:]
    assert len(frames) == 3
    assert "Overall: 1/2 steps complete (50%)" in frames[0]
    assert "Overall: 2/2 steps complete (100%)" in frames[1]
    assert "SUCCEEDED" in frames[2]


def test_watch_json_prints_one_object_per_redraw(monkeypatch):
    run = run_with_waves(task_list(), [["a"]])
    monkeypatch.setattr(
        run_status_command.time,
        "sleep",
        lambda s: services.run_update(run, status=RunStatus.FAILED, completed_at=timezone.now()),
    )
    lines = run_output(run.pk, "--watch", "--json").splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["running", "failed"]


def test_command_exit_code_for_an_unknown_run_in_a_child_process(manage):
    proc = manage("run_status", "424242")
    assert proc.returncode == 2
    assert "run 424242 does not exist" in proc.stderr
