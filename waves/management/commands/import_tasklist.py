from django.core.management.base import BaseCommand, CommandError

from waves.loaders import DefinitionError, load_path
from waves.models import TaskList
from waves.services import task_list_import


class Command(BaseCommand):
    help = "Import a workflow file (.yaml/.yml/.json) or pipeline table (.pipeline/.txt); prints the new id."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="task list title (default: the file's name)")
        parser.add_argument("--replace", action="store_true", help="archive the live list of that name")
        parser.add_argument(
            "--command-template",
            help="pipeline tables: command per step, a format string over "
            "{n} {profile} {mode} {group} {minutes} {title} (each shell-quoted)",
        )

    def handle(self, *args, path, name, replace, command_template, **options):
        try:
            definition = load_path(path, command_template=command_template, name=name)
            tl = task_list_import(definition=definition, name=name, replace=replace, source_path=path)
        except DefinitionError as exc:
            raise CommandError(str(exc), returncode=1)
        count = tl.tasks.count()
        self.stdout.write(str(tl.pk))
        self.stdout.write(
            f"Imported '{tl.title}' ({definition.format}, {count} tasks, max_parallelism {tl.max_parallelism})"
            + (" replacing the previous version" if TaskList.objects.filter(replaced_by=tl).exists() else "")
        )
