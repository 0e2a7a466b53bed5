"""python manage.py plan_tasklist ID_OR_NAME [--json] [--format text|mermaid|markdown]

The plan of a task list: its waves, critical path, width and estimated total time.

Durations are the tasks' `estimated_minutes`, else 1 minute. The medians of past runs that
the executor also uses for tasks without an estimate (`executions.selectors.task_durations`)
are not read: this command belongs to `waves`, which imports nothing from `executions`, and
a plan of the definition stays the same whatever ran before. The text and markdown outputs
say how many tasks had no estimate.

Exit 2 when the task list does not exist (as every command does for something not found).
"""

import json

from django.core.management.base import BaseCommand, CommandError

from waves.selectors import Plan, TaskListNotFound, task_list_get, task_list_plan


def _fmt(minutes: float) -> str:
    return f"{minutes:g} min"


def render_text(plan: Plan) -> str:
    a = plan.analysis
    lines = [f"Plan for '{plan.task_list.title}' (id {plan.task_list.pk})", ""]
    for i, wave in enumerate(a.waves):
        groups = f"  groups: {', '.join(plan.groups[i])}" if plan.groups[i] else ""
        lines.append(f"Wave {i + 1} ({len(wave)} tasks){groups}")
        for key in wave:
            group = f" [{plan.group_of[key]}]" if key in plan.group_of else ""
            title = f"  {plan.titles[key]}" if plan.titles.get(key) and plan.titles[key] != key else ""
            lines.append(f"  - {key}{group}{title} ({_fmt(plan.durations[key])})")
    lines += [
        "",
        f"Critical path: {' -> '.join(a.critical_path)} ({_fmt(a.critical_length)})",
        f"Width: {a.width}",
        f"Estimated total at max_parallelism {plan.max_parallelism}: {_fmt(plan.estimated_total)}"
        f" (one after another: {_fmt(plan.serial_total)})",
    ]
    if plan.unestimated:
        lines.append(_unestimated_note(plan))
    return "\n".join(lines)


def _unestimated_note(plan: Plan) -> str:
    n = len(plan.unestimated)
    return f"{n} task{'s' if n != 1 else ''} without estimated_minutes counted as 1 min each."


def render_mermaid(plan: Plan) -> str:
    a = plan.analysis
    ids = {key: f"n{i}" for i, key in enumerate(a.nodes)}  # mermaid-safe node ids
    out = ["flowchart TD"]
    for i, wave in enumerate(a.waves):
        out.append(f'  subgraph wave{i + 1}["Wave {i + 1}"]')
        for key in wave:
            label = (
                key if not plan.titles.get(key) or plan.titles[key] == key else f"{key}: {plan.titles[key]}"
            )
            out.append(f'    {ids[key]}["{label.replace(chr(34), "#quot;")}"]')
        out.append("  end")
    for key in a.nodes:
        out += [f"  {ids[key]} --> {ids[d]}" for d in a.downstream[key]]
    return "\n".join(out)


def render_markdown(plan: Plan) -> str:
    """The parallelization analysis: waves of concurrent groups, critical path, estimated time
    one after another and in parallel, and the dependency graph."""
    a = plan.analysis
    out = [f"# Parallelization analysis: {plan.task_list.title}", "", "## Waves", ""]
    for i, wave in enumerate(a.waves):
        parts = []
        for group in plan.groups[i]:
            members = [k for k in wave if plan.group_of.get(k) == group]
            parts.append(f"`{group}` ({', '.join(members)})")
        parts += [f"`{k}`" for k in wave if k not in plan.group_of]
        concurrent = " — concurrent groups" if len(plan.groups[i]) > 1 else ""
        out.append(f"- **Wave {i + 1}**: {' + '.join(parts)}{concurrent}")
    pct = 100 * plan.saving / plan.serial_total if plan.serial_total else 0
    out += [
        "",
        "## Critical path",
        "",
        f"{' → '.join(a.critical_path)} ({_fmt(a.critical_length)})",
        "",
        "## Estimated time",
        "",
        "| | minutes |",
        "|---|---|",
        f"| One after another | {plan.serial_total:g} |",
        f"| In parallel (max_parallelism {plan.max_parallelism}) | {plan.estimated_total:g} |",
        f"| Saving | {plan.saving:g} ({pct:.0f}%) |",
        "",
        f"Width: {a.width} tasks can run at once.",
        *(["", _unestimated_note(plan)] if plan.unestimated else []),
        "",
        "## Dependency graph",
        "",
        "```mermaid",
        render_mermaid(plan),
        "```",
    ]
    return "\n".join(out)


class Command(BaseCommand):
    help = "Show a task list's waves, critical path, width and estimated total time."

    def add_arguments(self, parser):
        parser.add_argument("task_list", metavar="ID_OR_NAME")
        parser.add_argument("--json", action="store_true", help='print {"waves", "critical_path", "width"}')
        parser.add_argument("--format", choices=["text", "mermaid", "markdown"], default="text")

    def handle(self, *args, task_list, json: bool, format: str, **options):
        try:
            plan = task_list_plan(task_list_get(task_list))
        except TaskListNotFound as exc:
            raise CommandError(str(exc), returncode=2) from None
        if json:
            a = plan.analysis
            self.stdout.write(_dumps({"waves": a.waves, "critical_path": a.critical_path, "width": a.width}))
            return
        render = {"text": render_text, "mermaid": render_mermaid, "markdown": render_markdown}[format]
        self.stdout.write(render(plan))


_dumps = json.dumps
