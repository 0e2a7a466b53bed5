"""/api/v2/waves/{id}/transcript/, tool-uses/, assertions/ and POST executions/{id}/events/:
the team rule, filters, cursors, bad input, queries that do not grow with rows, and ingest
that writes all or nothing through the executor's path (statistics included)."""

import json

import pytest
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from executions.models import WaveTask
from observability import services
from observability.models import AssertionResult, SkillTrace, ToolUse, TranscriptEntry, WaveStatistics
from tests.api.conftest import client_for, token_client
from tests.factories import run_with_waves, task_list
from tests.observability.builders import agent_for, captured, event

pytestmark = pytest.mark.django_db

LISTS = ("transcript", "tool-uses", "assertions")
RECORDS = (TranscriptEntry, ToolUse, AssertionResult, SkillTrace)


@pytest.fixture
def run(teams):
    """A run of the red team's list: wave 0 holds a and c, wave 1 holds b."""
    tl = task_list("etl", keys=("a", "b", "c"), edges=[("b", "a")], team=teams[0])
    return run_with_waves(tl, [["a", "c"], ["b"]])


def wave_task(run, key) -> WaveTask:
    return WaveTask.objects.select_related("wave").get(execution=run, key=key)


def url(wave_id, endpoint, query=""):
    return f"/api/v2/waves/{wave_id}/{endpoint}/" + (f"?{query}" if query else "")


def tool(name, *, is_error=False):
    return {"type": "tool_use", "tool_name": name, "is_error": is_error}


def assertion(name, passed):
    return {"type": "assertion", "name": name, "passed": passed}


def record(run, *, lines=1, tools=1, assertions=1, key="a", agent=None):
    """`lines` stdout lines, `tools` tool uses (every other one an error) and `assertions`
    assertions (every other one failed) of `key`, written as the executor writes them."""
    wt = wave_task(run, key)
    rows = [captured(wt, "stdout", f"line {i}", agent=agent) for i in range(lines)]
    rows += [event(wt, tool(f"t{i}", is_error=i % 2 == 1), agent=agent) for i in range(tools)]
    rows += [event(wt, assertion(f"n{i}", i % 2 == 0), agent=agent) for i in range(assertions)]
    services.records_write(run.pk, rows)
    return wt


def results(response):
    assert response.status_code == 200, response.content
    return response.json()["results"]


# --- the wave's records ------------------------------------------------------------------------


def test_a_wave_transcript_reads_in_sequence_order_with_its_links(run, member):
    a, c = wave_task(run, "a"), wave_task(run, "c")
    agent = agent_for(a)
    services.records_write(
        run.pk,
        [
            captured(a, "stdout", "third", agent=agent, sequence=30),
            captured(c, "stderr", "first", sequence=10),
            captured(a, "system", "second", agent=agent, sequence=20),
            captured(wave_task(run, "b"), "stdout", "another wave", sequence=5),
        ],
    )
    rows = results(token_client(member).get(url(a.wave_id, "transcript")))
    assert [(r["content"], r["sequence"], r["entry_type"], r["task"]) for r in rows] == [
        ("first", 10, "stderr", "c"),
        ("second", 20, "system", "a"),
        ("third", 30, "stdout", "a"),
    ]
    third = rows[2]
    assert (third["execution_id"], third["wave_id"], third["wave_number"]) == (run.pk, a.wave_id, 0)
    assert (third["task_id"], third["agent_id"], third["instance_id"]) == (
        a.task_id,
        agent.pk,
        agent.instance_id,
    )


