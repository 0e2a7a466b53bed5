"""The engine's records of one turn, written together when the turn ends.

Decisions change the engine's rows in memory at once (so the next decision about the same
step expects the right status) and are written at the end of the turn, after the turn's
attempts have started. Writes of one kind and the same values go in one statement
(`transitions.transition` for many steps at once), while each step's own writes keep
their order. Wave starts and ends follow from the steps' statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from executions import transitions
from executions.errors import OwnershipLost
from executions.models import (
    BuildAgentInstance,
    ExecutionRun,
    ParallelExecutionWave,
    TaskStatus,
    WaveStatus,
    WaveTask,
)
from executions.scheduler import UNSET, Expand, Queue, Settle
from executions.sessions import session_count
from executions.steps import Node, safe

S = TaskStatus
TERMINAL = S.terminal()
INSERTED = ("wave_id", "task", "execution", "key", "parent", "item_index", "item", "status")


@dataclass
class _Group:
    kind: str
    sig: tuple
    items: list = field(default_factory=list)


@dataclass
class _Wave:
    wave: ParallelExecutionWave
    keys: set = field(default_factory=set)
    done: int = 0


class Writes:
    def __init__(self, run: ExecutionRun, nodes: dict[str, Node]):
        self.run = run
        self.nodes = nodes  # the engine's, instances added as they are created
        self.groups: list[_Group] = []
        self.last_of_sig: dict[tuple, int] = {}
        self.last_of_obj: dict[int, int] = {}
        self.waves: dict[int, _Wave] = {}
        for key, node in nodes.items():
            state = self.waves.setdefault(node.wt.wave_id, _Wave(node.wt.wave))
            state.keys.add(key)
            state.done += node.wt.status in TERMINAL
        self.waves_started: list[tuple[_Wave, datetime]] = []
        self.waves_done: list[tuple[_Wave, datetime | None]] = []

    def wave_number(self, wt: WaveTask) -> int:
        return self.waves[wt.wave_id].wave.wave_number

    # --- gathering ---------------------------------------------------------------------------------

    def _add(self, kind: str, sig: tuple, obj: Any, item: Any) -> None:
        """Into the last group of this kind and signature, unless `obj` already has a write
        there or after it (its writes keep their order)."""
        index = self.last_of_sig.get((kind, sig))
        floor = self.last_of_obj.get(id(obj), -1)
        if index is None or index <= floor:
            index = len(self.groups)
            self.groups.append(_Group(kind, sig))
            self.last_of_sig[(kind, sig)] = index
        self.groups[index].items.append(item)
        self.last_of_obj[id(obj)] = index

    def _move(self, node, new: str, now: datetime, *, reason=None, actor=None, own=(), **fields) -> None:
        """A status change of a step: in memory now, written at the end of the turn."""
        wt = node.wt
        expected = frozenset(transitions.UNFINISHED if new == S.CANCELLED else [wt.status])
        self.status_seen(node, new, now)
        wt.status = new
        for name, value in fields.items():
            setattr(wt, name, value)
        sig = (new, reason, actor, expected, tuple(own), tuple(sorted(fields.items())), now)
        self._add("move", sig, wt, wt)

    def status_seen(self, node, new: str, now: datetime | None = None) -> None:
        """Keep the waves' counts: a wave completes when its last step becomes final."""
        state = self.waves[node.wt.wave_id]
        if new in TERMINAL and node.wt.status not in TERMINAL:
            state.done += 1
            if state.done == len(state.keys):
                self.waves_done.append((state, now))

    def settle(self, node, d: Settle, now: datetime) -> None:
        own = ["error", "exit_code", "attempt"]  # attempt: one that ended while still queued
        node.wt.error = d.error
        if d.outputs is not UNSET:
            node.wt.outputs = d.outputs
            own.append("outputs")
        self._move(node, d.status, now, reason=d.reason, actor=d.actor, own=own, completed_at=now)

    def queue(self, node, d: Queue, now: datetime) -> None:
        own = []
        if d.outputs is not UNSET:
            node.wt.outputs = d.outputs
            own.append("outputs")
        self._move(node, S.QUEUED, now, reason=d.reason, own=own)

    def launch(self, node, iteration: int, now: datetime) -> None:
        attempt = f"attempt {node.wt.attempt}"
        reason = f"iteration {iteration}, {attempt}" if node.task.repeat else attempt
        # exit_code is the step's own, not a value the group shares: a queueing runner may report
        # the start and the end in one turn, and the end's code is set before either is written.
        node.wt.exit_code = None
        self._move(node, S.RUNNING, now, reason=reason, own=["attempt", "exit_code"], started_at=now, completed_at=None)
        self._wave_started(node, now)

    def sent(self, node, now: datetime) -> None:
        """An attempt handed to a queueing runner: the step is queued until a worker starts it."""
        if node.wt.status != S.QUEUED:
            self._move(node, S.QUEUED, now, reason=f"attempt {node.wt.attempt} waits for a worker", own=["attempt"])

    def gate(self, node) -> None:
        expected = node.wt.status
        node.wt.status = S.WAITING_APPROVAL
        self._add("gate", (), node.wt, (node, expected))

    def expand(self, node, d: Expand, now: datetime) -> list:
        """A for_each step's instances (new rows, inserted first) and the step running."""
        created = []
        for inst in d.instances:
            wt = WaveTask(
                wave_id=node.wt.wave_id, task=node.task, execution=self.run, key=inst.key, parent=node.wt,
                item_index=int(inst.key.rsplit("[", 1)[1][:-1]), item=inst.item,
            )  # fmt: skip
            created.append(Node(wt, node.task))
            self.waves[wt.wave_id].keys.add(inst.key)
        if created:
            # Inserted as they are now (pending): what the turn decides for them comes after.
            rows = [(n.wt, {f: getattr(n.wt, f) for f in INSERTED}) for n in created]
            self._add("insert", (node.wt.key, now), node.wt, rows)
        self._move(node, S.RUNNING, now, reason=f"for_each over {d.count} items", started_at=now)
        self._wave_started(node, now)
        return created

    def agent_started(self, node, event, now: datetime) -> BuildAgentInstance:
        agent = BuildAgentInstance(
            instance_id=f"r{self.run.pk}-{safe(node.wt.key)}-a{node.wt.attempt}", execution=self.run,
            wave_id=node.wt.wave_id, task=node.task, wave_task=node.wt, attempt=node.wt.attempt,
            started_at=now, last_heartbeat=now, hostname=event.hostname, pid=event.pid,
        )  # fmt: skip
        self._add("agents_start", (), agent, agent)
        return agent

    def agent_finished(self, agent: BuildAgentInstance, status: str, exit_code, now: datetime) -> None:
        self._add("agents_finish", (), agent, (agent, status, exit_code, now))

    def _wave_started(self, node, now: datetime) -> None:
        state = self.waves[node.wt.wave_id]
        if state.wave.status == WaveStatus.PENDING and all(s is not state for s, _ in self.waves_started):
            self.waves_started.append((state, now))

    def waves_settled_at_start(self, now: datetime) -> None:
        """Waves whose every step was final before the run began (carried over by a resume)."""
        for state in self.waves.values():
            if state.done == len(state.keys) and state.wave.status not in WaveStatus.terminal():
                self.waves_done.append((state, now))

    # --- writing -----------------------------------------------------------------------------------

    def flush(self, gate_decided: Callable[[str, str, str], None]) -> bool:
        """Write what the turn gathered, in order. A gate whose decision is already on record
        is handed to `gate_decided` instead of waiting; returns whether that happened (its
        decisions may have freed work for another dispatch)."""
        decided = False
        i = 0
        while i < len(self.groups):  # gate_decided may add groups as we go
            group = self.groups[i]
            i += 1
            if group.kind == "move":
                new, reason, actor, expected, own, fields, now = group.sig
                moved = transitions.transition(
                    group.items, new, expected=expected, reason=reason, actor=actor, now=now, own_fields=own,
                    **dict(fields),
                )  # fmt: skip
                for wt, actual in moved.lost:
                    raise OwnershipLost(
                        f"step {wt.key} of run {self.run.pk} is {actual}, changed by another process"
                    )
            elif group.kind == "gate":
                for node, expected in group.items:
                    decided |= self._gate(node, expected, gate_decided)
            elif group.kind == "insert":
                rows = group.items[0]
                fresh = [WaveTask(**values) for _, values in rows]
                key, now = group.sig
                transitions.wave_tasks_create(fresh, reason=f"for_each instance of {key}", now=now)
                for (wt, _), row in zip(rows, fresh, strict=True):
                    wt.pk = row.pk
                session_count(self.run.session_id, tasks=len(rows))
            elif group.kind == "agents_start":
                transitions.agents_start(group.items)
            elif group.kind == "agents_finish":
                transitions.agents_finish(group.items)
        self.groups.clear()
        self.last_of_sig.clear()
        self.last_of_obj.clear()
        self._write_waves()
        return decided

    def _gate(self, node, expected: str, gate_decided) -> bool:
        """The run reached a gate: read its decision under the row's lock (an approval given
        in advance is not lost between the read and the move), then wait or act on it."""
        decision, by = (
            WaveTask.objects.select_for_update()
            .filter(pk=node.wt.pk)
            .values_list("approval_decision", "approved_by")
            .get()
        )
        if decision:
            node.wt.status = expected
            gate_decided(node.wt.key, decision, by)
            return True
        node.wt.status = expected
        self._move_now(node, S.WAITING_APPROVAL, "waiting for approval")
        return False

    def _move_now(self, node, new: str, reason: str) -> None:
        moved = transitions.transition(node.wt, new, expected=node.wt.status, reason=reason)
        if moved.lost:
            raise OwnershipLost(f"step {node.wt.key} of run {self.run.pk} is {moved.lost[0][1]}")

    def _write_waves(self) -> None:
        for state, now in self.waves_started:
            if state.wave.status == WaveStatus.PENDING:
                transitions.wave_update(state.wave, status=WaveStatus.RUNNING, started_at=now, now=now)
        self.waves_started.clear()
        for state, now in self.waves_done:
            now = now or timezone.now()
            statuses = {self.nodes[key].wt.status for key in state.keys}
            transitions.wave_update(
                state.wave, status=wave_outcome(statuses), started_at=state.wave.started_at or now,
                completed_at=now, now=now,
            )  # fmt: skip
        self.waves_done.clear()


def wave_outcome(statuses: set[str]) -> str:
    """How a wave whose steps are all final ended."""
    if statuses & {S.FAILED, S.LOST}:
        return WaveStatus.FAILED
    if S.CANCELLED in statuses:
        return WaveStatus.CANCELLED
    if statuses and statuses <= {S.SKIPPED}:
        return WaveStatus.SKIPPED
    return WaveStatus.SUCCEEDED
