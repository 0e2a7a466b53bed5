"""python manage.py run_tasklist ID_OR_NAME [--max-parallelism N] [--backend local|celery] [--resume RUN_ID]
[--simulate SCALE] [--schedule critical_path|fifo] [--json]

Parses arguments, lays the run out (executions.services.run_start / run_resume), runs it
with signal handlers installed, prints. Exit 0 when the run succeeded, 1 when it did not,
2 on bad arguments, bad input or something not found.
"""

import argparse
import json
import os
import signal
import sys

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.engine import Engine, EngineCrash
from executions.models import RunStatus
from executions.runners import get_runner
from waves.selectors import TaskListNotFound, task_list_get


def bounded_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= services.MAX_PARALLELISM:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {services.MAX_PARALLELISM}")
    return number


def run_id(value: str) -> str:
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError("must be a run id (a whole number)")
    return value.strip()


def scale(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0 < number <= services.SIMULATE_MAX:  # NaN and inf fail this too
        raise argparse.ArgumentTypeError(
            f"must be seconds per estimated minute, above 0 and at most {services.SIMULATE_MAX:g}"
        )
    return number


class Command(BaseCommand):
    help = "Run a task list in parallel waves and record everything."

    def add_arguments(self, parser):
        parser.add_argument("task_list", nargs="?", help="task list id or name (optional with --resume)")
        parser.add_argument(
            "--max-parallelism", type=bounded_int, help="slots (default: the task list's, else 4)"
        )
        parser.add_argument(
            "--backend",
            choices=["local", "celery"],
            default=None,
            help="local processes (default), or Celery workers through CELERY_BROKER_URL",
        )
        parser.add_argument("--resume", type=run_id, metavar="RUN_ID", help="re-run what did not succeed")
        parser.add_argument(
            "--simulate",
            type=scale,
            metavar="SCALE",
            help="each task sleeps estimated_minutes x SCALE seconds instead of its command",
        )
        parser.add_argument(
            "--schedule",
            choices=["critical_path", "fifo"],
            help="order of ready tasks when slots are short (default: longest remaining path first)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON summary, no progress bar")

    def handle(self, *args, **opts):
        options = dict(
            max_parallelism=opts["max_parallelism"],
            simulate=opts["simulate"],
            schedule=opts["schedule"],
            backend=opts["backend"],
        )
        try:
            if opts["resume"]:
                run = services.run_resume(services.run_get(opts["resume"]), task_list=opts["task_list"], **options)
            elif opts["task_list"]:
                options["schedule"] = options["schedule"] or "critical_path"
                options["backend"] = options["backend"] or "local"
                run = services.run_start(task_list_get(opts["task_list"]), **options)
            else:
                raise services.ServiceError("name a task list (id or name), or --resume RUN_ID")
        except (services.ServiceError, TaskListNotFound) as exc:
            raise CommandError(str(exc), returncode=2)
        summary = execute(run, self, progress=not opts["json"])
        if opts["json"]:
            self.stdout.write(json.dumps(summary.as_dict()))
        else:
            self.stdout.write(describe(summary))
        if summary.status != RunStatus.SUCCEEDED:
            sys.exit(1)


def execute(run, command: BaseCommand, *, progress: bool):
    """Run a laid-out run here, with SIGINT/SIGTERM cancelling it. An executor that fails on
    its own error has closed the run: one line, exit 1."""
    bar = Bar(command) if progress else None
    engine = Engine(run, get_runner(run.backend), progress=bar)

    def handler(signum, frame):
        if engine.stop_reason:
            os._exit(130)  # a second signal: leave at once; the watchdog ends the task processes
        engine.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        return engine.execute()
    except EngineCrash as exc:
        raise CommandError(f"{exc} (the run is closed: resume it with --resume {run.pk})", returncode=1)
    except services.ServiceError as exc:
        raise CommandError(str(exc), returncode=2)
    finally:
        if bar:
            bar.stop()


def describe(s) -> str:
    bound = s.task_seconds / s.critical_path_seconds if s.critical_path_seconds else 0
    text = f"run {s.run_id} {s.status} in {s.wall_seconds:.2f}s: " + ", ".join(
        f"{n} {k}" for k, n in s.tasks.items() if n
    )
    if s.speedup >= 0.05:
        text += f"; {s.speedup:.1f}x faster than one after another"
        if bound:
            text += f" (critical-path bound {bound:.1f}x)"
    if s.gate_wait_seconds >= 0.05:
        text += f"; {s.gate_wait_seconds:.1f}s waiting for approval, not counted"
    return text + f", peak {s.peak_concurrency} in parallel"


class Bar:
    """The progress bar on stderr, and a line for each gate the run waits at, naming the
    command that approves it."""

    def __init__(self, command: BaseCommand):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]run {task.fields[run]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[running]} running"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task_id = None
        self.announced: set[str] = set()

    def __call__(self, engine: Engine) -> None:
        from executions.models import TaskStatus

        leaves = [n for n in engine.nodes.values() if not n.instances]
        done = sum(1 for n in leaves if n.wt.status in TaskStatus.terminal())
        if self.task_id is None:
            self.task_id = self.progress.add_task("run", total=len(leaves), run=engine.run.pk, running=0)
        self.progress.update(self.task_id, completed=done, total=len(leaves), running=len(engine.by_handle))
        for key in engine.waiting_gates():
            if key not in self.announced:
                self.announced.add(key)
                self.progress.console.print(
                    f"step {key} waits for approval: python manage.py approve_step {engine.run.pk} {key}"
                    f"  (add --reject to reject it)",
                    soft_wrap=True,  # one line, whatever the width, for people and for grep
                    markup=False,
                    highlight=False,
                )

    def stop(self) -> None:
        self.progress.stop()
