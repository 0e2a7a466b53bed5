"""Retention (issue 17, item 4): `manage.py prune_audit` and `executions.retention.prune`.

Audit rows and events older than the cut-off go, newer ones stay; for each wave task the
last row before the cut-off stays when it enters an unfinished status (the task was in it at
the cut-off). The concurrency timeline gives the same counts at and after the cut-off before
and after a prune, over random histories, whatever the batch size. A prune runs while a
writer moves tasks through the one status-change function: nothing newer is lost, nothing
fails. Bad arguments exit 2.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from concurrency import selectors
from concurrency.selectors import Grid
from executions import services
from executions.models import Event, TaskStatusAudit, WaveTask
from executions.retention import prune
from executions.transitions import UNFINISHED
from observability import live
from tests.concurrency.histories import S, Story, as_points, build
from tests.concurrency.test_timeline import EXAMPLES, HOUR, database_now, histories, in_savepoint
from waves.models import TaskList

DAY = timedelta(days=1)


def audit_rows():
    return list(
        TaskStatusAudit.objects.order_by("id").values_list("id", "wave_task_id", "new_status", "changed_at")
    )


def expected_kept(rows, cutoff) -> set[int]:
    """The rule read literally: every row from the cut-off on, and per wave task its last row
    before the cut-off if that row enters an unfinished status."""
    kept = {pk for pk, _, _, at in rows if at >= cutoff}
    last_before = {}
    for pk, wave_task, status, at in rows:  # id order: a wave task's history
        if at < cutoff:
            last_before[wave_task] = (pk, status)
    kept |= {pk for pk, status in last_before.values() if status in UNFINISHED}
    return kept


# --- named cases -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rows_and_events_older_than_the_window_go_and_newer_ones_stay():
    now = timezone.now()
    built = build(
        [
            # Over long before the cut-off: nothing of it stays.
            Story("extract", [(S.PENDING, now - 200 * DAY), (S.RUNNING, now - 199 * DAY), (S.SUCCEEDED, now - 198 * DAY)]),
            # Running across the cut-off and still running: its entry into running stays.
            Story("extract", [(S.PENDING, now - 100 * DAY), (S.RUNNING, now - 95 * DAY)]),
            # Running across the cut-off, ended since: the entry and the end stay.
            Story("load", [(S.PENDING, now - 100 * DAY), (S.RUNNING, now - 95 * DAY), (S.SUCCEEDED, now - 10 * DAY)]),
            # All inside the window.
            Story("load", [(S.PENDING, now - 5 * DAY), (S.RUNNING, now - 4 * DAY)]),
        ]
    )  # fmt: skip
    old, running, ended, recent = built.wave_tasks
    cutoff = now - 90 * DAY
    events_before = Event.objects.count()

    done = prune(cutoff, batch_size=2)

    left = {
        wt.key: list(
            TaskStatusAudit.objects.filter(wave_task=wt).order_by("id").values_list("new_status", flat=True)
        )
        for wt in built.wave_tasks
    }
    assert left == {
        old.key: [],
        running.key: [S.RUNNING],
        ended.key: [S.RUNNING, S.SUCCEEDED],
        recent.key: [S.PENDING, S.RUNNING],
    }
    assert done.audit == 3 + 1 + 1
    assert not Event.objects.filter(created_at__lt=cutoff).exists()
    assert Event.objects.count() == 3 == events_before - done.events  # the three changes since
    assert done.batches >= 3

    # A later cut-off: the ended task's entry into running now has its end before the cut-off.
    prune(now - 7 * DAY)
    assert list(TaskStatusAudit.objects.filter(wave_task=ended).values_list("new_status", flat=True)) == []
    assert list(TaskStatusAudit.objects.filter(wave_task=running).values_list("new_status", flat=True)) == [
        S.RUNNING
    ]


@pytest.mark.django_db
def test_resuming_after_a_pruned_event_gives_every_kept_event(superuser, as_user):
    now = timezone.now()
    built = build([Story("extract", [(S.PENDING, now - 100 * DAY), (S.RUNNING, now - 95 * DAY), (S.SUCCEEDED, now - DAY)])])  # fmt: skip
    run = built.runs[0]
    first = Event.objects.order_by("id").first().pk
    prune(now - 90 * DAY)
    kept = list(Event.objects.filter(execution=run).order_by("id").values_list("id", flat=True))
    assert kept and kept[0] > first

    # The websockets' catch-up from the log (observability.live) ...
    for after in (0, first, first - 1):
        page = live.events_between(after, kept[-1], run_id=run.pk)
        assert [e["id"] for e in page] == kept
    # ... and the event-log endpoint.
    response = as_user(superuser).get(f"/api/v2/executions/{run.pk}/events/", {"after": first})
    assert response.status_code == 200
    assert [e["id"] for e in response.json()["results"]] == kept


@pytest.mark.django_db
def test_a_dry_run_counts_and_deletes_nothing():
    now = timezone.now()
    build([Story("extract", [(S.PENDING, now - 100 * DAY), (S.RUNNING, now - 99 * DAY), (S.SUCCEEDED, now - 98 * DAY)])])  # fmt: skip
    audits, events = TaskStatusAudit.objects.count(), Event.objects.count()
    out = StringIO()
    call_command("prune_audit", "--dry-run", stdout=out)
    assert "task status audit: would delete 3 rows" in out.getvalue()
    assert "event log: would delete 3 rows" in out.getvalue()
    assert (TaskStatusAudit.objects.count(), Event.objects.count()) == (audits, events)


@pytest.mark.django_db
def test_the_command_prints_a_summary_and_takes_its_default_from_the_settings(settings):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "AUDIT_RETENTION_DAYS": 30}
    now = timezone.now()
    build([Story("extract", [(S.PENDING, now - 40 * DAY), (S.RUNNING, now - 39 * DAY), (S.SUCCEEDED, now - 20 * DAY)])])  # fmt: skip
    out = StringIO()
    call_command("prune_audit", "--batch-size", "1", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("cut-off ") and lines[0].endswith("(30 days)")
    assert lines[1:3] == ["task status audit: deleted 1 rows", "event log: deleted 2 rows"]
    assert lines[3].endswith(" s") and " batches in " in lines[3]
    assert list(TaskStatusAudit.objects.values_list("new_status", flat=True).order_by("id")) == [
        S.RUNNING,
        S.SUCCEEDED,
    ]


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [["--days", "0"], ["--days", "-3"], ["--days", "1.5"], ["--days", "ninety"], ["--days", ""],
     ["--days", "99999999999999999999"], ["--batch-size", "0"], ["--batch-size", "x"]],
)  # fmt: skip
def test_a_bad_argument_exits_2_and_deletes_nothing(args):
    now = timezone.now()
    build([Story("extract", [(S.PENDING, now - 400 * DAY)])])
    with pytest.raises(CommandError) as err:
        call_command("prune_audit", *args, stdout=StringIO(), stderr=StringIO())
    assert err.value.returncode == 2
    assert "must be a whole number" in str(err.value)
    assert TaskStatusAudit.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_bad_days_exits_2_from_the_command_line(manage):
    proc = manage("prune_audit", "--days", "0")
    assert proc.returncode == 2
    assert "--days must be a whole number from 1 to 36500, not '0'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the timeline before and after ------------------------------------------------------------


@given(data=st.data())
@EXAMPLES
@pytest.mark.django_db
def test_the_timeline_at_and_after_the_cut_off_is_the_same_after_a_prune(data):
    """Random histories over four days; a cut-off inside them; windows that start before or
    after it. Every instant (agg=sample) and every bucket (agg=max) from the cut-off on has the
    same count after the prune, whatever the batch size; the rows left are the rule's."""
    now = database_now()
    stories = data.draw(histories(now, 4 * 86400), label="stories")
    cutoff = now - timedelta(
        seconds=data.draw(st.integers(60, 4 * 86400), label="cut-off, seconds before now")
    )
    batch_size = data.draw(st.sampled_from([1, 2, 3, 5000]), label="batch size")
    status = data.draw(st.sampled_from(selectors.STATUSES), label="status")
    granularity = data.draw(st.sampled_from(["30s", "minute", "5m", "1h"]), label="granularity")
    step = timedelta(seconds=selectors.GRANULARITIES[granularity])
    start = cutoff + timedelta(seconds=data.draw(st.integers(-2 * HOUR, 2 * HOUR), label="window start"))
    grid = Grid.explicit(
        start, start + (data.draw(st.integers(1, 120), label="buckets") - 1) * step, granularity
    )

    def timelines(task_list):
        return {
            agg: {
                (t, name): v
                for (t, name), v in as_points(
                    selectors.task_concurrency(
                        task_lists=TaskList.objects.filter(pk=task_list.pk),
                        grid=grid,
                        status=status,
                        agg=agg,
                        now=now,
                    )
                ).items()
                if t >= cutoff
            }
            for agg in selectors.AGGREGATES
        }

    def check():
        built = build(stories)
        before, rows = timelines(built.task_list), audit_rows()
        events = list(Event.objects.values_list("id", "created_at"))
        prune(cutoff, batch_size=batch_size)
        assert timelines(built.task_list) == before
        assert {pk for pk, *_ in audit_rows()} == expected_kept(rows, cutoff)
        assert set(Event.objects.values_list("id", flat=True)) == {pk for pk, at in events if at >= cutoff}

    in_savepoint(check)


