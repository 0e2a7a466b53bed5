"""Runs and everything that changes while they go.

Statuses of wave tasks change in one place only: `executions.services.transition()`,
which writes the new status, its `task_status_audit` row and its event-log row in one
transaction. Nothing else assigns `WaveTask.status` and saves.
"""

from django.db import models

from waves.models import Task, TaskList


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # waiting for its dependencies
    QUEUED = "queued", "Queued"  # ready, waiting for a free slot
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Lost"  # its executor or worker vanished mid-run

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.SKIPPED, cls.CANCELLED, cls.LOST})

    @classmethod
    def rerun_on_resume(cls) -> frozenset[str]:
        """Everything but success is tried again by a resume."""
        return frozenset(
            {cls.FAILED, cls.SKIPPED, cls.CANCELLED, cls.LOST, cls.PENDING, cls.QUEUED, cls.RUNNING}
        )


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED})


class WaveStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"  # every task of it was skipped: nothing ran

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.SKIPPED})


class AgentStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Lost"


class SessionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class Backend(models.TextChoices):
    LOCAL = "local", "Local processes"
    CELERY = "celery", "Celery workers"


class ConcurrentExecutionSession(models.Model):
    """Runs that overlap in time share a session."""

    started_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=SessionStatus.choices, default=SessionStatus.ACTIVE)
    execution_count = models.PositiveIntegerField(default=0)
    total_wave_count = models.PositiveIntegerField(default=0)
    total_task_count = models.PositiveIntegerField(default=0)
    total_agent_count = models.PositiveIntegerField(default=0)
    # Exact peaks, kept with F() arithmetic by executions.services (any number of executors).
    running_agents = models.IntegerField(default=0)
    running_tasks = models.IntegerField(default=0)
    peak_concurrent_agents = models.PositiveIntegerField(default=0)
    peak_concurrent_tasks = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "concurrent_execution_sessions"
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["status"], name="idx_session_status")]

    def __str__(self):
        return f"Session {self.pk} ({self.started_at:%Y-%m-%d %H:%M})"


class ExecutionRun(models.Model):
    task_list = models.ForeignKey(TaskList, on_delete=models.PROTECT, related_name="runs")
    session = models.ForeignKey(
        ConcurrentExecutionSession, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.PENDING)
    backend = models.CharField(max_length=20, choices=Backend.choices, default=Backend.LOCAL)
    max_parallelism = models.PositiveIntegerField(default=4)
    schedule = models.CharField(max_length=20, default="critical_path")  # or "fifo"
    simulate_scale = models.FloatField(null=True, blank=True)
    resumed_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resumptions"
    )
    # The run that resumed this one: set once, by a conditional UPDATE (services.run_resume),
    # so two resumes of one run cannot both go ahead.
    resumed_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    wall_seconds = models.FloatField(null=True, blank=True)
    task_seconds = models.FloatField(null=True, blank=True)
    # Time the run could do nothing but wait at approval gates: not charged to its speedup.
    gate_wait_seconds = models.FloatField(default=0.0)
    peak_concurrency = models.PositiveIntegerField(default=0)
    # The executor that owns the run: where it is and when it last said it was alive.
    executor_hostname = models.CharField(max_length=255, blank=True)
    executor_pid = models.PositiveIntegerField(null=True, blank=True)
    executor_heartbeat = models.DateTimeField(null=True, blank=True)
    # Cancel from anywhere: the owning executor polls these and acts within a second.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=150, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        db_table = "task_list_execution_runs"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["session"], name="idx_execution_session"),
            models.Index(fields=["task_list", "-id"], name="idx_execution_task_list"),
            models.Index(fields=["status"], name="idx_execution_status"),
        ]

    def __str__(self):
        return f"Run {self.pk} of {self.task_list.title}" if self.task_list_id else f"Run {self.pk}"


