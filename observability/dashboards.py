"""The live dashboards inside the admin, under /admin/dashboards/.

Pages are admin views (`admin.site.admin_view`: staff login required; `each_context`: the
admin's header, sidebar and theme) whose templates extend "admin/base_site.html". Each page
draws itself in the browser from the websocket snapshot (ws/executions/<id>/ or
ws/dashboard/) and then applies the events as they come; charts read django-chartjs JSON
views here that shape what the selectors return. The team rule is the API's: a run, task
list or session of another team is 404.

install(site) adds the URLs to the admin site (observability/admin.py calls it).
"""

from __future__ import annotations

from datetime import UTC, timedelta
from urllib.parse import urlencode

from chartjs.views.base import JSONView
from chartjs.views.lines import BaseLineChartView
from django import forms
from django.contrib import admin, messages
from django.db.models import Count
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from concurrency import selectors as concurrency_selectors
from concurrency.api import ConcurrencyQuery, timeline_for
from executions import selectors, services
from executions.models import Backend, ExecutionRun, ParallelExecutionWave
from waves.models import TaskTemplate
from waves.selectors import task_list_plan
from waves.teams import visible_task_lists

# ColorBrewer Set2: a colour-blind-safe qualitative palette (8 colours, then repeated).
SET2 = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3")


def ms(moment) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def visible_run_or_404(request, run_id: int) -> ExecutionRun:
    return get_object_or_404(selectors.visible_runs(request.user).select_related("task_list"), pk=run_id)


def page(request, template: str, title: str, **context) -> TemplateResponse:
    return TemplateResponse(
        request,
        f"admin/dashboards/{template}",
        {**admin.site.each_context(request), "title": title, **context},
    )


def may_steer(user) -> bool:
    return user.has_perm("executions.change_executionrun")


# --- the run view ------------------------------------------------------------------------------


def critical_path_bound(run: ExecutionRun) -> float | None:
    """The best speedup the DAG allows: all task time over the critical path's (by the
    durations the executor schedules with)."""
    plan = task_list_plan(run.task_list, selectors.task_durations(run.task_list))
    if not plan.analysis.critical_length:
        return None
    return round(plan.serial_total / plan.analysis.critical_length, 2)


def run_view(request, run_id: int):
    run = visible_run_or_404(request, run_id)
    return page(
        request,
        "run.html",
        f"Run {run.pk}: {run.task_list.title}",
        run=run,
        charts=True,
        bound=critical_path_bound(run),
        may_steer=may_steer(request.user),
        urls={
            "ws": f"/ws/executions/{run.pk}/",
            "gantt": reverse("admin:dashboard_run_gantt", args=[run.pk]),
            "concurrency": run_window(run),
            "approve": reverse("admin:dashboard_run_action", args=[run.pk, "approve"]),
            "reject": reverse("admin:dashboard_run_action", args=[run.pk, "reject"]),
            "wave": reverse("admin:executions_parallelexecutionwave_change", args=[0]),
            "tasks": reverse("admin:executions_wavetask_changelist"),
            "transcript": reverse("admin:observability_transcriptentry_changelist"),
        },
    )


class RunGantt(JSONView):
    """Per wave task of a run: when it last entered the queue, started and ended (ms since
    the epoch), for floating bars: queued [queued, started), running [started, ended or now)."""

    def get_context_data(self, **kwargs):
        run = visible_run_or_404(self.request, kwargs["run_id"])
        rows = selectors.run_timeline(run).values(
            "id", "key", "wave_number", "status", "queued_at", "started_at", "completed_at"
        )
        return {
            "now": ms(timezone.now()),
            "tasks": [
                {
                    "id": r["id"],
                    "key": r["key"],
                    "wave": r["wave_number"],
                    "status": r["status"],
                    "queued": ms(r["queued_at"]),
                    "started": ms(r["started_at"]),
                    "ended": ms(r["completed_at"]),
                }
                for r in rows
            ],
        }


@require_POST
def run_action(request, run_id: int, action: str):
    """Approve or reject a waiting step, cancel or resume the run, through the services;
    back to the run view (a resume goes to the new run's)."""
    run = visible_run_or_404(request, run_id)
    if not may_steer(request.user):
        messages.error(request, "You may not steer runs (executions.change_executionrun).")
        return HttpResponseRedirect(reverse("admin:dashboard_run", args=[run.pk]))
    actor = request.user.get_username()
    target = run
    try:
        if action in ("approve", "reject"):
            key = request.POST.get("key", "")
            services.step_decide(run, key, approve=action == "approve", actor=actor)
            messages.success(request, f"{'Approved' if action == 'approve' else 'Rejected'} {key}.")
        elif action == "cancel":
            if services.run_request_cancel(run, actor=actor):
                messages.success(request, f"Run {run.pk}: cancel requested.")
            else:
                messages.warning(request, f"Run {run.pk} had already ended ({run.status}).")
        elif action == "resume":
            target = services.run_resume(run)
            spawn(target, request)
            messages.success(request, f"Run {run.pk} resumed as run {target.pk}.")
        else:
            raise Http404(f"no action {action!r}")
    except (services.ServiceError, OSError) as exc:
        messages.error(request, str(exc))
    return HttpResponseRedirect(reverse("admin:dashboard_run", args=[target.pk]))


