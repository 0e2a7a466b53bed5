"""Admin for runs and what changes while they go: display, drill-down links, small actions.

Nothing here writes a status: the pages are read-only (statuses change only in
executions.services), and the actions call services (`step_decide`, `run_request_cancel`).
Links go to changelists by URL name (`admin:<app>_<model>_changelist`) with a
`?<fk>__id__exact=N` filter. This module links only to pages of this app: the apps that
depend on it (observability) extend these pages with their own columns and links in their
own admin modules, so nothing here names or reads them.
"""

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from executions import selectors, services
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    Event,
    ExecutionRun,
    ParallelExecutionWave,
    TaskStatus,
    TaskStatusAudit,
    WaveTask,
)
from waves import admin as waves_admin
from waves.models import Task, TaskList

# --- shared helpers (observability/admin.py uses them too) ------------------------------------


class EstimatedCountPaginator(Paginator):
    """A paginator for tables of millions of rows (transcripts, tool uses, audit, events).

    COUNT(*) on PostgreSQL reads the whole table. Unfiltered, the planner's estimate
    (pg_class.reltuples) is close enough to number the pages; filtered (or on SQLite, or
    when the table has never been analysed), rows are counted up to CAP and no further.
    """

    CAP = 10_000

    @cached_property
    def count(self):
        qs = self.object_list
        query = getattr(qs, "query", None)
        if query is None:
            return len(qs)
        connection = connections[qs.db]
        if connection.vendor == "postgresql" and not query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                    [qs.model._meta.db_table],
                )
                row = cursor.fetchone()
            if row and row[0] is not None and row[0] > self.CAP:
                return int(row[0])
        return qs.order_by()[: self.CAP + 1].count()


class ReadOnlyAdmin(waves_admin.TeamScoped, admin.ModelAdmin):
    """A record: viewable, never added, changed or deleted from the admin; a team admin
    sees only their teams' (see waves.admin.TeamScoped)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class LargeTableAdmin(ReadOnlyAdmin):
    """A read-only record table that grows without bound."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def changelist_url(label: str, **filters) -> str:
    """URL of an admin changelist (`app_model`) filtered by `filters`, or "" if not registered."""
    try:
        url = reverse(f"admin:{label}_changelist")
    except NoReverseMatch:
        return ""
    return f"{url}?{urlencode(filters)}" if filters else url


def changelist_link(label: str, text, **filters):
    if None in filters.values():  # an object not saved yet (the add page)
        return "-"
    url = changelist_url(label, **filters)
    return format_html('<a href="{}">{}</a>', url, text) if url else text


def change_link(label: str, pk, text):
    if pk is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse(f"admin:{label}_change", args=[pk]), text)


def run_link(execution_id):
    """A link to a run that needs only its id (no query for the task list's title)."""
    return change_link("executions_executionrun", execution_id, f"Run {execution_id}")


class RecordLinks:
    """Columns for rows that point at a run, a wave and a wave task (here and in observability)."""

    @admin.display(description="run", ordering="execution_id")
    def run(self, obj):
        return run_link(obj.execution_id)

    @admin.display(description="wave", ordering="wave__wave_number")
    def wave_number(self, obj):
        if obj.wave_id is None:
            return "-"
        return change_link("executions_parallelexecutionwave", obj.wave_id, obj.wave.wave_number)

    @admin.display(description="task", ordering="wave_task__key")
    def wave_task_key(self, obj):
        if obj.wave_task_id is None:
            return "-"
        return change_link("executions_wavetask", obj.wave_task_id, obj.wave_task.key)


def count_of(model, fk: str):
    """A correlated COUNT of `model` rows pointing at the outer row through `fk` (indexed)."""
    rows = model.objects.filter(**{fk: OuterRef("pk")}).order_by().values(fk)
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0)


def seconds(value):
    return "-" if value is None else f"{value:.1f}s"


def between(start, end):
    return "-" if not (start and end) else seconds((end - start).total_seconds())


def decide_steps(modeladmin, request, wave_tasks, *, approve: bool) -> None:
    """Approve or reject each wave task through the service and report every outcome."""
    actor = request.user.get_username()
    done = []
    for wt in wave_tasks:
        try:
            services.step_decide(wt.execution, wt.key, approve=approve, actor=actor)
        except services.ServiceError as exc:
            modeladmin.message_user(request, str(exc), messages.ERROR)
        else:
            done.append(f"{wt.key} (run {wt.execution_id})")
    if done:
        verb = "Approved" if approve else "Rejected"
        modeladmin.message_user(request, f"{verb} {len(done)} step(s): {', '.join(done)}.", messages.SUCCESS)


class DecidePermission:
    """Approve, reject and cancel need the right to change runs."""

    def has_decide_permission(self, request):
        return request.user.has_perm("executions.change_executionrun")