def test_the_transcript_cursor_walks_every_entry_once_even_with_equal_sequences(run, member):
    a = wave_task(run, "a")
    services.records_write(run.pk, [captured(a, "stdout", f"l{i}", sequence=i // 2) for i in range(9)])
    client, seen, link = client_for(member), [], url(a.wave_id, "transcript", "limit=2")
    while link:
        page = client.get(link).json()
        assert len(page["results"]) <= 2
        seen += [r["content"] for r in page["results"]]
        link = page["next"]
    assert seen == [f"l{i}" for i in range(9)]


def test_transcript_filters_entry_type_task_and_agent(run, member):
    a, c = wave_task(run, "a"), wave_task(run, "c")
    agent = agent_for(a)
    services.records_write(
        run.pk,
        [
            captured(a, "stdout", "a out", agent=agent),
            captured(a, "stderr", "a err", agent=agent),
            captured(c, "stdout", "c out"),
            event(c, {"type": "message", "content": "c says"}),
        ],
    )
    client = client_for(member)

    def contents(query):
        return [r["content"] for r in results(client.get(url(a.wave_id, "transcript", query)))]

    assert contents("entry_type=stdout") == ["a out", "c out"]
    assert contents("entry_type=message") == ["c says"]
    assert contents("task=c") == ["c out", "c says"]
    assert contents(f"agent={agent.instance_id}") == ["a out", "a err"]
    assert contents("task=a&entry_type=stderr") == ["a err"]
    assert contents("task=nope") == []


def test_task_names_a_for_each_step_and_its_instances(run, member):
    a = wave_task(run, "a")
    instances = WaveTask.objects.bulk_create(
        [
            WaveTask(wave=a.wave, task=a.task, execution=run, key=f"a[{i}]", parent=a, item_index=i)
            for i in range(2)
        ]
    )
    for wt in instances:
        wt.wave = a.wave
    services.records_write(run.pk, [captured(wt, "stdout", wt.key) for wt in (a, *instances)])
    client = client_for(member)
    assert [r["content"] for r in results(client.get(url(a.wave_id, "transcript", "task=a")))] == [
        "a", "a[0]", "a[1]",
    ]  # fmt: skip
    assert [r["content"] for r in results(client.get(url(a.wave_id, "transcript", "task=a[1]")))] == ["a[1]"]


def test_tool_uses_of_a_wave_and_its_errors(run, member):
    a = wave_task(run, "a")
    agent = agent_for(a)
    record(run, lines=0, tools=4, assertions=0, agent=agent)
    record(run, lines=0, tools=1, assertions=0, key="b")  # another wave
    client = client_for(member)
    every = results(client.get(url(a.wave_id, "tool-uses")))
    assert [(r["tool_name"], r["is_error"]) for r in every] == [
        ("t0", False), ("t1", True), ("t2", False), ("t3", True),
    ]  # fmt: skip
    assert every[0]["task"] == "a" and every[0]["instance_id"] == agent.instance_id
    assert {"start_time", "end_time", "duration_ms", "input", "output", "is_blocked"} <= set(every[0])
    errors = results(client.get(url(a.wave_id, "tool-uses", "is_error=true")))
    assert [r["tool_name"] for r in errors] == ["t1", "t3"]
    assert [r["tool_name"] for r in results(client.get(url(a.wave_id, "tool-uses", "is_error=0")))] == [
        "t0",
        "t2",
    ]
    assert [r["tool_name"] for r in results(client.get(url(a.wave_id, "tool-uses", "tool_name=t2")))] == [
        "t2"
    ]
    assert results(client.get(url(a.wave_id, "tool-uses", "task=c"))) == []


def test_assertions_of_a_wave_and_the_passed_filter(run, member):
    a = record(run, lines=0, tools=0, assertions=3)
    client = client_for(member)
    rows = results(client.get(url(a.wave_id, "assertions")))
    assert [(r["name"], r["passed"], r["task"]) for r in rows] == [
        ("n0", True, "a"),
        ("n1", False, "a"),
        ("n2", True, "a"),
    ]
    assert [r["name"] for r in results(client.get(url(a.wave_id, "assertions", "passed=false")))] == ["n1"]
    assert [r["name"] for r in results(client.get(url(a.wave_id, "assertions", "passed=true")))] == [
        "n0",
        "n2",
    ]


@pytest.mark.parametrize("endpoint", LISTS)
def test_who_sees_a_waves_records(run, endpoint, member, reader, outsider, superuser):
    a = record(run)
    link = url(a.wave_id, endpoint)
    assert APIClient().get(link).status_code in (401, 403)
    assert len(results(token_client(member).get(link))) >= 1
    assert len(results(client_for(reader).get(link))) >= 1
    assert len(results(client_for(superuser).get(link))) >= 1
    assert client_for(outsider).get(link).status_code == 404
    assert client_for(member).get(url(10**9, endpoint)).status_code == 404


def test_a_wave_of_a_list_with_no_team_is_seen_by_superusers_only(member, superuser):
    run = run_with_waves(task_list("orphan", keys=("a",)), [["a"]])
    a = record(run)
    assert client_for(member).get(url(a.wave_id, "transcript")).status_code == 404
    assert len(results(client_for(superuser).get(url(a.wave_id, "transcript")))) == 1


@pytest.mark.parametrize("endpoint", LISTS)
@pytest.mark.parametrize("bad", ["abc", "0", "-1", str(2**63), "1.5", "١"])
def test_a_bad_wave_id_is_400_naming_it(member, endpoint, bad):
    response = client_for(member).get(url(bad, endpoint))
    assert response.status_code == 400 and "wave_id" in response.json()


@pytest.mark.parametrize(
    ("endpoint", "query", "name"),
    [
        ("transcript", "entry_type=loud", "entry_type"),
        ("transcript", "limit=0", "limit"),
        ("transcript", "limit=x", "limit"),
        ("transcript", "limit=1001", "limit"),
        ("transcript", "cursor=bm9wZQ", "cursor"),
        ("transcript", "cursor=%C3%A9", "cursor"),
        ("transcript", "task=" + "k" * 221, "task"),
        ("tool-uses", "is_error=maybe", "is_error"),
        ("tool-uses", "is_blocked=2", "is_blocked"),
        ("tool-uses", "agent=" + "x" * 65, "agent"),
        ("assertions", "passed=yes please", "passed"),
        ("assertions", "cursor=" + "x" * 7, "cursor"),
    ],
)  # fmt: skip
def test_a_bad_parameter_is_400_naming_it(run, member, endpoint, query, name):
    a = record(run)
    response = client_for(member).get(url(a.wave_id, endpoint, query))
    assert response.status_code == 400, response.content
    assert name in response.json()


@pytest.mark.parametrize("position", ["abc", "-1", str(2**63), "1e3"])
def test_a_forged_cursor_position_is_400_not_a_database_error(run, member, position):
    import base64

    a = record(run)
    forged = base64.b64encode(f"p={position}".encode()).decode()
    for endpoint in LISTS:
        response = client_for(member).get(url(a.wave_id, endpoint, f"cursor={forged}"))
        assert response.status_code == 400 and "cursor" in response.json()


@pytest.mark.parametrize("endpoint", LISTS)
def test_queries_per_page_do_not_grow_with_rows(run, member, endpoint):
    a = wave_task(run, "a")
    agent = agent_for(a)
    client = client_for(member)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert len(results(client.get(url(a.wave_id, endpoint, "limit=50")))) in (2, 20)
        return len(ctx.captured_queries)

    record(run, lines=2, tools=2, assertions=2, agent=agent)
    few = queries()
    record(run, lines=18, tools=18, assertions=18, agent=agent, key="c")
    assert queries() == few


# --- event ingest ------------------------------------------------------------------------------


def ingest(client, run_id, body):
    payload = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.generic(
        "POST", f"/api/v2/executions/{run_id}/events/", payload, content_type="application/json"
    )


def row_counts(run) -> tuple[int, ...]:
    return tuple(model.objects.filter(execution=run).count() for model in RECORDS)


RECORD_COUNTERS = list(services.RECORD_COUNTERS)


def record_counters(run) -> dict[int, dict]:
    return {
        s.wave_id: model_to_dict(s, fields=RECORD_COUNTERS)
        for s in WaveStatistics.objects.filter(execution=run)
    }


def test_ingest_writes_records_and_moves_the_statistics_like_the_executor(run, member):
    a = wave_task(run, "a")
    agent = agent_for(a)
    record(run, lines=2, tools=0, assertions=0)  # sequences 1..n already used by the run
    before = TranscriptEntry.objects.filter(execution=run).order_by("-sequence").first().sequence
    body = [
        {"task": "a", **tool("grep", is_error=True), "input": {"q": "x"}, "duration_ms": 12},
        {"agent": agent.instance_id, **assertion("rows > 0", False), "message": "0 rows"},
        {"task": "c", "type": "skill", "skill_name": "summarise", "payload": {"k": 1}},
        {"task": "b", "type": "message", "content": "hello from outside"},
        {"task": "a", "agent": agent.instance_id, "type": "message", "text": "me too"},
    ]
    response = ingest(token_client(member), run.pk, body)
    assert response.status_code == 201, response.content
    assert response.json() == {
        "events": 5, "transcript_entries": 2, "tool_uses": 1, "assertion_results": 1, "skill_traces": 1,
    }  # fmt: skip

    used = ToolUse.objects.get(execution=run)
    assert (used.tool_name, used.is_error, used.input, used.duration_ms, used.wave_task_id) == (
        "grep",
        True,
        {"q": "x"},
        12,
        a.pk,
    )
    failed = AssertionResult.objects.get(execution=run)
    assert (failed.passed, failed.message, failed.agent_id, failed.wave_task_id) == (
        False,
        "0 rows",
        agent.pk,
        a.pk,
    )
    assert SkillTrace.objects.get(execution=run).wave_task_id == wave_task(run, "c").pk
    messages = list(TranscriptEntry.objects.filter(execution=run, entry_type="message").order_by("sequence"))
    assert [(m.content, m.wave_task.key, m.instance_id) for m in messages] == [
        ("hello from outside", "b", ""), ("me too", "a", agent.instance_id),
    ]  # fmt: skip
    assert all(m.sequence > before for m in messages) and messages[0].wave_number == 1

    kept = record_counters(run)
    assert kept[a.wave_id]["tool_use_count"] == 1 and kept[a.wave_id]["tool_error_count"] == 1
    assert kept[a.wave_id]["assertion_fail_count"] == 1 and kept[a.wave_id]["skill_trace_count"] == 1
    services.statistics_recompute(execution_id=run.pk)
    assert record_counters(run) == kept

    errors = results(client_for(member).get(url(a.wave_id, "tool-uses", "is_error=true")))
    assert [r["tool_name"] for r in errors] == ["grep"]


def test_one_bad_event_in_the_middle_writes_nothing_and_is_named(run, member):
    record(run)
    counts, counters = row_counts(run), record_counters(run)
    body = (
        [tool("ok") | {"task": "a"}] * 3
        + [{"task": "a", "type": "tool_use"}]
        + [tool("ok") | {"task": "a"}] * 3
    )
    response = ingest(client_for(member), run.pk, body)
    assert response.status_code == 400
    assert response.json() == {"events": ["event 3: field 'tool_name' is required"]}
    assert row_counts(run) == counts and record_counters(run) == counters


def nested(depth):
    return [nested(depth - 1)] if depth else []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"task": "a", "type": "tool_use", "tool_name": "x", "is_error": "yes"}, "event 1: field 'is_error' must be a boolean"),
        ({"task": "a", "type": "assertion", "name": "n"}, "event 1: field 'passed' is required"),
        ({"task": "a", "type": "bogus"}, "event 1: unknown type 'bogus'"),
        ({"task": "a"}, "event 1: field 'type' is required"),
        ({"task": "a", "type": "skill", "skill_name": "s", "duration_ms": -1}, "event 1: field 'duration_ms'"),
        ({"task": "a", "type": "tool_use", "tool_name": "x", "start_time": "soon"}, "event 1: field 'start_time'"),
        ({"type": "message", "content": "whose?"}, "event 1: field 'task' or 'agent' is required"),
        ({"task": 7, "type": "message", "content": "x"}, "event 1: field 'task' must be a string"),
        ({"task": "zzz", "type": "message", "content": "x"}, "event 1: field 'task': run"),
        ({"agent": "ghost", "type": "message", "content": "x"}, "event 1: field 'agent': run"),
        ("a string", "event 1: must be a JSON object"),
        ({"task": "a", "type": "tool_use", "tool_name": "x" * 201}, "event 1: field 'tool_name' is longer"),
        ({"task": "a", "type": "skill", "skill_name": "s", "payload": nested(70)}, "event 1: nested deeper"),
    ],
)  # fmt: skip
def test_each_rule_of_the_events_file_names_the_event_and_field(run, member, bad, message):
    response = ingest(client_for(member), run.pk, [{"task": "a", "type": "message", "content": "fine"}, bad])
    assert response.status_code == 400, response.content
    (said,) = response.json()["events"]
    assert said.startswith(message), said
    assert row_counts(run) == (0, 0, 0, 0)


