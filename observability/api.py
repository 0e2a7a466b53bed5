"""REST endpoints of what runs leave behind: a wave's transcript, tool uses and assertions
(seed 000 §7.3, §7.4), and event ingest for external agents (config/api.py has the rules
every endpoint follows).

Ingest shares the event rules of `$TIDEWATCH_EVENTS`: each event is checked by
`observability.events.parse_event_line`, and the batch is written the way the executor
writes captured output (the `output_captured` signal, whose receiver turns event lines
into rows and moves the wave statistics), in one transaction. Unlike a task's events file,
where a bad line is kept as an `invalid_event` entry, a request with one bad event is
refused whole (400 naming its index and field) and writes nothing.
"""

from __future__ import annotations

import json
import math

import django_filters
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, parsers, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api import BooleanFilter, Needs, cursor, get_or_404, id_from
from executions import api as executions_api
from executions.api.common import PlainList
from executions.capture import Captured
from executions.models import ExecutionRun
from executions.records import iso
from executions.signals import output_captured
from observability import selectors
from observability.events import (
    EVENT_TYPES,
    AssertionEvent,
    InvalidEvent,
    MessageEvent,
    SkillEvent,
    ToolUseEvent,
    parse_event_line,
)
from observability.models import AssertionResult, ToolUse, TranscriptEntry

# One request holds at most this many events, in a body of at most this many bytes;
# both can be set in settings.TIDEWATCH.
INGEST_MAX_EVENTS = 1000
INGEST_MAX_BYTES = 8 * 2**20


def _limit(name: str, default: int) -> int:
    return int(settings.TIDEWATCH.get(name, default))


# --- pagination --------------------------------------------------------------------------------


# --- serializers -------------------------------------------------------------------------------


class _RecordSerializer(serializers.ModelSerializer):
    """The links every record has: run, wave, step (its key in the run), agent."""

    execution_id = serializers.IntegerField()
    wave_id = serializers.IntegerField(allow_null=True)
    task_id = serializers.IntegerField(allow_null=True)
    task = serializers.CharField(source="task_key", allow_null=True, help_text="the step's key in the run")
    agent_id = serializers.IntegerField(allow_null=True)
    instance_id = serializers.CharField(allow_null=True, help_text="the agent's instance id")

    LINKS = ("id", "execution_id", "wave_id", "task_id", "task", "agent_id", "instance_id")


class TranscriptEntrySerializer(_RecordSerializer):
    """A line of a wave's transcript (seed 000 §7.3)."""

    instance_id = serializers.CharField(help_text="the agent's instance id ('' when none)")

    class Meta:
        model = TranscriptEntry
        fields = (*_RecordSerializer.LINKS, "wave_number", "sequence", "entry_type", "content", "created_at")
        read_only_fields = fields


class ToolUseSerializer(_RecordSerializer):
    """A tool use (seed 000 §7.4)."""

    # Stored as 0/1 (IntBooleanField, whose choices would make an enum): booleans here.
    is_error = serializers.BooleanField()
    is_blocked = serializers.BooleanField()

    class Meta:
        model = ToolUse
        fields = (
            *_RecordSerializer.LINKS, "tool_name", "input", "output", "is_error", "is_blocked",
            "start_time", "end_time", "duration_ms",
        )  # fmt: skip
        read_only_fields = fields


class AssertionResultSerializer(_RecordSerializer):
    """An assertion and whether it passed."""

    passed = serializers.BooleanField()

    class Meta:
        model = AssertionResult
        fields = (*_RecordSerializer.LINKS, "name", "passed", "message", "created_at")
        read_only_fields = fields


# --- filters -----------------------------------------------------------------------------------


class _WaveRecordFilter(django_filters.FilterSet):
    task = django_filters.CharFilter(
        method="filter_task", max_length=220, help_text="a step key (a for_each step: all its instances)"
    )

    def filter_task(self, queryset, name, value):
        return queryset.filter(wave_task__in=selectors.wave_tasks_named(self.request.wave, value))


class TranscriptFilter(_WaveRecordFilter):
    entry_type = django_filters.ChoiceFilter(choices=TranscriptEntry.EntryType.choices)
    agent = django_filters.CharFilter(
        field_name="instance_id", max_length=64, help_text="an agent's instance id"
    )

    class Meta:
        model = TranscriptEntry
        fields = ("entry_type", "task", "agent")


class ToolUseFilter(_WaveRecordFilter):
    is_error = BooleanFilter()
    is_blocked = BooleanFilter()
    tool_name = django_filters.CharFilter(max_length=200)
    agent = django_filters.CharFilter(
        field_name="agent__instance_id", max_length=64, help_text="an agent's instance id"
    )

    class Meta:
        model = ToolUse
        fields = ("is_error", "is_blocked", "tool_name", "task", "agent")


