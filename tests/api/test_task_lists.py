"""/api/v2/task-lists/: list, detail with the plan, import; the team rule; bad input."""

import json

import pytest
from rest_framework.test import APIClient

from tests.api.conftest import client_for, token_client
from waves.models import Task, TaskList

pytestmark = pytest.mark.django_db

ETL = """name: etl
steps:
  - id: extract
    run: echo e
    estimated_minutes: 2
  - id: transform
    run: echo t
    depends_on: [extract]
  - id: report
    run: echo r
"""


def post(client, body, content_type="application/yaml", **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.generic("POST", f"/api/v2/task-lists/?{query}", body, content_type=content_type)


def test_a_member_imports_into_their_team_and_sees_the_plan(member):
    client = token_client(member)
    created = post(client, ETL)
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["name"], body["team"], body["task_count"], body["format"]) == ("etl", "red", 3, "workflow")
    detail = client.get(f"/api/v2/task-lists/{body['id']}/").json()
    assert detail["plan"]["waves"] == [["extract", "report"], ["transform"]]
    assert detail["plan"]["critical_path"] == ["extract", "transform"]
    assert detail["plan"]["width"] == 2
    assert detail["plan"]["estimated_makespan_minutes"] == 3.0
    listed = client.get("/api/v2/task-lists/").json()
    assert [r["id"] for r in listed["results"]] == [body["id"]] and listed["count"] == 1


def test_json_and_pipeline_bodies_import_too(member):
    client = client_for(member)
    as_json = json.dumps({"name": "j", "steps": [{"id": "a", "run": "true"}]})
    assert post(client, as_json, "application/json").json()["name"] == "j"
    table = "1 | p | - | auto | g1 | 5 | first\n2 | p | - | auto | g1 | 3 | second\n"
    created = post(client, table, "text/plain", name="table")
    assert created.status_code == 201, created.content
    assert created.json()["format"] == "pipeline"


def test_other_teams_lists_are_404_and_absent_from_the_list(member, outsider, superuser):
    mine = post(client_for(member), ETL).json()["id"]
    other = client_for(outsider)
    assert other.get(f"/api/v2/task-lists/{mine}/").status_code == 404
    assert other.get("/api/v2/task-lists/").json()["count"] == 0
    assert client_for(superuser).get(f"/api/v2/task-lists/{mine}/").status_code == 200


def test_anonymous_is_refused_and_a_reader_cannot_import(reader):
    anonymous = APIClient()
    assert anonymous.get("/api/v2/task-lists/").status_code in (401, 403)
    assert post(anonymous, ETL).status_code in (401, 403)
    assert post(client_for(reader), ETL).status_code == 403
    assert TaskList.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ("steps:\n  - id: a\n    run: x\n    depends_on: [b]\n  - id: b\n    run: y\n    depends_on: [a]\n",
         "application/yaml", "cycle"),
        ("name: dup\nsteps:\n  - id: a\n    run: one\n    run: two\n", "application/yaml", "duplicate"),
        ("{not json", "application/json", "json"),
        (b"name: x\nsteps: \xff\n", "application/yaml", "not UTF-8"),
    ],
)  # fmt: skip
def test_bad_input_is_400_with_the_import_message_and_writes_nothing(member, body, content_type, message):
    response = post(client_for(member), body, content_type)
    assert response.status_code == 400, response.content
    assert message.lower() in json.dumps(response.json()).lower()
    assert TaskList.objects.count() == 0 and Task.objects.count() == 0


@pytest.mark.parametrize("content_type", ["application/yaml", "application/json", "text/plain", "text/csv"])
def test_an_empty_body_is_400_naming_the_body_not_a_server_error(member, content_type):
    # Found by schemathesis: with no body DRF runs no parser and hands the view `{}`, not bytes.
    response = post(client_for(member), b"", content_type)
    assert response.status_code == 400, response.content
    assert "body" in response.json()
    assert TaskList.objects.count() == 0 and Task.objects.count() == 0


def test_a_taken_name_needs_replace_and_replace_of_another_teams_list_is_refused(member, outsider):
    first = post(client_for(member), ETL).json()["id"]
    again = post(client_for(member), ETL)
    assert again.status_code == 400 and "already exists" in json.dumps(again.json())
    replaced = post(client_for(member), ETL, replace="true")
    assert replaced.status_code == 201
    assert TaskList.objects.get(pk=first).replaced_by_id == replaced.json()["id"]
    stolen = post(client_for(outsider), ETL, replace="true")
    assert stolen.status_code == 400 and "another team" in json.dumps(stolen.json())


def test_the_team_param_is_checked(member, outsider, superuser):
    refused = post(client_for(member), ETL, team="blue")
    assert refused.status_code == 400 and "team" in refused.json()
    created = post(client_for(superuser), ETL, team="blue")
    assert created.status_code == 201 and created.json()["team"] == "blue"
    assert client_for(outsider).get(f"/api/v2/task-lists/{created.json()['id']}/").status_code == 200


@pytest.mark.parametrize("bad", ["abc", "0", "-1", str(2**63), "1.5", "١"])
def test_a_bad_id_is_400_naming_it(member, bad):
    response = client_for(member).get(f"/api/v2/task-lists/{bad}/")
    assert response.status_code == 400 and "id" in response.json()


def test_a_bad_filter_value_is_400_naming_it(member):
    response = client_for(member).get("/api/v2/task-lists/?archived=maybe")
    assert response.status_code == 400 and "archived" in response.json()
    assert client_for(member).get("/api/v2/task-lists/?limit=x").status_code in (200, 400)