# --- sessions and runs -------------------------------------------------------------------------


class RunInline(ReadOnlyInline):
    model = ExecutionRun
    fields = ("task_list", "status", "started_at", "completed_at", "wall_seconds", "peak_concurrency")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task_list")


@admin.register(ConcurrentExecutionSession)
class ConcurrentExecutionSessionAdmin(ReadOnlyAdmin):
    team_path = "runs__task_list"  # a session shows when it holds a run of the user's teams
    to_many = ("runs",)
    list_display = (
        "id",
        "started_at",
        "completed_at",
        "status",
        "runs",
        "total_wave_count",
        "total_task_count",
        "total_agent_count",
        "peak_concurrent_agents",
        "peak_concurrent_tasks",
    )
    list_filter = ("status",)
    date_hierarchy = "started_at"
    ordering = ("-started_at",)
    inlines = [RunInline]

    @admin.display(description="runs", ordering="execution_count")
    def runs(self, obj):
        return changelist_link("executions_executionrun", obj.execution_count, session__id__exact=obj.pk)


class WaveInline(ReadOnlyInline):
    model = ParallelExecutionWave
    fields = ("wave_number", "status", "started_at", "completed_at", "max_parallelism", "tasks")
    readonly_fields = fields
    ordering = ("wave_number",)

    @admin.display(description="tasks")
    def tasks(self, obj):
        return changelist_link("executions_wavetask", "tasks", wave__id__exact=obj.pk)


