"""The concurrency timeline under /api/v2/ (concurrency/api.py). The contract's paths have no
trailing slash; each also answers with one. A path id is matched as any text so that the view
can say what is wrong with it (400 naming it)."""

from django.urls import path

from concurrency import api

urlpatterns = [
    path(
        "workflow/<str:task_list_id>/task_concurrency",
        api.TaskListConcurrencyView.as_view(),
        name="task-list-concurrency",
    ),
    path("workflow/<str:task_list_id>/task_concurrency/", api.TaskListConcurrencySlashView.as_view()),
    path("task_concurrency", api.FleetConcurrencyView.as_view(), name="task-concurrency"),
    path("task_concurrency/", api.FleetConcurrencySlashView.as_view()),
]
