"""Audit histories for the concurrency tests: written through the one status-change function
(`executions.services.transition`, with the times given), and counted again by brute force
from the history itself, the definition read literally."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth.models import Group

from concurrency.selectors import Grid
from executions import services
from executions.models import ExecutionRun, ParallelExecutionWave, RunStatus, TaskStatus, WaveTask
from waves.models import Task, TaskList, TaskTemplate

S = TaskStatus


@dataclass
class Story:
    """One task in one run: its template and its statuses with their times (the first is its
    creation, pending unless a resume carried a success over)."""

    template: str
    steps: list[tuple[str, datetime]]
    key: str = ""
    run: int = 0


@dataclass
class Built:
    task_list: TaskList
    runs: list[ExecutionRun]
    wave_tasks: list[WaveTask] = field(default_factory=list)


def build(stories: list[Story], *, title: str = "timeline", team: Group | None = None) -> Built:
    tl = TaskList.objects.create(title=title, team=team)
    runs: dict[int, ExecutionRun] = {}
    waves: dict[int, ParallelExecutionWave] = {}
    tasks: dict[str, Task] = {}
    built = Built(tl, [])
    for i, story in enumerate(stories):
        key = story.key or f"t{i}"
        if key not in tasks:
            template, _ = TaskTemplate.objects.get_or_create(name=story.template)
            tasks[key] = Task.objects.create(
                task_list=tl, key=key, template=template, command="true", position=i
            )
        if story.run not in runs:
            runs[story.run] = ExecutionRun.objects.create(
                task_list=tl, status=RunStatus.RUNNING, started_at=story.steps[0][1]
            )
            waves[story.run] = ParallelExecutionWave.objects.create(execution=runs[story.run], wave_number=0)
        first, created = story.steps[0]
        (wt,) = services.wave_tasks_create(
            [
                WaveTask(
                    wave=waves[story.run], task=tasks[key], execution=runs[story.run], key=key, status=first
                )
            ],
            now=created,
        )
        for status, at in story.steps[1:]:
            previous = wt.status
            moved = services.transition(wt, status, expected=previous, now=at)
            assert list(moved) == [wt], (previous, status)
        built.wave_tasks.append(wt)
    built.runs = [runs[k] for k in sorted(runs)]
    return built


# --- brute force ---------------------------------------------------------------------------------


def periods(stories: list[Story], status: str, now: datetime) -> list[tuple[str, datetime, datetime]]:
    """(template, start, end): from each entry into `status` to the task's next step, or to
    now while it is still in it."""
    found = []
    for story in stories:
        for i, (st, at) in enumerate(story.steps):
            if st == status:
                end = story.steps[i + 1][1] if i + 1 < len(story.steps) else now
                found.append((story.template, at, end))
    return found


def count_at(found, template: str, t: datetime) -> int:
    return sum(1 for tpl, start, end in found if tpl == template and start <= t < end)


def brute_force(stories, status, now, grid: Grid, agg: str) -> dict[tuple[datetime, str], int]:
    """{(instant, template): count} for counts above zero."""
    found = periods(stories, status, now)
    step = timedelta(microseconds=grid.step_us)
    out = {}
    for k in range(grid.count):
        t = grid.instant(k)
        for template in {tpl for tpl, _, _ in found}:
            if agg == "sample":
                value = count_at(found, template, t)
            else:
                moments = [t] + [x for _, start, end in found for x in (start, end) if t < x < t + step]
                value = max(count_at(found, template, m) for m in moments)
            if value:
                out[t, template] = value
    return out


def as_points(timeline) -> dict[tuple[datetime, str], int]:
    return {
        (timeline.grid.instant(k), name): v
        for name, values in timeline.series
        for k, v in enumerate(values)
        if v
    }