def spawn(run: ExecutionRun, request) -> None:
    """Start the detached executor (`manage.py execute_run`) of a laid-out run; when it cannot
    start, the run is cancelled (nothing would claim it) and the error goes on."""
    try:
        services.run_spawn(run)
    except OSError as exc:
        services.run_request_cancel(run, actor=request.user.get_username())
        raise OSError(f"could not start an executor for run {run.pk}: {exc}") from exc


# --- run now: the intermediate form of the task lists' action ----------------------------------


class RunNowForm(forms.Form):
    max_parallelism = forms.IntegerField(min_value=1, max_value=services.MAX_PARALLELISM, required=False)
    schedule = forms.ChoiceField(choices=[(s, s) for s in services.SCHEDULES], initial="critical_path")
    backend = forms.ChoiceField(
        choices=Backend.choices,
        initial=Backend.LOCAL,
        help_text="celery: the tasks run on Celery workers (CELERY_BROKER_URL and running workers)",
    )
    simulate = forms.FloatField(
        required=False,
        min_value=0.001,
        max_value=services.SIMULATE_MAX,
        help_text="seconds per estimated minute, instead of running the commands (empty: run them)",
    )


def run_now(request, task_list_id: int):
    task_list = get_object_or_404(visible_task_lists(request.user), pk=task_list_id, archived_at__isnull=True)
    if not request.user.has_perm("executions.add_executionrun"):
        raise Http404("you may not start runs")
    form = RunNowForm(request.POST or None, initial={"max_parallelism": task_list.max_parallelism})
    if request.method == "POST" and form.is_valid():
        try:
            run = services.run_start(task_list, **form.cleaned_data)
            spawn(run, request)
        except (services.ServiceError, OSError) as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{task_list.title}: run {run.pk} started.")
            return HttpResponseRedirect(reverse("admin:dashboard_run", args=[run.pk]))
    return page(request, "run_now.html", f"Run {task_list.title} now", task_list=task_list, form=form)


# --- the concurrency timeline and the fleet ----------------------------------------------------


