"""Admin for definitions: task templates, task lists, tasks and their dependencies.

Task lists come from `import_tasklist` (it validates the DAG); the admin shows them and
allows small edits of a task's fields. `waves` knows nothing of the apps that depend on it:
executions/admin.py adds the runs columns to these pages.
"""

from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from waves.models import Task, TaskDependency, TaskList, TaskTemplate
from waves.teams import visible_task_lists


class TeamScoped:
    """A team admin sees (and acts on) only the rows of their teams' task lists; superusers
    see all. `team_path` leads from the model to its task list ("" for a task list itself)."""

    team_path = "execution__task_list"
    to_many: tuple[str, ...] = ()  # relations on the path that fan out (no duplicate rows)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        lookup = f"{self.team_path}__in" if self.team_path else "pk__in"
        visible = {lookup: visible_task_lists(request.user).values("pk")}
        if self.team_path and "__" in self.team_path and self.team_path.split("__")[0] in self.to_many:
            return qs.filter(pk__in=self.model._default_manager.filter(**visible).values("pk"))
        return qs.filter(**visible)


def _link(label: str, text, **filters):
    if None in filters.values():  # an object not saved yet (the add page)
        return "-"
    try:
        url = reverse(f"admin:{label}_changelist")
    except NoReverseMatch:
        return text
    return format_html('<a href="{}?{}">{}</a>', url, urlencode(filters), text)


def _count(model, fk: str):
    rows = model.objects.filter(**{fk: OuterRef("pk")}).order_by().values(fk)
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0)


@admin.register(TaskTemplate)
class TaskTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "max_concurrency", "queue", "tasks", "created_at")
    search_fields = ("name", "description")
    ordering = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(task_count=_count(Task, "template"))

    @admin.display(description="tasks", ordering="task_count")
    def tasks(self, obj):
        return _link("waves_task", obj.task_count, template__id__exact=obj.pk)


class TaskInline(admin.TabularInline):
    """The tasks of a list, for reading: the DAG is edited by re-importing its file."""

    model = Task
    fk_name = "task_list"
    fields = (
        "position",
        "key",
        "title",
        "template",
        "kind",
        "parallel_group",
        "approval",
        "estimated_minutes",
    )
    readonly_fields = fields
    ordering = ("position", "id")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("template")


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("no", "Live"), ("yes", "Archived")]

    def queryset(self, request, queryset):
        if self.value() in ("no", "yes"):
            return queryset.filter(archived_at__isnull=self.value() == "no")
        return queryset


@admin.register(TaskList)
class TaskListAdmin(TeamScoped, admin.ModelAdmin):
    team_path = ""
    list_display = (
        "title",
        "team",
        "source_format",
        "max_parallelism",
        "tasks",
        "created_at",
        "archived_at",
    )
    list_filter = (ArchivedFilter, "source_format", "team")
    list_select_related = ("team",)
    search_fields = ("title", "description", "source_path")
    date_hierarchy = "created_at"
    ordering = ("title", "-id")
    raw_id_fields = ("replaced_by",)
    readonly_fields = ("created_at", "tasks")
    inlines = [TaskInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(task_count=_count(Task, "task_list"))

    @admin.display(description="tasks", ordering="task_count")
    def tasks(self, obj):
        return _link("waves_task", getattr(obj, "task_count", "tasks"), task_list__id__exact=obj.pk)


class DependencyInline(admin.TabularInline):
    model = TaskDependency
    fk_name = "task"
    fields = ("depends_on",)
    readonly_fields = fields
    verbose_name = "dependency"
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("depends_on")


@admin.register(Task)
class TaskAdmin(TeamScoped, admin.ModelAdmin):
    team_path = "task_list"
    list_display = (
        "key",
        "task_list",
        "display_id",
        "title",
        "template",
        "kind",
        "parallel_group",
        "join_policy",
        "approval",
        "estimated_minutes",
    )
    list_filter = ("kind", "approval", "join_policy")
    list_select_related = ("task_list", "template")
    search_fields = ("key", "title", "display_id", "task_list__title", "command")
    ordering = ("task_list", "position", "id")
    raw_id_fields = ("task_list", "parent")
    autocomplete_fields = ("template",)
    inlines = [DependencyInline]


@admin.register(TaskDependency)
class TaskDependencyAdmin(TeamScoped, admin.ModelAdmin):
    team_path = "task__task_list"
    list_display = ("task", "depends_on", "task_list")
    list_select_related = ("task__task_list", "depends_on")
    search_fields = ("task__key", "depends_on__key", "task__task_list__title")
    raw_id_fields = ("task", "depends_on")
    ordering = ("task__task_list", "task__position", "id")

    @admin.display(description="task list", ordering="task__task_list__title")
    def task_list(self, obj):
        return obj.task.task_list
