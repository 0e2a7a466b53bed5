"""REST endpoints of runs: start, list, detail, their tasks, waves, timeline, active agents,
audit and event log, sessions, and resume / cancel / approve / reject (config/api.py has the
rules every endpoint follows).

Every run, wave and task is reached through `selectors.visible_runs(user)` (the runs of the
task lists of the user's teams), so another team's rows are 404. Each view validates, calls
one selector or service, and serializes; each list answers in a fixed number of queries.
"""

from __future__ import annotations

import django_filters
from django import forms
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, generics, parsers, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api import MAX_ID, Conflict, Needs, cursor, get_or_404, id_from
from executions import selectors, services
from executions.errors import NotFound, ServiceError
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    SessionStatus,
    TaskStatus,
    TaskStatusAudit,
    WaveStatus,
    WaveTask,
)
from waves.teams import visible_task_lists

# --- parameters --------------------------------------------------------------------------------


class _WholeNumber(forms.Field):
    def __init__(self, *args, minimum: int = 1, maximum: int = MAX_ID, **kwargs):
        self.minimum, self.maximum = minimum, maximum
        super().__init__(*args, **kwargs)

    def to_python(self, value):
        text = "" if value is None else str(value).strip()
        if text == "":
            return None
        if text.isascii() and text.isdigit() and self.minimum <= int(text) <= self.maximum:
            return int(text)
        raise forms.ValidationError(f"must be a whole number from {self.minimum} to {self.maximum}")


class _WholeNumberFilter(django_filters.Filter):
    field_class = _WholeNumber


def whole_number(
    field_name: str, *, minimum: int = 1, maximum: int = MAX_ID, **kwargs
) -> django_filters.Filter:
    """A filter on an integer column: a value the column cannot hold is 400 naming the
    parameter, never a database error."""
    found = _WholeNumberFilter(field_name=field_name, minimum=minimum, maximum=maximum, **kwargs)
    schema = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": kwargs.get("help_text", ""),
    }
    return extend_schema_field(schema)(found)


def choice(choices, **kwargs) -> django_filters.ChoiceFilter:
    return django_filters.ChoiceFilter(choices=choices, **kwargs)


def path_id(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.PATH, pattern="^[^/]+$", description=f"{what} (a whole number)"
    )


RUN_ID = path_id("execution_id", "the run's id")
ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a bad id or parameter, named"),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="no such run, or not one of your teams'"),
}


class _CheckedCursor:
    """A cursor this endpoint did not hand out is 400 naming `cursor` (DRF says 404); its
    position must be an id a column can hold, or it would reach the database."""

    def decode_cursor(self, request):
        if not request.query_params.get(self.cursor_query_param):
            return None  # the first page
        try:
            decoded = super().decode_cursor(request)
        except exceptions.NotFound:
            decoded = None
        position = decoded.position if decoded else None
        if decoded is None or (
            position is not None
            and not (position.isascii() and position.isdigit() and int(position) <= MAX_ID)
        ):
            raise ValidationError({"cursor": ["not a cursor this endpoint handed out"]})
        return decoded


def by_id_cursor():
    return type("Cursor", (_CheckedCursor, cursor("id")), {})


def status_field(choices) -> serializers.CharField:
    # A string with its values listed, not an enum: several "status" choice sets would make
    # drf-spectacular name their enums by hash (and warn).
    return serializers.CharField(read_only=True, help_text="one of: " + ", ".join(choices.values))


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


# --- runs --------------------------------------------------------------------------------------


class RunSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    task_list_name = serializers.CharField(source="task_list.title")
    status = status_field(RunStatus)
    speedup = serializers.SerializerMethodField(
        help_text="task seconds / working seconds (gates not charged)"
    )
    cancel_requested = serializers.SerializerMethodField()

    class Meta:
        model = ExecutionRun
        fields = (
            "id", "url", "task_list", "task_list_name", "session", "status", "backend", "schedule",
            "max_parallelism", "simulate_scale", "attempt", "resumed_from", "resumed_by", "created_at",
            "started_at", "completed_at", "wall_seconds", "task_seconds", "gate_wait_seconds", "speedup",
            "peak_concurrency", "cancel_requested", "cancel_requested_at", "cancel_requested_by", "error",
        )  # fmt: skip
        read_only_fields = fields

    def get_url(self, run) -> str:
        return self.context["request"].build_absolute_uri(reverse("api:execution-detail", args=[run.pk]))

    def get_speedup(self, run) -> float | None:
        return selectors.speedup(run)

    def get_cancel_requested(self, run) -> bool:
        return run.cancel_requested_at is not None


