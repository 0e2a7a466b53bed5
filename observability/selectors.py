"""Read-only queries of the observability endpoints (no writes).

Every wave and run is reached through the task lists the user may see
(`waves.teams.visible_task_lists`), so another team's rows are never found. Each list
selector answers in one query whatever the number of rows: what a page shows of other
tables (the step key, the agent's instance id) comes by a join, not a query per row.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F, Max, Q

from executions.models import BuildAgentInstance, ExecutionRun, ParallelExecutionWave, WaveTask
from observability.models import AssertionResult, ToolUse, TranscriptEntry
from waves.teams import team_rule


def visible_runs(user):
    """The runs of the task lists `user` may see."""
    return ExecutionRun.objects.filter(team_rule(user, "task_list"))


def visible_waves(user):
    """The waves of the runs `user` may see."""
    return ParallelExecutionWave.objects.filter(team_rule(user, "execution__task_list"))


def wave_tasks_named(wave: ParallelExecutionWave, key: str):
    """Ids of the wave's tasks a step key names: the step itself, and for a for_each step
    its instances too (`step[0]`, `step[1]`, ...), so `?task=step` shows them all."""
    return WaveTask.objects.filter(Q(key=key) | Q(parent__key=key), wave=wave).values("pk")


def wave_transcript(wave: ParallelExecutionWave):
    """Seed 000 §7.3: the wave's transcript entries (the caller orders them by sequence)."""
    return TranscriptEntry.objects.filter(wave=wave).annotate(task_key=F("wave_task__key"))


def wave_tool_uses(wave: ParallelExecutionWave):
    """Seed 000 §7.4: the wave's tool uses, with the step key and the agent's instance id."""
    return ToolUse.objects.filter(wave=wave).annotate(
        task_key=F("wave_task__key"), instance_id=F("agent__instance_id")
    )


def wave_assertions(wave: ParallelExecutionWave):
    """The wave's assertion results, with the step key and the agent's instance id."""
    return AssertionResult.objects.filter(wave=wave).annotate(
        task_key=F("wave_task__key"), instance_id=F("agent__instance_id")
    )


def run_wave_tasks(run: ExecutionRun, keys: Iterable[str]) -> dict[str, WaveTask]:
    """The run's tasks with these keys (with their wave), by key: one query."""
    keys = set(keys)
    if not keys:
        return {}
    rows = WaveTask.objects.filter(execution=run, key__in=keys).select_related("wave")
    return {wt.key: wt for wt in rows}


def run_agents(run: ExecutionRun, instance_ids: Iterable[str]) -> dict[str, BuildAgentInstance]:
    """The run's agents with these instance ids (with their task in the run and its wave),
    by instance id: one query."""
    instance_ids = set(instance_ids)
    if not instance_ids:
        return {}
    rows = BuildAgentInstance.objects.filter(execution=run, instance_id__in=instance_ids).select_related(
        "wave_task__wave"
    )
    return {agent.instance_id: agent for agent in rows}


def transcript_sequence_next(run: ExecutionRun) -> int:
    """One past the highest transcript sequence of the run (index on execution, sequence)."""
    highest = TranscriptEntry.objects.filter(execution=run).aggregate(top=Max("sequence"))["top"]
    return (highest or 0) + 1
