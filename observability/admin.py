"""Admin for what runs leave behind. Every page here is a read-only record; the big tables
(transcripts, tool uses) page with an estimated count (see EstimatedCountPaginator).

This app depends on `executions`, not the reverse: the pages of runs, waves, wave tasks and
agents are registered by executions' admin, and this module replaces each with a subclass
that adds this app's columns (a wave's statistics, links to transcripts, tool uses,
assertions and skill traces). Django imports this module after executions' admin (this
module imports it first anyway), so the replacement always finds the original registered.
"""

import json

from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.defaultfilters import truncatechars
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from executions import admin as executions_admin
from executions.admin import (
    LargeTableAdmin,
    ReadOnlyAdmin,
    RecordLinks,
    change_link,
    changelist_link,
    seconds,
)
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    ParallelExecutionWave,
    WaveTask,
)
from observability import dashboards
from observability.models import (
    ActiveAgent,
    AssertionResult,
    SkillTrace,
    ToolUse,
    TranscriptEntry,
    WaveProgress,
    WaveStatistics,
)
from waves.management.commands.plan_tasklist import render_mermaid
from waves.models import TaskList
from waves.selectors import task_list_plan


@admin.register(TranscriptEntry)
class TranscriptEntryAdmin(RecordLinks, LargeTableAdmin):
    list_display = (
        "sequence",
        "created_at",
        "run",
        "wave_number",
        "wave_task_key",
        "instance_id",
        "entry_type",
        "text",
    )
    list_filter = ("entry_type",)
    list_select_related = ("wave", "wave_task")
    search_fields = ("content", "=instance_id")
    # A wave's transcript reads in sequence order (index on wave, sequence).
    ordering = ("-execution_id", "sequence")

    @admin.display(description="content")
    def text(self, obj):
        return truncatechars(obj.content, 160)


@admin.register(ToolUse)
class ToolUseAdmin(RecordLinks, LargeTableAdmin):
    list_display = (
        "start_time",
        "tool_name",
        "run",
        "wave_number",
        "wave_task_key",
        "is_error",
        "is_blocked",
        "duration_ms",
    )
    list_filter = ("is_error", "is_blocked")
    list_select_related = ("wave", "wave_task")
    search_fields = ("tool_name",)
    ordering = ("-start_time", "-id")


@admin.register(AssertionResult)
class AssertionResultAdmin(RecordLinks, LargeTableAdmin):
    list_display = ("created_at", "name", "passed", "run", "wave_number", "wave_task_key", "short_message")
    list_filter = ("passed",)
    list_select_related = ("wave", "wave_task")
    search_fields = ("name", "message")
    ordering = ("-created_at", "-id")

    @admin.display(description="message")
    def short_message(self, obj):
        return truncatechars(obj.message, 120)


@admin.register(SkillTrace)
class SkillTraceAdmin(RecordLinks, LargeTableAdmin):
    list_display = ("started_at", "skill_name", "duration_ms", "run", "wave_number", "wave_task_key")
    list_select_related = ("wave", "wave_task")
    search_fields = ("skill_name",)
    ordering = ("-started_at", "-id")


@admin.register(WaveStatistics)
class WaveStatisticsAdmin(RecordLinks, ReadOnlyAdmin):
    list_display = (
        "wave",
        "run",
        "task_count",
        "completed_count",
        "failed_count",
        "skipped_count",
        "rate",
        "transcript_entry_count",
        "tool_use_count",
        "tool_error_count",
        "assertion_count",
        "duration",
        "updated_at",
    )
    list_select_related = ("wave",)
    search_fields = ("=execution__id",)
    date_hierarchy = "started_at"
    ordering = ("-execution_id", "wave__wave_number")

    @admin.display(description="wave", ordering="wave__wave_number")
    def wave(self, obj):
        return change_link("executions_parallelexecutionwave", obj.wave_id, f"Wave {obj.wave.wave_number}")

    @admin.display(description="pass rate", ordering="pass_rate")
    def rate(self, obj):
        return "-" if obj.pass_rate is None else f"{obj.pass_rate:.0%}"

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj):
        return "-" if obj.duration_ms is None else seconds(obj.duration_ms / 1000)


@admin.register(WaveProgress)
class WaveProgressAdmin(RecordLinks, ReadOnlyAdmin):
    """Progress per wave, as the v_wave_progress database view returns it."""

    list_display = (
        "wave_number",
        "run",
        "task_list_title",
        "status",
        "execution_status",
        "started_at",
        "completed_at",
        "tasks",
        "completed_count",
        "failed_count",
        "pass_rate",
        "tool_use_count",
        "assertion_count",
        "assertion_pass_count",
        "duration_ms",
    )
    list_filter = ("status",)
    search_fields = ("task_list_title", "=execution__id")
    ordering = ("-execution_id", "wave_number")

    @admin.display(description="tasks", ordering="task_count")
    def tasks(self, obj):
        return changelist_link("executions_wavetask", obj.task_count, wave__id__exact=obj.pk)


