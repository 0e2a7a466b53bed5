"""What runs leave behind: transcripts, tool uses, assertions, skill traces, and the
per-wave statistics kept current by signal handlers."""

from django.db import models

from executions.models import BuildAgentInstance, ExecutionRun, ParallelExecutionWave, WaveTask
from observability.fields import IntBooleanField
from waves.models import Task


class RecordBase(models.Model):
    """Common links of every record: the run, its wave, the task."""

    execution = models.ForeignKey(ExecutionRun, on_delete=models.CASCADE, related_name="+")
    wave = models.ForeignKey(
        ParallelExecutionWave, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    wave_task = models.ForeignKey(WaveTask, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(
        BuildAgentInstance, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        abstract = True


class TranscriptEntry(RecordBase):
    class EntryType(models.TextChoices):
        STDOUT = "stdout", "stdout"
        STDERR = "stderr", "stderr"
        MESSAGE = "message", "message"
        SYSTEM = "system", "system"
        INVALID_EVENT = "invalid_event", "invalid event"

    wave_number = models.PositiveIntegerField(null=True, blank=True)
    instance_id = models.CharField(max_length=64, blank=True)
    # Monotonic within a run: the order lines were recorded in.
    sequence = models.PositiveBigIntegerField()
    entry_type = models.CharField(max_length=20, choices=EntryType.choices)
    content = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "transcript_entries"
        ordering = ["execution_id", "sequence"]
        indexes = [
            # Seed 000 §7.3: WHERE wave_id = ? ORDER BY sequence
            models.Index(fields=["wave", "sequence"], name="idx_transcript_wave_id"),
            models.Index(fields=["execution", "sequence"], name="idx_transcript_execution"),
            models.Index(fields=["wave_task", "sequence"], name="idx_transcript_wave_task"),
        ]
        verbose_name_plural = "transcript entries"

    def __str__(self):
        return f"{self.entry_type} #{self.sequence}"


class ToolUse(RecordBase):
    tool_name = models.CharField(max_length=200)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    is_error = IntBooleanField()
    is_blocked = IntBooleanField()
    start_time = models.DateTimeField()
    end_time = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "tool_uses"
        ordering = ["start_time", "id"]
        indexes = [
            # Seed 000 §7.4: WHERE wave_id = ? AND is_error = 1 ORDER BY start_time
            models.Index(fields=["wave", "is_error", "start_time"], name="idx_tool_use_wave_error"),
            models.Index(fields=["execution", "start_time"], name="idx_tool_use_execution"),
            # The API's pages of a wave's tool uses, by id (with or without ?is_error=): without
            # these, PostgreSQL walks the primary key and filters (benchmarks/bench_api.py).
            models.Index(fields=["wave", "id"], name="idx_tool_use_wave_page"),
            models.Index(fields=["wave", "is_error", "id"], name="idx_tool_use_wave_error_page"),
        ]

    def __str__(self):
        return self.tool_name


class AssertionResult(RecordBase):
    name = models.CharField(max_length=500)
    passed = IntBooleanField()
    message = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "assertion_results"
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["execution"], name="idx_assertion_execution"),
            # The API's pages of a wave's assertions, by id (with or without ?passed=).
            models.Index(fields=["wave", "id"], name="idx_assertion_wave_page"),
            models.Index(fields=["wave", "passed", "id"], name="idx_assertion_wave_passed_page"),
        ]

    def __str__(self):
        return f"{self.name}: {'pass' if self.passed else 'fail'}"


class SkillTrace(RecordBase):
    skill_name = models.CharField(max_length=200)
    payload = models.JSONField(null=True, blank=True)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "skill_traces"
        ordering = ["started_at", "id"]
        indexes = [
            models.Index(fields=["wave"], name="idx_skill_trace_wave_id"),
            models.Index(fields=["execution"], name="idx_skill_trace_execution"),
        ]

    def __str__(self):
        return self.skill_name


class WaveStatistics(models.Model):
    """Seed 000 §3.2: one row per wave, every counter kept by signal handlers."""

    wave = models.OneToOneField(ParallelExecutionWave, on_delete=models.CASCADE, related_name="statistics")
    execution = models.ForeignKey(ExecutionRun, on_delete=models.CASCADE, related_name="+")
    task_count = models.PositiveIntegerField(default=0)
    completed_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    pass_rate = models.FloatField(null=True, blank=True)
    transcript_entry_count = models.PositiveIntegerField(default=0)
    tool_use_count = models.PositiveIntegerField(default=0)
    tool_error_count = models.PositiveIntegerField(default=0)
    tool_blocked_count = models.PositiveIntegerField(default=0)
    assertion_count = models.PositiveIntegerField(default=0)
    assertion_pass_count = models.PositiveIntegerField(default=0)
    assertion_fail_count = models.PositiveIntegerField(default=0)
    skill_trace_count = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "wave_statistics"
        indexes = [
            models.Index(fields=["execution"], name="idx_wave_stats_execution"),
            models.Index(fields=["started_at", "completed_at"], name="idx_wave_stats_timing"),
        ]
        verbose_name_plural = "wave statistics"

    def __str__(self):
        return f"Statistics of wave {self.wave_id}"


class WaveProgress(models.Model):
    """Read-only model over the v_wave_progress view (created by migration 0003)."""

    wave = models.OneToOneField(
        ParallelExecutionWave,
        primary_key=True,
        on_delete=models.DO_NOTHING,
        db_column="wave_id",
        related_name="+",
    )
    execution = models.ForeignKey(ExecutionRun, on_delete=models.DO_NOTHING, related_name="+")
    wave_number = models.PositiveIntegerField()
    status = models.CharField(max_length=20)
    started_at = models.DateTimeField(null=True)
    completed_at = models.DateTimeField(null=True)
    task_count = models.IntegerField()
    completed_count = models.IntegerField()
    failed_count = models.IntegerField()
    pass_rate = models.FloatField(null=True)
    tool_use_count = models.IntegerField()
    assertion_count = models.IntegerField()
    assertion_pass_count = models.IntegerField()
    duration_ms = models.BigIntegerField(null=True)
    task_list_title = models.CharField(max_length=200, null=True)
    execution_status = models.CharField(max_length=20, null=True)

    class Meta:
        managed = False
        db_table = "v_wave_progress"
        ordering = ["wave_number"]
        verbose_name_plural = "wave progress"

    def __str__(self):
        return f"Wave {self.wave_number} of run {self.execution_id}"


class ActiveAgent(models.Model):
    """Read-only model over the v_active_agents view (created by migration 0003)."""

    agent = models.OneToOneField(
        BuildAgentInstance,
        primary_key=True,
        on_delete=models.DO_NOTHING,
        db_column="agent_id",
        related_name="+",
    )
    instance_id = models.CharField(max_length=64)
    status = models.CharField(max_length=20)
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField(null=True)
    task = models.ForeignKey(Task, on_delete=models.DO_NOTHING, related_name="+")
    display_id = models.CharField(max_length=64)
    task_title = models.CharField(max_length=500)
    wave_number = models.PositiveIntegerField(null=True)
    wave = models.ForeignKey(ParallelExecutionWave, null=True, on_delete=models.DO_NOTHING, related_name="+")
    execution = models.ForeignKey(ExecutionRun, null=True, on_delete=models.DO_NOTHING, related_name="+")
    task_list_title = models.CharField(max_length=200, null=True)
    running_seconds = models.FloatField(null=True)

    class Meta:
        managed = False
        db_table = "v_active_agents"
        ordering = ["started_at"]

    def __str__(self):
        return self.instance_id
