from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Captured:
    """One line of output (or of $TIDEWATCH_EVENTS) from an attempt, with where it belongs."""

    execution_id: int
    wave_id: int
    wave_number: int
    task_id: int
    wave_task_id: int
    agent_id: int | None
    instance_id: str
    sequence: int
    kind: str
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    wave_task_id: int
    task_id: int
    execution_id: int
    wave_id: int
    previous_status: str | None
    new_status: str
