"""The run endpoints under /api/v2/ (executions/api.py). A path id is matched as any text so
that the view can say what is wrong with it (400 naming it)."""

from django.urls import path

from executions import api

urlpatterns = [
    path("task-lists/<str:task_list_id>/runs/", api.RunStartView.as_view(), name="task-list-runs"),
    path("executions/", api.RunListView.as_view(), name="execution-list"),
    path("executions/<str:id>/", api.RunDetailView.as_view(), name="execution-detail"),
    path("executions/<str:execution_id>/tasks/", api.RunTasksView.as_view(), name="execution-tasks"),
    path("executions/<str:execution_id>/waves/", api.RunWavesView.as_view(), name="execution-waves"),
    path("executions/<str:execution_id>/timeline/", api.RunTimelineView.as_view(), name="execution-timeline"),
    path(
        "executions/<str:execution_id>/agents/active/", api.RunAgentsView.as_view(), name="execution-agents"
    ),
    path("executions/<str:execution_id>/audit/", api.RunAuditView.as_view(), name="execution-audit"),
    path("executions/<str:execution_id>/events/", api.RunEventsView.as_view(), name="execution-events"),
    path("executions/<str:execution_id>/resume/", api.RunResumeView.as_view(), name="execution-resume"),
    path("executions/<str:execution_id>/cancel/", api.RunCancelView.as_view(), name="execution-cancel"),
    path(
        "executions/<str:execution_id>/steps/<str:key>/approve/",
        api.StepApproveView.as_view(),
        name="execution-step-approve",
    ),  # fmt: skip
    path(
        "executions/<str:execution_id>/steps/<str:key>/reject/",
        api.StepRejectView.as_view(),
        name="execution-step-reject",
    ),  # fmt: skip
    path("agents/active/", api.AgentsView.as_view(), name="agents-active"),
    path("sessions/", api.SessionListView.as_view(), name="session-list"),
    path("sessions/<str:session_id>/summary/", api.SessionSummaryView.as_view(), name="session-summary"),
]