def test_an_agent_must_be_of_the_run_and_of_the_task_named(run, member, teams):
    a = wave_task(run, "a")
    agent = agent_for(a)
    other_run = run_with_waves(run.task_list, [["a", "c"], ["b"]])
    stranger = agent_for(wave_task(other_run, "a"))
    client = client_for(member)
    response = ingest(client, run.pk, [{"agent": stranger.instance_id, "type": "message", "content": "x"}])
    assert response.status_code == 400 and response.json()["events"][0].startswith("event 0: field 'agent'")
    response = ingest(
        client, run.pk, [{"agent": agent.instance_id, "task": "c", "type": "message", "content": "x"}]
    )
    assert response.status_code == 400
    assert (
        response.json()["events"][0]
        == f"event 0: field 'agent': agent {agent.instance_id!r} ran 'a', not 'c'"
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"task": "a", "type": "message", "content": "x"}, "events", "must be a JSON list"),
        ([], "events", "empty"),
        (b"", "events", "must be a JSON list of event objects, not an object"),
        (b"[" * 5000 + b"]" * 5000, "body", "not valid JSON"),
        (b"[{not json", "body", "not valid JSON"),
        (b'[{"task": "a", "type": "tool_use", "tool_name": "x", "input": NaN}]', "body", "NaN"),
        (b"[\xff]", "body", "not UTF-8"),
        (b'[{"task": "a", "type": "skill", "skill_name": "s", "payload": -1e309}]', "body", "out of range"),
    ],
)
def test_a_body_that_is_not_a_list_of_events_is_400(run, member, body, field, message):
    response = ingest(client_for(member), run.pk, body)
    assert response.status_code == 400, response.content
    assert message in " ".join(response.json()[field])