class ParallelExecutionWave(models.Model):
    execution = models.ForeignKey(ExecutionRun, on_delete=models.CASCADE, related_name="waves")
    wave_number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=WaveStatus.choices, default=WaveStatus.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    max_parallelism = models.PositiveIntegerField(default=4)

    class Meta:
        db_table = "parallel_execution_waves"
        ordering = ["execution_id", "wave_number"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "wave_number"], name="wave_number_unique_in_run"),
        ]
        indexes = [models.Index(fields=["started_at"], name="idx_wave_started_at")]

    def __str__(self):
        return f"Wave {self.wave_number} of run {self.execution_id}"


class WaveTask(models.Model):
    """A task in a run. A for_each step has one per item (key `step[i]`) under a parent row."""

    wave = models.ForeignKey(ParallelExecutionWave, on_delete=models.CASCADE, related_name="wave_tasks")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="wave_tasks")
    # Looked up through the (execution, key) unique index: no index of its own.
    execution = models.ForeignKey(
        ExecutionRun, on_delete=models.CASCADE, related_name="wave_tasks", db_index=False
    )
    key = models.CharField(max_length=220)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="instances"
    )
    item_index = models.PositiveIntegerField(null=True, blank=True)
    item = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    outputs = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # An approval given before the executor reached the gate, or carried over by a resume.
    approval_decision = models.CharField(max_length=10, blank=True)  # "", "approved" or "rejected"
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=150, blank=True)

    class Meta:
        db_table = "wave_tasks"
        ordering = ["execution_id", "wave_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["execution", "key"], name="wave_task_key_unique_in_run"),
        ]
        # No index on status: every transition updates it, and an updated column that no index
        # holds lets PostgreSQL update the row in place of its indexes (a HOT update), if the
        # new version fits in the row's page: migration 0006 leaves half of each page free
        # for that (fillfactor 50). The queries on status narrow by run (the unique index) or
        # by task (its FK index) first.

    def __str__(self):
        return f"{self.key} (run {self.execution_id})"


class BuildAgentInstance(models.Model):
    """One agent per task attempt: the process (or worker) that ran it."""

    instance_id = models.CharField(max_length=64, unique=True)
    execution = models.ForeignKey(ExecutionRun, on_delete=models.CASCADE, related_name="agents")
    wave = models.ForeignKey(ParallelExecutionWave, on_delete=models.CASCADE, related_name="agents")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="agents")
    wave_task = models.ForeignKey(WaveTask, on_delete=models.CASCADE, related_name="agents")
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=AgentStatus.choices, default=AgentStatus.RUNNING)
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    class Meta:
        db_table = "build_agent_instances"
        ordering = ["-started_at"]
        indexes = [
            # v_active_agents and the stale-agent sweep filter on status.
            models.Index(fields=["status", "started_at"], name="idx_agent_status_started"),
            models.Index(fields=["execution", "status"], name="idx_agent_execution_status"),
        ]

    def __str__(self):
        return self.instance_id


class TaskStatusAudit(models.Model):
    """One row per status change of a task in a run. Replaying a task's rows
    in id order reproduces its history."""

    # wave_task and task are looked up through idx_audit_wave_task and idx_task_status_audit_task,
    # which start with them: no index of their own (each costs every audit write). No database
    # constraint on any of the three (a check and a row lock per row at every commit): a row is
    # written only by transitions, in the transaction that locked and updated its wave task,
    # whose own foreign keys check task and execution; runs are never deleted but through the
    # ORM (the admin cannot; a task list with runs is protected), whose on_delete still applies.
    wave_task = models.ForeignKey(
        WaveTask, on_delete=models.CASCADE, related_name="audit", db_index=False, db_constraint=False
    )
    task = models.ForeignKey(
        Task, on_delete=models.PROTECT, related_name="audit", db_index=False, db_constraint=False
    )
    execution = models.ForeignKey(
        ExecutionRun, on_delete=models.CASCADE, related_name="audit", db_constraint=False
    )
    attempt = models.PositiveIntegerField(default=0)
    previous_status = models.CharField(max_length=20, choices=TaskStatus.choices, null=True, blank=True)
    new_status = models.CharField(max_length=20, choices=TaskStatus.choices)
    changed_at = models.DateTimeField()
    actor = models.CharField(max_length=150, null=True, blank=True)
    reason = models.CharField(max_length=500, null=True, blank=True)

    class Meta:
        db_table = "task_status_audit"
        ordering = ["id"]
        indexes = [
            # Retention (prune_audit) and time-window scans.
            models.Index(fields=["changed_at"], name="idx_task_status_audit_changed"),
            # A task's history, and the concurrency sweep per task.
            models.Index(fields=["task", "changed_at"], name="idx_task_status_audit_task"),
            # Seed 004's composite for time-range queries on one status.
            models.Index(fields=["new_status", "changed_at", "task"], name="idx_status_time_workflow"),
            models.Index(fields=["wave_task", "id"], name="idx_audit_wave_task"),
        ]

    def __str__(self):
        return f"{self.wave_task_id}: {self.previous_status} -> {self.new_status}"


