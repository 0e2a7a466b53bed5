"""Writes of the observability app: captured output into records, and wave statistics.

The statistics of a wave are kept current by the signal handlers in
`receivers.py`, each of which calls one function here. Every counter moves with an F()
expression in a single UPDATE per wave (never a read-modify-write and never a recount),
inside the transaction of the change it counts: several executors can write to one
database at once, and a rolled-back change leaves no trace in the counters.
`statistics_recompute()` rebuilds the same rows from the raw tables; the tests check
that both agree.

`statistics_announce()` writes the `stats.update` event of a run (every wave's statistics) into
the event log for the live websockets, right after the transaction of the change commits. It is
coalesced: at most one per run every `STATS_EVERY_SECONDS` (0.25 s) in one process; a change
inside that window is announced with the run's next change after it, and a wave's start and end
are always announced (so a finished wave's figures are always final).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import Case, Count, F, FloatField, Q, Value, When
from django.db.models.functions import Cast, Greatest
from django.db.models.lookups import GreaterThan
from django.utils import timezone

from executions.capture import Captured, StatusChange
from executions.models import ParallelExecutionWave, TaskStatus, WaveTask
from executions.records import batch_latest, events_write, iso
from observability.events import (
    AssertionEvent,
    InvalidEvent,
    MessageEvent,
    SkillEvent,
    ToolUseEvent,
    milliseconds,
    parse_event_line,
)
from observability.models import AssertionResult, SkillTrace, ToolUse, TranscriptEntry, WaveStatistics

TRANSCRIPT_KINDS = frozenset({"stdout", "stderr", "system"})

# The status a wave task is in -> the counter of wave_statistics it is counted in.
# Cancelled and lost tasks are in task_count only.
STATUS_COUNTERS = {
    TaskStatus.SUCCEEDED: "completed_count",
    TaskStatus.FAILED: "failed_count",
    TaskStatus.SKIPPED: "skipped_count",
}

RECORD_COUNTERS = (
    "transcript_entry_count",
    "tool_use_count",
    "tool_error_count",
    "tool_blocked_count",
    "assertion_count",
    "assertion_pass_count",
    "assertion_fail_count",
    "skill_trace_count",
)
TASK_COUNTERS = ("task_count", "completed_count", "failed_count", "skipped_count")
STATISTICS_FIELDS = (
    *TASK_COUNTERS,
    "pass_rate",
    *RECORD_COUNTERS,
    "started_at",
    "completed_at",
    "duration_ms",
)


# --- captured output -------------------------------------------------------------------------


def records_write(execution_id: int, records: Sequence[Captured]) -> dict[str, int]:
    """Persist a batch of captured lines: one bulk INSERT per model, one UPDATE per wave.

    stdout/stderr/system lines become transcript entries; an "event" line is parsed by
    `parse_event_line` into a tool use, assertion, skill trace or message, or is kept as
    an `invalid_event` transcript entry naming the reason. Returns rows written per model.
    """
    transcripts: list[TranscriptEntry] = []
    tool_uses: list[ToolUse] = []
    assertions: list[AssertionResult] = []
    skills: list[SkillTrace] = []
    deltas: dict[tuple[int, int], Counter] = defaultdict(Counter)

    for record in records:
        links = {
            "execution_id": record.execution_id or execution_id,
            "wave_id": record.wave_id,
            "task_id": record.task_id,
            "wave_task_id": record.wave_task_id,
            "agent_id": record.agent_id,
        }
        counts = deltas[(record.wave_id, links["execution_id"])] if record.wave_id else Counter()

        if record.kind != "event":
            kind = record.kind if record.kind in TRANSCRIPT_KINDS else TranscriptEntry.EntryType.SYSTEM
            transcripts.append(_transcript(record, links, kind, record.text))
            counts["transcript_entry_count"] += 1
            continue

        event = parse_event_line(record.text)
        if isinstance(event, InvalidEvent | MessageEvent):
            entry_type = (
                TranscriptEntry.EntryType.INVALID_EVENT
                if isinstance(event, InvalidEvent)
                else TranscriptEntry.EntryType.MESSAGE
            )
            transcripts.append(_transcript(record, links, entry_type, event.content))
            counts["transcript_entry_count"] += 1
        elif isinstance(event, ToolUseEvent):
            start, end, duration = event.timing(record.at)
            tool_uses.append(
                ToolUse(
                    **links,
                    tool_name=event.tool_name,
                    input=event.input,
                    output=event.output,
                    is_error=event.is_error,
                    is_blocked=event.is_blocked,
                    start_time=start,
                    end_time=end,
                    duration_ms=duration,
                )
            )
            counts["tool_use_count"] += 1
            counts["tool_error_count"] += event.is_error
            counts["tool_blocked_count"] += event.is_blocked
        elif isinstance(event, AssertionEvent):
            assertions.append(
                AssertionResult(
                    **links, name=event.name, passed=event.passed, message=event.message, created_at=record.at
                )
            )
            counts["assertion_count"] += 1
            counts["assertion_pass_count" if event.passed else "assertion_fail_count"] += 1
        elif isinstance(event, SkillEvent):
            skills.append(
                SkillTrace(
                    **links,
                    skill_name=event.skill_name,
                    payload=event.payload,
                    started_at=event.start_time or record.at,
                    duration_ms=event.duration_ms,
                )
            )
            counts["skill_trace_count"] += 1

    with transaction.atomic(savepoint=False):
        for model, rows in (
            (TranscriptEntry, transcripts),
            (ToolUse, tool_uses),
            (AssertionResult, assertions),
            (SkillTrace, skills),
        ):
            if rows:
                model.objects.bulk_create(rows)
        for (wave_id, run_id), counts in deltas.items():
            if counts:
                _statistics_update(wave_id, run_id, **{name: F(name) + n for name, n in counts.items() if n})
    return {
        "transcript_entries": len(transcripts),
        "tool_uses": len(tool_uses),
        "assertion_results": len(assertions),
        "skill_traces": len(skills),
    }


def _transcript(record: Captured, links: dict, entry_type: str, content: str) -> TranscriptEntry:
    return TranscriptEntry(
        **links,
        wave_number=record.wave_number,
        instance_id=record.instance_id or "",
        sequence=record.sequence,
        entry_type=entry_type,
        content=_text(content),
        created_at=record.at,
    )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a process may still print one.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


# --- statistics kept by the signal handlers ----------------------------------------------------


def statistics_count_status_changes(changes: Iterable[StatusChange]) -> set[int]:
    """Move the task counters of the waves a batch of status changes touched.

    A task created (previous status None) counts in task_count; entering succeeded,
    failed or skipped counts in that counter, leaving it (a resume resetting the task)
    takes it back out. pass_rate is recomputed from the new counters in the same UPDATE.
    """
    deltas: dict[tuple[int, int], Counter] = defaultdict(Counter)
    for change in changes:
        counts = deltas[(change.wave_id, change.execution_id)]
        if change.previous_status is None:
            counts["task_count"] += 1
        elif change.previous_status in STATUS_COUNTERS:
            counts[STATUS_COUNTERS[change.previous_status]] -= 1
        if change.new_status in STATUS_COUNTERS:
            counts[STATUS_COUNTERS[change.new_status]] += 1
    moved = set()
    for (wave_id, run_id), counts in deltas.items():
        if not any(counts.values()):
            continue
        moved.add(run_id)
        new = {name: _moved(name, counts[name]) for name in TASK_COUNTERS if counts[name]}
        fields = dict(new)
        if counts["completed_count"] or counts["failed_count"]:
            fields["pass_rate"] = _pass_rate(
                new.get("completed_count", F("completed_count")), new.get("failed_count", F("failed_count"))
            )
        _statistics_update(wave_id, run_id, **fields)
    return moved


def statistics_wave_timing(wave: ParallelExecutionWave) -> None:
    """Copy a wave's start, end and duration into its statistics (creating them if new)."""
    _statistics_update(
        wave.pk,
        wave.execution_id,
        started_at=wave.started_at,
        completed_at=wave.completed_at,
        duration_ms=wave_duration_ms(wave.started_at, wave.completed_at),
    )


