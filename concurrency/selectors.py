"""The concurrency timeline (seed 004 §6; DESIGN.md, "Concurrency timeline"): how many tasks
of each template were in a status at each instant of a window, read from the task status
audit.

**What is counted.** A wave task is in status S from each audit row that enters S to the next
row of that wave task, or to now while it is still in S. With `agg="sample"` the value at
instant t counts the wave tasks in S at t (start <= t < end), however long before the window
they entered S; with `agg="max"` it is the peak of that count inside [t, t + granularity), so
a five-second spike between two instants is never lost.

**By template or in total.** `group="template"` gives a series per template; `group="total"`
one series, "Total", swept over the steps of every task together (one key for all of them).
With agg="max" the total is the peak of the total count inside each bucket, which is at most
the sum of the templates' peaks and often less: two templates' peaks in one bucket need not
be at the same moment. (With agg="sample" the total is the sum of the templates' counts.)

**How, without scanning history.** `executions.transitions` is the only writer of statuses:
each audit row records the status found (`previous_status`, read under a row lock) and the
status set (`new_status`), and `WaveTask.status` is the `new_status` of the wave task's last
row. So each row is a step of +1 (it enters S) and/or -1 (it leaves S) of the count of S,
and the count at any instant t is

    count(t) = (wave tasks in S now) - sum of the steps of the rows after t

(a task still in S is given its -1 at now: "to now while still in it"). The window needs
only the rows from its start on, not the history before it, and no row has to be paired
with its successor: two range scans by `changed_at` (rows entering S, on the seed's index
(new_status, changed_at, task_id); rows leaving S, on concurrency's partial index
(previous_status, changed_at, task_id); index-only) and the wave tasks in S now (an index on
(execution, status)), grouped by template. A task that entered S a month before the window and is still in it is
counted from the window's first instant, and so is one whose entry row has been pruned.
The steps are then summed per bucket and swept once: linear in the rows plus the buckets.
(A window in the past also scans the rows from its end to now, only to count them.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.utils import timezone

from executions.models import TaskStatus
from waves.models import TaskTemplate

US = 1_000_000
TIME_RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 86400, "30d": 30 * 86400}
GRANULARITIES = {"30s": 30, "minute": 60, "5m": 300, "1h": 3600}
STATUSES = (TaskStatus.RUNNING.value, TaskStatus.QUEUED.value, TaskStatus.WAITING_APPROVAL.value)
AGGREGATES = ("sample", "max")
# group="template": a series per template; "total": one series, TOTAL, over all the tasks.
GROUPS = ("template", "total")
TOTAL = "Total"
# At most this many instants a response (30 days a minute apart is 43,201).
MAX_BUCKETS = 50_000
# More templates than this (with a count above zero in the window) are folded into OTHER.
MAX_SERIES = 50
OTHER = "Other"
# Windows up to this long take each row's template through the primary key of tasks (_read).
SHORT_WINDOW_US = 2 * 86400 * US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact, unlike a float timestamp)."""
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class GridError(ValueError):
    """A window that cannot be served; `field` is the parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Grid:
    """The instants first, first + step, ... (count of them), in microseconds since the epoch."""

    first_us: int
    step_us: int
    count: int

    @classmethod
    def relative(cls, time_range: str, granularity: str, now: datetime) -> Grid:
        """The last `time_range` up to now, on instants aligned to `granularity` (whole
        minutes, hours, ... in UTC): the same request a few seconds later gives the same
        timestamps. 1h at minute granularity is 61 instants, as the seed's generate_series."""
        step = GRANULARITIES[granularity] * US
        now_us = to_us(now)
        last = now_us - now_us % step
        first = last - TIME_RANGES[time_range] * US
        return cls._checked(first, step, (last - first) // step + 1, granularity)

    @classmethod
    def explicit(cls, start: datetime, end: datetime, granularity: str) -> Grid:
        """start, start + granularity, ... up to end (inclusive)."""
        if end < start:
            raise GridError("end", "must not be before start")
        step = GRANULARITIES[granularity] * US
        first = to_us(start)
        return cls._checked(first, step, (to_us(end) - first) // step + 1, granularity)

    @classmethod
    def _checked(cls, first: int, step: int, count: int, granularity: str) -> Grid:
        if count > MAX_BUCKETS:
            raise GridError(
                "granularity",
                f"this window at granularity={granularity} is {count:,} buckets; at most "
                f"{MAX_BUCKETS:,} are served: choose a coarser granularity or a shorter window",
            )
        return cls(first, step, count)

    @property
    def end_us(self) -> int:
        """The end of the last bucket: the last instant + step."""
        return self.first_us + self.count * self.step_us

    def instant(self, k: int) -> datetime:
        return from_us(self.first_us + k * self.step_us)

    def bucket(self, at_us: int) -> int:
        """The first instant at or after `at_us` (0 for anything before the first; `count`
        for anything after the last): where a step taken at `at_us` starts to show."""
        if at_us <= self.first_us:
            return 0
        return min(self.count, -((self.first_us - at_us) // self.step_us))


@dataclass
class Timeline:
    """One value per instant of `grid` for each series: (template name, values), in the order
    the response lists them (names in order, OTHER last)."""

    grid: Grid
    series: list[tuple[str, list[int]]] = field(default_factory=list)


@dataclass
class _Steps:
    """What the audit says about one template from the window's start on. For agg=sample,
    `entered` and `left` hold the bucket index of each row that entered or left the status
    (Grid.bucket); for agg=max, `moves` holds each such row as `2 * microseconds + 1` (entered)
    or `2 * microseconds` (left), so that sorting puts leaving before entering at one moment.
    Rows past what the window needs (_read's `reach`) are only counted: `entered_after`,
    `left_after`. `current`: the wave tasks in the status now."""

    entered: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    moves: list[int] = field(default_factory=list)
    entered_after: int = 0
    left_after: int = 0
    current: int = 0

    def merge(self, other: _Steps) -> None:
        self.entered += other.entered
        self.left += other.left
        self.moves += other.moves
        self.entered_after += other.entered_after
        self.left_after += other.left_after
        self.current += other.current


def task_concurrency(
    *,
    task_lists=None,
    grid: Grid,
    status: str = TaskStatus.RUNNING,
    agg: str = "sample",
    templates: list[str] | tuple[str, ...] = (),
    execution: int | None = None,
    now: datetime | None = None,
    group: str = "template",
) -> Timeline:
    """Counts of wave tasks in `status` by template at the instants of `grid`.

    `task_lists`: a TaskList queryset (the lists the caller may see), or None for all of them.
    `templates`: template names to keep (none: all). `execution`: one run only.
    `group`: "template" (a series per template) or "total" (one series, TOTAL, over every
    task counted: the steps of all templates merged and swept once, so that agg="max" is the
    peak of the total, not a sum of peaks).
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {AGGREGATES}")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}")
    now_us = to_us(now or timezone.now())
    steps = _read(task_lists, grid, status, agg, list(templates), execution)
    sweep = _sample if agg == "sample" else _peak
    if group == "total":  # always the one series, zeros and all (the API leaves zeros out)
        every = _Steps()
        for s in steps.values():
            every.merge(s)
        return Timeline(grid, [(TOTAL, sweep(grid, every, now_us))])
    if not steps:
        return Timeline(grid)
    values = {tpl: sweep(grid, s, now_us) for tpl, s in steps.items()}
    values = {tpl: v for tpl, v in values.items() if v and max(v) > 0}
    names = dict(TaskTemplate.objects.filter(pk__in=values).values_list("pk", "name"))
    kept = sorted(values, key=lambda tpl: (-sum(values[tpl]), names[tpl]))
    folded = kept[MAX_SERIES:] if len(kept) > MAX_SERIES else []
    series = sorted(
        ((names[tpl], values[tpl]) for tpl in kept[: len(kept) - len(folded)]), key=lambda s: s[0]
    )
    if folded:
        other = _Steps()
        for tpl in folded:
            other.merge(steps[tpl])
        series.append((OTHER, sweep(grid, other, now_us)))
    return Timeline(grid, series)


# --- the sweep -------------------------------------------------------------------------------


def _sample(grid: Grid, steps: _Steps, now_us: int) -> list[int]:
    """count(t) at each instant: +1/-1 per bucket index, then one running sum."""
    n = grid.count
    delta = [0] * (n + 1)  # index n: steps after the last instant (they only set the start)
    for k, times in Counter(steps.entered).items():
        delta[k] += times
    for k, times in Counter(steps.left).items():
        delta[k] -= times
    delta[n] += steps.entered_after - steps.left_after
    if steps.current:
        # The periods still open end now (or at the latest row, if a clock wrote one later).
        if steps.entered_after or steps.left_after:
            end = n
        else:
            end = max(grid.bucket(now_us), max(steps.entered, default=0), max(steps.left, default=0))
        delta[end] -= steps.current
    # Every period ends by now: before the window's first step the count is minus their sum.
    return list(accumulate(delta[:n], initial=-sum(delta)))[1:]


def _peak(grid: Grid, steps: _Steps, now_us: int) -> list[int]:
    """The highest count(t) for t in [instant, instant + step): the count at the instant, or
    after a move strictly inside the bucket. Moves at one moment are taken leaving first, so
    the count on the way (lower than before that moment, which is inside the bucket too) is
    never above a count the bucket really had."""
    first, step, n, end = grid.first_us, grid.step_us, grid.count, grid.end_us
    moves = steps.moves
    # Every period has ended by now: the count before the moves is minus the sum of all steps.
    running = len(moves) - 2 * sum(map((1).__and__, moves)) - steps.entered_after + steps.left_after
    if steps.current:
        running += steps.current
        # The periods still open end now (or at the latest row, if a clock wrote one later).
        if not (steps.entered_after or steps.left_after):
            moves = moves + [2 * max(now_us, max(moves, default=0) >> 1)] * steps.current
    moves.sort()
    peaks = [0] * n
    k, t = 0, first  # t: instant k, the next to record
    for move in moves:
        at = move >> 1
        if at >= end:
            break
        while t < at:
            peaks[k] = running
            k, t = k + 1, t + step
        running += 1 if move & 1 else -1
        if at < t and k and running > peaks[k - 1]:  # strictly inside bucket k - 1
            peaks[k - 1] = running
    while k < n:
        peaks[k] = running
        k += 1
    return peaks


# --- reading the audit -----------------------------------------------------------------------


def planner_settings(grid: Grid) -> list[str]:
    """PostgreSQL settings for the timeline's statement only (SET LOCAL, in its transaction).

    JIT compiling costs more than it saves on these scans (60 ms of 170 on 30 days). Random
    reads are priced as on SSD or in cache. And the template of each row: a short window has
    few rows, each found through the primary key of tasks (24 hours: 30 ms), where a hash of
    every task in scope costs the same whatever the window (70 ms for 100,000 tasks); past
    two days the planner's hash join is the better one, and it chooses it.
    """
    settings = ["SET LOCAL jit = off", "SET LOCAL random_page_cost = 1.1"]
    if grid.count * grid.step_us <= SHORT_WINDOW_US:
        settings += ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off"]
    return settings


def _scope(task_lists, alias: str) -> tuple[str, list]:
    """`AND <alias>.task_list_id IN (...)` for a TaskList queryset (nothing for all lists)."""
    if task_lists is None or not task_lists.query.where:
        return "", []
    sql, params = task_lists.order_by().values("id").query.sql_with_params()  # EmptyResultSet: none
    return f" AND {alias}.task_list_id IN ({sql})", list(params)


def _read(
    task_lists, grid: Grid, status: str, agg: str, templates: list[str], execution
) -> dict[int, _Steps]:
    """The steps of every template: one statement (one snapshot on PostgreSQL, so the rows
    and the statuses now agree)."""
    since = connection.ops.adapt_datetimefield_value(grid.instant(0))
    try:
        tasks_scope, tasks_params = _scope(task_lists, "t")
        runs_scope, runs_params = _scope(task_lists, "r")
    except EmptyResultSet:
        return {}
    by_template, template_params = "", []
    if templates:
        marks = ", ".join(["%s"] * len(templates))
        by_template = f" AND t.task_template_id IN (SELECT id FROM task_template WHERE name IN ({marks}))"
        template_params = list(templates)
    in_run, run_params = (" AND a.execution_id = %s", [execution]) if execution else ("", [])
    wt_run = " AND wt.execution_id = %s" if execution else ""
    postgres = connection.vendor == "postgresql"
    # Rows after this (microseconds) are only counted: after the last instant (sample), after
    # the last bucket (max).
    reach = grid.first_us + (grid.count - 1) * grid.step_us if agg == "sample" else grid.end_us - 1
    # Microseconds since the epoch, exactly: a double holds them to 0.25 us, round() the rest.
    at = "round(date_part('epoch', a.changed_at) * 1000000)::bigint" if postgres else "a.changed_at"
    # Rows that enter the status (+1) and rows that leave it (-1), from the window's start on.
    # Each arm is a range scan of an index on (status, changed_at, task_id): the seed's
    # composite for new_status; for previous_status, concurrency's migrations (a partial
    # index on the rows leaving the statuses counted here).
    rows = f"""
        SELECT a.task_id, {at} AS at, 1 AS kind FROM task_status_audit a
        WHERE a.new_status = %s AND a.changed_at >= %s{in_run}
        UNION ALL
        SELECT a.task_id, {at} AS at, -1 AS kind FROM task_status_audit a
        WHERE a.previous_status = %s AND a.changed_at >= %s{in_run}
    """
    rows_params = [status, since, *run_params, status, since, *run_params]
    now_in = f"""
        SELECT t.task_template_id AS tpl, COUNT(*) AS n FROM wave_tasks wt
        JOIN tasks t ON t.id = wt.task_id
        WHERE wt.status = %s{wt_run}{by_template}{tasks_scope}
          AND wt.execution_id IN (SELECT r.id FROM task_list_execution_runs r WHERE 1 = 1{runs_scope})
        GROUP BY t.task_template_id
    """
    now_params = [status, *run_params, *template_params, *tasks_params, *runs_params]
    if postgres:
        if agg == "sample":
            # The bucket index, as Grid.bucket computes it, in exact integer arithmetic.
            value = (
                f"GREATEST(0, LEAST({grid.count}, (e.at - {grid.first_us} + {grid.step_us - 1}) "
                f"/ {grid.step_us}))::bigint"
            )
        else:
            value = "e.at * 2 + (e.kind + 1) / 2"  # see _Steps.moves
        sql = f"""
            SELECT t.task_template_id, e.kind, array_agg({value}) FILTER (WHERE e.at <= {reach}),
                   count(*) FILTER (WHERE e.at > {reach})
            FROM ({rows}) e JOIN tasks t ON t.id = e.task_id
            WHERE 1 = 1{by_template}{tasks_scope}
            GROUP BY t.task_template_id, e.kind
            UNION ALL
            SELECT c.tpl, 0, NULL, c.n FROM ({now_in}) c
        """
    else:
        sql = f"""
            SELECT t.task_template_id, e.kind, e.at, NULL
            FROM ({rows}) e JOIN tasks t ON t.id = e.task_id
            WHERE 1 = 1{by_template}{tasks_scope}
            UNION ALL
            SELECT c.tpl, 0, NULL, c.n FROM ({now_in}) c
        """
    params = [*rows_params, *template_params, *tasks_params, *now_params]
    steps: dict[int, _Steps] = defaultdict(_Steps)
    with transaction.atomic(), connection.cursor() as cursor:
        if postgres:
            for setting in planner_settings(grid):
                cursor.execute(setting)
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    for tpl, kind, value, count in fetched:
        s = steps[tpl]
        if kind == 0:  # the wave tasks in the status now
            s.current += count
            continue
        if not postgres:
            at = _sqlite_us(value)
            value, count = (
                ([], 1) if at > reach else ([grid.bucket(at) if agg == "sample" else 2 * at + (kind == 1)], 0)
            )
        if agg == "max":
            s.moves += value or []
        else:
            (s.entered if kind == 1 else s.left).extend(value or [])
        if kind == 1:
            s.entered_after += count
        else:
            s.left_after += count
    return steps


def _sqlite_us(value: str | datetime) -> int:
    """A datetime as SQLite gives it back (naive UTC, text or already converted), in epoch
    microseconds."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return to_us(moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment)
