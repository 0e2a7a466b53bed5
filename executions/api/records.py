"""Records of runs: active agents, the audit, the event log, sessions."""

from __future__ import annotations

import django_filters
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response

from config.api import Needs, cursor, get_or_404, id_from, path_id, whole_number
from executions import selectors
from executions.api.common import ERRORS, RUN_ID, PlainList, choice, status_field
from executions.api.runs import RunCountsSerializer, _RunRecords
from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    SessionStatus,
    TaskStatus,
    TaskStatusAudit,
)
from executions.records import iso

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


def _agent_row(r: dict, now) -> dict:
    """ActiveAgentSerializer's output for a row of `_Agents.columns` at `now`."""
    return {
        "agent_id": r["id"], "instance_id": r["instance_id"], "status": r["status"],
        "execution": r["execution_id"], "task_list": r["task_list_id"],
        "task_list_title": r["task_list_title"], "wave": r["wave_id"], "wave_number": r["wave_number"],
        "task": r["task_id"], "task_key": r["task_key"], "display_id": r["display_id"],
        "task_title": r["task_title"], "attempt": r["attempt"], "hostname": r["hostname"], "pid": r["pid"],
        "started_at": iso(r["started_at"]), "last_heartbeat": iso(r["last_heartbeat"]),
        "running_seconds": round((now - r["started_at"]).total_seconds(), 3),
    }  # fmt: skip


class _Agents(PlainList):
    serializer_class = ActiveAgentSerializer
    queryset = BuildAgentInstance.objects.none()
    columns = (
        "id", "instance_id", "status", "execution_id", "task_list_id", "task_list_title", "wave_id", "wave_number",
        "task_id", "task_key", "display_id", "task_title", "attempt", "hostname", "pid", "started_at",
        "last_heartbeat",
    )  # fmt: skip

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "now": timezone.now()}

    def rows(self, page):
        now = timezone.now()
        return [_agent_row(r, now) for r in page]


class RunAgentsView(_Agents, _RunRecords):
    def records(self, run):
        return selectors.visible_active_agents(self.request.user, run)

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
        return selectors.visible_active_agents(self.request.user)

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


def _audit_row(r: dict) -> dict:
    """AuditSerializer's output for a row of `RunAuditView.columns`."""
    return {
        "id": r["id"], "wave_task": r["wave_task_id"], "key": r["key"], "task": r["task_id"],
        "attempt": r["attempt"], "previous_status": r["previous_status"], "new_status": r["new_status"],
        "changed_at": iso(r["changed_at"]), "actor": r["actor"], "reason": r["reason"],
    }  # fmt: skip


class RunAuditView(PlainList, _RunRecords):
    queryset = TaskStatusAudit.objects.none()
    serializer_class = AuditSerializer
    filterset_class = AuditFilter
    pagination_class = cursor("id")
    columns = (
        "id", "wave_task_id", "key", "task_id", "attempt", "previous_status", "new_status", "changed_at", "actor",
        "reason",
    )  # fmt: skip

    def records(self, run):
        return selectors.run_audit(run)

    def rows(self, page):
        return [_audit_row(r) for r in page]

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


class RunEventsView(PlainList, _RunRecords):
    """GET executions/{execution_id}/events/. The same path takes POSTs of external agents'
    events (observability's ingest view): a view serving both can inherit this one."""

    queryset = Event.objects.none()
    serializer_class = RunEventSerializer
    filterset_class = EventFilter
    pagination_class = cursor("id")
    columns = ("id", "type", "payload", "created_at")

    def records(self, run):
        return Event.objects.filter(execution=run)

    def rows(self, page):
        return [
            {"id": r["id"], "type": r["type"], "payload": r["payload"], "created_at": iso(r["created_at"])}
            for r in page
        ]

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


class SessionListView(PlainList, generics.ListAPIView):
    permission_classes = [Needs]
    queryset = ConcurrentExecutionSession.objects.none()
    serializer_class = SessionSerializer
    filterset_class = SessionFilter
    columns = SessionSerializer.Meta.fields  # every one a column, shown as read but for the times

    def get_queryset(self):
        runs = selectors.visible_runs(self.request.user)
        return selectors.visible_sessions(runs).order_by("-started_at", "-id")

    def rows(self, page):
        return [
            {**r, "started_at": iso(r["started_at"]), "completed_at": iso(r["completed_at"])} for r in page
        ]

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