def wave_duration_ms(started_at: datetime | None, completed_at: datetime | None) -> int | None:
    if started_at is None or completed_at is None:
        return None
    return max(milliseconds(completed_at - started_at), 0)


def _moved(name: str, delta: int):
    # In an UPDATE every F() reads the row as it was before, so pass_rate can use these
    # same expressions. A counter never goes below zero, even if a row was rebuilt mid-run.
    return F(name) + delta if delta > 0 else Greatest(F(name) + delta, Value(0))


def _pass_rate(completed, failed):
    """completed / (completed + failed) in SQL; NULL while neither has happened."""
    return Case(
        When(
            GreaterThan(completed + failed, 0),
            then=Cast(completed, FloatField()) / Cast(completed + failed, FloatField()),
        ),
        default=Value(None),
        output_field=FloatField(),
    )


def _statistics_update(wave_id: int, execution_id: int, **fields) -> None:
    """One UPDATE of a wave's statistics row; the row is created first if it is missing.

    The usual path is the single UPDATE. A wave seen for the first time gets its row by
    an INSERT that ignores a conflict (another process may create it at the same moment),
    then the UPDATE runs again, so no increment is lost either way.
    """
    fields["updated_at"] = timezone.now()
    rows = WaveStatistics.objects.filter(wave_id=wave_id)
    if rows.update(**fields):
        return
    WaveStatistics.objects.bulk_create(
        [WaveStatistics(wave_id=wave_id, execution_id=execution_id)], ignore_conflicts=True
    )
    rows.update(**fields)


# --- stats.update: the statistics, announced live ----------------------------------------------

STATS_EVERY_SECONDS = 0.25
_announced: dict[int, float] = {}  # run id -> time.monotonic() of its last stats.update here
_scheduled: dict[int, float] = {}  # run id -> when an announcement was promised to a commit


