"""Admin for what runs leave behind. Every page here is a read-only record; the big tables
(transcripts, tool uses) page with an estimated count (see EstimatedCountPaginator)."""

from django.contrib import admin
from django.template.defaultfilters import truncatechars

from executions.admin import (
    LargeTableAdmin,
    ReadOnlyAdmin,
    RecordLinks,
    change_link,
    changelist_link,
    seconds,
)
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
    # Seed 000 §7.3 reads a wave's transcript in sequence order (index on wave, sequence).
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
    """Seed 000 §7.1, as the v_wave_progress view returns it."""

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
    """Seed 000 §7.2, as the v_active_agents view returns it."""

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