class ConcurrencyChart(BaseLineChartView):
    """The concurrency timeline as Chart.js data: one label per instant (ms since the epoch),
    the same for every series, zeros kept (Chart.js stacks by equal x); "Other" folded on
    the server. The API's query parameters (`group=total`: one series, "Total", the count of
    all the templates together), plus `workflow` (a task list id). With `execution`, `limit`
    is that run's parallelism limit."""

    def get(self, request, *args, **kwargs):
        query = ConcurrencyQuery(data=request.GET, context={"now": timezone.now()})
        if not query.is_valid():
            return JsonResponse(query.errors, status=400)
        params = query.validated_data
        task_lists = visible_task_lists(request.user)
        workflow = request.GET.get("workflow")
        if workflow:
            task_lists = task_lists.filter(pk=int(workflow) if workflow.isdigit() else -1)
        try:
            self.timeline, run = timeline_for(task_lists, params)
        except ValidationError as exc:
            return JsonResponse(exc.detail, status=400)
        self.limit = run.max_parallelism if run else None
        self.granularity = params["granularity"]
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        grid = self.timeline.grid
        return {
            "labels": self.get_labels(),
            "datasets": self.get_datasets(),
            "granularity": self.granularity,
            "start": ms(grid.instant(0)),
            "end": ms(grid.instant(grid.count - 1)),
            "limit": self.limit,
        }

    def get_labels(self):
        grid = self.timeline.grid
        return [(grid.first_us + k * grid.step_us) // 1000 for k in range(grid.count)]

    def get_providers(self):
        return [name for name, _ in self.timeline.series]

    def get_data(self):
        return [values for _, values in self.timeline.series]

    def get_colors(self):
        i = 0
        while True:
            colour = SET2[i % len(SET2)]
            yield tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
            i += 1

    def get_dataset_options(self, index, color):
        return {
            "backgroundColor": "rgba({}, {}, {}, 0.75)".format(*color),
            "borderColor": "rgba({}, {}, {}, 1)".format(*color),
            "fill": True,
            "pointRadius": 0,
            "borderWidth": 1,
        }


def concurrency_view(request):
    return page(
        request,
        "concurrency.html",
        "Concurrency timeline",
        charts=True,
        task_lists=visible_task_lists(request.user).filter(archived_at__isnull=True).order_by("title"),
        templates=TaskTemplate.objects.filter(tasks__task_list__in=visible_task_lists(request.user))
        .distinct()
        .order_by("name")
        .values_list("name", flat=True),
        granularities=list(concurrency_selectors.GRANULARITIES),
        time_ranges=list(concurrency_selectors.TIME_RANGES),
        execution=request.GET.get("execution", ""),
        workflow=request.GET.get("workflow", ""),
        time_range=request.GET.get("time_range", "6h"),
        granularity=request.GET.get("granularity", "minute"),
        start=request.GET.get("start", ""),
        end=request.GET.get("end", ""),
    )


def run_window(run: ExecutionRun) -> str:
    """The concurrency page's query for a run: from a minute before it started to a minute
    after it ended (or now), at the finest resolution that stays within 2,000 instants."""
    utc = "%Y-%m-%dT%H:%M"
    start = (run.started_at or run.created_at) - timedelta(minutes=1)
    end = run.completed_at + timedelta(minutes=1) if run.completed_at else None
    span = ((end or timezone.now()) - start).total_seconds()
    fine = [g for g, seconds in concurrency_selectors.GRANULARITIES.items() if span / seconds <= 2000]
    query = {
        "execution": run.pk,
        "workflow": run.task_list_id,
        "time_range": "",
        "granularity": fine[0] if fine else "1h",
        "start": start.astimezone(UTC).strftime(utc),
        "end": end.astimezone(UTC).strftime(utc) if end else "",
    }
    return f"{reverse('admin:dashboard_concurrency')}?{urlencode(query)}"


def fleet_view(request):
    return page(request, "fleet.html", "Fleet: every active run", charts=True)


def agents_view(request):
    return page(request, "agents.html", "Parallel agents")


# --- the wave timeline of a session ------------------------------------------------------------


def visible_sessions(request):
    return selectors.visible_sessions(selectors.visible_runs(request.user))


def waves_view(request, session_id: int | None = None):
    sessions = visible_sessions(request)
    if session_id is None:
        session = sessions.order_by("-started_at").first()
    else:
        session = get_object_or_404(sessions, pk=session_id)
    return page(
        request,
        "waves.html",
        "Wave timeline" + (f": session {session.pk}" if session else ""),
        session=session,
        charts=True,
        sessions=sessions.order_by("-started_at")[:20],
    )


class WaveTimeline(JSONView):
    """The waves of a session's runs (of the user's teams): per task list a row per wave,
    [started, ended or now) in ms, with its task count."""

    def get_context_data(self, **kwargs):
        session = get_object_or_404(visible_sessions(self.request), pk=kwargs["session_id"])
        runs = selectors.visible_runs(self.request.user).filter(session=session)
        waves = (
            ParallelExecutionWave.objects.filter(execution__in=runs)
            .select_related("execution__task_list")
            .annotate(task_count=Count("wave_tasks"))
            .order_by("execution__task_list__title", "execution_id", "wave_number")
        )
        rows = []
        for wave in waves:
            rows.append(
                {
                    "task_list": wave.execution.task_list.title,
                    "run": wave.execution_id,
                    "wave": wave.wave_number,
                    "tasks": wave.task_count,
                    "status": wave.status,
                    "started": ms(wave.started_at),
                    "ended": ms(wave.completed_at),
                }
            )
        return {"now": ms(timezone.now()), "session": session.pk, "waves": rows}


# --- URLs ----------------------------------------------------------------------------------------


def urls(site) -> list:
    def view(func, **kwargs):
        return site.admin_view(func, **kwargs)

    return [
        path("dashboards/", view(fleet_view), name="dashboards"),
        path("dashboards/runs/<int:run_id>/", view(run_view), name="dashboard_run"),
        path("dashboards/runs/<int:run_id>/gantt.json", view(RunGantt.as_view()), name="dashboard_run_gantt"),
        path("dashboards/runs/<int:run_id>/<str:action>/", view(run_action), name="dashboard_run_action"),
        path("dashboards/concurrency/", view(concurrency_view), name="dashboard_concurrency"),
        path(
            "dashboards/concurrency.json", view(ConcurrencyChart.as_view()), name="dashboard_concurrency_data"
        ),
        path("dashboards/agents/", view(agents_view), name="dashboard_agents"),
        path("dashboards/waves/", view(waves_view), name="dashboard_waves"),
        path("dashboards/waves/<int:session_id>/", view(waves_view), name="dashboard_session_waves"),
        path(
            "dashboards/waves/<int:session_id>/timeline.json",
            view(WaveTimeline.as_view()),
            name="dashboard_wave_timeline",
        ),
        path("dashboards/task-lists/<int:task_list_id>/run/", view(run_now), name="dashboard_run_now"),
    ]


def install(site) -> None:
    """Put the dashboards' URLs in front of the admin site's own."""
    own = site.get_urls
    site.get_urls = lambda: urls(site) + own()
