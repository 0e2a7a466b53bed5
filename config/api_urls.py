"""/api/v2/: every app's endpoints, the OpenAPI schema and its Swagger UI (served offline)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

app_name = "api"

urlpatterns = [
    path("", include("waves.api_urls")),
    path("", include("observability.api_urls")),
    path("", include("executions.api_urls")),
    path("", include("concurrency.api_urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