def test_a_request_over_the_limits_is_400_and_writes_nothing(run, member, settings):
    client = client_for(member)
    over = [{"task": "a", "type": "message", "content": "x"}] * 1001
    response = ingest(client, run.pk, over)
    assert response.status_code == 400 and "limit of 1000" in response.json()["events"][0]
    settings.TIDEWATCH = {**settings.TIDEWATCH, "INGEST_MAX_BYTES": 200}
    response = ingest(client, run.pk, [{"task": "a", "type": "message", "content": "x" * 300}])
    assert response.status_code == 400 and "200-byte limit" in response.json()["body"][0]
    settings.TIDEWATCH = {**settings.TIDEWATCH, "INGEST_MAX_BYTES": 2**20, "EVENT_LINE_MAX_BYTES": 256}
    response = ingest(client, run.pk, [{"task": "a", "type": "message", "content": "x" * 300}])
    assert response.status_code == 400 and response.json()["events"][0].startswith("event 0: the line is")
    assert row_counts(run) == (0, 0, 0, 0)


def test_who_may_ingest(run, member, reader, outsider, superuser):
    body = [{"task": "a", "type": "message", "content": "hi"}]
    assert ingest(APIClient(), run.pk, body).status_code in (401, 403)
    assert ingest(client_for(reader), run.pk, body).status_code == 403
    assert ingest(client_for(outsider), run.pk, body).status_code == 404
    assert ingest(client_for(member), 10**9, body).status_code == 404
    assert ingest(token_client(member), run.pk, body).status_code == 201
    assert ingest(client_for(superuser), run.pk, body).status_code == 201
    assert TranscriptEntry.objects.filter(execution=run, entry_type="message").count() == 2


