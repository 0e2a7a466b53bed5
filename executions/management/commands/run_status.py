"""`manage.py run_status [RUN_ID] [--watch] [--json] [--interval SECONDS]`.

Seed 003's status display of a run (the newest when no id is given): its waves, the groups
in each wave with "n/m steps complete", the steps running, failed or waiting for approval,
and the overall progress. `--watch` redraws it until the run ends; `--json` prints the
dict of `executions.selectors.run_status_view()` instead.
"""

from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.models import ExecutionRun, RunStatus, WaveStatus
from executions.selectors import run_get, run_latest, run_status_view

RULE = "═" * 39
CLEAR = "\x1b[H\x1b[2J"

GROUP_ICONS = {"done": "✅", "in_progress": "🔄", "failed": "❌", "pending": "⏳"}
WAVE_SUFFIX = {
    WaveStatus.RUNNING: " (IN PROGRESS)",
    WaveStatus.FAILED: " (FAILED)",
    WaveStatus.CANCELLED: " (CANCELLED)",
    WaveStatus.PENDING: " (PENDING)",
}
RUN_LABEL = {
    RunStatus.PENDING: "PENDING",
    RunStatus.RUNNING: "IN PROGRESS",
    RunStatus.SUCCEEDED: "SUCCEEDED",
    RunStatus.FAILED: "FAILED",
    RunStatus.CANCELLED: "CANCELLED",
}


def _keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit})" if len(keys) > limit else "")


def render(view: dict) -> str:
    """The text display of a `run_status_view()` dict."""
    lines = [
        f"Run {view['run_id']} of {view['task_list']}: {RUN_LABEL.get(view['status'], view['status'])}",
        RULE,
    ]
    if view["cancel_requested"] and not view["finished"]:
        lines.append("⚠️  Cancel requested")
    for wave in view["waves"]:
        names = " + ".join(g["name"] for g in wave["groups"]) or "(no steps)"
        lines += ["", f"Wave {wave['wave_number']}: {names}{WAVE_SUFFIX.get(wave['status'], '')}"]
        for group in wave["groups"]:
            icon = GROUP_ICONS.get(group["status"], "•")
            if group["kind"] == "group":
                label = f"Group: {group['name']} ({group['done']}/{group['total']} steps complete)"
            elif group["total"] > 1:  # a for_each step outside any group: its instances
                label = f"Step: {group['name']} ({group['done']}/{group['total']} instances complete)"
            else:
                label = f"Step: {group['name']}"
            if group["waiting_approval"] and group["status"] != "failed":
                icon = "✋"
            lines.append(f"  {icon} {label}")
            if group["running"]:
                lines.append(f"      running: {_keys(group['running'])}")
            if group["waiting_approval"]:
                lines.append(f"      waiting for approval: {_keys(group['waiting_approval'])}")
            if group["failed"]:
                lines.append(f"      failed: {_keys(group['failed'])}")
    if not view["waves"]:
        lines += ["", "(the run has no waves yet)"]
    lines += ["", f"Overall: {view['done']}/{view['total']} steps complete ({view['percent']}%)"]
    if view["finished"] and view["wall_seconds"] is not None:
        extra = f"Wall time: {view['wall_seconds']:.1f}s"
        if view["speedup"]:
            extra += f", {view['speedup']}x faster than serial"
        lines.append(extra)
    if view["error"]:
        lines.append(f"Error: {view['error']}")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Show the status of a run (the newest when no id is given): waves, groups, progress."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", nargs="?", type=int, help="the run (default: the newest run)")
        parser.add_argument("--watch", action="store_true", help="redraw until the run ends")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the status as JSON")
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between redraws with --watch (default 1)"
        )

    def handle(self, *args, run_id=None, watch=False, as_json=False, interval=1.0, **options):
        if interval <= 0:
            raise CommandError("--interval must be a positive number of seconds", returncode=2)
        if run_id is None:
            run = run_latest()
            if run is None:
                self.stdout.write("No runs yet: start one with `manage.py run_tasklist ID_OR_NAME`.")
                return
        else:
            try:
                run = run_get(run_id)
            except ExecutionRun.DoesNotExist:
                raise CommandError(f"run {run_id} does not exist", returncode=2) from None
        if not watch:
            self._show(run, as_json=as_json, clear=False)
            return
        try:
            while True:
                view = self._show(run, as_json=as_json, clear=not as_json)
                if view["finished"]:
                    return
                time.sleep(interval)
                run = run_get(run.pk)
        except KeyboardInterrupt:
            self.stdout.write("")

    def _show(self, run: ExecutionRun, *, as_json: bool, clear: bool) -> dict:
        view = run_status_view(run)
        if as_json:
            # One object; with --watch one per line (JSON lines).
            self.stdout.write(json.dumps(view, ensure_ascii=False))
        else:
            self.stdout.write((CLEAR if clear else "") + render(view))
        self.stdout.flush()
        return view
