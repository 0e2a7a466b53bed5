"""Runs: list and detail, their tasks, waves and timeline."""

from __future__ import annotations

import django_filters
from django.http import Http404
from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.response import Response

from config.api import Needs, get_or_404, id_from, path_id, whole_number
from executions import selectors
from executions.api.common import ERRORS, RUN_ID, PlainList, _seconds, choice, status_field
from executions.models import (
    ExecutionRun,
    ParallelExecutionWave,
    RunStatus,
    TaskStatus,
    WaveStatus,
    WaveTask,
)
from executions.records import iso

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
        # The list's address once per serializer, not a reverse() per row (a tenth of a page).
        if not hasattr(self, "_runs_url"):
            self._runs_url = self.context["request"].build_absolute_uri(reverse("api:execution-list"))
        return f"{self._runs_url}{run.pk}/"

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


def _with_list(runs):
    """Runs with their task list, less its `definition`: the normalised workflow the list was
    imported from (about 0.5 KB a step) is never shown here, and reading and decoding it for
    every run of a page cost more than the rest of the page."""
    return runs.select_related("task_list").defer("task_list__definition")


def _run(request, value, name: str = "execution_id") -> ExecutionRun:
    """The run a path names, among those the user may see: 400 naming `name` for a bad id."""
    pk = id_from(value, name)
    return get_or_404(_with_list(selectors.visible_runs(request.user)), pk=pk)


RUN_COLUMNS = (
    "id", "task_list_id", "task_list__title", "session_id", "status", "backend", "schedule", "max_parallelism",
    "simulate_scale", "attempt", "resumed_from_id", "resumed_by_id", "created_at", "started_at", "completed_at",
    "wall_seconds", "task_seconds", "gate_wait_seconds", "peak_concurrency", "cancel_requested_at",
    "cancel_requested_by", "error",
)  # fmt: skip


def run_row(r: dict, runs_url: str) -> dict:
    """RunSerializer's output for a row of RUN_COLUMNS; `runs_url` is the run list's address."""
    return {
        "id": r["id"], "url": f"{runs_url}{r['id']}/", "task_list": r["task_list_id"],
        "task_list_name": r["task_list__title"], "session": r["session_id"], "status": r["status"],
        "backend": r["backend"], "schedule": r["schedule"], "max_parallelism": r["max_parallelism"],
        "simulate_scale": r["simulate_scale"], "attempt": r["attempt"], "resumed_from": r["resumed_from_id"],
        "resumed_by": r["resumed_by_id"], "created_at": iso(r["created_at"]), "started_at": iso(r["started_at"]),
        "completed_at": iso(r["completed_at"]), "wall_seconds": r["wall_seconds"],
        "task_seconds": r["task_seconds"], "gate_wait_seconds": r["gate_wait_seconds"],
        "speedup": selectors.speedup_of(r["wall_seconds"], r["task_seconds"], r["gate_wait_seconds"]),
        "peak_concurrency": r["peak_concurrency"], "cancel_requested": r["cancel_requested_at"] is not None,
        "cancel_requested_at": iso(r["cancel_requested_at"]), "cancel_requested_by": r["cancel_requested_by"],
        "error": r["error"],
    }  # fmt: skip