StepCountsSerializer = type(
    "StepCountsSerializer",
    (serializers.Serializer,),
    {"__doc__": "Steps per status.", **{s: serializers.IntegerField() for s in TaskStatus.values}},
)
RunCountsSerializer = type(
    "RunCountsSerializer",
    (serializers.Serializer,),
    {"__doc__": "Runs per status.", **{s: serializers.IntegerField() for s in RunStatus.values}},
)
LINKS = ("tasks", "waves", "timeline", "agents", "audit", "events")


class RunLinksSerializer(serializers.Serializer):
    tasks = serializers.URLField()
    waves = serializers.URLField()
    timeline = serializers.URLField()
    agents = serializers.URLField()
    audit = serializers.URLField()
    events = serializers.URLField()


class RunDetailSerializer(RunSerializer):
    steps = serializers.SerializerMethodField(
        help_text="steps per status (a for_each step is counted by its instances)"
    )
    total = serializers.SerializerMethodField()
    done = serializers.SerializerMethodField(help_text="steps succeeded or skipped")
    percent = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = (
            *RunSerializer.Meta.fields, "executor_hostname", "executor_pid", "executor_heartbeat", "steps",
            "total", "done", "percent", "links",
        )  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(StepCountsSerializer)
    def get_steps(self, run) -> dict:
        return self.context["steps"]

    def get_total(self, run) -> int:
        return sum(self.context["steps"].values())

    def get_done(self, run) -> int:
        return self.context["steps"][TaskStatus.SUCCEEDED] + self.context["steps"][TaskStatus.SKIPPED]

    def get_percent(self, run) -> int:
        total = self.get_total(run)
        return 100 * self.get_done(run) // total if total else 0

    @extend_schema_field(RunLinksSerializer)
    def get_links(self, run) -> dict:
        absolute = self.context["request"].build_absolute_uri
        return {name: absolute(reverse(f"api:execution-{name}", args=[run.pk])) for name in LINKS}


class RunFilter(django_filters.FilterSet):
    status = choice(RunStatus.choices)
    task_list = whole_number("task_list_id", help_text="a task list's id")
    session = whole_number("session_id", help_text="a session's id")

    class Meta:
        model = ExecutionRun
        fields = ("status", "task_list", "session")


def _run(request, value, name: str = "execution_id") -> ExecutionRun:
    """The run a path names, among those the user may see: 400 naming `name` for a bad id."""
    pk = id_from(value, name)
    return get_or_404(selectors.visible_runs(request.user).select_related("task_list"), pk=pk)


