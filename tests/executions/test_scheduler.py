"""The scheduler alone: no database, no processes, a fake clock.

A small driver plays the engine: it starts what the scheduler says to launch, ends
attempts in an order the test chooses, and keeps the statuses the decisions set."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executions.scheduler import Expand, Gate, GroupDef, Launch, Queue, Scheduler, Settle, StepDef

P, Q, R = "pending", "queued", "running"
OK, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"


class Driver:
    def __init__(self, steps, groups=(), *, max_parallelism=4, limits=None):
        self.defs = {d.key: d for d in steps}
        self.sched = Scheduler([(d, P, None) for d in steps], list(groups), max_parallelism=max_parallelism)
        self.status = {d.key: P for d in steps}
        self.running: list[str] = []
        self.launched: list[str] = []
        self.settled: dict[str, Settle] = {}
        self.gates: list[str] = []
        self.peak: dict = {}
        self.limits = limits or {}
        self.now = 0.0
        self.take(self.sched.start())

    def take(self, decisions):
        for d in decisions:
            if isinstance(d, Launch):
                assert self.status[d.key] in (P, Q), f"{d.key} launched from {self.status[d.key]}"
                self.status[d.key] = R
                self.running.append(d.key)
                self.launched.append(d.key)
                self.check_limits()
            elif isinstance(d, Queue):
                self.status[d.key] = Q
            elif isinstance(d, Settle):
                assert self.status[d.key] not in (OK, FAILED, SKIPPED, CANCELLED), f"{d.key} settled twice"
                self.status[d.key] = d.status
                self.settled[d.key] = d
            elif isinstance(d, Gate):
                self.status[d.key] = "waiting_approval"
                self.gates.append(d.key)
            elif isinstance(d, Expand):
                for inst in d.instances:
                    self.defs[inst.key] = inst
                    self.status[inst.key] = P
                self.status[d.key] = R

    def check_limits(self):
        assert len(self.running) <= self.sched.max_parallelism
        for scope, limit in self.limits.items():
            count = sum(1 for k in self.running if scope(self.defs[k]))
            assert count <= limit, f"{count} running in a scope limited to {limit}"

    def dispatch(self):
        self.take(self.sched.dispatch(self.now))

    def finish(self, key, *, error=None, outputs=None, cancelled=False):
        self.running.remove(key)
        self.take(self.sched.finished(key, error=error, outputs=outputs or {}, cancelled=cancelled, now=self.now))

    def run(self, *, fail=(), outputs=None, pick=lambda running: running[0]):
        """Until nothing runs or can run: dispatch, end one attempt, repeat."""
        self.dispatch()
        while self.running:
            key = pick(self.running)
            error = "exit code 1" if key in fail else None
            self.finish(key, error=error, outputs=(outputs or {}).get(key, {}))
            self.dispatch()
        return self


def step(key, *deps, **kw):
    return StepDef(key=key, deps=tuple(deps), **kw)


def test_ready_steps_start_longest_remaining_path_first_within_the_limit():
    d = Driver(
        [step("short", priority=1, order=0), step("long", priority=9, order=1), step("mid", priority=5, order=2)],
        max_parallelism=1,
    )
    d.run()
    assert d.launched == ["long", "mid", "short"]


def test_steps_that_do_not_fit_are_queued_and_launched_when_a_slot_frees():
    d = Driver([step(k, order=i) for i, k in enumerate("abc")], max_parallelism=2)
    d.dispatch()
    assert d.status == {"a": R, "b": R, "c": Q}
    d.finish("a")
    d.dispatch()
    assert d.status["c"] == R and d.status["a"] == OK


def test_a_step_waits_for_its_dependencies_and_a_failure_skips_its_dependents_only():
    d = Driver([step("a"), step("b", "a"), step("c", "b"), step("x")]).run(fail={"a"})
    assert d.status == {"a": FAILED, "b": SKIPPED, "c": SKIPPED, "x": OK}
    assert d.settled["b"].reason == "dependency a failed"
    assert d.settled["c"].reason == "dependency b skipped"


def test_retries_queue_the_step_again_until_they_run_out():
    d = Driver([step("flaky", retries=2)])
    d.dispatch()
    d.finish("flaky", error="exit code 3")
    assert d.status["flaky"] == Q
    d.dispatch()
    d.finish("flaky", error="exit code 3")
    d.dispatch()
    d.finish("flaky", error="exit code 3")
    assert d.status["flaky"] == FAILED and d.launched == ["flaky"] * 3
    assert d.settled["flaky"].error == "exit code 3"


def test_a_start_error_is_not_retried():
    d = Driver([step("big", retries=3)])
    d.dispatch()
    d.running.remove("big")
    d.take(d.sched.finished("big", error="cannot start: too large", retry=False))
    assert d.status["big"] == FAILED and d.launched == ["big"]


@pytest.mark.parametrize(
    "policy, inner_fail, expected",
    [
        ("all", {"b1"}, {"after": SKIPPED}),
        ("any", {"b1"}, {"after": OK}),
        ("any", {"b1", "b2", "c1"}, {"after": SKIPPED}),
        ("always", {"b1", "b2", "c1"}, {"after": OK}),
    ],
)
def test_join_policies_on_nested_parallel_blocks(policy, inner_fail, expected):
    # outer block (policy) holds b1 and an inner block (all) of b2 and c1; "after" depends on outer.
    steps = [
        step("b1", groups=("outer",)),
        step("b2", groups=("inner", "outer")),
        step("c1", groups=("inner", "outer")),
        step("after", "outer"),
    ]
    groups = [
        GroupDef("outer", ("b1", "inner"), join_policy=policy),
        GroupDef("inner", ("b2", "c1"), join_policy="all", parent="outer"),
    ]
    d = Driver(steps, groups).run(fail=inner_fail)
    assert {k: d.status[k] for k in expected} == expected
    assert d.sched.group_status["inner"] == (FAILED if inner_fail & {"b2", "c1"} else OK)


def test_a_step_with_join_policy_any_runs_when_one_dependency_succeeds():
    d = Driver([step("a"), step("b"), step("join", "a", "b", join_policy="any")]).run(fail={"a"})
    assert d.status["join"] == OK


def test_when_false_skips_and_a_bad_condition_fails_the_step():
    d = Driver(
        [
            step("a"),
            step("yes", "a", condition="steps.a.outputs.n > 1"),
            step("no", "a", condition="steps.a.outputs.n > 5"),
            step("bad", "a", condition="steps.a.outputs.missing > 1"),
        ]
    ).run(outputs={"a": {"n": 3}})
    assert (d.status["yes"], d.status["no"], d.status["bad"]) == (OK, SKIPPED, FAILED)
    assert d.settled["no"].reason == "condition false"
    assert d.settled["bad"].reason == "condition error"


def test_for_each_over_an_upstream_output_respects_its_limit_and_collects_outputs_in_order():
    fan = step("fan", "gen", for_each="${steps.gen.outputs.items}", max_parallelism=2)
    d = Driver([step("gen"), fan, step("after", "fan")], limits={lambda s: s.parent == "fan": 2})
    d.run(
        outputs={"gen": {"items": ["x", "y", "z"]}, **{f"fan[{i}]": {"i": i} for i in range(3)}},
        pick=lambda running: running[-1],  # end them out of order
    )
    assert [d.status[f"fan[{i}]"] for i in range(3)] == [OK] * 3
    assert d.settled["fan"].outputs == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [d.defs[f"fan[{i}]"].item for i in range(3)] == ["x", "y", "z"]
    assert d.status["after"] == OK


def test_for_each_over_an_empty_list_succeeds_and_a_non_list_fails():
    d = Driver([step("empty", for_each=[]), step("gen"), step("bad", "gen", for_each="${steps.gen.outputs.n}")])
    d.run(outputs={"gen": {"n": 3}})
    assert d.status["empty"] == OK and d.settled["empty"].outputs == []
    assert d.status["bad"] == FAILED and "must be a list" in d.settled["bad"].error


def test_for_each_join_any_tolerates_a_failed_instance():
    d = Driver([step("fan", for_each=[1, 2], join_policy="any")]).run(fail={"fan[0]"})
    assert d.status["fan"] == OK


def test_repeat_runs_again_after_its_delay_until_the_condition_holds():
    d = Driver([step("poll", repeat={"until": "steps.poll.outputs.ready == true", "max_iterations": 5, "delay": 10})])
    d.dispatch()
    d.finish("poll", outputs={"ready": False})
    assert d.status["poll"] == Q
    d.now = 9.9
    d.dispatch()
    assert d.launched == ["poll"], "launched before its delay was over"
    d.now = 10.0
    d.dispatch()
    assert d.launched == ["poll", "poll"]
    d.finish("poll", outputs={"ready": True})
    assert d.status["poll"] == OK and d.sched.steps["poll"].iteration == 2


def test_repeat_fails_after_max_iterations():
    d = Driver([step("poll", repeat={"until": "steps.poll.outputs.ready == true", "max_iterations": 2})])
    d.run(outputs={"poll": {"ready": False}})
    assert d.status["poll"] == FAILED and d.settled["poll"].reason == "until not met after 2 iterations"


def test_a_gate_waits_while_others_run_then_goes_on_when_approved():
    d = Driver([step("gate", approval=True), step("other"), step("after", "gate")])
    d.dispatch()
    assert d.gates == ["gate"] and d.status["other"] == R
    d.finish("other")
    assert d.sched.idle_on_gates
    d.status["gate"] = Q  # what the approver recorded
    d.take(d.sched.gate_decided("gate", approved=True, by="ann", recorded="queued"))
    d.run()
    assert d.status == {"gate": OK, "other": OK, "after": OK}


def test_a_gate_decided_before_the_run_reached_it_is_acted_on():
    d = Driver([step("gate", approval=True), step("after", "gate")])
    d.take(d.sched.gate_decided("gate", approved=False, by="bob"))
    d.dispatch()
    assert d.status == {"gate": FAILED, "after": SKIPPED}
    assert d.settled["gate"].actor == "bob" and d.settled["gate"].error == "rejected by bob"


def test_cancel_cancels_what_has_not_started_and_running_ones_end_cancelled():
    d = Driver([step("a"), step("b"), step("c", "a"), step("fan", for_each=[1, 2, 3])], max_parallelism=2)
    d.dispatch()
    running = list(d.running)
    d.take(d.sched.cancel("ann"))
    assert all(d.status[k] == CANCELLED for k in d.status if k not in running)
    for key in running:
        d.finish(key, cancelled=True)
    assert not d.sched.unfinished
    assert all(s == CANCELLED for s in d.status.values())
    d.dispatch()
    assert len(d.launched) == 2, "a cancelled run launched more"


@st.composite
def dags(draw):
    """Random DAGs with templates, a block and a fan-out, and a random failure set."""
    n = draw(st.integers(2, 14))
    steps = []
    for i in range(n):
        deps = tuple(sorted(draw(st.sets(st.sampled_from([f"s{j}" for j in range(i)]), max_size=3)))) if i else ()
        steps.append(
            step(
                f"s{i}", *deps, template=draw(st.sampled_from("xyz")), template_limit=2,
                priority=draw(st.floats(0, 10)), order=i, join_policy=draw(st.sampled_from(["all", "any", "always"])),
                groups=("blk",) if i % 3 == 0 else (),
            )  # fmt: skip
        )
    steps.append(step("fan", for_each=list(range(draw(st.integers(0, 5)))), max_parallelism=2, template="x", template_limit=2))
    fail = draw(st.sets(st.sampled_from([s.key for s in steps]), max_size=3))
    return steps, fail, draw(st.integers(1, 4)), draw(st.randoms())


@settings(max_examples=150, deadline=None)
@given(dags())
def test_limits_are_never_exceeded_and_every_step_settles_after_its_dependencies(case):
    steps, fail, slots, rnd = case
    blk = GroupDef("blk", tuple(s.key for s in steps if s.groups), max_parallelism=1)
    limits = {
        **{(lambda s, t=t: s.template == t): 2 for t in "xyz"},
        (lambda s: "blk" in s.groups): 1,
        (lambda s: s.parent == "fan"): 2,
    }
    d = Driver(steps, [blk], max_parallelism=slots, limits=limits)
    d.run(fail=fail, pick=rnd.choice)
    assert not d.sched.unfinished
    assert all(s in (OK, FAILED, SKIPPED) for s in d.status.values()), d.status
    order = {k: i for i, k in enumerate(d.launched)}
    for s in steps:
        for dep in s.deps:
            if s.key in order and s.join_policy == "all":
                assert d.status[dep] == OK and dep in order and order[dep] < order[s.key]


def test_many_steps_settle_in_linear_time():
    n = 20_000
    steps = [step(f"s{i}", *( (f"s{i-1}",) if i % 100 else ()), order=i) for i in range(n)]
    d = Driver(steps, max_parallelism=8)
    d.run(pick=lambda running: running[random.randrange(len(running))])
    assert all(s == OK for s in d.status.values())
