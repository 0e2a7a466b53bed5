"""python manage.py run_tasklist ID_OR_NAME [--max-parallelism N] [--backend local] [--resume RUN_ID]
[--simulate SCALE] [--schedule critical_path|fifo] [--json]

Parses arguments, installs signal handlers, calls the engine, prints. Exit 0 when the
run succeeded, 1 when it did not, 2 on bad arguments or input.
"""

import json
import os
import signal
import sys

from django.core.management.base import BaseCommand, CommandError

from executions import services
from executions.engine import Engine, EngineError, run_create
from executions.models import RunStatus
from executions.runners import get_runner
from waves.selectors import TaskListNotFound, task_list_get


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError
    return number


class Command(BaseCommand):
    help = "Run a task list in parallel waves and record everything."

    def add_arguments(self, parser):
        parser.add_argument("task_list", nargs="?", help="task list id or name (optional with --resume)")
        parser.add_argument(
            "--max-parallelism", type=positive_int, help="slots (default: the task list's, else 4)"
        )
        parser.add_argument("--backend", choices=["local"], default="local")
        parser.add_argument(
            "--resume", type=positive_int, metavar="RUN_ID", help="re-run what did not succeed"
        )
        parser.add_argument(
            "--simulate",
            type=positive_float,
            metavar="SCALE",
            help="each task sleeps estimated_minutes x SCALE seconds instead of its command",
        )
        parser.add_argument(
            "--schedule",
            choices=["critical_path", "fifo"],
            default="critical_path",
            help="order of ready tasks when slots are short (default: longest remaining path first)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON summary, no progress bar")

    def handle(self, *args, **opts):
        try:
            run = self._create(opts)
        except (EngineError, services.ServiceError, TaskListNotFound) as exc:
            raise CommandError(str(exc), returncode=2)
        engine = Engine(run, get_runner(opts["backend"]), progress=None if opts["json"] else self._progress())
        self._install_signals(engine)
        try:
            summary = engine.execute()
        finally:
            if getattr(self, "_bar", None):
                self._bar.stop()
        if opts["json"]:
            self.stdout.write(json.dumps(summary.as_dict()))
        else:
            s = summary
            bound = s.task_seconds / s.critical_path_seconds if s.critical_path_seconds else 0
            self.stdout.write(
                f"run {s.run_id} {s.status} in {s.wall_seconds:.2f}s: "
                + ", ".join(f"{n} {k}" for k, n in s.tasks.items() if n)
                + f"; {s.speedup:.1f}x faster than one after another"
                + (f" (critical-path bound {bound:.1f}x)" if bound else "")
                + f", peak {s.peak_concurrency} in parallel"
            )
        if summary.status != RunStatus.SUCCEEDED:
            sys.exit(1)

    def _create(self, opts):
        resume_of = None
        if opts["resume"]:
            from executions.models import ExecutionRun

            resume_of = ExecutionRun.objects.select_related("task_list").filter(pk=opts["resume"]).first()
            if resume_of is None:
                raise EngineError(f"run {opts['resume']} does not exist")
            services.reap_abandoned_runs()
            resume_of.refresh_from_db()
            if resume_of.status in (RunStatus.RUNNING, RunStatus.PENDING):
                raise EngineError(
                    f"run {resume_of.pk} is still running (executor pid {resume_of.executor_pid} "
                    f"on {resume_of.executor_hostname}); cancel it first"
                )
            if resume_of.status == RunStatus.SUCCEEDED:
                raise EngineError(f"run {resume_of.pk} succeeded; there is nothing to resume")
            task_list = resume_of.task_list
            if opts["task_list"] and str(opts["task_list"]) not in (str(task_list.pk), task_list.title):
                raise EngineError(
                    f"run {resume_of.pk} is a run of {task_list.title!r}, not {opts['task_list']!r}"
                )
        elif not opts["task_list"]:
            raise EngineError("name a task list (id or name), or --resume RUN_ID")
        else:
            task_list = task_list_get(opts["task_list"])
        return run_create(
            task_list,
            max_parallelism=opts["max_parallelism"] or (resume_of.max_parallelism if resume_of else None),
            backend=opts["backend"],
            simulate=opts["simulate"]
            if opts["simulate"] is not None
            else (resume_of.simulate_scale if resume_of else None),
            schedule=opts["schedule"],
            resume_of=resume_of,
        )

    def _install_signals(self, engine: Engine) -> None:
        def handler(signum, frame):
            if engine.stop_reason:
                # Second signal: leave at once; the watchdog ends the task processes.
                os._exit(130)
            engine.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _progress(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]run {task.fields[run]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[running]} running"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        task_id = None

        def update(engine: Engine):
            nonlocal task_id
            from executions.models import TaskStatus

            leaves = [n for n in engine.nodes.values() if not n.instances]
            done = sum(1 for n in leaves if n.wt.status in TaskStatus.terminal())
            if task_id is None:
                task_id = self._bar.add_task("run", total=len(leaves), run=engine.run.pk, running=0)
            self._bar.update(task_id, completed=done, total=len(leaves), running=len(engine.by_handle))

        return update
