"""A populated database for admin and foundation tests: runs with waves, wave tasks, agents,
transcripts, tool uses, assertions, skill traces and statistics.

Statuses go through executions.services only (tests/factories.py creates wave tasks with
`wave_tasks_create`); the records (agents, transcripts, ...) are plain ORM rows, as an
executor would write them.
"""

import itertools
from datetime import timedelta

from django.utils import timezone

from executions.models import (
    AgentStatus,
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    ParallelExecutionWave,
    WaveTask,
)
from observability.models import AssertionResult, SkillTrace, ToolUse, TranscriptEntry, WaveStatistics
from tests.factories import run_with_waves, task_list
from waves.models import Task, TaskTemplate

_serial = itertools.count(1)


def populate(size: int) -> ConcurrentExecutionSession:
    """One task list of `size` tasks plus an approval gate, and `size` runs of it in one
    session. Each run: wave 0 holds the tasks, wave 1 the gate; every wave task has a running
    agent, two transcript lines, a tool use, an assertion and a skill trace; every wave has
    its statistics row. So every table (and every inline) grows with `size`."""
    n = next(_serial)
    keys = [f"t{i}" for i in range(size)]
    tl = task_list(f"list-{n}-{size}", keys=[*keys, "gate"], edges=[("gate", k) for k in keys])
    for i, key in enumerate(keys):
        template, _ = TaskTemplate.objects.get_or_create(name=f"template-{i}")
        Task.objects.filter(task_list=tl, key=key).update(template=template)
    Task.objects.filter(task_list=tl, key="gate").update(approval=True, kind=Task.Kind.GATE)
    now = timezone.now()
    session = ConcurrentExecutionSession.objects.create(started_at=now, execution_count=size)
    for _ in range(size):
        run = run_with_waves(tl, [keys, ["gate"]])
        ExecutionRun.objects.filter(pk=run.pk).update(session=session)
        records(run, now)
    return session


def records(run: ExecutionRun, now) -> None:
    """What an executor leaves behind for each wave task of `run`."""
    agents, entries, tools, asserts, skills = [], [], [], [], []
    wave_tasks = list(WaveTask.objects.filter(execution=run).select_related("wave"))
    for i, wt in enumerate(wave_tasks):
        agents.append(
            BuildAgentInstance(
                instance_id=f"agent-{run.pk}-{wt.pk}",
                execution=run,
                wave=wt.wave,
                task_id=wt.task_id,
                wave_task=wt,
                status=AgentStatus.RUNNING,
                started_at=now - timedelta(seconds=30),
                last_heartbeat=now,
                hostname="test",
                pid=1000 + i,
            )
        )
    agents = BuildAgentInstance.objects.bulk_create(agents)
    for i, (wt, agent) in enumerate(zip(wave_tasks, agents, strict=True)):
        common = dict(execution=run, wave=wt.wave, task_id=wt.task_id, wave_task=wt, agent=agent)
        for j, kind in enumerate(("stdout", "stderr")):
            entries.append(
                TranscriptEntry(
                    **common,
                    wave_number=wt.wave.wave_number,
                    instance_id=agent.instance_id,
                    sequence=2 * i + j,
                    entry_type=kind,
                    content=f"{wt.key} line {j}",
                    created_at=now,
                )
            )
        tools.append(
            ToolUse(
                **common,
                tool_name="bash",
                input={"cmd": "true"},
                is_error=i % 2 == 1,
                start_time=now + timedelta(seconds=i),
                duration_ms=5,
            )
        )
        asserts.append(AssertionResult(**common, name="ok", passed=i % 2 == 0, created_at=now))
        skills.append(SkillTrace(**common, skill_name="plan", started_at=now, duration_ms=3))
    TranscriptEntry.objects.bulk_create(entries)
    ToolUse.objects.bulk_create(tools)
    AssertionResult.objects.bulk_create(asserts)
    SkillTrace.objects.bulk_create(skills)
    for wave in ParallelExecutionWave.objects.filter(execution=run):
        count = sum(1 for wt in wave_tasks if wt.wave_id == wave.pk)
        WaveStatistics.objects.update_or_create(
            wave=wave,
            defaults=dict(
                execution=run,
                task_count=count,
                transcript_entry_count=2 * count,
                tool_use_count=count,
                started_at=now,
            ),
        )
