"""Builders for captured output, as the executor hands it to observability."""

import itertools
import json
from datetime import UTC, datetime

from executions import services
from executions.capture import Captured
from executions.models import BuildAgentInstance, WaveTask

AT = datetime(2026, 1, 16, 10, 0, 0, tzinfo=UTC)
_sequence = itertools.count(1)


def agent_for(wt: WaveTask) -> BuildAgentInstance:
    (agent,) = services.agents_start(
        [
            BuildAgentInstance(
                instance_id=f"agent-{wt.execution_id}-{wt.key}-{next(_sequence)}",
                execution_id=wt.execution_id,
                wave_id=wt.wave_id,
                task_id=wt.task_id,
                wave_task=wt,
                started_at=AT,
            )
        ]
    )
    return agent


def captured(
    wt: WaveTask, kind: str, text, *, agent: BuildAgentInstance | None = None, at=AT, sequence=None
) -> Captured:
    """One captured line of `wt`; a dict `text` is an event line written as JSON."""
    return Captured(
        execution_id=wt.execution_id,
        wave_id=wt.wave_id,
        wave_number=wt.wave.wave_number,
        task_id=wt.task_id,
        wave_task_id=wt.pk,
        agent_id=agent.pk if agent else None,
        instance_id=agent.instance_id if agent else "",
        sequence=sequence if sequence is not None else next(_sequence),
        kind=kind,
        text=json.dumps(text) if isinstance(text, dict) else text,
        at=at,
    )


def event(wt: WaveTask, data, **kwargs) -> Captured:
    return captured(wt, "event", data, **kwargs)
