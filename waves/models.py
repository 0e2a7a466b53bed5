"""Definitions: task templates, task lists, tasks and their dependencies.

A task list is what `import_tasklist` writes from a workflow file or a pipeline table.
Runs (executions app) point at these rows; a replaced list is archived, never rewritten,
so the history of its runs stays intact.
"""

from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q


class TaskTemplate(models.Model):
    """The command family a task belongs to."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    # At most this many tasks of the template run at once in one run (None: no limit).
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)
    # The Celery queue its tasks go to with the celery backend ("": the default queue), so
    # heavy templates can have workers of their own.
    queue = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "task_template"
        ordering = ["name"]

    def __str__(self):
        return self.name


class TaskList(models.Model):
    class Format(models.TextChoices):
        WORKFLOW = "workflow", "Workflow file"
        PIPELINE = "pipeline", "Pipeline table"

    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    team = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="task_lists"
    )
    max_parallelism = models.PositiveIntegerField(default=4)
    source_path = models.CharField(max_length=1000, blank=True)
    source_format = models.CharField(max_length=20, choices=Format.choices, default=Format.WORKFLOW)
    # The normalised definition as imported, kept for reference and re-planning.
    definition = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when `import_tasklist --replace` puts a new list in its place.
    archived_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "task_lists_v2"
        ordering = ["title", "-id"]
        constraints = [
            # One live list per name; archived versions keep their name for history.
            models.UniqueConstraint(
                fields=["title"], condition=Q(archived_at__isnull=True), name="task_list_title_unique_live"
            ),
            models.CheckConstraint(
                condition=Q(max_parallelism__gte=1), name="task_list_max_parallelism_gte_1"
            ),
        ]

    def __str__(self):
        return self.title if self.archived_at is None else f"{self.title} (archived #{self.pk})"


class JoinPolicy(models.TextChoices):
    """How a step treats the outcome of its dependencies."""

    ALL = "all", "all succeed"
    ANY = "any", "any succeeds"
    ALWAYS = "always", "always run"


class Task(models.Model):
    class Kind(models.TextChoices):
        TASK = "task", "Task"
        GATE = "gate", "Approval gate"
        # A parallel block: a container, not a node of the DAG. Its children
        # point at it through `parent`; dependents of the block depend on its children.
        GROUP = "group", "Parallel block"

    task_list = models.ForeignKey(TaskList, on_delete=models.CASCADE, related_name="tasks")
    key = models.CharField(max_length=200)
    display_id = models.CharField(max_length=64, blank=True)
    title = models.CharField(max_length=500, blank=True)
    template = models.ForeignKey(
        TaskTemplate, on_delete=models.PROTECT, related_name="tasks", db_column="task_template_id"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TASK)
    command = models.TextField(blank=True)
    inputs = models.JSONField(default=dict, blank=True)
    env = models.JSONField(default=dict, blank=True)
    timeout_s = models.PositiveIntegerField(null=True, blank=True)
    retries = models.PositiveIntegerField(default=0)
    # Pipeline group or parallel-block id, and the branch name inside a block.
    parallel_group = models.CharField(max_length=200, blank=True, db_index=True)
    branch_name = models.CharField(max_length=200, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    join_policy = models.CharField(max_length=10, choices=JoinPolicy.choices, default=JoinPolicy.ALL)
    # For a parallel block or a for_each step: at most this many of its instances at once.
    max_parallelism = models.PositiveIntegerField(null=True, blank=True)
    estimated_minutes = models.FloatField(null=True, blank=True)
    # Control flow: a CEL condition, a fan-out list (literal or a reference),
    # a repeat spec {until, max_iterations, delay}, and an approval gate.
    condition = models.TextField(blank=True)
    for_each = models.JSONField(null=True, blank=True)
    repeat = models.JSONField(null=True, blank=True)
    approval = models.BooleanField(default=False)
    # Position in the source (pipeline step number or workflow order), for stable display.
    position = models.PositiveIntegerField(default=0)
    depends_on = models.ManyToManyField(
        "self", through="TaskDependency", symmetrical=False, related_name="dependents", blank=True
    )

    class Meta:
        db_table = "tasks"
        ordering = ["task_list_id", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task_list", "key"], name="task_key_unique_in_list"),
        ]
        indexes = [models.Index(fields=["parent"], name="idx_tasks_parent")]

    def __str__(self):
        return self.key


class TaskDependency(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="dependency_links")
    depends_on = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="dependent_links")

    class Meta:
        db_table = "task_dependencies"
        constraints = [
            models.UniqueConstraint(fields=["task", "depends_on"], name="task_dependency_unique"),
            models.CheckConstraint(
                condition=~Q(task=models.F("depends_on")), name="task_dependency_not_self"
            ),
        ]

    def __str__(self):
        return f"{self.task_id} -> {self.depends_on_id}"
