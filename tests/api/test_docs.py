"""The OpenAPI schema, the Swagger UI served offline, and the admin's link to them."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_describes_every_endpoint_with_a_summary(superuser):
    client = Client()
    client.force_login(superuser)
    response = client.get("/api/v2/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert "/api/v2/task-lists/" in schema["paths"]
    assert operations and all(op.get("summary") for op in operations), [
        op["operationId"] for op in operations if not op.get("summary")
    ]


def test_swagger_ui_is_served_from_the_project_not_a_cdn(superuser):
    client = Client()
    client.force_login(superuser)
    page = client.get("/api/v2/docs/").content.decode()
    assert "swagger-ui" in page and "cdn" not in page.lower() and "unpkg" not in page.lower()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js").status_code == 200


def test_the_admin_index_links_the_api_docs(superuser):
    client = Client()
    client.force_login(superuser)
    page = client.get("/admin/").content.decode()
    assert 'href="/api/v2/docs/"' in page and 'href="/api/v2/schema/"' in page


def test_the_docs_are_public_and_the_data_is_not():
    assert Client().get("/api/v2/schema/").status_code == 200
    assert Client().get("/api/v2/docs/").status_code == 200
    assert Client().get("/api/v2/task-lists/").status_code in (401, 403)
    assert User.objects.count() == 0


def test_every_operation_declares_the_auth_errors_it_can_give(superuser):
    client = Client()
    client.force_login(superuser)
    schema = client.get("/api/v2/schema/", HTTP_ACCEPT="application/json").json()
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert all({"401", "403"} <= set(op["responses"]) for op in operations), [
        op["operationId"] for op in operations if not {"401", "403"} <= set(op["responses"])
    ]