class AssertionFilter(_WaveRecordFilter):
    passed = BooleanFilter()

    class Meta:
        model = AssertionResult
        fields = ("passed", "task")


# --- the wave's records ------------------------------------------------------------------------

WAVE_ID = OpenApiParameter(
    "wave_id", str, OpenApiParameter.PATH, pattern="^[^/]+$", description="the wave's id (a whole number)"
)
ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a bad id or parameter, named"),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="no such wave, or not one of your teams'"),
}


def _links(r: dict) -> dict:
    """_RecordSerializer.LINKS of a row read with `.values(*LINK_COLUMNS, ...)`."""
    return {
        "id": r["id"], "execution_id": r["execution_id"], "wave_id": r["wave_id"], "task_id": r["task_id"],
        "task": r["task_key"], "agent_id": r["agent_id"], "instance_id": r["instance_id"],
    }  # fmt: skip


LINK_COLUMNS = ("id", "execution_id", "wave_id", "task_id", "task_key", "agent_id", "instance_id")


class _WaveRecords(PlainList, generics.ListAPIView):
    """A list of one wave's records. The wave is found among those the user may see (else
    404); its id is checked before anything else (400 naming `wave_id`)."""

    permission_classes = [Needs]
    selector = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.serializer_class.Meta.model.objects.none()
        wave_id = id_from(self.kwargs["wave_id"], "wave_id")
        # The filter set reads the wave (?task= names steps of this wave).
        self.request.wave = get_or_404(selectors.visible_waves(self.request.user), pk=wave_id)
        return type(self).selector(self.request.wave)


def _transcript_row(r: dict) -> dict:
    """TranscriptEntrySerializer's output for a row of `TranscriptView.columns`."""
    return {
        **_links(r), "wave_number": r["wave_number"], "sequence": r["sequence"],
        "entry_type": r["entry_type"], "content": r["content"], "created_at": iso(r["created_at"]),
    }  # fmt: skip


