"""Audit writes under load (issue 17): a change set's audit and event rows rendered at once as
COPY text (PostgreSQL) are the rows its tuples make, and whichever way they are written
(that text, the tuples field by field, or bulk_create) the tables hold the same rows."""

import itertools
import json
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executions import records, transitions
from executions.models import Event, TaskStatus, TaskStatusAudit, WaveTask
from tests.factories import run_with_waves, task_list

S = TaskStatus
T0 = datetime(2100, 5, 1, 8, 30, tzinfo=UTC)
# Characters COPY's text format or JSON escape, and some beyond ASCII.
KEYS = ("plain", 'q"uote', "back\\slash", "tab\tnew\nline", "é ✓ \\N", "x" * 200)
REASON = 'tab\there, new\nline, back\\slash, "quoted", \\N, é ✓'

# --- the text of a block is its tuples' text, byte for byte ---------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
ids = st.integers(min_value=1, max_value=2**62)
statuses = st.sampled_from([None, *S.values, S.RUNNING])  # a TextChoices member among the strings
rows = st.lists(
    st.tuples(ids, ids, ids, ids, text, st.integers(0, 1000), statuses, statuses), min_size=1, max_size=20
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)  # microseconds or none, as timezone.now() gives


def _tuples(snapshot, actor, reason, now):
    """The rows of `_record`'s blocks from their tuples, as the generic COPY writer renders them."""
    audits = [
        (pk, task_id, execution_id, attempt, previous, status, now, actor, reason)
        for pk, task_id, execution_id, _, _, attempt, previous, status in snapshot
    ]
    events = [
        (row[2], "task.update", transitions._task_payload(row, actor, reason, now), now) for row in snapshot
    ]
    return (
        records._copy_lines(audits, [False] * len(records.AUDIT_COLUMNS)),
        records._copy_lines(events, [name == "payload" for name in records.EVENT_COLUMNS]),
    )


@settings(max_examples=200, deadline=None)
@given(rows, st.one_of(st.none(), text), st.one_of(st.none(), text), times)
def test_a_blocks_copy_text_is_its_tuples_text(snapshot, actor, reason, now):
    audit, events = _tuples(snapshot, actor, reason, now)
    assert transitions._audit_text(snapshot, actor, reason, now) == audit
    assert transitions._event_text(snapshot, actor, reason, now) == events


def test_the_payload_text_has_task_events_keys_in_their_order():
    wt = WaveTask(id=7, task_id=3, execution_id=2, wave_id=5, key=KEYS[3], attempt=1, status=S.QUEUED)
    row = transitions._snapshot([(wt, S.PENDING)])
    line = transitions._event_text(row, "ann", REASON, T0)
    payload = json.loads(line.split("\t")[2].replace("\\\\", "\\"))
    assert list(payload.items()) == list(transitions.task_event(wt, S.PENDING, "ann", REASON, T0)[2].items())


def test_a_value_the_text_cannot_render_leaves_the_block_to_its_tuples():
    row = (7, None, 2, 5, "k", 1, S.PENDING, S.QUEUED)  # no task: not an int
    assert transitions._audit_text([row], None, None, T0) is None
    assert transitions._event_text([row], None, None, T0) is None


# --- the tables -----------------------------------------------------------------------------------


def _moves(run) -> None:
    """Direct moves of several tasks at once, a cancel from several statuses, a lost row and a
    task changed in memory after its change was recorded (in a batch, written later)."""
    wts = list(WaveTask.objects.filter(execution=run).order_by("id"))
    transitions.transition(wts, S.QUEUED, expected=S.PENDING, now=T0, actor="ann")
    first, second = wts[0], wts[1]
    transitions.transition(
        wts[:3], S.RUNNING, expected=S.QUEUED, now=T0 + timedelta(seconds=2), reason=REASON
    )
    first.attempt = 2  # after the record of its start: that row keeps the attempt it had
    transitions.transition(
        [first], S.SUCCEEDED, expected=S.RUNNING, now=T0 + timedelta(seconds=3), exit_code=0, completed_at=T0
    )
    moved = transitions.transition(
        wts, S.CANCELLED, expected=transitions.UNFINISHED, now=T0 + timedelta(seconds=1), actor=None
    )
    assert first not in moved and [wt for wt, _ in moved.lost] == [first]
    assert second in moved