@admin.register(ExecutionRun)
class ExecutionRunAdmin(DecidePermission, ReadOnlyAdmin):
    team_path = "task_list"
    list_display = (
        "id",
        "task_list",
        "status",
        "backend",
        "started_at",
        "completed_at",
        "wall",
        "speedup",
        "waves_link",
        "tasks_link",
        "session_link",
        "cancel_requested_by",
    )
    list_filter = ("status", "backend", "task_list")
    list_select_related = ("task_list",)
    search_fields = ("=id", "task_list__title", "executor_hostname", "error")
    date_hierarchy = "started_at"
    ordering = ("-id",)
    inlines = [WaveInline]
    readonly_fields = ("records",)
    actions = ["approve_waiting_steps", "reject_waiting_steps", "request_cancel", "resume_runs"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(wave_count=count_of(ParallelExecutionWave, "execution"))
            .annotate(task_count=count_of(WaveTask, "execution"))
        )

    @admin.display(description="wall", ordering="wall_seconds")
    def wall(self, obj):
        return seconds(obj.wall_seconds)

    @admin.display(description="speedup")
    def speedup(self, obj):
        # Task time over the time the run could work: waiting at approval gates is not counted.
        value = selectors.speedup(obj)
        return "-" if value is None else f"{value:.2f}x"

    @admin.display(description="waves", ordering="wave_count")
    def waves_link(self, obj):
        return changelist_link(
            "executions_parallelexecutionwave", obj.wave_count, execution__id__exact=obj.pk
        )

    @admin.display(description="tasks", ordering="task_count")
    def tasks_link(self, obj):
        return changelist_link("executions_wavetask", obj.task_count, execution__id__exact=obj.pk)

    @admin.display(description="session", ordering="session_id")
    def session_link(self, obj):
        return change_link("executions_concurrentexecutionsession", obj.session_id, obj.session_id)

    # (changelist `app_model`, text) filtered by the run; other apps' admins extend it.
    record_links = (
        ("executions_parallelexecutionwave", "waves"),
        ("executions_wavetask", "tasks"),
        ("executions_buildagentinstance", "agents"),
        ("executions_taskstatusaudit", "status audit"),
        ("executions_event", "events"),
    )

    @admin.display(description="records of this run")
    def records(self, obj):
        rows = [
            (changelist_url(label, execution__id__exact=obj.pk), text) for label, text in self.record_links
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', [r for r in rows if r[0]])

    @admin.action(description="Approve waiting steps of selected runs", permissions=["decide"])
    def approve_waiting_steps(self, request, queryset):
        return self._decide(request, queryset, approve=True)

    @admin.action(description="Reject waiting steps of selected runs", permissions=["decide"])
    def reject_waiting_steps(self, request, queryset):
        return self._decide(request, queryset, approve=False)

    def _decide(self, request, queryset, *, approve):
        waiting = list(
            WaveTask.objects.filter(execution__in=queryset, status=TaskStatus.WAITING_APPROVAL)
            .select_related("execution")
            .order_by("execution_id", "id")
        )
        if not waiting:
            self.message_user(
                request, "No step of the selected runs is waiting for approval.", messages.WARNING
            )
        decide_steps(self, request, waiting, approve=approve)
        if len(queryset) == 1:
            return live_view(queryset[0])

    @admin.action(description="Request cancel of selected runs", permissions=["decide"])
    def request_cancel(self, request, queryset):
        actor = request.user.get_username()
        for run in queryset.order_by("id"):
            try:
                accepted = services.run_request_cancel(run, actor=actor)
            except services.ServiceError as exc:
                self.message_user(request, f"Run {run.pk}: {exc}", messages.ERROR)
                continue
            if accepted:
                self.message_user(request, f"Run {run.pk}: cancel requested.", messages.SUCCESS)
            else:
                self.message_user(
                    request, f"Run {run.pk} had already ended ({run.status}).", messages.WARNING
                )
        if len(queryset) == 1:
            return live_view(queryset[0])

    @admin.action(description="Resume selected runs (re-run what did not succeed)", permissions=["decide"])
    def resume_runs(self, request, queryset):
        return start_each(self, request, queryset.order_by("id"), services.run_resume, lambda run: f"Run {run.pk}")


def live_view(run: ExecutionRun) -> HttpResponseRedirect:
    """The run's live view in the admin's dashboards."""
    return HttpResponseRedirect(reverse("admin:dashboard_run", args=[run.pk]))


def start_each(modeladmin, request, items, lay_out, name) -> HttpResponseRedirect | None:
    """For each item, lay out a run with the `lay_out` service, start its executor, and say
    what happened (a refusal says why). One run started: on to its live view."""
    started = []
    for item in items:
        try:
            run = lay_out(item)
            services.run_spawn(run)
        except services.ServiceError as exc:
            modeladmin.message_user(request, f"{name(item)}: {exc}", messages.ERROR)
            continue
        started.append(run)
        modeladmin.message_user(request, f"{name(item)}: run {run.pk} started.", messages.SUCCESS)
    return live_view(started[0]) if len(started) == 1 else None


# --- waves, wave tasks, agents -------------------------------------------------------------------


class WaveTaskInline(ReadOnlyInline):
    model = WaveTask
    fk_name = "wave"
    fields = ("key", "task", "status", "attempt", "started_at", "completed_at", "exit_code")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("task")


@admin.register(ParallelExecutionWave)
class ParallelExecutionWaveAdmin(RecordLinks, ReadOnlyAdmin):
    list_display = (
        "id",
        "run",
        "wave_number",
        "status",
        "started_at",
        "completed_at",
        "duration",
        "tasks_link",
        "agents_link",
    )
    list_filter = ("status",)
    search_fields = ("=execution__id",)
    date_hierarchy = "started_at"
    ordering = ("-execution_id", "wave_number")
    inlines = [WaveTaskInline]
    readonly_fields = ("run", "tasks_link", "agents_link")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(task_count=count_of(WaveTask, "wave"))
            .annotate(agent_count=count_of(BuildAgentInstance, "wave"))
        )

    @admin.display(description="duration")
    def duration(self, obj):
        return between(obj.started_at, obj.completed_at)

    @admin.display(description="tasks", ordering="task_count")
    def tasks_link(self, obj):
        return changelist_link("executions_wavetask", obj.task_count, wave__id__exact=obj.pk)

    @admin.display(description="agents", ordering="agent_count")
    def agents_link(self, obj):
        return changelist_link("executions_buildagentinstance", obj.agent_count, wave__id__exact=obj.pk)


class AuditInline(ReadOnlyInline):
    model = TaskStatusAudit
    fields = ("changed_at", "attempt", "previous_status", "new_status", "actor", "reason")
    readonly_fields = fields
    show_change_link = False
    ordering = ("id",)


class ApprovalFilter(admin.SimpleListFilter):
    title = "approval"
    parameter_name = "approval"

    def lookups(self, request, model_admin):
        return [("waiting", "Waiting"), ("approved", "Approved"), ("rejected", "Rejected")]

    def queryset(self, request, queryset):
        if self.value() == "waiting":
            return queryset.filter(status=TaskStatus.WAITING_APPROVAL)
        if self.value() in ("approved", "rejected"):
            return queryset.filter(approval_decision=self.value())
        return queryset