class RunListView(PlainList, generics.ListAPIView):
    permission_classes = [Needs]
    queryset = ExecutionRun.objects.none()
    serializer_class = RunSerializer
    filterset_class = RunFilter
    columns = RUN_COLUMNS

    def get_queryset(self):
        return _with_list(selectors.visible_runs(self.request.user)).order_by("-id")

    def rows(self, page):
        runs_url = self.request.build_absolute_uri(reverse("api:execution-list"))
        return [run_row(r, runs_url) for r in page]

    @extend_schema(
        summary="Runs of your teams' task lists, newest first",
        responses={200: RunSerializer(many=True), 400: ERRORS[400]},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


DETAIL_COLUMNS = (*RUN_COLUMNS, "executor_hostname", "executor_pid", "executor_heartbeat")


def run_detail(r: dict, steps: dict[str, int], absolute) -> dict:
    """RunDetailSerializer's output for a row of DETAIL_COLUMNS and the run's steps per status;
    `absolute` makes a path an address (the request's build_absolute_uri)."""
    total, done = sum(steps.values()), steps[TaskStatus.SUCCEEDED] + steps[TaskStatus.SKIPPED]
    return {
        **run_row(r, absolute(reverse("api:execution-list"))),
        "executor_hostname": r["executor_hostname"], "executor_pid": r["executor_pid"],
        "executor_heartbeat": iso(r["executor_heartbeat"]), "steps": steps, "total": total, "done": done,
        "percent": 100 * done // total if total else 0,
        "links": {name: absolute(reverse(f"api:execution-{name}", args=[r["id"]])) for name in LINKS},
    }  # fmt: skip


class RunDetailView(generics.GenericAPIView):
    permission_classes = [Needs]
    serializer_class = RunDetailSerializer

    @extend_schema(
        summary="A run: its fields, speedup and steps per status",
        parameters=[path_id("id", "the run's id")],
        responses={200: RunDetailSerializer, **ERRORS},
    )
    def get(self, request, id):
        pk = id_from(id, "id")
        found = selectors.visible_runs(request.user).filter(pk=pk).values(*DETAIL_COLUMNS).first()
        if found is None:
            raise Http404("not found")
        return Response(run_detail(found, selectors.run_step_counts(pk), request.build_absolute_uri))


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


def _task_row(r: dict) -> dict:
    """RunTaskSerializer's output for a row of `RunTasksView.columns`."""
    return {
        "id": r["id"], "key": r["key"], "title": r["title"], "kind": r["kind"], "wave": r["wave_id"],
        "wave_number": r["wave_number"], "parent": r["parent_key"], "item_index": r["item_index"],
        "item": r["item"], "status": r["status"], "attempt": r["attempt"],
        "started_at": iso(r["started_at"]), "completed_at": iso(r["completed_at"]),
        "duration_seconds": _seconds(r["started_at"], r["completed_at"]), "exit_code": r["exit_code"],
        "outputs": r["outputs"], "error": r["error"], "approval_decision": r["approval_decision"],
        "approved_by": r["approved_by"], "approved_at": iso(r["approved_at"]),
    }  # fmt: skip


class RunTasksView(PlainList, _RunRecords):
    queryset = WaveTask.objects.none()
    serializer_class = RunTaskSerializer
    filterset_class = RunTaskFilter
    columns = (
        "id", "key", "title", "kind", "wave_id", "wave_number", "parent_key", "item_index", "item", "status",
        "attempt", "started_at", "completed_at", "exit_code", "outputs", "error", "approval_decision",
        "approved_by", "approved_at",
    )  # fmt: skip

    def records(self, run):
        return selectors.run_wave_tasks(run)

    def rows(self, page):
        return [_task_row(r) for r in page]

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


def _wave_row(r: dict, steps: dict[str, int], run: ExecutionRun) -> dict:
    """RunWaveSerializer's output for a row of `RunWavesView.columns`, the wave's steps per
    status and its run."""
    counters = {name: steps.get(status, 0) for status, name in selectors.WAVE_COUNTERS.items()}
    task_count, completed = sum(steps.values()), counters["completed_count"]
    done, judged = completed + counters["skipped_count"], completed + counters["failed_count"]
    return {
        "id": r["id"], "execution": r["execution_id"], "wave_number": r["wave_number"], "status": r["status"],
        "started_at": iso(r["started_at"]), "completed_at": iso(r["completed_at"]),
        "duration_seconds": _seconds(r["started_at"], r["completed_at"]), "max_parallelism": r["max_parallelism"],
        "task_count": task_count, **counters, "done": done, "percent": 100 * done // task_count if task_count else 0,
        "pass_rate": round(completed / judged, 4) if judged else None, "agent_count": r["agent_count"],
        "execution_status": run.status, "task_list_title": run.task_list.title,
    }  # fmt: skip


class RunWavesView(PlainList, _RunRecords):
    queryset = ParallelExecutionWave.objects.none()
    serializer_class = RunWaveSerializer
    filterset_class = RunWaveFilter
    columns = (
        "id", "execution_id", "wave_number", "status", "started_at", "completed_at", "max_parallelism", "agent_count",
    )  # fmt: skip

    def records(self, run):
        return selectors.run_waves(run)

    def rows(self, page):
        steps = selectors.wave_step_counts([r["id"] for r in page])
        return [_wave_row(r, steps[r["id"]], self.run) for r in page]

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


def _timeline_row(r: dict) -> dict:
    """TimelineEntrySerializer's output for a row of `RunTimelineView.columns`."""
    return {
        "id": r["id"], "key": r["key"], "title": r["title"], "wave_number": r["wave_number"],
        "parent": r["parent_key"], "status": r["status"], "attempt": r["attempt"],
        "queued_at": iso(r["queued_at"]), "started_at": iso(r["started_at"]),
        "completed_at": iso(r["completed_at"]),
        "duration_seconds": _seconds(r["started_at"], r["completed_at"]),
    }  # fmt: skip


class RunTimelineView(PlainList, _RunRecords):
    queryset = WaveTask.objects.none()
    serializer_class = TimelineEntrySerializer
    columns = (
        "id", "key", "title", "wave_number", "parent_key", "status", "attempt", "queued_at", "started_at",
        "completed_at",
    )  # fmt: skip

    def records(self, run):
        return selectors.run_timeline(run)

    def rows(self, page):
        return [_timeline_row(r) for r in page]

    @extend_schema(
        summary="A run's timeline: each task's queue, start, end and duration, by start (seed 000 §7.5)",
        description="For a Gantt chart of the run; tasks that never started come last. The "
        "per-wave figures of §7.5 (task count, completed, pass rate, agents) are in `waves/`.",
        parameters=[RUN_ID],
        responses={200: TimelineEntrySerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
