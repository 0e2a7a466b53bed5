"""The concurrency timeline endpoints (issue 17, item 1): seed 004's contract, the team rule,
and a 400 naming the parameter for every bad one."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from concurrency.selectors import GRANULARITIES, MAX_BUCKETS, TIME_RANGES
from tests.api.conftest import client_for, token_client
from tests.concurrency.histories import S, Story, build
from waves.models import TaskList

pytestmark = pytest.mark.django_db

URL = "/api/v2/workflow/{}/task_concurrency"
FLEET = "/api/v2/task_concurrency"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def world(teams):
    now = timezone.now()
    ago = lambda **kw: now - timedelta(**kw)  # noqa: E731
    red = build(
        [
            # Running for three days: in every bucket of every window up to 24h.
            Story("extract", [(S.PENDING, ago(days=3, hours=1)), (S.RUNNING, ago(days=3))]),
            Story("transform", [(S.PENDING, ago(hours=2)), (S.RUNNING, ago(minutes=50)),
                                (S.SUCCEEDED, ago(minutes=20))]),
            Story("load", [(S.PENDING, ago(hours=2)), (S.QUEUED, ago(hours=1, minutes=30))]),
            Story("transform", [(S.PENDING, ago(hours=2)), (S.RUNNING, ago(minutes=40))], run=1),
        ],
        title="red-list",
        team=teams[0],
    )  # fmt: skip
    blue = build(
        [Story("publish", [(S.PENDING, ago(hours=2)), (S.RUNNING, ago(hours=1, minutes=5))])],
        title="blue-list",
        team=teams[1],
    )
    return SimpleNamespace(now=now, red=red, blue=blue)


def get(user, url, **params):
    return client_for(user).get(url, params)


def points(response) -> list[dict]:
    assert response.status_code == 200, response.content[:500]
    return response.json()["data"]


def by_template(data) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for p in data:
        out.setdefault(p["task_template_name"], {})[p["timestamp"]] = p["concurrent_count"]
    return out


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# --- the contract ------------------------------------------------------------------------------


def test_seed_004s_contract(world, member):
    before = timezone.now()
    response = get(member, URL.format(world.red.task_list.pk), time_range="1h", granularity="minute")
    after = timezone.now()
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["data"]
    data = body["data"]
    # The body is exactly compact JSON of what it says.
    assert response.content == json.dumps(body, separators=(",", ":")).encode()
    for p in data:
        assert list(p) == ["timestamp", "task_template_name", "concurrent_count"]
        assert ISO_Z.match(p["timestamp"]) and p["timestamp"].endswith(":00Z")
        assert isinstance(p["concurrent_count"], int) and p["concurrent_count"] > 0  # zeros left out
    assert data == sorted(data, key=lambda p: (p["timestamp"], p["task_template_name"]))
    series = by_template(data)
    assert set(series) == {"extract", "transform"}  # load is queued; publish is the blue team's
    # extract runs through the whole hour: 61 instants a minute apart, as the seed's grid.
    instants = sorted(series["extract"])
    assert len(instants) == 61 and set(series["extract"].values()) == {1}
    assert all(
        parse(b) - parse(a) == timedelta(minutes=1) for a, b in zip(instants, instants[1:], strict=False)
    )
    minute = lambda t: t.replace(second=0, microsecond=0)  # noqa: E731
    assert minute(before) <= parse(instants[-1]) <= minute(after)  # the last whole minute up to now
    # transform: one run from 50 to 20 minutes ago, another since 40 minutes ago.
    assert max(series["transform"].values()) == 2 and min(series["transform"].values()) == 1


def test_the_path_answers_with_and_without_a_trailing_slash(world, member):
    url = URL.format(world.red.task_list.pk)
    plain, slash = get(member, url, time_range="6h"), get(member, url + "/", time_range="6h")
    assert plain.status_code == slash.status_code == 200
    assert plain.json() == slash.json()
    assert get(member, FLEET + "/").status_code == 200


@pytest.mark.parametrize("time_range", list(TIME_RANGES))
@pytest.mark.parametrize("granularity", list(GRANULARITIES))
def test_every_time_range_at_every_granularity(world, member, time_range, granularity):
    seconds, step = TIME_RANGES[time_range], GRANULARITIES[granularity]
    response = get(member, URL.format(world.red.task_list.pk), time_range=time_range, granularity=granularity)
    if seconds // step + 1 > MAX_BUCKETS:
        assert response.status_code == 400 and "buckets" in response.json()["granularity"][0]
        return
    series = by_template(points(response))
    instants = sorted(parse(t) for t in series["extract"])
    assert all(t.timestamp() % step == 0 for t in instants)  # aligned: stable across requests
    if seconds <= 86400:  # extract runs since three days ago: in every bucket
        assert len(instants) == seconds // step + 1


def test_csv_holds_the_same_points(world, member):
    url = URL.format(world.red.task_list.pk)
    as_json = points(get(member, url, time_range="1h"))
    response = get(member, url, time_range="1h", format="csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["timestamp", "task_template_name", "concurrent_count"]
    assert [
        {"timestamp": t, "task_template_name": n, "concurrent_count": int(c)} for t, n, c in rows[1:]
    ] == as_json


def test_template_execution_status_and_agg(world, member):
    url = URL.format(world.red.task_list.pk)
    assert set(by_template(points(get(member, url, time_range="1h", template=["transform", "nope"])))) == {
        "transform"
    }
    both = client_for(member).get(url + "?time_range=1h&template=extract&template=transform")
    assert set(by_template(points(both))) == {"extract", "transform"}
    second_run = world.red.runs[1].pk
    assert (
        max(
            by_template(points(get(member, url, time_range="1h", execution=second_run)))["transform"].values()
        )
        == 1
    )
    assert set(by_template(points(get(member, url, time_range="6h", status="queued")))) == {"load"}
    assert points(get(member, url, time_range="6h", status="waiting_approval")) == []
    # Instants 70 and 10 minutes ago, an hour apart: transform's two runs overlap only
    # between them (40 to 20 minutes ago), so only agg=max sees 2.
    hourly = {"start": (world.now - timedelta(minutes=70)).isoformat(), "granularity": "1h"}
    sample = by_template(points(get(member, url, **hourly)))
    peak = by_template(points(get(member, url, **hourly, agg="max")))
    assert list(sample["transform"].values()) == [1] and list(peak["transform"].values()) == [2, 1]


def test_group_total_is_one_series_over_all_the_tasks(world, member):
    url = URL.format(world.red.task_list.pk)
    # 70 and 10 minutes ago, an hour apart: in the first bucket extract (all along) and
    # transform (two runs, 50-20 and 40 minutes ago on) peak at 1 + 2 together.
    hourly = {"start": (world.now - timedelta(minutes=70)).isoformat(), "granularity": "1h"}
    for agg in ("sample", "max"):
        per_template = by_template(points(get(member, url, **hourly, agg=agg)))
        total = by_template(points(get(member, url, **hourly, agg=agg, group="total")))
        assert set(total) == {"Total"}
        sums: dict[str, int] = {}
        for counts in per_template.values():
            for ts, n in counts.items():
                sums[ts] = sums.get(ts, 0) + n
        if agg == "sample":
            assert total["Total"] == sums
        else:
            assert all(total["Total"][ts] <= n for ts, n in sums.items())
            assert list(total["Total"].values()) == [3, 2]
    assert points(get(member, url, **hourly, group="template")) == points(get(member, url, **hourly))
    rows = get(member, url, **hourly, group="total", format="csv").content.decode().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["Total", "Total"]


def test_explicit_start_and_end(world, member):
    start = (world.now - timedelta(hours=2)).replace(microsecond=0)
    end = start + timedelta(minutes=10)
    data = points(
        get(member, URL.format(world.red.task_list.pk), start=start.isoformat().replace("+00:00", "Z"),
            end=end.isoformat(), granularity="5m")
    )  # fmt: skip
    assert [(p["timestamp"], p["task_template_name"]) for p in data] == [
        (t.strftime("%Y-%m-%dT%H:%M:%SZ"), "extract") for t in (start, start + timedelta(minutes=5), end)
    ]


def test_a_list_without_runs_has_no_points(teams, member):
    tl = TaskList.objects.create(title="idle", team=teams[0])
    response = get(member, URL.format(tl.pk))
    assert response.status_code == 200 and response.json() == {"data": []}
    assert (
        get(member, URL.format(tl.pk), format="csv").content
        == b"timestamp,task_template_name,concurrent_count\r\n"
    )


# --- the fleet and the team rule ----------------------------------------------------------------


def test_the_fleet_is_every_list_the_user_may_see(world, member, outsider, superuser):
    assert set(by_template(points(get(member, FLEET, time_range="1h")))) == {"extract", "transform"}
    assert set(by_template(points(get(outsider, FLEET, time_range="1h")))) == {"publish"}
    assert set(by_template(points(get(superuser, FLEET, time_range="1h")))) == {
        "extract",
        "transform",
        "publish",
    }
    blue_run = world.blue.runs[0].pk
    assert get(member, FLEET, execution=blue_run).status_code == 400
    assert set(by_template(points(get(outsider, FLEET, execution=blue_run)))) == {"publish"}


def test_the_team_rule(world, member, reader, outsider, superuser):
    url = URL.format(world.red.task_list.pk)
    assert get(member, url).status_code == 200
    assert get(reader, url).status_code == 200
    assert token_client(member).get(url).status_code == 200
    assert get(superuser, url).status_code == 200
    assert get(outsider, url).status_code == 404
    assert get(None, url).status_code in (401, 403)
    assert get(None, FLEET).status_code in (401, 403)
    assert get(member, URL.format(world.blue.task_list.pk)).status_code == 404
    assert get(member, URL.format(10**9)).status_code == 404


@pytest.mark.parametrize(
    "params, field",
    [
        ({"time_range": "2h"}, "time_range"),
        ({"granularity": "2m"}, "granularity"),
        ({"agg": "avg"}, "agg"),
        ({"status": "failed"}, "status"),
        ({"format": "xml"}, "format"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2025-05-27T00:00:00Z"}, "start"),
        ({"start": "2025-05-27T00:00:00Z", "time_range": "1h"}, "time_range"),
        ({"start": "2025-05-27T01:00:00Z", "end": "2025-05-27T00:00:00Z"}, "end"),
        ({"start": "2999-01-01T00:00:00Z"}, "start"),
        ({"start": "0001-01-01T00:00:00+01:00"}, "start"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}, "granularity"),
        ({"time_range": "30d", "granularity": "30s"}, "granularity"),
        ({"execution": "abc"}, "execution"),
        ({"execution": "0"}, "execution"),
        ({"execution": str(2**63)}, "execution"),
        ({"template": "x" * 201}, "template"),
        ({"template": "a\x00b"}, "template"),
        ({"group": "templates"}, "group"),
        ({"group": "TOTAL"}, "group"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(world, member, params, field):
    response = get(
        member,
        URL.format(world.red.task_list.pk),
        **params,
        **({} if "format" in params else {"format": "csv"}),
    )
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"  # even when csv was asked for
    message = response.json()[field]
    assert message and all(
        isinstance(m, str) for m in (message if isinstance(message, list) else message["0"])
    )
    assert get(member, FLEET, **params).status_code == 400


def test_an_empty_parameter_is_its_default(world, member):
    url = URL.format(world.red.task_list.pk)
    window = {"start": (world.now - timedelta(hours=1)).isoformat(), "end": world.now.isoformat()}
    empty = get(
        member,
        url,
        **window,
        time_range="",
        granularity="",
        agg="",
        group="",
        status="",
        format="",
        execution="",
    )
    assert points(empty) == points(get(member, url, **window)) != []


def test_too_many_buckets_says_why(world, member):
    response = get(member, URL.format(world.red.task_list.pk), time_range="30d", granularity="30s")
    assert response.json() == {
        "granularity": [
            f"this window at granularity=30s is 86,401 buckets; at most {MAX_BUCKETS:,} are served: "
            "choose a coarser granularity or a shorter window"
        ]
    }


def test_a_run_of_another_list_is_a_400(world, member):
    other = world.blue.runs[0].pk
    response = get(member, URL.format(world.red.task_list.pk), execution=other)
    assert response.status_code == 400 and "execution" in response.json()


@pytest.mark.parametrize("bad", ["abc", "0", "-1", str(2**63)])
def test_a_bad_task_list_id_is_a_400_naming_it(member, bad):
    response = get(member, URL.format(bad))
    assert response.status_code == 400 and "task_list_id" in response.json()


def test_one_statement_reads_the_audit(world, member):
    """The audit rows and the statuses now come from one statement (one snapshot); besides it,
    the auth, the list, the template names and (PostgreSQL) the statement's SET LOCALs."""
    with CaptureQueriesContext(connection) as queries:
        assert get(member, URL.format(world.red.task_list.pk)).status_code == 200
    statements = [q["sql"] for q in queries.captured_queries]
    assert sum("task_status_audit" in sql for sql in statements) == 1
    assert len(statements) <= 12, statements
