"""What the scheduler works on and what it answers: step and block definitions, and the
decisions the engine carries out (executions/scheduler.py explains them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from executions.models import TaskStatus

S = TaskStatus
UNSET: Any = object()  # "no outputs given" (None is a value)


@dataclass(frozen=True, slots=True)
class StepDef:
    """A step as the scheduler sees it (built from the task's definition)."""

    key: str
    deps: tuple[str, ...] = ()  # steps or blocks it depends on
    groups: tuple[str, ...] = ()  # enclosing parallel blocks, innermost first
    template: Any = None
    template_limit: int | None = None
    join_policy: str = "all"
    condition: str = ""
    approval: bool = False
    for_each: Any = None  # a literal list or a `${steps...}` reference
    repeat: dict | None = None
    retries: int = 0
    max_parallelism: int | None = None  # of a for_each step's instances
    priority: float = 0.0
    order: int = 0
    parent: str | None = None  # the for_each step of an instance
    item: Any = None


@dataclass(frozen=True, slots=True)
class GroupDef:
    key: str
    children: tuple[str, ...]
    join_policy: str = "all"
    max_parallelism: int | None = None
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class Launch:
    key: str
    iteration: int


@dataclass(frozen=True, slots=True)
class Queue:
    key: str
    reason: str | None = None
    outputs: Any = UNSET  # a repeat keeps the outputs of the iteration that just ended


@dataclass(frozen=True, slots=True)
class Gate:
    key: str


@dataclass(frozen=True, slots=True)
class Expand:
    key: str
    instances: tuple[StepDef, ...]  # new instances (none when a resume carried them over)
    count: int  # instances in all


@dataclass(frozen=True, slots=True)
class Settle:
    key: str
    status: str
    reason: str | None = None
    error: str = ""
    outputs: Any = UNSET
    actor: str | None = None


Decision = Launch | Queue | Gate | Expand | Settle


def joined(policy: str, outcomes: list[str]) -> bool:
    """Whether a join policy lets what follows go ahead, given the outcomes."""
    if policy == "any":
        return not outcomes or S.SUCCEEDED in outcomes
    if policy == "always":
        return True
    return all(o == S.SUCCEEDED for o in outcomes)
