"""Schemathesis over every operation of /api/v2/schema/, reads and writes, on the test database.

The schema is loaded from the WSGI application itself (`config.wsgi`), so what is fuzzed is
what is served, and each case goes through the whole Django stack in this process, inside
the test's transaction. Before the run the database holds two teams' task lists (one
imported over the API), runs taken to their end by the engine (one failed, so resume can
succeed), runs with waves, tasks, agents, transcripts, tool uses and assertions
(tests/admin_fixtures.populate), and steps waiting at their approval gate. Cases reach
those rows two ways:

- explicit examples (the `before_add_examples` hook): for every operation that names a row,
  one case with a real id, key or event batch, which must succeed;
- dictionaries bound to the path parameters (and to the events' `task` and `type`): half of
  the random cases take a real row's id or key, the other half stay random.

Each case is sent with the token of a superuser (every row, every write) or of a member of
the red team (their team's rows only, 404 for the blue team's, with the write permissions).
Writes never start an executor: `services.run_spawn` only records the run. The checks: no
5xx, and the status code, content type and body as the schema declares them. Every operation
must answer 2xx at least once. The number of cases is printed at the end of the session
(tests/conftest.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from executions import services
from executions.engine import Engine
from executions.models import (
    BuildAgentInstance,
    ConcurrentExecutionSession,
    ExecutionRun,
    ParallelExecutionWave,
    TaskStatus,
    WaveTask,
)
from observability.events import EVENT_TYPES
from tests.admin_fixtures import populate
from tests.api.conftest import _user, token_client
from tests.api.test_task_lists import ETL
from tests.api.test_task_lists import post as import_list
from tests.executions.fakes import FakeRunner, Script
from tests.factories import run_with_waves, task_list
from waves.models import Task, TaskList

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 50  # random cases per operation (the fuzzing phase), on top of examples and coverage
SEED = 16  # with `deterministic`, the same cases on every run
REAL = 0.5  # how often a bound parameter takes a real row's id or key


# --- the data ----------------------------------------------------------------------------------


@dataclass
class World:
    """The seeded rows the cases aim at."""

    task_list: int  # the red team's imported list (a plan to show)
    startable: int  # a red list whose steps have commands
    failed: int  # a finished run: a ok, b failed, c skipped; resumable; events, audit, transcript
    populated: int  # a run with agents, transcripts, tool uses, assertions
    wave: int  # a wave of it with records
    agent: str  # an agent's instance id in it
    session: int
    to_approve: int  # runs whose `gate` waits for a decision, kept out of the dictionaries so
    to_reject: int  # that random cancels do not close them first
    dictionaries: dict[str, list] = field(default_factory=dict)


def _gated(team) -> list[int]:
    tl = task_list("gated", keys=("build", "gate", "ship"), edges=[("gate", "build"), ("ship", "gate")], team=team)
    Task.objects.filter(task_list=tl, key="gate").update(approval=True, kind=Task.Kind.GATE)
    runs = []
    for _ in range(3):
        run = run_with_waves(tl, [["build"], ["gate"], ["ship"]])
        services.transition(
            WaveTask.objects.get(execution=run, key="gate"), TaskStatus.WAITING_APPROVAL, expected=TaskStatus.PENDING
        )
        runs.append(run.pk)
    return runs


def seed(member, blue) -> World:
    red = member.groups.get()
    imported = import_list(token_client(member), ETL)
    assert imported.status_code == 201, imported.content
    session = populate(2)  # a list of 2 tasks and a gate; 2 runs with every kind of record
    TaskList.objects.filter(runs__session=session).update(team=red)
    populated = ExecutionRun.objects.filter(session=session).order_by("pk").first()
    agent = BuildAgentInstance.objects.filter(execution=populated).first()

    chain = task_list("chain", keys=("a", "b", "c"), edges=[("b", "a"), ("c", "b")], team=red)
    failed = services.run_start(chain)
    events = ['{"type": "tool_use", "tool_name": "grep", "is_error": true}', '{"type": "message", "content": "hi"}']
    Engine(failed, FakeRunner({"a": Script(lines=["out"], events=events), "b": Script(exit_code=1)})).execute()
    Engine(services.run_start(chain), FakeRunner()).execute()  # succeeded: nothing to resume

    to_approve, to_reject, _ = _gated(red)  # the third is left to the random cases
    run_with_waves(task_list("blue-list", keys=("x",), team=blue), [["x"]])  # the member's 404s

    reserved = {to_approve, to_reject}
    task_lists = [str(pk) for pk in TaskList.objects.values_list("pk", flat=True)]
    runs = [str(pk) for pk in ExecutionRun.objects.exclude(pk__in=reserved).values_list("pk", flat=True)]
    return World(
        task_list=imported.json()["id"],
        startable=chain.pk,
        failed=failed.pk,
        populated=populated.pk,
        wave=agent.wave_id,
        agent=agent.instance_id,
        session=session.pk,
        to_approve=to_approve,
        to_reject=to_reject,
        dictionaries={
            "task_lists": task_lists,
            "runs": runs,
            "ids": sorted(set(task_lists + runs), key=int),  # {id}: a task list's or a run's
            "waves": [str(pk) for pk in ParallelExecutionWave.objects.values_list("pk", flat=True)],
            "sessions": [str(pk) for pk in ConcurrentExecutionSession.objects.values_list("pk", flat=True)],
            "keys": sorted(set(WaveTask.objects.values_list("key", flat=True))),
            "event_types": list(EVENT_TYPES),
        },
    )


def explicit_cases(world: World) -> dict[str, list[dict]]:
    """By operation: cases on real rows, each of which succeeds."""
    run = {"execution_id": str(world.failed)}
    events = [
        {"task": "a", "type": "tool_use", "tool_name": "grep", "input": {"q": "x"}, "is_error": True},
        {"task": "a", "type": "message", "content": "hello"},
        {"task": "b", "type": "assertion", "name": "exit code", "passed": False, "message": "1"},
        {"task": "b", "type": "skill", "skill_name": "plan", "duration_ms": 5},
    ]
    by_agent = [{"agent": world.agent, "type": "message", "content": "hi"}]
    return {
        "GET /api/v2/task-lists/{id}/": [{"path_parameters": {"id": str(world.task_list)}}],
        "POST /api/v2/task-lists/{task_list_id}/runs/": [
            {"path_parameters": {"task_list_id": str(world.startable)}, "body": {}},
            {"path_parameters": {"task_list_id": str(world.startable)}, "body": {"max_parallelism": 2}},
        ],
        "GET /api/v2/executions/{id}/": [{"path_parameters": {"id": str(world.failed)}}],
        **{
            f"GET /api/v2/executions/{{execution_id}}/{what}/": [{"path_parameters": run}]
            for what in ("tasks", "waves", "timeline", "audit", "events")
        },
        "GET /api/v2/executions/{execution_id}/agents/active/": [
            {"path_parameters": {"execution_id": str(world.populated)}}
        ],
        "POST /api/v2/executions/{execution_id}/events/": [
            {"path_parameters": run, "body": events},
            {"path_parameters": {"execution_id": str(world.populated)}, "body": by_agent},
        ],
        "POST /api/v2/executions/{execution_id}/resume/": [{"path_parameters": run, "body": {}}],
        "POST /api/v2/executions/{execution_id}/cancel/": [
            {"path_parameters": {"execution_id": str(world.populated)}}
        ],
        "POST /api/v2/executions/{execution_id}/steps/{key}/approve/": [
            {"path_parameters": {"execution_id": str(world.to_approve), "key": "gate"}}
        ],
        "POST /api/v2/executions/{execution_id}/steps/{key}/reject/": [
            {"path_parameters": {"execution_id": str(world.to_reject), "key": "gate"}}
        ],
        "GET /api/v2/sessions/{session_id}/summary/": [{"path_parameters": {"session_id": str(world.session)}}],
        **{
            f"GET /api/v2/waves/{{wave_id}}/{what}/": [{"path_parameters": {"wave_id": str(world.wave)}}]
            for what in ("transcript", "tool-uses", "assertions")
        },
    }


def config(token: str, world: World) -> schemathesis.Config:
    def bound(dictionary):
        return {"dictionary": dictionary, "probability": REAL}

    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Token {token}"},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",  # nothing kept between runs: CI sees the same cases
                "with-security-parameters": False,  # the token header is ours
            },
            "dictionaries": {name: {"values": values} for name, values in world.dictionaries.items()},
            "parameters": {
                "path.id": bound("ids"),
                "path.task_list_id": bound("task_lists"),
                "path.execution_id": bound("runs"),
                "path.wave_id": bound("waves"),
                "path.session_id": bound("sessions"),
                "path.key": bound("keys"),
                "body.[*].task": bound("keys"),
                "body.[*].type": bound("event_types"),
            },
        }
    )


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Tally:
    user: str
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)  # (operation, status code)
    explicit: dict[int, object] = field(default_factory=dict)  # the cases on real rows not sent yet, by id()

    def summary(self) -> str:
        classes = Counter(f"{status // 100}xx" for (_, status) in self.statuses.elements())
        return f"{self.cases} cases as {self.user} ({', '.join(f'{k}: {v}' for k, v in sorted(classes.items()))})"


@contextmanager
def connection_kept():
    """The WSGI handler's request signals close the database connection, which would end the
    test's transaction: off while the cases run (Django's test client does the same for each
    request, and turns them on again after it, so this goes after the seeding)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def spawned(monkeypatch):
    """The runs the API starts, recorded instead of executed."""
    runs: list[int] = []
    monkeypatch.setattr(services, "run_spawn", lambda run: runs.append(run.pk) or 99999)
    return runs


