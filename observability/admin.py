"""Admin for what runs leave behind. Every page here is a read-only record; the big tables
(transcripts, tool uses) page with an estimated count (see EstimatedCountPaginator).

This app depends on `executions`, not the reverse: the pages of runs, waves, wave tasks and
agents are registered by executions' admin, and this module replaces each with a subclass
that adds this app's columns (a wave's statistics, links to transcripts, tool uses,
assertions and skill traces). Django imports this module after executions' admin (this
module imports it first anyway), so the replacement always finds the original registered.
"""

from django.contrib import admin
from django.template.defaultfilters import truncatechars

from executions import admin as executions_admin
from executions.admin import (
    LargeTableAdmin,
    ReadOnlyAdmin,
    RecordLinks,
    change_link,
    changelist_link,
    seconds,
)
from executions.models import BuildAgentInstance, ExecutionRun, ParallelExecutionWave, WaveTask
from observability.models import (
    ActiveAgent,
    AssertionResult,
    SkillTrace,
    ToolUse,
    TranscriptEntry,
    WaveProgress,
    WaveStatistics,
)


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


class RunAdmin(executions_admin.ExecutionRunAdmin):
    record_links = (
        *executions_admin.ExecutionRunAdmin.record_links,
        ("observability_transcriptentry", "transcript"),
        ("observability_tooluse", "tool uses"),
        ("observability_assertionresult", "assertions"),
        ("observability_skilltrace", "skill traces"),
    )


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
        *executions_admin.ParallelExecutionWaveAdmin.readonly_fields,
        "transcript_link",
        "tool_uses_link",
    )

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
