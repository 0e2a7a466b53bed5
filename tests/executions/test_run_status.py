"""`run_status` and the selector behind it: the status display of a run."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from executions import selectors, services
from executions.errors import NotFound
from executions.management.commands import run_status as run_status_command
from executions.models import ExecutionRun, ParallelExecutionWave, RunStatus, TaskStatus, WaveStatus, WaveTask
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


def set_status(run, keys, status, **fields) -> None:
    """Put the named wave tasks of `run` in `status`, with the attempt and times an executor
    would have left (rows written directly: these tests are about reading them)."""
    now = timezone.now()
    assert WaveTask.objects.filter(execution=run, key__in=keys).count() == len(keys), keys
    if status in (TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.LOST):
        fields = {"attempt": 1, "started_at": now - timedelta(seconds=5), **fields}
    if status in TaskStatus.terminal():
        fields = {"completed_at": now, **fields}
    WaveTask.objects.filter(execution=run, key__in=keys).update(status=status, **fields)


def finish(run, keys, status=TaskStatus.SUCCEEDED) -> None:
    set_status(run, keys, status)


def set_wave(run, number, status, **fields) -> None:
    ParallelExecutionWave.objects.filter(execution=run, wave_number=number).update(status=status, **fields)


def set_run(run, **fields) -> None:
    ExecutionRun.objects.filter(pk=run.pk).update(**fields)


def example_run():
    """The example status display: backend done, web 5/7, mobile 4/7 -> 11/16 (68%)."""
    tl = task_list("constellation", keys=[*BACKEND, *WEB, *MOBILE])
    set_groups(tl, {"backend": BACKEND, "web-features": WEB, "mobile-features": MOBILE})
    run = run_with_waves(tl, [BACKEND, WEB + MOBILE])
    finish(run, BACKEND)
    finish(run, WEB[:4])
    finish(run, WEB[4:5], TaskStatus.SKIPPED)
    set_status(run, WEB[5:7], TaskStatus.RUNNING)
    finish(run, MOBILE[:4])
    finish(run, MOBILE[4:5], TaskStatus.FAILED)
    set_status(run, MOBILE[5:6], TaskStatus.WAITING_APPROVAL)
    set_wave(run, 0, WaveStatus.SUCCEEDED, completed_at=timezone.now())
    set_wave(run, 1, WaveStatus.RUNNING, started_at=timezone.now())
    return run


def run_output(*args, **options) -> str:
    out = StringIO()
    call_command("run_status", *map(str, args), stdout=out, **options)
    return out.getvalue()


# --- the selector ------------------------------------------------------------------------------


def test_view_counts_groups_steps_and_percentage():
    run = example_run()
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
    run = selectors.run_get(example_run().pk)
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
    set_status(run, ["load", "load[2]"], TaskStatus.RUNNING)
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


def test_command_prints_the_example_display():
    run = example_run()
    out = run_output(run.pk)
    assert f"Run {run.pk} of constellation: IN PROGRESS" in out
    assert "Wave 0: backend\n  ✅ Group: backend (2/2 steps complete)" in out
    assert "Wave 1: web-features + mobile-features (IN PROGRESS)" in out
    assert "🔄 Group: web-features (5/7 steps complete)" in out
    assert "running: web6, web7" in out
    assert "❌ Group: mobile-features (4/7 steps complete)" in out
    assert "failed: mob5" in out
    assert "waiting for approval: mob6" in out
    assert "skipped: web5" in out
    assert out.rstrip().endswith("Overall: 11/16 steps complete (68%): 10 succeeded, 1 skipped, 1 failed")


def test_command_json_prints_the_view():
    run = example_run()
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
            set_run(run, status=RunStatus.SUCCEEDED, completed_at=timezone.now())

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
        lambda s: set_run(run, status=RunStatus.FAILED, completed_at=timezone.now()),
    )
    lines = run_output(run.pk, "--watch", "--json").splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["running", "failed"]


def test_command_exit_code_for_an_unknown_run_in_a_child_process(manage):
    proc = manage("run_status", "424242")
    assert proc.returncode == 2
    assert "run 424242 does not exist" in proc.stderr


# --- outcomes shown as they are --------------------------------------------------------------


def outcome_run():
    """One wave of serial steps, each ending differently, and a group of two skipped steps."""
    keys = ["ok", "skip", "stop", "gone", "bad", "s1", "s2"]
    tl = task_list("outcomes", keys=keys)
    set_groups(tl, {"docs": ["s1", "s2"]})
    run = run_with_waves(tl, [keys])
    finish(run, ["ok"])
    finish(run, ["skip", "s1", "s2"], TaskStatus.SKIPPED)
    finish(run, ["stop"], TaskStatus.CANCELLED)
    finish(run, ["gone"], TaskStatus.LOST)
    finish(run, ["bad"], TaskStatus.FAILED)
    set_run(run, status=RunStatus.FAILED, completed_at=timezone.now())
    set_wave(run, 0, WaveStatus.FAILED)
    return run


def groups_by_name(view):
    return {g["name"]: g for w in view["waves"] for g in w["groups"]}


def test_skipped_step_shows_as_skipped_not_as_a_success():
    run = outcome_run()
    groups = groups_by_name(selectors.run_status_view(run))
    assert groups["skip"]["status"] == "skipped" and groups["skip"]["skipped"] == ["skip"]
    assert groups["docs"]["status"] == "skipped" and groups["docs"]["skipped"] == ["s1", "s2"]
    assert groups["ok"]["status"] == "done"
    out = run_output(run.pk)
    assert "⏭️ Step: skip (skipped)" in out
    assert "⏭️ Group: docs (2/2 steps complete)\n      skipped: s1, s2" in out
    assert "✅ Step: ok\n" in out
    assert out.count("✅") == 1


def test_cancelled_step_shows_as_cancelled_not_as_failed():
    run = outcome_run()
    stop = groups_by_name(selectors.run_status_view(run))["stop"]
    assert (stop["status"], stop["cancelled"], stop["failed"]) == ("cancelled", ["stop"], [])
    out = run_output(run.pk)
    assert "🚫 Step: stop (cancelled)" in out
    assert "Step: stop (failed)" not in out


def test_lost_step_shows_as_lost():
    run = outcome_run()
    gone = groups_by_name(selectors.run_status_view(run))["gone"]
    assert (gone["status"], gone["lost"], gone["failed"]) == ("lost", ["gone"], [])
    assert "💀 Step: gone (lost)" in run_output(run.pk)


def test_group_lists_cancelled_and_lost_steps_apart_from_failed_ones():
    tl = task_list("mix", keys=["a", "b", "c", "d"])
    set_groups(tl, {"g": ["a", "b", "c", "d"]})
    run = run_with_waves(tl, [["a", "b", "c", "d"]])
    finish(run, ["a"], TaskStatus.FAILED)
    finish(run, ["b"], TaskStatus.CANCELLED)
    finish(run, ["c"], TaskStatus.LOST)
    finish(run, ["d"], TaskStatus.SKIPPED)
    [group] = selectors.run_status_view(run)["waves"][0]["groups"]
    assert (group["failed"], group["cancelled"], group["lost"], group["skipped"]) == (
        ["a"],
        ["b"],
        ["c"],
        ["d"],
    )
    assert group["counts"] == {"failed": 1, "cancelled": 1, "lost": 1, "skipped": 1}
    out = run_output(run.pk)
    assert "failed: a\n      lost: c\n      cancelled: b\n      skipped: d" in out


def test_overall_counts_succeeded_skipped_failed_cancelled_and_lost_separately():
    out = run_output(outcome_run().pk)
    assert "Overall: 4/7 steps complete (57%): 1 succeeded, 3 skipped, 1 failed, 1 cancelled, 1 lost" in out


def test_overall_leaves_out_cancelled_and_lost_when_there_are_none():
    run = example_run()
    assert (
        "Overall: 11/16 steps complete (68%): 10 succeeded, 1 skipped, 1 failed\n"
        in run_output(run.pk) + "\n"
    )


def test_skipped_wave_is_shown_as_skipped():
    tl = task_list("skipwave", keys=["a", "b"])
    run = run_with_waves(tl, [["a"], ["b"]])
    finish(run, ["a"], TaskStatus.FAILED)
    finish(run, ["b"], TaskStatus.SKIPPED)
    set_wave(run, 0, WaveStatus.FAILED)
    set_wave(run, 1, WaveStatus.SKIPPED)
    view = selectors.run_status_view(run)
    assert [w["status"] for w in view["waves"]] == ["failed", "skipped"]
    out = run_output(run.pk)
    assert "Wave 0: a (FAILED)" in out
    assert "Wave 1: b (SKIPPED)\n  ⏭️ Step: b (skipped)" in out


# --- approval gates ------------------------------------------------------------------------


def gated_run():
    tl = task_list("gated", keys=["build", "test", "deploy"])
    run = run_with_waves(tl, [["build"], ["test"], ["deploy"]])
    finish(run, ["build", "test"])
    set_wave(run, 0, WaveStatus.SUCCEEDED)
    set_wave(run, 1, WaveStatus.SUCCEEDED)
    set_status(run, ["deploy"], TaskStatus.WAITING_APPROVAL)
    return run


def test_wave_waiting_at_a_gate_says_so_and_names_the_command_that_approves_it():
    run = gated_run()
    view = selectors.run_status_view(run)
    wave = view["waves"][2]
    assert (wave["status"], wave["display_status"], wave["waiting_approval"]) == (
        "pending",
        "waiting_approval",
        ["deploy"],
    )
    assert wave["groups"][0]["status"] == "waiting_approval"
    out = run_output(run.pk)
    assert "Wave 2: deploy (WAITING FOR APPROVAL)" in out
    assert "✋ Step: deploy (waiting for approval)" in out
    assert f"(waiting for approval)\n      approve with: python manage.py approve_step {run.pk} deploy" in out


def test_wave_with_running_steps_beside_a_waiting_gate_is_in_progress():
    tl = task_list("side", keys=["gate", "work"])
    run = run_with_waves(tl, [["gate", "work"]])
    set_status(run, ["gate"], TaskStatus.WAITING_APPROVAL)
    set_status(run, ["work"], TaskStatus.RUNNING)
    set_wave(run, 0, WaveStatus.RUNNING)
    out = run_output(run.pk)
    assert "Wave 0: gate + work (IN PROGRESS)" in out
    assert f"python manage.py approve_step {run.pk} gate" in out


def test_approve_command_quotes_a_for_each_instance_key():
    tl = task_list("gatefan", keys=["deploy"])
    run = run_with_waves(tl, [["deploy"]])
    instances(run, "deploy", 2)
    set_status(run, ["deploy[1]"], TaskStatus.WAITING_APPROVAL)
    assert f"python manage.py approve_step {run.pk} 'deploy[1]'" in run_output(run.pk)


# --- JSON --------------------------------------------------------------------------------------

# The keys run_status --json printed before steps were listed: kept, so nothing reading them breaks.
RUN_KEYS = {
    "run_id", "task_list_id", "task_list", "status", "finished", "backend", "schedule",
    "max_parallelism", "attempt", "resumed_from", "created_at", "started_at", "completed_at",
    "wall_seconds", "task_seconds", "speedup", "peak_concurrency", "cancel_requested", "error",
    "waves", "steps", "done", "total", "percent",
}  # fmt: skip
WAVE_KEYS = {"wave_number", "status", "started_at", "completed_at", "groups", "done", "total", "percent"}
GROUP_KEYS = {"name", "kind", "status", "done", "total", "percent", "running", "failed", "waiting_approval"}


def test_json_keeps_its_keys_and_lists_every_step_in_its_wave_and_group():
    run = example_run()
    data = json.loads(run_output(run.pk, "--json"))
    assert RUN_KEYS <= set(data)
    assert all(WAVE_KEYS <= set(w) for w in data["waves"])
    assert all(GROUP_KEYS <= set(g) for w in data["waves"] for g in w["groups"])
    listed = {
        step["key"]: (w["wave_number"], g["name"], step["status"])
        for w in data["waves"]
        for g in w["groups"]
        for step in g["steps"]
    }
    expected = {k: (0, "backend", "succeeded") for k in BACKEND}
    expected |= {k: (1, "web-features", "succeeded") for k in WEB[:4]}
    expected |= {"web5": (1, "web-features", "skipped"), "web6": (1, "web-features", "running")}
    expected |= {"web7": (1, "web-features", "running"), "mob5": (1, "mobile-features", "failed")}
    expected |= {k: (1, "mobile-features", "succeeded") for k in MOBILE[:4]}
    expected |= {
        "mob6": (1, "mobile-features", "waiting_approval"),
        "mob7": (1, "mobile-features", "pending"),
    }
    assert listed == expected


def test_json_steps_carry_attempt_and_times():
    run = example_run()
    WaveTask.objects.filter(execution=run, key="be1").update(attempt=3)
    data = json.loads(run_output(run.pk, "--json"))
    steps = {s["key"]: s for w in data["waves"] for g in w["groups"] for s in g["steps"]}
    be1 = WaveTask.objects.get(execution=run, key="be1")
    assert steps["be1"] == {
        "key": "be1",
        "status": "succeeded",
        "attempt": 3,
        "started_at": be1.started_at.isoformat().replace("+00:00", "Z"),
        "completed_at": be1.completed_at.isoformat().replace("+00:00", "Z"),
    }
    assert steps["mob7"] == {
        "key": "mob7", "status": "pending", "attempt": 0, "started_at": None, "completed_at": None,
    }  # fmt: skip


def test_json_lists_for_each_instances_as_steps_not_their_parent():
    tl = task_list("fan3", keys=["load"])
    run = run_with_waves(tl, [["load"]])
    instances(run, "load", 2)
    [wave] = selectors.run_status_view(run)["waves"]
    assert [s["key"] for g in wave["groups"] for s in g["steps"]] == ["load[0]", "load[1]"]


# --- speedup ---------------------------------------------------------------------------------


def finished_run(wall, task, gate_wait=0.0):
    run = run_with_waves(task_list(f"timed-{wall}-{task}-{gate_wait}", keys=["a"]), [["a"]])
    finish(run, ["a"])
    set_run(
        run,
        status=RunStatus.SUCCEEDED,
        completed_at=timezone.now(),
        wall_seconds=wall,
        task_seconds=task,
        gate_wait_seconds=gate_wait,
    )
    return run


def test_speedup_does_not_charge_time_waiting_at_a_gate():
    run = finished_run(wall=100.0, task=90.0, gate_wait=70.0)
    view = selectors.run_status_view(selectors.run_get(run.pk))
    assert (view["speedup"], view["gate_wait_seconds"]) == (3.0, 70.0)
    out = run_output(run.pk)
    assert "Wall time: 100.0s (70.0s waiting for approval, not counted in the speedup), 3.0x faster" in out


def test_speedup_without_gate_wait_is_task_time_over_wall_time():
    run = finished_run(wall=10.0, task=25.0)
    assert selectors.run_status_view(selectors.run_get(run.pk))["speedup"] == 2.5
    out = run_output(run.pk)
    assert "Wall time: 10.0s, 2.5x faster than serial" in out and "waiting for approval" not in out


@pytest.mark.parametrize(
    "wall, task, gate_wait",
    [
        (100.0, 90.0, 100.0),  # all of its time at a gate
        (100.0, 90.0, 120.0),  # more gate wait than wall time (clock skew): nothing to divide by
        (5000.0, 0.001, 0.0),  # rounds to 0.00
        (10.0, 0.0, 0.0),  # nothing ran (every step skipped)
    ],
)
def test_speedup_is_never_shown_as_zero(wall, task, gate_wait):
    run = finished_run(wall=wall, task=task, gate_wait=gate_wait)
    assert selectors.run_status_view(selectors.run_get(run.pk))["speedup"] is None
    out = run_output(run.pk)
    assert "0.0x" not in out and "0.00x" not in out and "faster" not in out


def test_speedup_below_one_is_not_called_faster():
    run = finished_run(wall=10.0, task=4.0)
    out = run_output(run.pk)
    assert "speedup 0.40x (slower than one task after another)" in out and "faster" not in out


# --- bad and unknown run ids ---------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["99999999999999999999", "9223372036854775808", "0"])
def test_huge_or_impossible_run_id_is_not_found_with_exit_2(run_id):
    with pytest.raises(CommandError, match=f"run {run_id} does not exist") as err:
        run_output(run_id)
    assert err.value.returncode == 2


def test_run_get_refuses_what_no_id_column_holds():
    for value in ("99999999999999999999", "-1", "1e3", "١", " ", "x"):
        with pytest.raises(NotFound):
            selectors.run_get(value)


def test_command_huge_run_id_in_a_child_process_exits_2_without_a_traceback(manage):
    for args in (["99999999999999999999"], ["x"], ["--json", "99999999999999999999"]):
        proc = manage("run_status", *args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "does not exist" in proc.stderr or "must be a run id" in proc.stderr