def _written(run) -> tuple[list, list, list]:
    keys = dict(WaveTask.objects.filter(execution=run).values_list("pk", "key"))
    audit = [
        (keys[r[0]], *r[1:])
        for r in TaskStatusAudit.objects.filter(execution=run, changed_at__gte=T0)
        .order_by("id")
        .values_list(
            "wave_task_id", "attempt", "previous_status", "new_status", "changed_at", "actor", "reason"
        )
    ]
    events = [
        (
            e.type,
            keys[e.payload["wave_task_id"]],
            {k: v for k, v in e.payload.items() if not k.endswith("_id")},
            e.created_at,
        )
        for e in Event.objects.filter(execution=run, created_at__gte=T0).order_by("id")
    ]
    tasks = list(
        WaveTask.objects.filter(execution=run)
        .order_by("key")
        .values_list("key", "status", "attempt", "exit_code")
    )
    return audit, events, tasks


@pytest.mark.django_db
@pytest.mark.parametrize("in_batch", [False, True], ids=["direct", "batch"])
def test_the_tables_hold_the_same_rows_whichever_way_they_are_written(in_batch, monkeypatch):
    def make(name, patch):
        with monkeypatch.context() as m:
            patch(m)
            run = run_with_waves(task_list(title=f"aw-{name}", keys=KEYS), [list(KEYS[:4]), list(KEYS[4:])])
            with transaction.atomic(), records.batch() if in_batch else nullcontext():
                _moves(run)
        return _written(run)

    reference = make("bulk_create", lambda m: m.setattr(records, "_insert", records._bulk_create))
    audit, events, tasks = reference
    assert len(audit) == len(events) == 6 + 3 + 1 + 5
    assert [a[2:4] for a in audit if a[0] == KEYS[0]] == [
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.SUCCEEDED),
    ]
    assert [a[1] for a in audit if a[0] == KEYS[0]] == [0, 0, 2]
    assert [e[2]["key"] for e in events[:6]] == list(KEYS)
    assert {a[-1] for a in audit} == {None, REASON}
    # in time order in a batch (the cancel's rows, at T0 + 1 s, before the later starts'), in
    # the order of the calls otherwise
    times = [a[4] for a in audit]
    assert (times == sorted(times)) == in_batch
    assert dict((k, s) for k, s, _, _ in tasks)[KEYS[0]] == S.SUCCEEDED
    assert make("default", lambda m: None) == reference  # COPY text on PostgreSQL

    def tuples_only(m):
        m.setattr(transitions, "_audit_text", lambda *args: None)
        m.setattr(transitions, "_event_text", lambda *args: None)

    assert make("tuples", tuples_only) == reference


# --- the UPDATE of rows that carry their own values -----------------------------------------------

no_nul = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(no_nul, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(no_nul, max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
own_values = st.tuples(
    st.text(no_nul, max_size=30), st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), json_values
)
_titles = itertools.count()


def _settle(values: list[tuple]) -> list[tuple]:
    """Six running tasks, then succeeded each with its own error, exit code and outputs (and
    some sharing them), in one transition; the rows as the database has them."""
    keys = [f"k{i}" for i in range(len(values))]
    run = run_with_waves(task_list(title=f"own-{next(_titles)}", keys=keys), [keys])
    wts = list(WaveTask.objects.filter(execution=run).order_by("key"))
    transitions.transition(wts, S.QUEUED, expected=S.PENDING, now=T0)
    transitions.transition(wts, S.RUNNING, expected=S.QUEUED, now=T0)
    for wt, (error, exit_code, outputs) in zip(wts, values, strict=True):
        wt.error, wt.exit_code, wt.outputs = error, exit_code, outputs
    own = ["error", "exit_code", "outputs"]
    transitions.transition(wts, S.SUCCEEDED, expected=S.RUNNING, now=T0, own_fields=own, completed_at=T0)
    return list(
        WaveTask.objects.filter(execution=run)
        .order_by("key")
        .values_list("status", "error", "exit_code", "outputs", "completed_at")
    )


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(own_values, min_size=1, max_size=3).flatmap(
        lambda vs: st.lists(st.sampled_from(vs), min_size=6, max_size=6)
    )
)
def test_rows_with_their_own_values_are_updated_alike_from_arrays_and_by_groups(values):
    expected = [(S.SUCCEEDED, error, exit_code, outputs, T0) for error, exit_code, outputs in values]
    assert _settle(values) == expected  # from arrays on PostgreSQL
    with mock.patch.object(transitions, "_update_from_arrays", transitions._update_by_groups):
        assert _settle(values) == expected


# --- the schema -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_changes_have_room_for_hot_updates_and_event_log_has_no_redundant_index():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "event_log")
        if connection.vendor == "postgresql":
            cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'wave_tasks'")
            assert "fillfactor=50" in (cursor.fetchone()[0] or [])
    by_run = [
        c["columns"] for c in constraints.values() if c["index"] and c["columns"][:1] == ["execution_id"]
    ]
    assert by_run == [["execution_id", "id"]]
