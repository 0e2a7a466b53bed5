"""The counts of the concurrency timeline (issue 17, item 2), against a brute-force count of
random audit histories on every database, and on PostgreSQL against seed 004's own SQL where
that SQL is right.

Histories are written through `executions.services.transition` (the one writer of statuses,
with the times given), so the rows are what executors write. The brute force reads the
definition literally: a task is in a status from each entry into it to its next transition,
or to now; `agg=sample` counts start <= t < end at each instant, `agg=max` takes the highest
count at the instant and at every period boundary inside [t, t + granularity).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concurrency import selectors
from concurrency.selectors import Grid
from executions.models import TaskStatusAudit
from executions.transitions import ALLOWED
from tests.concurrency.histories import S, Story, as_points, brute_force, build
from waves.models import TaskList

pytestmark = pytest.mark.django_db

TEMPLATES = ("extract", "transform", "load")
HOUR = 3600
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def database_now() -> datetime:
    """The now the database's own SQL sees (PostgreSQL: the transaction's start, fixed for
    the whole test), so that the seed's `now()` and ours are one instant."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0].astimezone(UTC)
    return timezone.now()


@st.composite
def histories(draw, now: datetime, span: int, runs: int = 2) -> list[Story]:
    """Up to 8 tasks, each a random walk through the allowed moves at increasing times in
    the `span` seconds before now (whole seconds, or multiples of 15 so that tasks often move
    at one moment; now and then a microsecond off, so that steps fall on, just before and
    just after the instants). With runs > 1 a task may run in several runs."""
    stories = []
    tick = draw(st.sampled_from([1, 15]))  # 15: many tasks move at one moment
    for i in range(draw(st.integers(1, 8))):
        offsets = sorted(
            {tick * x for x in draw(st.lists(st.integers(0, span // tick), min_size=1, max_size=7))},
            reverse=True,
        )
        status, steps = S.PENDING.value, []
        for j, offset in enumerate(offsets):
            if j:
                moves = sorted(ALLOWED.get(status, ()))
                if not moves:
                    break
                status = draw(st.sampled_from(moves))
            jitter = draw(st.sampled_from([0, 0, 0, 1, 999_999]))
            steps.append((status, now - timedelta(seconds=offset, microseconds=jitter)))
        key = f"t{draw(st.integers(0, 3))}" if runs > 1 else f"t{i}"
        run = draw(st.integers(0, runs - 1))
        if any(s.key == key and s.run == run for s in stories):
            key = f"t{i}x"
        # A task has one template, whichever run it is in.
        template = next((s.template for s in stories if s.key == key), None) or draw(
            st.sampled_from(TEMPLATES)
        )
        stories.append(Story(template, steps, key=key, run=run))
    return stories


def in_savepoint(check):
    """Each example's rows are rolled back: the test's transaction (and its now()) stays."""
    with transaction.atomic():
        check()
        transaction.set_rollback(True)


@given(data=st.data())
@EXAMPLES
def test_counts_match_a_brute_force_count_of_random_histories(data):
    now = database_now()
    span = data.draw(st.sampled_from([2 * HOUR, 4 * 86400]), label="span")
    stories = data.draw(histories(now, span), label="stories")
    status = data.draw(st.sampled_from(selectors.STATUSES), label="status")
    granularity = data.draw(st.sampled_from(["30s", "minute", "5m"]), label="granularity")
    back = data.draw(st.sampled_from([HOUR, 2 * HOUR, 86400]), label="window start, seconds before now")
    start = now - timedelta(seconds=back, microseconds=data.draw(st.sampled_from([0, 1, 500_000])))
    buckets = data.draw(st.integers(1, 130), label="buckets")
    grid = Grid.explicit(start, start + (buckets - 1) * timedelta(seconds=selectors.GRANULARITIES[granularity]),
                         granularity)  # fmt: skip

    def check():
        built = build(stories)
        for agg in selectors.AGGREGATES:
            timeline = selectors.task_concurrency(
                task_lists=TaskList.objects.filter(pk=built.task_list.pk),
                grid=grid,
                status=status,
                agg=agg,
                now=now,
            )
            assert as_points(timeline) == brute_force(stories, status, now, grid, agg), agg

    in_savepoint(check)


def as_total(stories: list[Story]) -> list[Story]:
    """The same histories with every task under one template, TOTAL: the brute force of
    group="total"."""
    return [Story(selectors.TOTAL, s.steps, key=s.key, run=s.run) for s in stories]


@given(data=st.data())
@EXAMPLES
def test_the_total_matches_a_brute_force_count_of_all_the_tasks_together(data):
    """group="total": with agg="max" the peak of the total in each bucket (brute force over
    every task as one template), never above the sum of the templates' peaks; with
    agg="sample" the sum of the templates' counts."""
    now = database_now()
    stories = data.draw(histories(now, 2 * HOUR), label="stories")
    status = data.draw(st.sampled_from(selectors.STATUSES), label="status")
    granularity = data.draw(st.sampled_from(["30s", "minute", "5m"]), label="granularity")
    start = now - timedelta(seconds=data.draw(st.sampled_from([HOUR, 2 * HOUR])),
                            microseconds=data.draw(st.sampled_from([0, 1, 500_000])))  # fmt: skip
    buckets = data.draw(st.integers(1, 130), label="buckets")
    grid = Grid.explicit(start, start + (buckets - 1) * timedelta(seconds=selectors.GRANULARITIES[granularity]),
                         granularity)  # fmt: skip

    def check():
        built = build(stories)
        for agg in selectors.AGGREGATES:
            count = lambda group, agg=agg: as_points(  # noqa: E731
                selectors.task_concurrency(
                    task_lists=TaskList.objects.filter(pk=built.task_list.pk),
                    grid=grid, status=status, agg=agg, now=now, group=group,
                )
            )  # fmt: skip
            total, per_template = count("total"), count("template")
            assert total == brute_force(as_total(stories), status, now, grid, agg), agg
            sums: dict[datetime, int] = {}
            for (t, _), n in per_template.items():
                sums[t] = sums.get(t, 0) + n
            if agg == "sample":
                assert total == {(t, selectors.TOTAL): n for t, n in sums.items()}
            else:
                assert all(total.get((t, selectors.TOTAL), 0) <= n for t, n in sums.items())
                assert {t for t, _ in total} == set(sums)

    in_savepoint(check)


# Seed 004 section 6, copied: the only changes are Tidewatch's names (task -> tasks,
# t.workflow_id -> t.task_list_id) and statuses ('R' -> 'running').
SEED_SQL = """
WITH time_grid AS (
  SELECT generate_series(
    now() - INTERVAL %s,  -- time_range parameter
    now(),
    INTERVAL '1 minute'   -- granularity parameter
  ) AS ts
), task_transitions AS (
  -- Get all status transitions for tasks in the workflow
  SELECT
    tsa.task_id,
    tsa.new_status,
    tsa.changed_at,
    tt.name as task_template_name,
    -- Calculate when this status period ends (next transition or now)
    LEAD(tsa.changed_at, 1, now()) OVER (
      PARTITION BY tsa.task_id ORDER BY tsa.changed_at
    ) as status_end_time
  FROM task_status_audit tsa
  JOIN tasks t ON tsa.task_id = t.id
  JOIN task_template tt ON t.task_template_id = tt.id
  WHERE t.task_list_id = %s
    AND tsa.changed_at >= (now() - INTERVAL %s) - INTERVAL '1 hour'  -- Buffer for overlapping periods
), running_periods AS (
  -- Filter to only RUNNING status periods
  SELECT
    task_id,
    task_template_name,
    changed_at as start_time,
    status_end_time as end_time
  FROM task_transitions
  WHERE new_status = 'running'  -- TaskStatus.RUNNING
), concurrent_counts AS (
  -- Calculate concurrent tasks for each time bucket
  SELECT
    tg.ts as timestamp,
    rp.task_template_name,
    COUNT(rp.task_id) as concurrent_count
  FROM time_grid tg
  LEFT JOIN running_periods rp ON (
    rp.start_time <= tg.ts AND
    rp.end_time > tg.ts
  )
  WHERE rp.task_template_name IS NOT NULL
  GROUP BY tg.ts, rp.task_template_name
  ORDER BY tg.ts, rp.task_template_name
)
SELECT
  timestamp,
  task_template_name,
  concurrent_count
FROM concurrent_counts
WHERE concurrent_count > 0;
"""


def seed_counts(task_list: TaskList, interval: str = "1 hour") -> dict[tuple[datetime, str], int]:
    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL, [interval, task_list.pk, interval])
        return {(ts.astimezone(UTC), name): count for ts, name, count in cursor.fetchall()}


postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="seed 004's SQL is PostgreSQL's")


def our_sample(task_list: TaskList, now: datetime, back: timedelta = timedelta(hours=1)):
    grid = Grid.explicit(now - back, now, "minute")  # the seed's generate_series, instant for instant
    return as_points(
        selectors.task_concurrency(task_lists=TaskList.objects.filter(pk=task_list.pk), grid=grid, now=now)
    )


@postgres_only
@given(data=st.data())
@EXAMPLES
def test_sample_matches_the_seeds_sql_where_the_seed_is_right(data):
    """Where the seed is right: one run (its LEAD is by task, not by task in a run), no two
    steps of a task at one instant (its ORDER BY leaves them in any order), and every step
    in the two hours before now, so no task entered running more than an hour before the
    one-hour window (its look-back)."""
    now = database_now()
    stories = data.draw(histories(now, 2 * HOUR, runs=1), label="stories")

    def check():
        built = build(stories)
        seed = seed_counts(built.task_list)
        assert our_sample(built.task_list, now) == seed
        grid = Grid.explicit(now - timedelta(hours=1), now, "minute")
        assert seed == brute_force(stories, S.RUNNING, now, grid, "sample")

    in_savepoint(check)


@postgres_only
def test_the_seeds_sql_misses_a_task_that_entered_before_its_look_back_and_ours_does_not():
    now = database_now()
    built = build(
        [
            Story("extract", [(S.PENDING, now - timedelta(days=3)), (S.RUNNING, now - timedelta(hours=3))]),
            Story(
                "extract",
                [
                    (S.PENDING, now - timedelta(hours=2)),
                    (S.RUNNING, now - timedelta(minutes=90)),
                    (S.SUCCEEDED, now - timedelta(minutes=30)),
                ],
            ),
        ]  # fmt: skip
    )
    ours, seed = our_sample(built.task_list, now), seed_counts(built.task_list)
    grid = Grid.explicit(now - timedelta(hours=1), now, "minute")
    assert ours[grid.instant(0), "extract"] == 2  # both: one since 3 h ago, one since 90 minutes ago
    assert seed[grid.instant(0), "extract"] == 1  # the seed sees only the second
    assert ours == brute_force(built_stories(built), S.RUNNING, now, grid, "sample")


def built_stories(built) -> list[Story]:
    """The stories back from the audit rows (to brute-force what was built)."""
    stories = []
    for wt in built.wave_tasks:
        rows = TaskStatusAudit.objects.filter(wave_task=wt).order_by("changed_at", "id")
        stories.append(Story(wt.task.template.name, [(r.new_status, r.changed_at) for r in rows]))
    return stories


# --- named cases -----------------------------------------------------------------------------


def timeline(built, now, grid, **kwargs):
    return as_points(
        selectors.task_concurrency(
            task_lists=TaskList.objects.filter(pk=built.task_list.pk), grid=grid, now=now, **kwargs
        )
    )


def test_a_task_that_entered_long_before_the_window_counts_in_every_bucket():
    now = timezone.now()
    built = build(
        [Story("extract", [(S.PENDING, now - timedelta(days=40)), (S.RUNNING, now - timedelta(days=39))])]
    )
    grid = Grid.relative("1h", "minute", now)
    points = timeline(built, now, grid)
    assert points == {(grid.instant(k), "extract"): 1 for k in range(grid.count)}
    assert grid.count == 61


def test_a_task_that_left_during_the_window_counts_until_it_left():
    now = datetime(2025, 5, 27, 1, 0, tzinfo=UTC)
    built = build(
        [
            Story(
                "extract",
                [
                    (S.PENDING, now - timedelta(days=9)),
                    (S.RUNNING, now - timedelta(days=8)),
                    (S.SUCCEEDED, now - timedelta(minutes=30)),
                ],
            ),
        ]  # fmt: skip
    )
    grid = Grid.explicit(now - timedelta(hours=1), now, "minute")
    points = timeline(built, now, grid)
    # Running at 00:00 .. 00:29 (it left at 00:30: start <= t < end).
    assert sorted(points) == [(grid.instant(k), "extract") for k in range(30)]


def test_counts_after_the_audit_before_the_window_is_pruned_are_unchanged():
    """Only rows from the window's start on are read: deleting older rows (retention) changes
    nothing for a task that was running across the cut-off."""
    now = timezone.now()
    built = build(
        [
            Story("extract", [(S.PENDING, now - timedelta(days=100)), (S.RUNNING, now - timedelta(days=95))]),
            Story(
                "load",
                [
                    (S.PENDING, now - timedelta(days=100)),
                    (S.QUEUED, now - timedelta(days=99)),
                    (S.RUNNING, now - timedelta(days=92)),
                    (S.FAILED, now - timedelta(minutes=10)),
                ],
            ),
        ]  # fmt: skip
    )
    grid = Grid.relative("24h", "5m", now)
    before = timeline(built, now, grid)
    TaskStatusAudit.objects.filter(changed_at__lt=now - timedelta(days=90)).delete()
    assert TaskStatusAudit.objects.count() == 1  # only load's failure is left
    assert timeline(built, now, grid) == before
    assert before[grid.instant(0), "extract"] == 1 and before[grid.instant(0), "load"] == 1


def test_max_keeps_a_spike_between_instants_that_sample_misses():
    now = datetime(2025, 5, 27, 1, 0, tzinfo=UTC)
    t = now - timedelta(minutes=30)
    built = build(
        [
            Story(
                "extract",
                [
                    (S.PENDING, t),
                    (S.RUNNING, t + timedelta(seconds=10)),
                    (S.SUCCEEDED, t + timedelta(seconds=15)),
                ],
            ),
        ]  # fmt: skip
    )
    grid = Grid.explicit(now - timedelta(hours=1), now, "minute")
    assert timeline(built, now, grid, agg="sample") == {}
    assert timeline(built, now, grid, agg="max") == {(t, "extract"): 1}


def test_steps_at_one_instant_are_taken_together():
    """A task queued and started in one batch (same time) is never counted as queued, even
    by agg=max; and a task that leaves running as another enters at the same instant does
    not make a peak of 2."""
    now = datetime(2025, 5, 27, 1, 0, tzinfo=UTC)
    t = now - timedelta(minutes=20, seconds=30)
    built = build(
        [
            Story(
                "extract",
                [(S.PENDING, t), (S.QUEUED, t), (S.RUNNING, t), (S.SUCCEEDED, t + timedelta(seconds=20))],
            ),
            Story("extract", [(S.PENDING, t), (S.RUNNING, t + timedelta(seconds=20))]),
        ]
    )
    grid = Grid.explicit(now - timedelta(hours=1), now, "minute")
    assert timeline(built, now, grid, agg="max", status=S.QUEUED) == {}
    peaks = timeline(built, now, grid, agg="max")
    assert peaks[grid.instant(39), "extract"] == 1 and peaks[grid.instant(40), "extract"] == 1


def test_status_templates_and_execution_narrow_the_count():
    now = datetime(2025, 5, 27, 1, 0, tzinfo=UTC)
    ago = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
    built = build(
        [
            Story("extract", [(S.PENDING, ago(90)), (S.QUEUED, ago(80))], run=0),
            Story("extract", [(S.PENDING, ago(90)), (S.RUNNING, ago(80))], run=1),
            Story("load", [(S.PENDING, ago(90)), (S.WAITING_APPROVAL, ago(80))], run=1),
            Story("load", [(S.PENDING, ago(90)), (S.RUNNING, ago(80))], run=0),
        ]
    )
    grid = Grid.explicit(now - timedelta(minutes=1), now - timedelta(minutes=1), "minute")
    t = grid.instant(0)
    assert timeline(built, now, grid) == {(t, "extract"): 1, (t, "load"): 1}
    assert timeline(built, now, grid, status=S.QUEUED) == {(t, "extract"): 1}
    assert timeline(built, now, grid, status=S.WAITING_APPROVAL) == {(t, "load"): 1}
    assert timeline(built, now, grid, templates=["load", "nope"]) == {(t, "load"): 1}
    assert timeline(built, now, grid, execution=built.runs[1].pk) == {(t, "extract"): 1}


def test_the_peak_of_the_total_is_below_the_sum_of_peaks_that_do_not_coincide():
    """extract runs 10:00-10:20 and load 10:30-10:50 (two slots, one after the other): in
    the hour's bucket each template peaks at 1, so a stack of peaks reads 2; the total never
    was above 1."""
    now = datetime(2025, 5, 27, 12, 0, tzinfo=UTC)
    at = lambda minute: datetime(2025, 5, 27, 10, minute, tzinfo=UTC)  # noqa: E731
    built = build(
        [
            Story("extract", [(S.PENDING, at(0)), (S.RUNNING, at(0)), (S.SUCCEEDED, at(20))]),
            Story("load", [(S.PENDING, at(0)), (S.RUNNING, at(30)), (S.SUCCEEDED, at(50))]),
        ]
    )
    grid = Grid.explicit(at(0), at(0), "1h")
    t = grid.instant(0)
    assert timeline(built, now, grid, agg="max") == {(t, "extract"): 1, (t, "load"): 1}
    assert timeline(built, now, grid, agg="max", group="total") == {(t, selectors.TOTAL): 1}
    assert timeline(built, now, grid, agg="sample", group="total") == {(t, selectors.TOTAL): 1}
    with pytest.raises(ValueError, match="group"):
        timeline(built, now, grid, group="templates")


def test_more_than_fifty_templates_are_folded_into_other():
    now = datetime(2025, 5, 27, 1, 0, tzinfo=UTC)
    # Templates 0-2 have one task running for the last 10 minutes, 3-52 two: 0-2 are folded.
    stories = [
        Story(
            f"tpl{i:02d}", [(S.PENDING, now - timedelta(hours=1)), (S.RUNNING, now - timedelta(minutes=10))]
        )
        for i in range(53)
        for _ in range(1 if i < 3 else 2)
    ]
    built = build(stories)
    grid = Grid.explicit(now - timedelta(minutes=5), now - timedelta(minutes=5), "minute")
    result = selectors.task_concurrency(
        task_lists=TaskList.objects.filter(pk=built.task_list.pk), grid=grid, now=now
    )
    names = [name for name, _ in result.series]
    assert (
        len(names) == 51
        and names[-1] == "Other"
        and names[:-1] == sorted(f"tpl{i:02d}" for i in range(3, 53))
    )
    assert dict(result.series)["Other"] == [3] and dict(result.series)["tpl03"] == [2]