class TranscriptView(_WaveRecords):
    serializer_class = TranscriptEntrySerializer
    filterset_class = TranscriptFilter
    pagination_class = cursor(("sequence", "id"))
    selector = staticmethod(selectors.wave_transcript)
    columns = (*LINK_COLUMNS, "wave_number", "sequence", "entry_type", "content", "created_at")

    def rows(self, page):
        return [_transcript_row(r) for r in page]

    @extend_schema(
        summary="A wave's transcript, in sequence order (seed 000 §7.3)",
        description="stdout, stderr, system lines and messages of the wave's tasks, in the order "
        "they were recorded. Cursor pagination: follow `next`.",
        parameters=[WAVE_ID],
        responses={200: TranscriptEntrySerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


def _tool_use_row(r: dict) -> dict:
    """ToolUseSerializer's output for a row of `ToolUseView.columns`."""
    return {
        **_links(r), "tool_name": r["tool_name"], "input": r["input"], "output": r["output"],
        "is_error": r["is_error"], "is_blocked": r["is_blocked"], "start_time": iso(r["start_time"]),
        "end_time": iso(r["end_time"]), "duration_ms": r["duration_ms"],
    }  # fmt: skip


class ToolUseView(_WaveRecords):
    serializer_class = ToolUseSerializer
    filterset_class = ToolUseFilter
    pagination_class = cursor(("id",))
    selector = staticmethod(selectors.wave_tool_uses)
    columns = (
        *LINK_COLUMNS, "tool_name", "input", "output", "is_error", "is_blocked", "start_time", "end_time",
        "duration_ms",
    )  # fmt: skip

    def rows(self, page):
        return [_tool_use_row(r) for r in page]

    @extend_schema(
        summary="A wave's tool uses; ?is_error=true for its errors (seed 000 §7.4)",
        description="In the order they were recorded (by id). Cursor pagination: follow `next`.",
        parameters=[WAVE_ID],
        responses={200: ToolUseSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


def _assertion_row(r: dict) -> dict:
    """AssertionResultSerializer's output for a row of `AssertionView.columns`."""
    return {
        **_links(r), "name": r["name"], "passed": r["passed"], "message": r["message"],
        "created_at": iso(r["created_at"]),
    }  # fmt: skip


class AssertionView(_WaveRecords):
    serializer_class = AssertionResultSerializer
    filterset_class = AssertionFilter
    pagination_class = cursor(("id",))
    selector = staticmethod(selectors.wave_assertions)
    columns = (*LINK_COLUMNS, "name", "passed", "message", "created_at")

    def rows(self, page):
        return [_assertion_row(r) for r in page]

    @extend_schema(
        summary="A wave's assertion results; ?passed=false for its failures",
        description="In the order they were recorded (by id). Cursor pagination: follow `next`.",
        parameters=[WAVE_ID],
        responses={200: AssertionResultSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


# --- event ingest ------------------------------------------------------------------------------


class EventsBody(parsers.JSONParser):
    """JSON, read up to the ingest size limit (400 naming `body` beyond it or when not JSON)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = _limit("INGEST_MAX_BYTES", INGEST_MAX_BYTES)
        data = stream.read(limit + 1) if stream else b""
        if len(data) > limit:
            raise ValidationError({"body": [f"larger than the {limit}-byte limit of one request"]})
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
        except UnicodeDecodeError as exc:
            raise ValidationError(
                {"body": [f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}"]}
            )
        except (ValueError, RecursionError) as exc:
            raise ValidationError({"body": [f"not valid JSON ({str(exc)[:200]})"]})


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e309: no JSON column stores infinity
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


class EventSerializer(serializers.Serializer):
    """One event: a `$TIDEWATCH_EVENTS` line plus the step (`task`) or agent it is of. The
    fields a type needs are those of the events file; the request is checked by its rules."""

    # Not an enum: the schema would name it "TypeEnum", a name other apps' `type` fields want.
    type = serializers.CharField(help_text=f"one of: {', '.join(EVENT_TYPES)}")
    task = serializers.CharField(required=False, help_text="the step's key in the run (or give `agent`)")
    agent = serializers.CharField(required=False, help_text="the agent's instance id (or give `task`)")
    tool_name = serializers.CharField(required=False, help_text="tool_use")
    input = serializers.JSONField(required=False, help_text="tool_use")
    output = serializers.JSONField(required=False, help_text="tool_use")
    is_error = serializers.BooleanField(required=False, help_text="tool_use")
    is_blocked = serializers.BooleanField(required=False, help_text="tool_use")
    start_time = serializers.DateTimeField(required=False, help_text="tool_use, skill")
    end_time = serializers.DateTimeField(required=False, help_text="tool_use")
    duration_ms = serializers.IntegerField(required=False, min_value=0, help_text="tool_use, skill")
    name = serializers.CharField(required=False, help_text="assertion")
    passed = serializers.BooleanField(required=False, help_text="assertion")
    message = serializers.CharField(required=False, help_text="assertion")
    skill_name = serializers.CharField(required=False, help_text="skill")
    payload = serializers.JSONField(required=False, help_text="skill")
    content = serializers.CharField(required=False, help_text="message")


class IngestedSerializer(serializers.Serializer):
    """What a request's events were written as."""

    events = serializers.IntegerField(help_text="events received")
    transcript_entries = serializers.IntegerField()
    tool_uses = serializers.IntegerField()
    assertion_results = serializers.IntegerField()
    skill_traces = serializers.IntegerField()


WRITTEN_AS = {
    MessageEvent: "transcript_entries",
    ToolUseEvent: "tool_uses",
    AssertionEvent: "assertion_results",
    SkillEvent: "skill_traces",
}
LINK_FIELDS = ("task", "agent")


def _bad(index: int, message: str) -> ValidationError:
    return ValidationError({"events": [f"event {index}: {message}"]})


def _json_type(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), "null" if value is None else type(value).__name__)


def ingest_check(run: ExecutionRun, body) -> tuple[list[tuple], dict[str, int]]:
    """Each event of a request with its step (wave task), agent and line, and how many rows
    of each kind they will write; or the 400 that names the first bad event. Two queries
    whatever the number of events."""
    limit = _limit("INGEST_MAX_EVENTS", INGEST_MAX_EVENTS)
    if not isinstance(body, list):
        raise ValidationError({"events": [f"must be a JSON list of event objects, not {_json_type(body)}"]})
    if not body:
        raise ValidationError({"events": ["the list is empty: send at least one event"]})
    if len(body) > limit:
        raise ValidationError({"events": [f"{len(body)} events, more than the limit of {limit} per request"]})
    # A NUL character is in no key or instance id (PostgreSQL refuses it in a query): such an
    # event names no step or agent, and is refused as one that names an unknown one.
    named = {field: {e[field] for e in body if isinstance(e, dict) and isinstance(e.get(field), str)
                     and "\x00" not in e[field]} for field in LINK_FIELDS}  # fmt: skip
    wave_tasks = selectors.run_wave_tasks(run, named["task"])
    agents = selectors.run_agents(run, named["agent"])

    counts = dict.fromkeys(WRITTEN_AS.values(), 0)
    pending = []
    for index, item in enumerate(body):
        if not isinstance(item, dict):
            raise _bad(index, f"must be a JSON object, not {_json_type(item)}")
        key, instance_id = item.get("task"), item.get("agent")
        if key is None and instance_id is None:
            raise _bad(index, "field 'task' or 'agent' is required (the step key or the agent's instance id)")
        for field, value in (("task", key), ("agent", instance_id)):
            if value is not None and not isinstance(value, str):
                raise _bad(index, f"field {field!r} must be a string")
        agent = agents.get(instance_id) if instance_id is not None else None
        if instance_id is not None and agent is None:
            raise _bad(index, f"field 'agent': run {run.pk} has no agent {instance_id[:100]!r}")
        wave_task = wave_tasks.get(key) if key is not None else agent.wave_task
        if wave_task is None:
            raise _bad(index, f"field 'task': run {run.pk} has no step {key[:100]!r}")
        if agent is not None and agent.wave_task_id != wave_task.pk:
            raise _bad(
                index, f"field 'agent': agent {instance_id[:100]!r} ran {agent.wave_task.key!r}, not {key!r}"
            )
        try:
            line = json.dumps({k: v for k, v in item.items() if k not in LINK_FIELDS}, ensure_ascii=False)
        except RecursionError:
            raise _bad(index, "nested too deeply") from None
        event = parse_event_line(line)
        if isinstance(event, InvalidEvent):
            raise _bad(index, event.reason)
        counts[WRITTEN_AS[type(event)]] += 1
        pending.append((wave_task, agent, line))

    return pending, counts


def ingest_captured(run: ExecutionRun, pending: list[tuple]) -> list[Captured]:
    """The checked events as the executor hands captured lines over; message events take the
    run's next transcript sequences (call inside the writing transaction)."""
    sequence = selectors.transcript_sequence_next(run)
    now = timezone.now()
    return [
        Captured(
            execution_id=run.pk,
            wave_id=wt.wave_id,
            wave_number=wt.wave.wave_number,
            task_id=wt.task_id,
            wave_task_id=wt.pk,
            agent_id=agent.pk if agent else None,
            instance_id=agent.instance_id if agent else "",
            sequence=sequence + i,
            kind="event",
            text=line,
            at=now,
        )  # fmt: skip
        for i, (wt, agent, line) in enumerate(pending)
    ]


class RunEventsView(executions_api.RunEventsView):
    """executions/{id}/events/: GET is the executions app's event log (`?after=N`), inherited
    (Django routes a path to its first match, and this app's URLs come first); POST is the
    ingest of external agents' events."""

    permission_classes = [Needs]
    write_permission = "observability.add_transcriptentry"
    parser_classes = [EventsBody]

    @extend_schema(
        summary="Report events of an external agent (all or nothing)",
        description="A JSON list of events shaped like `$TIDEWATCH_EVENTS` lines (`type`: tool_use, "
        "assertion, skill or message, and that type's fields), each with `task` (the step's key in "
        "the run) or `agent` (an agent's instance id). The events are checked by the rules of "
        "`$TIDEWATCH_EVENTS`; one bad event refuses the whole request with a 400 naming its index "
        "and field, and nothing is written. At most 1000 events and 8 MiB per request "
        "(TIDEWATCH INGEST_MAX_EVENTS, INGEST_MAX_BYTES).",
        parameters=[
            OpenApiParameter(
                "execution_id",
                str,
                OpenApiParameter.PATH,
                pattern="^[^/]+$",
                description="the run's id (a whole number)",
            )  # fmt: skip
        ],
        request=EventSerializer(many=True),
        responses={
            201: IngestedSerializer,
            400: OpenApiResponse(OpenApiTypes.OBJECT, description="the first bad event, by index and field"),
            404: OpenApiResponse(OpenApiTypes.OBJECT, description="no such run, or not one of your teams'"),
        },
        examples=[
            OpenApiExample(
                "a tool use",  # the schema shows it as a list of one
                value={"task": "extract", "type": "tool_use", "tool_name": "grep", "is_error": False},
                request_only=True,
            ),
            OpenApiExample(
                "a bad event",
                value={"events": ["event 1: field 'tool_name' is required"]},
                status_codes=["400"],
                response_only=True,
            ),  # fmt: skip
        ],
    )
    def post(self, request, execution_id):
        run_id = id_from(execution_id, "execution_id")
        run = get_or_404(selectors.visible_runs(request.user), pk=run_id)
        pending, counts = ingest_check(run, request.data)
        with transaction.atomic():
            records = ingest_captured(run, pending)
            output_captured.send(sender=ExecutionRun, execution_id=run.pk, records=records)
        body = IngestedSerializer({"events": len(records), **counts}).data
        return Response(body, status=status.HTTP_201_CREATED)
