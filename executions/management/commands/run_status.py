"""`manage.py run_status [RUN_ID] [--watch] [--json] [--interval SECONDS]`.

The status display of a run (the newest when no id is given): its waves, the groups in each
wave with "n/m steps complete" (succeeded or skipped), the steps running, queued, waiting for
approval (with the command that approves each), failed, lost, cancelled or skipped, and the
overall progress with a count per outcome. `--watch` redraws it until the run ends; `--json`
prints the dict of `executions.selectors.run_status_view()` instead, every step (key, status,
attempt, times) inside its wave and group.

Exit 2 when the run does not exist or RUN_ID is not a run id (as every command does for bad
arguments and for something not found).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.errors import NotFound
from executions.models import ExecutionRun, RunStatus, TaskStatus, WaveStatus
from executions.selectors import run_get, run_latest, run_status_view

RULE = "═" * 39
CLEAR = "\x1b[H\x1b[2J"
LIMIT = 8  # keys shown per line before "… (+N)"

GROUP_ICONS = {
    "done": "✅",
    "skipped": "⏭️",
    "in_progress": "🔄",
    "waiting_approval": "✋",
    "failed": "❌",
    "lost": "💀",
    "cancelled": "🚫",
    "pending": "⏳",
}
WAVE_SUFFIX = {
    WaveStatus.RUNNING: " (IN PROGRESS)",
    WaveStatus.FAILED: " (FAILED)",
    WaveStatus.CANCELLED: " (CANCELLED)",
    WaveStatus.SKIPPED: " (SKIPPED)",
    WaveStatus.PENDING: " (PENDING)",
    "waiting_approval": " (WAITING FOR APPROVAL)",
}
RUN_LABEL = {
    RunStatus.PENDING: "PENDING",
    RunStatus.RUNNING: "IN PROGRESS",
    RunStatus.SUCCEEDED: "SUCCEEDED",
    RunStatus.FAILED: "FAILED",
    RunStatus.CANCELLED: "CANCELLED",
}
# The lists of keys under a group, in this order (waiting steps get a line each).
LISTS = (
    (TaskStatus.RUNNING, "running"),
    (TaskStatus.QUEUED, "queued"),
    (TaskStatus.FAILED, "failed"),
    (TaskStatus.LOST, "lost"),
    (TaskStatus.CANCELLED, "cancelled"),
    (TaskStatus.SKIPPED, "skipped"),
)
# "Overall: ...: 9 succeeded, 2 skipped, 1 failed" (then cancelled and lost when there are any).
ALWAYS = (TaskStatus.SUCCEEDED, TaskStatus.SKIPPED, TaskStatus.FAILED)
WHEN_ANY = (TaskStatus.CANCELLED, TaskStatus.LOST)


def _keys(keys: list[str], limit: int = LIMIT) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit})" if len(keys) > limit else "")


def approve_command(run_id: int, key: str) -> str:
    """The command line that approves step `key` of run `run_id` (the key shell-quoted:
    a for_each instance key such as `deploy[2]` is a glob pattern to a shell)."""
    return f"python manage.py approve_step {run_id} {shlex.quote(key)}"


def _group_label(group: dict) -> str:
    if group["kind"] == "group":
        return f"Group: {group['name']} ({group['done']}/{group['total']} steps complete)"
    if group["total"] > 1:  # a for_each step outside any group: its instances
        return f"Step: {group['name']} ({group['done']}/{group['total']} instances complete)"
    status = group["status"]
    # A single step: say how it ended when that is not plain success or progress.
    suffix = {
        "skipped": " (skipped)",
        "cancelled": " (cancelled)",
        "lost": " (lost)",
        "failed": " (failed)",
        "waiting_approval": " (waiting for approval)",
    }.get(status, "")
    return f"Step: {group['name']}{suffix}"


def _group_lines(view: dict, group: dict) -> list[str]:
    lines = [f"  {GROUP_ICONS.get(group['status'], '•')} {_group_label(group)}"]
    single = group["kind"] == "serial" and group["total"] == 1
    for status, label in LISTS:
        keys = group.get(status) or []
        if keys and not single:
            lines.append(f"      {label}: {_keys(keys)}")
    waiting = group.get(TaskStatus.WAITING_APPROVAL) or []
    for key in waiting[:LIMIT]:
        command = approve_command(view["run_id"], key)
        lines.append(
            f"      approve with: {command}"
            if single
            else f"      waiting for approval: {key}  ->  {command}"
        )
    if len(waiting) > LIMIT:
        lines.append(f"      … and {len(waiting) - LIMIT} more waiting for approval")
    return lines


def _overall(view: dict) -> str:
    counts = view["steps"]
    parts = [f"{counts.get(status, 0)} {status}" for status in ALWAYS]
    parts += [f"{counts[status]} {status}" for status in WHEN_ANY if counts.get(status)]
    return f"Overall: {view['done']}/{view['total']} steps complete ({view['percent']}%): " + ", ".join(parts)


def _times(view: dict) -> str | None:
    if not view["finished"] or view["wall_seconds"] is None:
        return None
    text = f"Wall time: {view['wall_seconds']:.1f}s"
    gate_wait = view.get("gate_wait_seconds") or 0.0
    if gate_wait >= 0.05:
        text += f" ({gate_wait:.1f}s waiting for approval, not counted in the speedup)"
    speedup = view["speedup"]
    if speedup is not None and speedup >= 1:
        text += f", {speedup:.1f}x faster than serial"
    elif speedup is not None:
        text += f", speedup {speedup:.2f}x (slower than one task after another)"
    return text


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
        status = wave.get("display_status", wave["status"])
        lines += ["", f"Wave {wave['wave_number']}: {names}{WAVE_SUFFIX.get(status, '')}"]
        for group in wave["groups"]:
            lines += _group_lines(view, group)
    if not view["waves"]:
        lines += ["", "(the run has no waves yet)"]
    lines += ["", _overall(view)]
    times = _times(view)
    if times:
        lines.append(times)
    if view["error"]:
        lines.append(f"Error: {view['error']}")
    return "\n".join(lines)


def run_id_argument(value: str) -> str:
    """RUN_ID as given: digits. Whether such a run exists is checked later (exit 2 either way)."""
    if not value.strip().isascii() or not value.strip().isdigit():
        raise argparse.ArgumentTypeError("must be a run id (a whole number)")
    return value.strip()


class Command(BaseCommand):
    help = "Show the status of a run (the newest when no id is given): waves, groups, progress."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "run_id", nargs="?", type=run_id_argument, help="the run (default: the newest run)"
        )
        parser.add_argument("--watch", action="store_true", help="redraw until the run ends")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the status as JSON")
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between redraws with --watch (default 1)"
        )

    def handle(self, *args, run_id=None, watch=False, as_json=False, interval=1.0, **options):
        if not interval > 0 or interval == float("inf"):  # NaN fails the first test
            raise CommandError("--interval must be a positive number of seconds", returncode=2)
        if run_id is None:
            run = run_latest()
            if run is None:
                self.stdout.write("No runs yet: start one with `manage.py run_tasklist ID_OR_NAME`.")
                return
        else:
            try:
                run = run_get(run_id)
            except NotFound as exc:
                raise CommandError(str(exc), returncode=2) from None
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
        except NotFound as exc:  # deleted while watched
            raise CommandError(str(exc), returncode=2) from None

    def _show(self, run: ExecutionRun, *, as_json: bool, clear: bool) -> dict:
        view = run_status_view(run)
        if as_json:
            # One object; with --watch one per line (JSON lines).
            self.stdout.write(json.dumps(view, ensure_ascii=False))
        else:
            self.stdout.write((CLEAR if clear else "") + render(view))
        self.stdout.flush()
        return view
