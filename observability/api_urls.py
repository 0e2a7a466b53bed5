from django.urls import path

from observability.api import AssertionView, RunEventsView, ToolUseView, TranscriptView

urlpatterns = [
    path("waves/<str:wave_id>/transcript/", TranscriptView.as_view(), name="wave-transcript"),
    path("waves/<str:wave_id>/tool-uses/", ToolUseView.as_view(), name="wave-tool-uses"),
    path("waves/<str:wave_id>/assertions/", AssertionView.as_view(), name="wave-assertions"),
    # GET (the event log) is the executions app's view, inherited; POST is the ingest. This
    # pattern comes before the executions app's own for the same path (config/api_urls.py).
    path("executions/<str:execution_id>/events/", RunEventsView.as_view(), name="execution-events-ingest"),
]