@pytest.fixture(params=["superuser", "member"])
def tally(request):
    return Tally(request.param)


@pytest.fixture
def api_schema(request, tally, teams, spawned, caplog):
    from config.wsgi import application

    # schemathesis 4.32 renames the running item through `Node._nodeid`, gone in pytest 9.2.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    caplog.set_level(logging.ERROR, logger="django.request")  # 4xx are the point; a 5xx is logged

    member = _user("mia", teams[0])
    user = _user("root", superuser=True) if tally.user == "superuser" else member
    world = seed(member, teams[1])
    token, _ = Token.objects.get_or_create(user=user)
    explicit = explicit_cases(world)

    with connection_kept():
        schema = schemathesis.openapi.from_wsgi("/api/v2/schema/", application, config=config(token.key, world))

        @schema.hook
        def before_add_examples(context, examples):
            operation = context.operation
            for kwargs in explicit.get(operation.label, []):
                case = operation.Case(headers={"Authorization": f"Token {token.key}"}, **kwargs)
                tally.explicit[id(case)] = case
                examples.append(case)

        yield schema

    print(f"\nschemathesis: {tally.summary()}; {len(spawned)} runs handed to the (recording) executor")
    request.node.user_properties.append(("schemathesis_cases", tally.cases))
    assert not tally.explicit, "cases on real rows that were never sent"
    every = {result.ok().label for result in schema.get_all_operations()}
    succeeded = {label for (label, status) in tally.statuses if 200 <= status < 300}
    assert every - succeeded == set(), f"operations that never answered 2xx as {tally.user}"


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_the_schema_says(case, tally):
    response = case.call()
    tally.cases += 1
    tally.statuses[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
    if tally.explicit.pop(id(case), None) is case:
        assert 200 <= response.status_code < 300, f"a case on real rows failed: {response.status_code} {response.text}"