# --- while executors write ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_prune_while_a_writer_moves_tasks_loses_nothing_that_stays():
    """A thread moves tasks back and forth through the one status-change function (on its own
    connection) for as long as the prune runs, in batches of three rows."""
    now = timezone.now()
    stories = [
        Story(
            "extract",
            [(S.PENDING, now - 100 * DAY)]
            + [(status, now - (99 - i) * DAY) for i, status in enumerate([S.QUEUED, S.RUNNING] * 4)],
        )
        for _ in range(30)
    ]
    built = build(stories)
    cutoff = now - 50 * DAY
    kept_before = expected_kept(audit_rows(), cutoff)
    assert len(kept_before) == 30  # each task's entry into running
    stop = threading.Event()
    written, errors = [], []

    def writer():
        try:
            tasks = list(WaveTask.objects.filter(pk__in=[wt.pk for wt in built.wave_tasks]))
            while not stop.is_set() or not written:
                for new, old in ((S.QUEUED, S.RUNNING), (S.RUNNING, S.QUEUED)):
                    written.extend(services.transition(tasks, new, expected=old))
                time.sleep(0.01)  # an executor's turn, not a busy loop holding SQLite's lock
        except Exception as exc:  # reported to the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        done = prune(cutoff, batch_size=3)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and errors == []
    assert (done.audit, done.events) == (30 * 8, 30 * 9) and done.batches > 10
    assert TaskStatusAudit.objects.filter(changed_at__gte=cutoff).count() == len(written)
    assert Event.objects.filter(type="task.update").count() == len(written)
    assert (
        set(TaskStatusAudit.objects.filter(changed_at__lt=cutoff).values_list("id", flat=True)) == kept_before
    )
