from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "Tidewatch"
admin.site.site_title = "Tidewatch"
admin.site.index_title = "Task lists, runs and everything they record"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v2/", include("config.api_urls")),
]