class Event(models.Model):
    """The event log: one row per live event, written in the transaction of the change it
    reports. Its id is the cursor websocket clients resume from."""

    # Looked up through idx_event_execution, which starts with it: no index of its own. No
    # database constraint (a check and a row lock per row at every commit): events are written
    # for a run its writer holds (an executor, a service, the ingest API after finding the run),
    # and runs are deleted only through the ORM, whose on_delete still applies.
    execution = models.ForeignKey(
        ExecutionRun, null=True, blank=True, on_delete=models.CASCADE, related_name="events", db_index=False,
        db_constraint=False,
    )  # fmt: skip
    type = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "event_log"
        ordering = ["id"]
        indexes = [models.Index(fields=["execution", "id"], name="idx_event_execution")]

    def __str__(self):
        return f"#{self.pk} {self.type}"


class RemoteAttempt(models.Model):
    """An attempt sent to a Celery worker, and what the worker reports of it.

    The executor inserts it (queued) and sends the task; the worker claims it with a
    conditional UPDATE (queued -> running: a message delivered twice runs once), heartbeats
    on it, writes its lines and ends it (running -> finished, with the result). The executor
    reads all of it from here, and marks an attempt whose heartbeat went stale as lost."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        CANCELLED = "cancelled", "Cancelled before it started"
        LOST = "lost", "Lost"

    execution = models.ForeignKey(ExecutionRun, on_delete=models.CASCADE, related_name="remote_attempts")
    key = models.CharField(max_length=220)
    attempt = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    queue = models.CharField(max_length=200, blank=True)
    task_id = models.CharField(max_length=64, blank=True)  # the Celery task's id
    worker = models.CharField(max_length=255, blank=True)  # host:pid of the process running it
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)  # the attempt's process (group)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    lines = models.PositiveIntegerField(default=0)  # lines written so far (RemoteLine.seq up to it)
    # How it ended: the fields of runners.base.Finished as JSON text (text: an event line may
    # hold a NUL, which a JSON column refuses and JSON text keeps escaped).
    result = models.TextField(blank=True)

    class Meta:
        db_table = "remote_attempts"
        constraints = [
            models.UniqueConstraint(fields=["execution", "key", "attempt"], name="remote_attempt_unique"),
        ]

    def __str__(self):
        return f"{self.key}#{self.attempt} of run {self.execution_id} ({self.state})"


class RemoteLine(models.Model):
    """A line an attempt on a worker printed (or a note from the worker), in order."""

    attempt = models.ForeignKey(RemoteAttempt, on_delete=models.CASCADE, related_name="output")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=10)
    text = models.TextField()

    class Meta:
        db_table = "remote_attempt_lines"
        constraints = [models.UniqueConstraint(fields=["attempt", "seq"], name="remote_line_unique")]

    def __str__(self):
        return f"{self.attempt_id}:{self.seq} {self.stream}"


__all__ = [
    "AgentStatus",
    "Backend",
    "BuildAgentInstance",
    "ConcurrentExecutionSession",
    "Event",
    "ExecutionRun",
    "ParallelExecutionWave",
    "RemoteAttempt",
    "RemoteLine",
    "RunStatus",
    "SessionStatus",
    "TaskStatus",
    "TaskStatusAudit",
    "WaveStatus",
    "WaveTask",
]