@admin.register(WaveTask)
class WaveTaskAdmin(DecidePermission, RecordLinks, ReadOnlyAdmin):
    list_display = (
        "key",
        "run",
        "wave_number",
        "title",
        "status",
        "attempt",
        "started_at",
        "completed_at",
        "duration",
        "exit_code",
        "approval",
        "agents_link",
    )
    list_filter = ("status", ApprovalFilter)
    list_select_related = ("wave", "task")
    show_full_result_count = False
    search_fields = ("key", "task__title", "task__display_id", "=execution__id")
    ordering = ("-execution_id", "wave__wave_number", "id")
    inlines = [AuditInline]
    readonly_fields = ("run", "agents_link")
    actions = ["approve_steps", "reject_steps"]

    @admin.display(description="title", ordering="task__title")
    def title(self, obj):
        return obj.task.title or obj.task.display_id

    @admin.display(description="duration")
    def duration(self, obj):
        return between(obj.started_at, obj.completed_at)

    @admin.display(description="approval", ordering="approval_decision")
    def approval(self, obj):
        if not obj.approval_decision:
            return "waiting" if obj.status == TaskStatus.WAITING_APPROVAL else "-"
        return f"{obj.approval_decision} by {obj.approved_by}"

    @admin.display(description="agents")
    def agents_link(self, obj):
        return changelist_link("executions_buildagentinstance", "agents", wave_task__id__exact=obj.pk)

    @admin.action(description="Approve selected waiting steps", permissions=["decide"])
    def approve_steps(self, request, queryset):
        decide_steps(self, request, queryset.select_related("execution").order_by("id"), approve=True)

    @admin.action(description="Reject selected waiting steps", permissions=["decide"])
    def reject_steps(self, request, queryset):
        decide_steps(self, request, queryset.select_related("execution").order_by("id"), approve=False)


@admin.register(BuildAgentInstance)
class BuildAgentInstanceAdmin(RecordLinks, LargeTableAdmin):
    list_display = (
        "instance_id",
        "status",
        "run",
        "wave_number",
        "wave_task_key",
        "attempt",
        "started_at",
        "last_heartbeat",
        "completed_at",
        "hostname",
        "pid",
        "exit_code",
    )
    list_filter = ("status",)
    list_select_related = ("wave", "wave_task")
    search_fields = ("=instance_id", "hostname", "wave_task__key")
    ordering = ("-started_at",)


# --- records: the status audit and the event log ---------------------------------------------


@admin.register(TaskStatusAudit)
class TaskStatusAuditAdmin(RecordLinks, LargeTableAdmin):
    list_display = (
        "id",
        "changed_at",
        "run",
        "wave_task_key",
        "attempt",
        "previous_status",
        "new_status",
        "actor",
        "reason",
    )
    list_filter = ("new_status",)
    list_select_related = ("wave_task",)
    search_fields = ("wave_task__key", "=actor")
    # No date_hierarchy: its year/month links scan the whole table. Filter by run instead.
    ordering = ("-id",)


class EventTypeFilter(admin.SimpleListFilter):
    """Fixed choices: a plain list_filter on `type` would SELECT DISTINCT over the whole log."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request, model_admin):
        types = ("run.update", "wave.update", "task.update", "agent.update", "stats.update")
        return [(t, t) for t in types]

    def queryset(self, request, queryset):
        return queryset.filter(type=self.value()) if self.value() else queryset


@admin.register(Event)
class EventAdmin(RecordLinks, LargeTableAdmin):
    list_display = ("id", "created_at", "type", "run", "summary")
    list_filter = (EventTypeFilter,)
    ordering = ("-id",)

    @admin.display(description="payload")
    def summary(self, obj):
        payload = obj.payload if isinstance(obj.payload, dict) else {}
        keys = ("key", "instance_id", "wave_number", "status", "previous_status", "actor", "reason")
        return ", ".join(f"{k}={payload[k]}" for k in keys if payload.get(k) not in (None, ""))


# --- waves' pages, with this app's columns ---------------------------------------------------


class TaskListAdmin(waves_admin.TaskListAdmin):
    actions = ["start_runs"]

    def has_start_permission(self, request):
        return request.user.has_perm("executions.add_executionrun")

    @admin.action(description="Start a run of selected task lists", permissions=["start"])
    def start_runs(self, request, queryset):
        return start_each(self, request, queryset.order_by("id"), services.run_start, str)

    list_display = (
        *waves_admin.TaskListAdmin.list_display[:-2],
        "runs",
        *waves_admin.TaskListAdmin.list_display[-2:],
    )
    readonly_fields = (*waves_admin.TaskListAdmin.readonly_fields, "runs")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(run_count=count_of(ExecutionRun, "task_list"))

    @admin.display(description="runs", ordering="run_count")
    def runs(self, obj):
        if obj.pk is None:
            return "-"
        return changelist_link(
            "executions_executionrun", getattr(obj, "run_count", "runs"), task_list__id__exact=obj.pk
        )


class TaskAdmin(waves_admin.TaskAdmin):
    list_display = (*waves_admin.TaskAdmin.list_display, "runs")

    @admin.display(description="in runs")
    def runs(self, obj):
        return changelist_link("executions_wavetask", "wave tasks", task__id__exact=obj.pk)


for _model, _admin in ((TaskList, TaskListAdmin), (Task, TaskAdmin)):
    admin.site.unregister(_model)
    admin.site.register(_model, _admin)