def test_get_of_the_events_path_is_still_the_executions_event_log(run, member, outsider):
    # Django routes a path to its first match: the ingest view inherits the event log's GET.
    page = client_for(member).get(f"/api/v2/executions/{run.pk}/events/?after=0")
    assert page.status_code == 200, page.content
    assert {"results", "next"} <= set(page.json())
    assert client_for(outsider).get(f"/api/v2/executions/{run.pk}/events/").status_code == 404
    assert APIClient().get(f"/api/v2/executions/{run.pk}/events/").status_code in (401, 403)


@pytest.mark.parametrize("bad", ["abc", "0", str(2**63), "١"])
def test_a_bad_run_id_is_400_naming_it(member, bad):
    response = ingest(client_for(member), bad, [{"task": "a", "type": "message", "content": "x"}])
    assert response.status_code == 400 and "execution_id" in response.json()


def test_ingest_queries_do_not_grow_with_events(run, member, monkeypatch):
    import observability.services

    # Every ingest announces the run's statistics (not only one every 0.25 s): the same work each time.
    monkeypatch.setattr(observability.services, "STATS_EVERY_SECONDS", 0)
    agent = agent_for(wave_task(run, "a"))
    client = client_for(member)

    def queries(n) -> int:
        body = [
            {"task": "a", **tool(f"t{i}")}
            if i % 2
            else {"agent": agent.instance_id, **assertion(f"n{i}", True)}
            for i in range(n)
        ] + [{"task": "c", "type": "message", "content": "m"}]
        with CaptureQueriesContext(connection) as ctx:
            assert ingest(client, run.pk, body).status_code == 201
        return len(ctx.captured_queries)

    queries(1)  # the first write of a wave creates its statistics row
    assert queries(2) == queries(20)


def test_ingest_refuses_a_step_or_agent_with_a_nul_character_as_unknown(run, member):
    """No key or instance id holds one (and PostgreSQL refuses it in a query): 400, not 500."""
    client = token_client(member)
    for field, name in (("task", "a\x00"), ("agent", "x\x00y")):
        response = ingest(client, run.pk, [{field: name, **tool("grep")}])
        assert response.status_code == 400, response.content
        assert f"field '{field}'" in response.json()["events"][0]
    assert row_counts(run) == (0, 0, 0, 0)