class RunListView(generics.ListAPIView):
    permission_classes = [Needs]
    queryset = ExecutionRun.objects.none()
    serializer_class = RunSerializer
    filterset_class = RunFilter

    def get_queryset(self):
        return selectors.visible_runs(self.request.user).select_related("task_list").order_by("-id")

    @extend_schema(
        summary="Runs of your teams' task lists, newest first",
        responses={200: RunSerializer(many=True), 400: ERRORS[400]},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class RunDetailView(generics.GenericAPIView):
    permission_classes = [Needs]
    serializer_class = RunDetailSerializer

    @extend_schema(
        summary="A run: its fields, speedup and steps per status",
        parameters=[path_id("id", "the run's id")],
        responses={200: RunDetailSerializer, **ERRORS},
    )
    def get(self, request, id):
        run = _run(request, id, "id")
        context = {**self.get_serializer_context(), "steps": selectors.run_step_counts(run)}
        return Response(RunDetailSerializer(run, context=context).data)


class _RunRecords(generics.ListAPIView):
    """A list of one run's rows: the run is found among those the user may see (else 404),
    its id checked first (400 naming `execution_id`)."""

    permission_classes = [Needs]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        self.run = _run(self.request, self.kwargs["execution_id"])
        return self.records(self.run)

    def records(self, run):
        raise NotImplementedError


# --- tasks, waves, timeline ---------------------------------------------------------------------


class RunTaskSerializer(serializers.ModelSerializer):
    wave_number = serializers.IntegerField()
    title = serializers.CharField(help_text="the step's title")
    kind = serializers.CharField(help_text="task or gate")
    parent = serializers.CharField(
        source="parent_key", allow_null=True, help_text="a for_each instance's step key"
    )
    status = status_field(TaskStatus)
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = WaveTask
        fields = (
            "id", "key", "title", "kind", "wave", "wave_number", "parent", "item_index", "item", "status",
            "attempt", "started_at", "completed_at", "duration_seconds", "exit_code", "outputs", "error",
            "approval_decision", "approved_by", "approved_at",
        )  # fmt: skip
        read_only_fields = fields

    def get_duration_seconds(self, wt) -> float | None:
        return _seconds(wt.started_at, wt.completed_at)


class RunTaskFilter(django_filters.FilterSet):
    status = choice(TaskStatus.choices)
    wave = whole_number("wave__wave_number", minimum=0, maximum=2**31 - 1, help_text="a wave number")
    key = django_filters.CharFilter(max_length=220, help_text="a step key")

    class Meta:
        model = WaveTask
        fields = ("status", "wave", "key")


class RunTasksView(_RunRecords):
    queryset = WaveTask.objects.none()
    serializer_class = RunTaskSerializer
    filterset_class = RunTaskFilter

    def records(self, run):
        return selectors.run_wave_tasks(run)

    @extend_schema(
        summary="A run's tasks: status, attempt, wave, times, exit code, outputs",
        description="In plan order (wave, position in the source, item).",
        parameters=[RUN_ID],
        responses={200: RunTaskSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class RunWaveSerializer(serializers.ModelSerializer):
    """A row of v_wave_progress (seed 000 §7.1, with §7.5's agent count), counted live."""

    status = status_field(WaveStatus)
    duration_seconds = serializers.SerializerMethodField()
    task_count = serializers.IntegerField(
        help_text="steps in the wave (a for_each step is counted by its instances)"
    )
    pending_count = serializers.IntegerField()
    queued_count = serializers.IntegerField()
    waiting_approval_count = serializers.IntegerField()
    running_count = serializers.IntegerField()
    completed_count = serializers.IntegerField(help_text="steps succeeded (as in v_wave_progress)")
    failed_count = serializers.IntegerField()
    skipped_count = serializers.IntegerField()
    cancelled_count = serializers.IntegerField()
    lost_count = serializers.IntegerField()
    done = serializers.SerializerMethodField(help_text="steps succeeded or skipped")
    percent = serializers.SerializerMethodField()
    pass_rate = serializers.SerializerMethodField(
        help_text="succeeded / (succeeded + failed); null before either"
    )
    agent_count = serializers.IntegerField()
    execution_status = status_field(RunStatus)
    task_list_title = serializers.CharField()

    class Meta:
        model = ParallelExecutionWave
        fields = (
            "id", "execution", "wave_number", "status", "started_at", "completed_at", "duration_seconds",
            "max_parallelism", "task_count", *selectors.WAVE_COUNTERS.values(), "done", "percent", "pass_rate",
            "agent_count", "execution_status", "task_list_title",
        )  # fmt: skip
        read_only_fields = fields

    def get_duration_seconds(self, wave) -> float | None:
        return _seconds(wave.started_at, wave.completed_at)

    def get_done(self, wave) -> int:
        return wave.completed_count + wave.skipped_count

    def get_percent(self, wave) -> int:
        return 100 * self.get_done(wave) // wave.task_count if wave.task_count else 0

    def get_pass_rate(self, wave) -> float | None:
        judged = wave.completed_count + wave.failed_count
        return round(wave.completed_count / judged, 4) if judged else None


class RunWaveFilter(django_filters.FilterSet):
    status = choice(WaveStatus.choices)

    class Meta:
        model = ParallelExecutionWave
        fields = ("status",)


class RunWavesView(_RunRecords):
    queryset = ParallelExecutionWave.objects.none()
    serializer_class = RunWaveSerializer
    filterset_class = RunWaveFilter

    def records(self, run):
        return selectors.wave_progress(run)

    @extend_schema(
        summary="A run's wave progress, by wave number (seed 000 §7.1)",
        description="The rows of v_wave_progress counted from the run's own tasks (live), with "
        "steps per status, percent done, pass rate and the wave's agent count (§7.5).",
        parameters=[RUN_ID],
        responses={200: RunWaveSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class TimelineEntrySerializer(serializers.ModelSerializer):
    wave_number = serializers.IntegerField()
    title = serializers.CharField()
    parent = serializers.CharField(
        source="parent_key", allow_null=True, help_text="a for_each instance's step key"
    )
    status = status_field(TaskStatus)
    queued_at = serializers.DateTimeField(allow_null=True, help_text="when it last entered the queue")
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = WaveTask
        fields = (
            "id", "key", "title", "wave_number", "parent", "status", "attempt", "queued_at", "started_at",
            "completed_at", "duration_seconds",
        )  # fmt: skip
        read_only_fields = fields

    def get_duration_seconds(self, wt) -> float | None:
        return _seconds(wt.started_at, wt.completed_at)


class RunTimelineView(_RunRecords):
    queryset = WaveTask.objects.none()
    serializer_class = TimelineEntrySerializer

    def records(self, run):
        return selectors.run_timeline(run)

    @extend_schema(
        summary="A run's timeline: each task's queue, start, end and duration, by start (seed 000 §7.5)",
        description="For a Gantt chart of the run; tasks that never started come last. The "
        "per-wave figures of §7.5 (task count, completed, pass rate, agents) are in `waves/`.",
        parameters=[RUN_ID],
        responses={200: TimelineEntrySerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


# --- active agents -----------------------------------------------------------------------------


class ActiveAgentSerializer(serializers.ModelSerializer):
    """A row of v_active_agents (seed 000 §7.2)."""

    agent_id = serializers.IntegerField(source="pk")
    status = status_field(AgentStatus)
    task_list = serializers.IntegerField(source="task_list_id")
    task_list_title = serializers.CharField()
    wave_number = serializers.IntegerField()
    task_key = serializers.CharField(help_text="the step's key in the run")
    display_id = serializers.CharField()
    task_title = serializers.CharField()
    running_seconds = serializers.SerializerMethodField()

    class Meta:
        model = BuildAgentInstance
        fields = (
            "agent_id", "instance_id", "status", "execution", "task_list", "task_list_title", "wave",
            "wave_number", "task", "task_key", "display_id", "task_title", "attempt", "hostname", "pid",
            "started_at", "last_heartbeat", "running_seconds",
        )  # fmt: skip
        read_only_fields = fields

    def get_running_seconds(self, agent) -> float:
        return round((self.context["now"] - agent.started_at).total_seconds(), 3)


class _Agents:
    serializer_class = ActiveAgentSerializer
    queryset = BuildAgentInstance.objects.none()

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "now": timezone.now()}


class RunAgentsView(_Agents, _RunRecords):
    def records(self, run):
        return selectors.active_agents(ExecutionRun.objects.filter(pk=run.pk))

    @extend_schema(
        summary="A run's running agents, oldest first (seed 000 §7.2)",
        parameters=[RUN_ID],
        responses={200: ActiveAgentSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AgentFilter(django_filters.FilterSet):
    execution = whole_number("execution_id", help_text="a run's id")
    task_list = whole_number("execution__task_list_id", help_text="a task list's id")

    class Meta:
        model = BuildAgentInstance
        fields = ("execution", "task_list")


class AgentsView(_Agents, generics.ListAPIView):
    permission_classes = [Needs]
    filterset_class = AgentFilter

    def get_queryset(self):
        return selectors.active_agents(selectors.visible_runs(self.request.user))

    @extend_schema(
        summary="Running agents of every run you may see, oldest first (seed 000 §7.2)",
        responses={200: ActiveAgentSerializer(many=True), 400: ERRORS[400]},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


# --- audit and event log -----------------------------------------------------------------------


class AuditSerializer(serializers.ModelSerializer):
    key = serializers.CharField(help_text="the step's key in the run")
    previous_status = serializers.CharField(allow_null=True, help_text="null when the task was created")
    new_status = status_field(TaskStatus)

    class Meta:
        model = TaskStatusAudit
        fields = (
            "id", "wave_task", "key", "task", "attempt", "previous_status", "new_status", "changed_at",
            "actor", "reason",
        )  # fmt: skip
        read_only_fields = fields


class AuditFilter(django_filters.FilterSet):
    status = choice(TaskStatus.choices, field_name="new_status", help_text="the status entered")
    key = django_filters.CharFilter(field_name="wave_task__key", max_length=220, help_text="a step key")

    class Meta:
        model = TaskStatusAudit
        fields = ("status", "key")


class RunAuditView(_RunRecords):
    queryset = TaskStatusAudit.objects.none()
    serializer_class = AuditSerializer
    filterset_class = AuditFilter
    pagination_class = by_id_cursor()

    def records(self, run):
        return selectors.run_audit(run)

    @extend_schema(
        summary="A run's task status audit, in order (seed 004 §15)",
        description="Every status change of every task of the run. Cursor pagination: follow `next`.",
        parameters=[RUN_ID],
        responses={200: AuditSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ("id", "type", "payload", "created_at")
        read_only_fields = fields


class EventFilter(django_filters.FilterSet):
    after = whole_number("id", lookup_expr="gt", minimum=0, help_text="the last event id you saw")
    type = django_filters.CharFilter(max_length=40, help_text="an event type, e.g. task.update")

    class Meta:
        model = Event
        fields = ("after", "type")


class RunEventsView(_RunRecords):
    """GET executions/{execution_id}/events/. The same path takes POSTs of external agents'
    events (observability's ingest view): a view serving both can inherit this one."""

    queryset = Event.objects.none()
    serializer_class = RunEventSerializer
    filterset_class = EventFilter
    pagination_class = by_id_cursor()

    def records(self, run):
        return Event.objects.filter(execution=run)

    @extend_schema(
        summary="A run's event log after an id (for clients that poll instead of listening)",
        description="Events with an id above `after`, in id order. Cursor pagination: follow `next`.",
        parameters=[RUN_ID],
        responses={200: RunEventSerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


# --- sessions ----------------------------------------------------------------------------------


class SessionSerializer(serializers.ModelSerializer):
    status = status_field(SessionStatus)

    class Meta:
        model = ConcurrentExecutionSession
        fields = (
            "id", "status", "started_at", "completed_at", "execution_count", "total_wave_count",
            "total_task_count", "total_agent_count", "peak_concurrent_agents", "peak_concurrent_tasks",
        )  # fmt: skip
        read_only_fields = fields


class SessionTaskListSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()


class SessionSummarySerializer(serializers.Serializer):
    """Seed 000 §7.6 over the session's runs you may see (the peaks are the session's)."""

    session_id = serializers.IntegerField()
    status = status_field(SessionStatus)
    started_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    peak_concurrent_agents = serializers.IntegerField()
    peak_concurrent_tasks = serializers.IntegerField()
    task_lists = SessionTaskListSerializer(many=True)
    execution_count = serializers.IntegerField()
    executions = RunCountsSerializer(help_text="runs per status")
    total_waves = serializers.IntegerField()
    total_tasks = serializers.IntegerField(help_text="steps (a for_each step is counted by its instances)")
    total_agents = serializers.IntegerField()
    runs = serializers.URLField(help_text="the session's runs: executions/?session=ID")


class SessionFilter(django_filters.FilterSet):
    status = choice(SessionStatus.choices)

    class Meta:
        model = ConcurrentExecutionSession
        fields = ("status",)


class SessionListView(generics.ListAPIView):
    permission_classes = [Needs]
    queryset = ConcurrentExecutionSession.objects.none()
    serializer_class = SessionSerializer
    filterset_class = SessionFilter

    def get_queryset(self):
        runs = selectors.visible_runs(self.request.user)
        return selectors.visible_sessions(runs).order_by("-started_at", "-id")

    @extend_schema(
        summary="Concurrent execution sessions holding a run you may see, newest first",
        responses={200: SessionSerializer(many=True), 400: ERRORS[400]},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SessionSummaryView(generics.GenericAPIView):
    permission_classes = [Needs]
    serializer_class = SessionSummarySerializer

    @extend_schema(
        summary="A session's summary: task lists, runs, waves, tasks, peaks (seed 000 §7.6)",
        parameters=[path_id("session_id", "the session's id")],
        responses={200: SessionSummarySerializer, **ERRORS},
    )
    def get(self, request, session_id):
        pk = id_from(session_id, "session_id")
        runs = selectors.visible_runs(request.user)
        session = get_or_404(selectors.visible_sessions(runs), pk=pk)
        summary = selectors.session_summary(session, runs)
        summary["runs"] = request.build_absolute_uri(f"{reverse('api:execution-list')}?session={session.pk}")
        return Response(SessionSummarySerializer(summary).data)


# --- start, resume, cancel, approve, reject ----------------------------------------------------


class RunOptionsSerializer(serializers.Serializer):
    max_parallelism = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=services.MAX_PARALLELISM,
        help_text="tasks at once (default: the task list's)",
    )  # fmt: skip
    schedule = serializers.ChoiceField(
        choices=services.SCHEDULES, required=False, help_text="which ready task goes first"
    )
    simulate = serializers.FloatField(
        required=False, allow_null=True, max_value=services.SIMULATE_MAX,
        help_text="sleep this many seconds per estimated minute instead of running the commands",
    )  # fmt: skip

    def validate_simulate(self, value):
        if value is not None and value <= 0:
            raise ValidationError("must be above 0")
        return value

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise ValidationError({name: ["unknown option"] for name in unknown})
        return attrs


class RunStartedSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    url = serializers.URLField(help_text="the run: follow it there")


class NoExecutor(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "could not start an executor"
    default_code = "no_executor"


class Refused(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "refused"


def _started(request, run: ExecutionRun) -> Response:
    """Start the executor of a laid-out run in the background; 202 with where to follow it."""
    try:
        services.run_spawn(run)
    except OSError as exc:
        services.run_request_cancel(run, actor=request.user.get_username())  # nothing will claim it
        raise NoExecutor(f"could not start an executor for run {run.pk}: {exc}")
    url = request.build_absolute_uri(reverse("api:execution-detail", args=[run.pk]))
    return Response(
        {"run_id": run.pk, "url": url}, status=status.HTTP_202_ACCEPTED, headers={"Location": url}
    )


def _options(request) -> dict:
    options = RunOptionsSerializer(data=request.data)
    options.is_valid(raise_exception=True)
    return options.validated_data


class _Write(generics.GenericAPIView):
    permission_classes = [Needs]
    parser_classes = [parsers.JSONParser]


class RunStartView(_Write):
    write_permission = "executions.add_executionrun"
    serializer_class = RunOptionsSerializer

    @extend_schema(
        summary="Start a run of a task list; it executes in the background",
        description="Lays the run out and starts a detached executor (`manage.py execute_run`). "
        "Follow the run at `url`. A run the service refuses (e.g. steps without a command) is 400.",
        parameters=[path_id("task_list_id", "the task list's id")],
        request=RunOptionsSerializer,
        responses={
            202: RunStartedSerializer,
            400: ERRORS[400],
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="no such task list, or not one of your teams'"
            ),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="no executor could be started"),
        },
    )
    def post(self, request, task_list_id):
        task_list = get_or_404(visible_task_lists(request.user), pk=id_from(task_list_id, "task_list_id"))
        options = _options(request)
        try:
            run = services.run_start(task_list, **options)
        except ServiceError as exc:
            raise Refused(str(exc))
        return _started(request, run)


class RunResumeView(_Write):
    write_permission = "executions.change_executionrun"
    serializer_class = RunOptionsSerializer

    @extend_schema(
        summary="Resume a failed or cancelled run: what did not succeed runs again",
        description="Lays out a new run (options not given are the old run's) and starts its "
        "executor in the background. Refused (409, with the reason) for a run that is still "
        "running, succeeded, or was resumed already.",
        parameters=[RUN_ID],
        request=RunOptionsSerializer,
        responses={
            202: RunStartedSerializer,
            **ERRORS,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="the run cannot be resumed: why"),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="no executor could be started"),
        },
    )
    def post(self, request, execution_id):
        run = _run(request, execution_id)
        options = _options(request)
        try:
            new = services.run_resume(run, **options)
        except ServiceError as exc:
            raise Conflict(str(exc))
        return _started(request, new)


class CancelledSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    url = serializers.URLField()
    status = status_field(RunStatus)
    cancel_requested_at = serializers.DateTimeField()


class RunCancelView(_Write):
    write_permission = "executions.change_executionrun"
    serializer_class = CancelledSerializer

    @extend_schema(
        summary="Cancel a run, wherever its executor runs",
        description="Records the request; the executor that owns the run stops launching and "
        "terminates its tasks within a second. A run no executor owns is closed at once.",
        parameters=[RUN_ID],
        request=None,
        responses={
            202: CancelledSerializer,
            **ERRORS,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="the run has already ended"),
        },
    )
    def post(self, request, execution_id):
        run = _run(request, execution_id)
        if not services.run_request_cancel(run, actor=request.user.get_username()):
            raise Conflict(f"run {run.pk} has already ended ({run.status})")
        url = request.build_absolute_uri(reverse("api:execution-detail", args=[run.pk]))
        body = {
            "run_id": run.pk,
            "url": url,
            "status": run.status,
            "cancel_requested_at": run.cancel_requested_at,
        }
        return Response(CancelledSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class StepDecisionSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    key = serializers.CharField()
    status = status_field(TaskStatus)
    approval_decision = serializers.CharField(help_text="approved or rejected")
    approved_by = serializers.CharField()
    approved_at = serializers.DateTimeField()


def _step_key(value: str) -> str:
    if not (0 < len(value) <= 220) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError({"key": ["must be a step key: 1 to 220 characters, no control characters"]})
    return value


class _Decide(_Write):
    write_permission = "executions.change_wavetask"
    serializer_class = StepDecisionSerializer
    approve = True

    def post(self, request, execution_id, key):
        run = _run(request, execution_id)
        key = _step_key(key)
        try:
            wt = services.step_decide(run, key, approve=self.approve, actor=request.user.get_username())
        except NotFound as exc:
            raise exceptions.NotFound(str(exc))
        except ServiceError as exc:
            raise Conflict(str(exc))
        body = {
            "run_id": run.pk, "key": wt.key, "status": wt.status, "approval_decision": wt.approval_decision,
            "approved_by": wt.approved_by, "approved_at": wt.approved_at,
        }  # fmt: skip
        return Response(StepDecisionSerializer(body).data)


def _decide_schema(verb: str, then: str):
    return extend_schema(
        summary=f"{verb.capitalize()} a step waiting at an approval gate",
        description=f"A step waiting at its gate moves on at once ({then}); one the run has not "
        "reached yet keeps the decision. Who and when are recorded.",
        parameters=[
            RUN_ID,
            OpenApiParameter("key", str, OpenApiParameter.PATH, description="the step's key"),
        ],
        request=None,
        responses={
            200: StepDecisionSerializer,
            400: ERRORS[400],
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="no such run or step, or not one of your teams'"
            ),
            409: OpenApiResponse(
                OpenApiTypes.OBJECT, description="not an approval step, decided already, or past its gate"
            ),
        },
    )


class StepApproveView(_Decide):
    approve = True

    @_decide_schema("approve", "queued")
    def post(self, request, execution_id, key):
        return super().post(request, execution_id, key)


class StepRejectView(_Decide):
    approve = False

    @_decide_schema("reject", "failed")
    def post(self, request, execution_id, key):
        return super().post(request, execution_id, key)