@admin.register(ActiveAgent)
class ActiveAgentAdmin(RecordLinks, ReadOnlyAdmin):
    """Agents running now, as the v_active_agents database view returns it."""

    list_display = (
        "instance_id",
        "task_title",
        "display_id",
        "task_list_title",
        "run",
        "wave_number",
        "started_at",
        "last_heartbeat",
        "running_seconds",
        "transcript",
    )
    search_fields = ("instance_id", "task_title", "task_list_title")
    ordering = ("started_at",)

    @admin.display(description="transcript")
    def transcript(self, obj):
        return changelist_link("observability_transcriptentry", "transcript", agent__id__exact=obj.pk)


# --- executions' pages, with this app's columns ----------------------------------------------


def _replace(model, model_admin) -> None:
    admin.site.unregister(model)
    admin.site.register(model, model_admin)


def transcript_of(text, **filters):
    return changelist_link("observability_transcriptentry", text, **filters)


def dashboard_link(name, text, *args, query=""):
    return format_html('<a href="{}{}">{}</a>', reverse(f"admin:{name}", args=args), query, text)


class RunAdmin(executions_admin.ExecutionRunAdmin):
    record_links = (
        *executions_admin.ExecutionRunAdmin.record_links,
        ("observability_transcriptentry", "transcript"),
        ("observability_tooluse", "tool uses"),
        ("observability_assertionresult", "assertions"),
        ("observability_skilltrace", "skill traces"),
    )
    list_display = (*executions_admin.ExecutionRunAdmin.list_display, "live")
    readonly_fields = ("live", *executions_admin.ExecutionRunAdmin.readonly_fields)

    @admin.display(description="live view")
    def live(self, obj):
        return "-" if obj.pk is None else dashboard_link("dashboard_run", "live view", obj.pk)


class WaveTaskInline(executions_admin.WaveTaskInline):
    fields = (*executions_admin.WaveTaskInline.fields, "transcript")
    readonly_fields = fields

    @admin.display(description="transcript")
    def transcript(self, obj):
        return transcript_of("transcript", wave_task__id__exact=obj.pk)


class WaveAdmin(executions_admin.ParallelExecutionWaveAdmin):
    list_display = (
        *executions_admin.ParallelExecutionWaveAdmin.list_display,
        "transcript_link",
        "tool_uses_link",
        "pass_rate",
    )
    # The counters come from the wave's statistics row (kept by this app's receivers): one
    # join instead of a COUNT over transcript entries and tool uses per row.
    list_select_related = ("statistics",)
    inlines = [WaveTaskInline]
    readonly_fields = (
        "live",
        *executions_admin.ParallelExecutionWaveAdmin.readonly_fields,
        "transcript_link",
        "tool_uses_link",
    )

    @admin.display(description="live view")
    def live(self, obj):
        if obj.pk is None:
            return "-"
        anchor = f"#tw-wave-{obj.wave_number}"
        return dashboard_link("dashboard_run", "the run's live view", obj.execution_id, query=anchor)

    @staticmethod
    def _stat(obj, name):
        try:
            return getattr(obj.statistics, name)
        except WaveStatistics.DoesNotExist:
            return None

    @admin.display(description="transcript")
    def transcript_link(self, obj):
        count = self._stat(obj, "transcript_entry_count")
        return transcript_of("entries" if count is None else f"{count} entries", wave__id__exact=obj.pk)

    @admin.display(description="tool uses")
    def tool_uses_link(self, obj):
        count = self._stat(obj, "tool_use_count")
        errors = self._stat(obj, "tool_error_count")
        text = "tool uses" if count is None else f"{count} ({errors} errors)"
        return changelist_link("observability_tooluse", text, wave__id__exact=obj.pk)

    @admin.display(description="pass rate")
    def pass_rate(self, obj):
        rate = self._stat(obj, "pass_rate")
        return "-" if rate is None else f"{rate:.0%}"


class WaveTaskAdmin(executions_admin.WaveTaskAdmin):
    list_display = (*executions_admin.WaveTaskAdmin.list_display, "transcript")
    readonly_fields = (*executions_admin.WaveTaskAdmin.readonly_fields, "transcript", "tool_uses")

    @admin.display(description="transcript")
    def transcript(self, obj):
        return transcript_of("transcript", wave_task__id__exact=obj.pk)

    @admin.display(description="tool uses")
    def tool_uses(self, obj):
        return changelist_link("observability_tooluse", "tool uses", wave_task__id__exact=obj.pk)


