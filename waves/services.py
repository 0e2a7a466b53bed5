"""Writes of definitions: importing a task list (and archiving the one it replaces)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from waves.loaders import Definition, DefinitionError, max_length, validate
from waves.models import Task, TaskDependency, TaskList, TaskTemplate

# Rows per IN (...) list: PostgreSQL takes at most 65,535 parameters in one statement.
CHUNK = 10_000


class TaskListExists(DefinitionError):
    """A live list already has this title and --replace was not given."""


def task_list_import(
    *, definition: Definition, name: str | None = None, replace: bool = False, source_path: str = ""
) -> TaskList:
    """Validate `definition`, then write templates, list, tasks and dependencies atomically.

    With `replace`, the live list of the same title is archived (archived_at, replaced_by),
    never deleted, so its runs keep pointing at the tasks they ran.
    """
    validate(definition)  # everything is checked before the first write
    title = (name or definition.name).strip()
    source_path = source_path or definition.source
    if not title:
        raise DefinitionError("the task list needs a name", source=definition.source)
    for what, value, field in (("name", title, "title"), ("source path", source_path, "source_path")):
        limit = max_length("TaskList", field)
        if len(value) > limit or "\x00" in value:
            raise DefinitionError(
                f"the {what} must be at most {limit} characters, without NUL", source=definition.source
            )
    with transaction.atomic():
        old = TaskList.objects.select_for_update().filter(title=title, archived_at__isnull=True).first()
        if old and not replace:
            raise TaskListExists(
                f"a task list named '{title}' already exists (id {old.pk}); use --replace to archive it "
                "and import this one in its place, or --name to pick another name",
                source=definition.source,
            )
        if old:
            # Archive first: the unique constraint allows one live list per title.
            old.archived_at = timezone.now()
            old.save(update_fields=["archived_at"])
        tl = TaskList.objects.create(
            title=title,
            description=definition.description,
            max_parallelism=definition.max_parallelism,
            source_path=source_path,
            source_format=definition.format,
            definition=definition.to_json(),
        )
        if old:
            old.replaced_by = tl
            old.save(update_fields=["replaced_by"])

        templates = _templates(list(dict.fromkeys(s.template for s in definition.steps)))
        tasks = Task.objects.bulk_create(
            [
                Task(
                    task_list=tl,
                    key=s.key,
                    display_id=s.display_id,
                    title=s.title,
                    template=templates[s.template],
                    kind=s.kind,
                    command=s.command,
                    inputs=s.inputs,
                    env=s.env,
                    timeout_s=s.timeout_s,
                    retries=s.retries,
                    parallel_group=s.parallel_group,
                    branch_name=s.branch_name,
                    join_policy=s.join_policy,
                    max_parallelism=s.max_parallelism,
                    estimated_minutes=s.estimated_minutes,
                    condition=s.condition,
                    for_each=s.for_each,
                    repeat=s.repeat,
                    approval=s.approval,
                    position=s.position,
                )  # fmt: skip
                for s in definition.steps
            ]
        )
        by_key = {t.key: t for t in tasks}
        children = []
        for s in definition.steps:
            if s.parent:
                by_key[s.key].parent = by_key[s.parent]
                children.append(by_key[s.key])
        if children:
            Task.objects.bulk_update(children, ["parent"])
        TaskDependency.objects.bulk_create(
            [
                TaskDependency(task=by_key[s.key], depends_on=by_key[dep])
                for s in definition.steps
                for dep in dict.fromkeys(s.depends_on)
            ]
        )
    return tl


def _templates(names: list[str]) -> dict[str, TaskTemplate]:
    """The templates of these names, creating the missing ones (a list may name thousands:
    one query per chunk, not one per name). ignore_conflicts: another import may create
    the same name at the same moment."""

    def fetch() -> dict[str, TaskTemplate]:
        found = {}
        for i in range(0, len(names), CHUNK):
            found.update((t.name, t) for t in TaskTemplate.objects.filter(name__in=names[i : i + CHUNK]))
        return found

    templates = fetch()
    missing = [TaskTemplate(name=n) for n in names if n not in templates]
    if missing:
        TaskTemplate.objects.bulk_create(missing, ignore_conflicts=True)
        templates = fetch()
    return templates
