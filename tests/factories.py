"""Small builders for named scenarios (plain functions, no factory library)."""

from django.utils import timezone

from executions import services
from executions.models import ExecutionRun, ParallelExecutionWave, RunStatus, WaveTask
from waves.models import Task, TaskDependency, TaskList, TaskTemplate


def task_list(title="etl", *, edges=(), keys=("a", "b", "c"), template="shell", **fields) -> TaskList:
    """A task list whose tasks are `keys` with `edges` as (task, depends_on) pairs."""
    tl = TaskList.objects.create(title=title, **fields)
    tpl, _ = TaskTemplate.objects.get_or_create(name=template)
    tasks = {
        key: Task.objects.create(
            task_list=tl, key=key, title=key.title(), template=tpl, command="true", position=i
        )
        for i, key in enumerate(keys)
    }
    for task, dep in edges:
        TaskDependency.objects.create(task=tasks[task], depends_on=tasks[dep])
    return tl


def run_with_waves(tl: TaskList, waves: list[list[str]], *, status=RunStatus.RUNNING) -> ExecutionRun:
    """A run of `tl` with wave rows and pending wave tasks laid out as `waves`."""
    now = timezone.now()
    run = ExecutionRun.objects.create(
        task_list=tl, status=status, started_at=now, max_parallelism=tl.max_parallelism
    )
    tasks = {t.key: t for t in tl.tasks.all()}
    rows = []
    for number, keys in enumerate(waves):
        wave = ParallelExecutionWave.objects.create(execution=run, wave_number=number)
        rows += [WaveTask(wave=wave, task=tasks[k], execution=run, key=k) for k in keys]
    services.wave_tasks_create(rows)
    return run