def statistics_announce(execution_ids: Iterable[int], *, force: bool = False) -> list[int]:
    """Promise a `stats.update` event for each of these runs once the current transaction
    commits, unless one was written less than STATS_EVERY_SECONDS ago by this process or is
    already promised (`force`: whatever the time). Returns the runs promised.

    Written right after the commit, in a transaction of its own: the figures are the committed
    ones, a rolled-back change announces nothing, and the change's own transaction does not
    grow. Its time is the latest of the events the executor's batch had gathered, so the
    event log still reads in time order."""
    now = time.monotonic()
    due = sorted(
        run_id
        for run_id in set(execution_ids)
        if run_id
        and now - _scheduled.get(run_id, -60) > 5  # a promise whose transaction rolled back expires
        and (force or now - _announced.get(run_id, -STATS_EVERY_SECONDS) >= STATS_EVERY_SECONDS)
    )
    if not due:
        return []
    at = batch_latest()
    for run_id in due:
        _scheduled[run_id] = now
    transaction.on_commit(lambda: _announce(due, at), robust=True)
    return due


def _announce(run_ids: list[int], at: datetime | None) -> None:
    now = time.monotonic()
    for run_id in run_ids:
        _scheduled.pop(run_id, None)
        _announced[run_id] = now
    if len(_announced) > 10_000:  # a long-lived process: forget runs not announced lately
        for run_id, last in list(_announced.items()):
            if now - last > 60:
                del _announced[run_id]
    rows = defaultdict(list)
    fields = ("wave_id", "wave__wave_number", *STATISTICS_FIELDS, "updated_at")
    statistics = WaveStatistics.objects.filter(execution_id__in=run_ids).order_by("wave_id")
    for row in statistics.values("execution_id", *fields):
        run_id = row.pop("execution_id")
        row["wave_number"] = row.pop("wave__wave_number")
        rows[run_id].append({name: iso(v) if isinstance(v, datetime) else v for name, v in row.items()})
    with transaction.atomic():
        events_write(
            [(run_id, "stats.update", {"execution_id": run_id, "waves": rows[run_id]}) for run_id in run_ids],
            at or timezone.now(),
        )


# --- rebuilding from raw rows ------------------------------------------------------------------


def statistics_recompute(*, execution_id: int | None = None, chunk_size: int = 500) -> list[WaveStatistics]:
    """Rebuild the statistics of every wave (of one run, or of all) from the raw rows.

    Counts come from grouped aggregate queries over wave tasks (every one, for_each
    parents and instances alike), transcript entries, tool uses, assertions and skill
    traces; timing from the wave itself. Rows are upserted; returns them, by wave.
    """
    waves = ParallelExecutionWave.objects.order_by("pk")
    if execution_id is not None:
        waves = waves.filter(execution_id=execution_id)
    wave_rows = list(waves.values_list("pk", "execution_id", "started_at", "completed_at"))
    for start in range(0, len(wave_rows), chunk_size):
        _recompute_chunk(wave_rows[start : start + chunk_size])
    return list(WaveStatistics.objects.filter(wave_id__in=[w[0] for w in wave_rows]).order_by("wave_id"))


def _grouped(queryset, wave_ids: list[int], **aggregates) -> dict[int, dict]:
    rows = queryset.filter(wave_id__in=wave_ids).values("wave_id").order_by().annotate(**aggregates)
    return {row.pop("wave_id"): row for row in rows}


def _recompute_chunk(wave_rows: list[tuple]) -> None:
    ids = [w[0] for w in wave_rows]
    tasks = _grouped(
        WaveTask.objects,
        ids,
        task_count=Count("pk"),
        **{counter: Count("pk", filter=Q(status=status)) for status, counter in STATUS_COUNTERS.items()},
    )
    transcripts = _grouped(TranscriptEntry.objects, ids, transcript_entry_count=Count("pk"))
    tools = _grouped(
        ToolUse.objects,
        ids,
        tool_use_count=Count("pk"),
        tool_error_count=Count("pk", filter=Q(is_error=True)),
        tool_blocked_count=Count("pk", filter=Q(is_blocked=True)),
    )
    assertions = _grouped(
        AssertionResult.objects,
        ids,
        assertion_count=Count("pk"),
        assertion_pass_count=Count("pk", filter=Q(passed=True)),
        assertion_fail_count=Count("pk", filter=Q(passed=False)),
    )
    skills = _grouped(SkillTrace.objects, ids, skill_trace_count=Count("pk"))

    now = timezone.now()
    rows = []
    for wave_id, run_id, started_at, completed_at in wave_rows:
        values = {name: 0 for name in (*TASK_COUNTERS, *RECORD_COUNTERS)}
        for source in (tasks, transcripts, tools, assertions, skills):
            values.update(source.get(wave_id, {}))
        judged = values["completed_count"] + values["failed_count"]
        rows.append(
            WaveStatistics(
                wave_id=wave_id,
                execution_id=run_id,
                pass_rate=values["completed_count"] / judged if judged else None,
                started_at=started_at,
                completed_at=completed_at,
                duration_ms=wave_duration_ms(started_at, completed_at),
                updated_at=now,
                **values,
            )
        )
    WaveStatistics.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["wave"],
        update_fields=[*STATISTICS_FIELDS, "execution", "updated_at"],
    )
