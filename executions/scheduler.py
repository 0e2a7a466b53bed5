"""What runs when: a plain state machine with no database, no processes and no clock of its own.

The engine feeds it what happened (an attempt ended, a gate was approved, a cancel) and it
answers with decisions (`Launch`, `Queue`, `Gate`, `Expand`, `Settle`) that the engine
records and carries out, in the order given. It holds the ready set ordered by priority
(longest remaining path first, or list order), the slot limits (the run's, a template's, a
parallel block's, a for_each step's), the join policies and the control flow
(`when`, `for_each`, `repeat`, approval gates).

A step moves pending -> (queued) -> running -> succeeded | failed, or to skipped,
cancelled or waiting_approval. A for_each step is expanded into instances `key[i]` when
its dependencies are done; it is running while they run and settles when the last of
them does. Parallel blocks are not steps: their outcome (a join policy over their
children) is what steps that depend on the block wait for.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from executions.decisions import (  # noqa: F401  (re-exported: the scheduler's vocabulary)
    UNSET,
    Decision,
    Expand,
    Gate,
    GroupDef,
    Launch,
    Queue,
    Settle,
    StepDef,
    joined,
)
from executions.models import TaskStatus
from executions.resolve import ResolveError, evaluate, resolve_value

S = TaskStatus
TERMINAL = S.terminal()


@dataclass(eq=False, slots=True)
class _Step:
    d: StepDef
    status: str
    outputs: Any = None
    instances: list[str] | None = None
    iteration: int = 1
    tries: int = 0
    approved: bool = False
    not_before: float = 0.0


class Scheduler:
    def __init__(
        self,
        steps: list[tuple[StepDef, str, Any]],
        groups: list[GroupDef] = (),
        *,
        max_parallelism: int,
    ):
        """`steps`: (definition, current status, current outputs), for_each instances
        (carried over by a resume) after their step."""
        self.max_parallelism = max_parallelism
        self.steps: dict[str, _Step] = {}
        self.groups = {g.key: g for g in groups}
        self.group_status: dict[str, str] = {}
        self.dependents: dict[str, list[str]] = defaultdict(list)
        self.ready: list[tuple[float, int, str]] = []  # heap: waiting for a slot
        self.fresh: list[str] = []  # made ready since the last dispatch, still pending
        self.delayed: list[str] = []  # repeats waiting out their delay
        self.running: set[str] = set()
        self.waiting: set[str] = set()  # gates waiting for approval
        self.cancelling: str | None = None  # who cancelled
        self.in_use: dict[Any, int] = defaultdict(int)  # slots by template and by scope
        self.open = 0  # steps not final yet
        self.out: list[Decision] = []
        # What `${steps...}` and CEL see: updated as steps and blocks settle, never rebuilt.
        self.ctx: dict[str, dict] = {}
        for d, status, outputs in steps:
            self.steps[d.key] = _Step(d, status, outputs)
            self.open += status not in TERMINAL
            if not d.parent:
                self.ctx[d.key] = {"outputs": outputs, "status": status}
            for dep in d.deps:
                self.dependents[dep].append(d.key)
            if d.parent:
                parent = self.steps[d.parent]
                parent.instances = (parent.instances or []) + [d.key]
        for key in self.groups:
            self._group_settle(key)

    # --- what the engine asks --------------------------------------------------------------

    @property
    def unfinished(self) -> bool:
        return self.open > 0 or bool(self.running)

    @property
    def idle_on_gates(self) -> bool:
        """Nothing runs, waits for a slot or a delay: only approvals can move the run on."""
        return bool(self.waiting) and not (self.running or self.ready or self.fresh or self.delayed)

    def status(self, key: str) -> str:
        return self.steps[key].status

    def context(self, key: str) -> dict:
        """What `${...}` references and CEL conditions of this step see."""
        step = self.steps[key]
        ctx = {"steps": self.ctx, "iteration": step.iteration}
        if step.d.parent:
            ctx["item"] = step.d.item
        return ctx

    # --- what the engine tells it --------------------------------------------------------------

    def start(self) -> list[Decision]:
        """Decide every step whose dependencies are settled (all of them, at a fresh start)."""
        for step in list(self.steps.values()):
            if step.status in (S.PENDING, S.QUEUED, S.WAITING_APPROVAL) and not step.d.parent:
                if all(self._outcome(d) is not None for d in step.d.deps):
                    self._decide(step)
        return self._take()

    def dispatch(self, now: float) -> list[Decision]:
        """Launch what fits in the free slots, best first; what does not fit is queued."""
        if self.cancelling:
            return self._take()
        due = [k for k in self.delayed if self.steps[k].not_before <= now]
        for key in due:
            self.delayed.remove(key)
            self._push(self.steps[key])
        blocked = []
        while self.ready and len(self.running) < self.max_parallelism:
            entry = heapq.heappop(self.ready)
            step = self.steps[entry[2]]
            if step.status not in (S.PENDING, S.QUEUED) or step.d.key in self.running:
                continue
            if self._limited(step):
                blocked.append(entry)
                continue
            self._reserve(step, +1)
            step.status = S.RUNNING
            step.tries += 1
            self.out.append(Launch(step.d.key, step.iteration))
        for entry in blocked:
            heapq.heappush(self.ready, entry)
        for key in self.fresh:
            if self.steps[key].status == S.PENDING:
                self._set(key, S.QUEUED, Queue(key))
        self.fresh = []
        return self._take()

    def finished(
        self,
        key: str,
        *,
        error: str | None = None,
        cancelled: bool = False,
        retry: bool = True,
        outputs: Any = None,
        now: float = 0.0,
        lost: bool = False,
    ) -> list[Decision]:
        """An attempt ended: succeeded (no error), failed with `error`, was cancelled, or
        was lost with what ran it (`error` says how; a resume runs it again)."""
        step = self.steps[key]
        self._reserve(step, -1)
        if cancelled:
            reason = f"cancelled by {self.cancelling or 'signal'}"
            self._settle(step, S.CANCELLED, reason, actor=self.cancelling)
        elif lost:
            self._settle(step, S.LOST, error, error=error)
        elif error:
            if retry and step.tries <= step.d.retries and not self.cancelling:
                self._set(key, S.QUEUED, Queue(key, f"retry {step.tries}/{step.d.retries} after {error}"))
                self._push(step)
            else:
                self._settle(step, S.FAILED, error, error=error)
        elif step.d.repeat:
            self._repeat(step, outputs, now)
        else:
            self._settle(step, S.SUCCEEDED, None, outputs=outputs)
        return self._take()

    def fail(self, key: str, reason: str, error: str) -> list[Decision]:
        """A step that was to launch cannot (its inputs do not resolve): it fails, no retry."""
        step = self.steps[key]
        self._reserve(step, -1)
        self._settle(step, S.FAILED, reason, error=error)
        return self._take()

    def gate_decided(
        self, key: str, *, approved: bool, by: str = "", recorded: str | None = None
    ) -> list[Decision]:
        """The decision on a gate: found when the run reached it (`recorded` None: the
        engine records what follows), or made while it waited, by another process that
        recorded the status it moved the gate to (`recorded`: queued, or failed)."""
        step = self.steps[key]
        self.waiting.discard(key)
        if recorded:
            step.status = recorded
        if recorded in TERMINAL:
            self._after_settle(step)
        elif approved:
            step.approved = True
            if not recorded:
                step.status = S.PENDING  # the gate was never recorded as waiting
            self._decide(step)
        else:
            self._settle(step, S.FAILED, "rejected", error=f"rejected by {by or 'someone'}", actor=by or None)
        return self._take()

    def cancel(self, by: str) -> list[Decision]:
        """Stop launching; cancel every step that has not started (running ones are
        terminated by the engine and reported through finished(cancelled=True))."""
        self.cancelling = by
        self.ready.clear()
        self.fresh.clear()
        self.delayed.clear()
        pending = [
            s
            for s in self.steps.values()
            if s.status not in TERMINAL and s.d.key not in self.running and not s.instances
        ]
        # Instances first: the last instance of a for_each step to settle settles the step.
        for step in sorted(pending, key=lambda s: s.d.parent is None):
            if step.status not in TERMINAL:
                self._settle(step, S.CANCELLED, f"run cancelled by {by}", actor=by)
        return self._take()

    # --- deciding -------------------------------------------------------------------------------

    def _decide(self, step: _Step) -> None:
        """Every dependency of a step is settled: run it, skip it, gate it or expand it."""
        if self.cancelling:
            return
        outcomes = {d: self._outcome(d) for d in step.d.deps}
        if not joined(step.d.join_policy, list(outcomes.values())):
            if step.d.join_policy == "any":
                return self._settle(step, S.SKIPPED, "no dependency succeeded")
            bad = next(d for d, o in outcomes.items() if o != S.SUCCEEDED)
            return self._settle(step, S.SKIPPED, f"dependency {bad} {outcomes[bad]}")
        if step.d.condition:
            try:
                if not evaluate(step.d.condition, self.context(step.d.key)):
                    return self._settle(step, S.SKIPPED, "condition false")
            except ResolveError as exc:
                return self._settle(step, S.FAILED, "condition error", error=str(exc))
        if step.d.approval and not step.approved:
            if step.d.key not in self.waiting:
                self.waiting.add(step.d.key)
                # The engine records it, unless a decision is already on record (gate_decided).
                self._set(step.d.key, S.WAITING_APPROVAL, Gate(step.d.key))
            return
        if step.d.for_each is not None and not step.d.parent:
            return self._expand(step)
        self._push(step)
        self.fresh.append(step.d.key)

    def _expand(self, step: _Step) -> None:
        key = step.d.key
        if step.instances is None:
            try:
                items = step.d.for_each
                if isinstance(items, str):
                    items = resolve_value(items, self.context(key))
            except ResolveError as exc:
                return self._settle(step, S.FAILED, "for_each error", error=str(exc))
            if not isinstance(items, list):
                shown = json.dumps(items, default=str)[:200]
                error = f"for_each of {key} must be a list, got {type(items).__name__}: {shown}"
                return self._settle(step, S.FAILED, "for_each error", error=error)
            d = step.d
            instances = tuple(
                StepDef(
                    key=f"{key}[{i}]", groups=d.groups, template=d.template, template_limit=d.template_limit,
                    repeat=d.repeat, retries=d.retries, priority=d.priority, order=d.order + i, parent=key,
                    item=item,
                )  # fmt: skip
                for i, item in enumerate(items)
            )
            step.instances = [i.key for i in instances]
            for inst in instances:
                self.steps[inst.key] = _Step(inst, S.PENDING)
            self.open += len(instances)
        else:
            instances = ()
        self._set(key, S.RUNNING, Expand(key, instances, len(step.instances)))
        for inst_key in step.instances:
            inst = self.steps[inst_key]
            if inst.status not in TERMINAL:
                self._push(inst)
                self.fresh.append(inst_key)
        self._fanout_settle(step)

    def _repeat(self, step: _Step, outputs: Any, now: float) -> None:
        until = step.d.repeat["until"]
        step.outputs = outputs
        self.ctx[step.d.key] = {"outputs": outputs, "status": S.RUNNING}
        try:
            met = evaluate(until, self.context(step.d.key))
        except ResolveError as exc:
            return self._settle(step, S.FAILED, "until error", error=str(exc), outputs=outputs)
        if met:
            return self._settle(step, S.SUCCEEDED, None, outputs=outputs)
        limit = step.d.repeat.get("max_iterations", 10)
        if step.iteration >= limit:
            msg = f"until not met after {limit} iterations"
            return self._settle(step, S.FAILED, msg, error=msg, outputs=outputs)
        step.iteration += 1
        step.tries = 0
        step.not_before = now + float(step.d.repeat.get("delay", 0) or 0)
        reason = f"repeat: until not met, iteration {step.iteration} next"
        self._set(step.d.key, S.QUEUED, Queue(step.d.key, reason, outputs=outputs))
        self.delayed.append(step.d.key)

    # --- settling and what it wakes ------------------------------------------------------------

    def _settle(self, step: _Step, status: str, reason: str | None, **fields) -> None:
        if fields.get("outputs", UNSET) is not UNSET:
            step.outputs = fields["outputs"]
        self._set(step.d.key, status, Settle(step.d.key, status, reason, **fields))
        self._after_settle(step)

    def _after_settle(self, step: _Step) -> None:
        self.open -= 1
        self.waiting.discard(step.d.key)
        if step.d.parent:
            return self._fanout_settle(self.steps[step.d.parent])
        self.ctx[step.d.key] = {"outputs": step.outputs, "status": step.status}
        self._wake(step.d.key)
        if step.d.groups:
            self._group_settle(step.d.groups[0], wake=True)

    def _wake(self, key: str) -> None:
        for dep_key in self.dependents.get(key, ()):
            step = self.steps[dep_key]
            if (
                step.status == S.PENDING
                and dep_key not in self.waiting
                and not step.instances
                and all(self._outcome(d) is not None for d in step.d.deps)
            ):
                self._decide(step)

    def _group_settle(self, key: str, wake: bool = False) -> None:
        group = self.groups[key]
        if key in self.group_status:
            return
        outcomes = [self._outcome(c) for c in group.children]
        if any(o is None for o in outcomes):
            return
        status = S.SUCCEEDED if joined(group.join_policy, outcomes) else S.FAILED
        self.group_status[key] = status
        outputs = {c: (self.ctx.get(c) or {}).get("outputs") for c in group.children}
        self.ctx[key] = {"outputs": outputs, "status": status}
        if wake:
            self._wake(key)
            if group.parent:
                self._group_settle(group.parent, wake=True)

    def _fanout_settle(self, step: _Step) -> None:
        """A for_each step ends when all its instances have; its outputs are theirs, in order."""
        instances = [self.steps[k] for k in step.instances]
        if step.status in TERMINAL or any(i.status not in TERMINAL for i in instances):
            return
        statuses = [i.status for i in instances]
        outputs = [i.outputs for i in instances]
        ok = joined(step.d.join_policy, statuses)
        if ok:
            return self._settle(step, S.SUCCEEDED, None, outputs=outputs)
        if self.cancelling:
            return self._settle(step, S.CANCELLED, "run cancelled", outputs=outputs, actor=self.cancelling)
        failed = sum(1 for s in statuses if s != S.SUCCEEDED)
        msg = f"{failed} of {len(statuses)} instances did not succeed"
        self._settle(step, S.FAILED, msg, error=msg, outputs=outputs)

    # --- slots ------------------------------------------------------------------------------------

    def _scopes(self, step: _Step) -> list[tuple[Any, int | None]]:
        scopes = [(("template", step.d.template), step.d.template_limit)]
        scopes += [(("group", g), self.groups[g].max_parallelism) for g in step.d.groups]
        if step.d.parent:
            scopes.append((("step", step.d.parent), self.steps[step.d.parent].d.max_parallelism))
        return scopes

    def _limited(self, step: _Step) -> bool:
        return any(limit and self.in_use[scope] >= limit for scope, limit in self._scopes(step))

    def _reserve(self, step: _Step, delta: int) -> None:
        (self.running.add if delta > 0 else self.running.discard)(step.d.key)
        for scope, _ in self._scopes(step):
            self.in_use[scope] += delta

    # --- helpers ----------------------------------------------------------------------------------

    def _outcome(self, key: str) -> str | None:
        """The status of a dependency (a step or a block) once it is settled, else None."""
        if key in self.groups:
            return self.group_status.get(key)
        status = self.steps[key].status
        return status if status in TERMINAL else None

    def _push(self, step: _Step) -> None:
        heapq.heappush(self.ready, (-step.d.priority, step.d.order, step.d.key))

    def _set(self, key: str, status: str, decision: Decision) -> None:
        self.steps[key].status = status
        self.out.append(decision)

    def _take(self) -> list[Decision]:
        out, self.out = self.out, []
        return out