class AgentAdmin(executions_admin.BuildAgentInstanceAdmin):
    list_display = (*executions_admin.BuildAgentInstanceAdmin.list_display, "transcript")

    @admin.display(description="transcript")
    def transcript(self, obj):
        return transcript_of("transcript", agent__id__exact=obj.pk)


_replace(ExecutionRun, RunAdmin)
_replace(ParallelExecutionWave, WaveAdmin)
_replace(WaveTask, WaveTaskAdmin)
_replace(BuildAgentInstance, AgentAdmin)


# --- links to the dashboards, and steering ----------------------------------------------------

dashboards.install(admin.site)


class TaskListAdmin(executions_admin.TaskListAdmin):
    """Task lists with "Run now" (a form for max parallelism and schedule, then the run's live
    view), and the definition shown read-only: the plan, and the JSON, pretty."""

    actions = [*executions_admin.TaskListAdmin.actions, "run_now"]
    exclude = ("definition",)
    readonly_fields = (
        "dashboards",
        *executions_admin.TaskListAdmin.readonly_fields,
        "plan",
        "graph",
        "definition_json",
    )
    GRAPH_MAX_NODES = 200

    @admin.action(description="Run now (choose max parallelism and schedule)", permissions=["start"])
    def run_now(self, request, queryset):
        lists = list(queryset.order_by("id")[:2])
        if len(lists) != 1:
            self.message_user(request, "Select one task list to run.", messages.WARNING)
            return None
        return HttpResponseRedirect(reverse("admin:dashboard_run_now", args=[lists[0].pk]))

    @admin.display(description="dashboards")
    def dashboards(self, obj):
        if obj.pk is None:
            return "-"
        links = [dashboard_link("dashboard_concurrency", "concurrency timeline", query=f"?workflow={obj.pk}")]
        if obj.archived_at is None:
            links.insert(0, dashboard_link("dashboard_run_now", "Run now…", obj.pk))
        latest = obj.runs.order_by("-id").values_list("pk", flat=True).first()
        if latest:
            links.append(dashboard_link("dashboard_run", f"latest run ({latest}), live", latest))
        return format_html_join(" · ", "{}", ((link,) for link in links))

    @staticmethod
    def _plan(obj):
        """The list's plan, computed once for the page's plan and graph."""
        if not hasattr(obj, "_plan"):
            obj._plan = task_list_plan(obj)
        return obj._plan

    @admin.display(description="plan")
    def plan(self, obj):
        if obj.pk is None:
            return "-"
        plan = self._plan(obj)
        critical = set(plan.analysis.critical_path)
        rows = format_html_join(
            "",
            "<tr><th>wave {}</th><td>{}</td></tr>",
            (
                (
                    number,
                    format_html_join(
                        ", ", "{}", ((format_html("<b>{}</b>", k) if k in critical else k,) for k in wave)
                    ),
                )
                for number, wave in enumerate(plan.analysis.waves, 1)
            ),
        )
        return format_html(
            "<table>{}</table><p>Width {}; critical path (bold) {}; about {} min at {} in parallel, "
            "{} min one after another.</p>",
            rows,
            plan.analysis.width,
            " → ".join(plan.analysis.critical_path),
            f"{plan.estimated_total:.0f}",
            plan.max_parallelism,
            f"{plan.serial_total:.0f}",
        )

    @admin.display(description="graph")
    def graph(self, obj):
        if obj.pk is None:
            return "-"
        plan = self._plan(obj)
        if len(plan.analysis.nodes) > self.GRAPH_MAX_NODES:
            return f"{len(plan.analysis.nodes)} steps: too many to draw (the plan above lists them)."
        return format_html(
            '<pre class="tw-mermaid">{}</pre><script src="{}"></script><script src="{}"></script>',
            render_mermaid(plan),
            static("tidewatch/vendor/mermaid/mermaid.min.js"),
            static("tidewatch/tasklist.js"),
        )

    @admin.display(description="definition (read-only: re-import the file to change it)")
    def definition_json(self, obj):
        return format_html(
            '<pre class="tw-json" style="max-height: 30em; overflow: auto; white-space: pre">{}</pre>',
            json.dumps(obj.definition, indent=2, sort_keys=False),
        )


class SessionAdmin(executions_admin.ConcurrentExecutionSessionAdmin):
    list_display = (*executions_admin.ConcurrentExecutionSessionAdmin.list_display, "timeline")
    readonly_fields = ("timeline",)

    @admin.display(description="wave timeline")
    def timeline(self, obj):
        return "-" if obj.pk is None else dashboard_link("dashboard_session_waves", "wave timeline", obj.pk)


_replace(TaskList, TaskListAdmin)
_replace(ConcurrentExecutionSession, SessionAdmin)
