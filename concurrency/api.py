"""The concurrency timeline endpoints (seed 004 §6; config/api.py has the rules every endpoint
follows): one task list's, and the fleet's (every list the user may see).

The body is built by `concurrency.render` straight from the counts (a serializer over half a
million points would take seconds), so the views return a plain HttpResponse; errors are
DRF's (400 naming the parameter, 404, 401/403), always JSON.
"""

from __future__ import annotations

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from concurrency import render, selectors
from concurrency.selectors import AGGREGATES, GRANULARITIES, GROUPS, STATUSES, TIME_RANGES, Grid, GridError
from config.api import Needs, get_or_404, id_from, path_id
from executions.models import ExecutionRun
from waves.models import TaskList
from waves.teams import visible_task_lists

FORMATS = ("json", "csv")
MAX_TEMPLATES = 100


class OneOf(serializers.CharField):
    """A string from a list. Not a ChoiceField: drf-spectacular would make an enum component
    of each and warn about the names it shares with other endpoints' enums."""

    def __init__(self, choices, **kwargs):
        self.allowed = tuple(choices)
        super().__init__(required=False, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value not in self.allowed:
            raise ValidationError(f"must be one of {', '.join(self.allowed)}, not {value[:40]!r}")
        return value


class ConcurrencyQuery(serializers.Serializer):
    """The query string, checked: every problem is a 400 naming its parameter."""

    time_range = OneOf(TIME_RANGES, default=None)
    granularity = OneOf(GRANULARITIES, default="minute")
    start = serializers.DateTimeField(required=False, default=None)
    end = serializers.DateTimeField(required=False, default=None)
    template = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, default=list, max_length=MAX_TEMPLATES
    )
    execution = serializers.CharField(required=False, default=None)
    agg = OneOf(AGGREGATES, default="sample")
    group = OneOf(GROUPS, default="template")
    status = OneOf(STATUSES, default="running")
    format = OneOf(FORMATS, default="json")

    def validate_execution(self, value):
        try:
            return None if value is None else id_from(value, "execution")
        except ValidationError as exc:
            raise ValidationError(exc.detail["execution"])

    def validate(self, attrs):
        start, end, time_range = attrs["start"], attrs["end"], attrs["time_range"]
        if start is None and end is not None:
            raise ValidationError({"start": ["end needs a start"]})
        if start is not None and time_range:
            raise ValidationError({"time_range": ["give time_range or start (and end), not both"]})
        now = self.context["now"]
        if start is not None and end is None and start > now:
            raise ValidationError({"start": ["is after now: give an end too"]})
        try:
            if start is None:
                attrs["grid"] = Grid.relative(time_range or "24h", attrs["granularity"], now)
            else:
                attrs["grid"] = Grid.explicit(start, end or now, attrs["granularity"])
        except GridError as exc:
            raise ValidationError({exc.field: [str(exc)]})
        return attrs


class ConcurrencyPointSerializer(serializers.Serializer):
    timestamp = serializers.CharField(
        help_text="the bucket's instant, ISO 8601 in UTC with a Z (`2025-05-27T00:01:00Z`)"
    )
    task_template_name = serializers.CharField(
        help_text='the template, or "Other" for those past the 50th; "Total" with group=total'
    )
    concurrent_count = serializers.IntegerField(
        min_value=1,
        help_text="tasks in the status at the instant (agg=sample) or at the peak inside "
        "[timestamp, timestamp + granularity) (agg=max); zero counts are left out",
    )


class ConcurrencySerializer(serializers.Serializer):
    data = ConcurrencyPointSerializer(many=True, help_text="by timestamp, then template name (Other last)")


class JsonErrors(BaseContentNegotiation):
    """Errors are JSON whatever the client accepts, and `format` is this endpoint's own
    parameter (json or csv), not DRF's renderer override."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


QUERY = [
    OpenApiParameter(
        "time_range", str, enum=list(TIME_RANGES),
        description="the window up to now (default 24h), on instants aligned to the granularity; "
        "or give start (and end)",
    ),
    OpenApiParameter("granularity", str, enum=list(GRANULARITIES), description="between instants (default minute)"),
    OpenApiParameter(
        "start", OpenApiTypes.DATETIME,
        description="ISO 8601 (UTC unless an offset is given): the first instant, instead of time_range",
    ),
    OpenApiParameter(
        "end", OpenApiTypes.DATETIME,
        description=f"the last instant at most (default now); at most {selectors.MAX_BUCKETS:,} instants",
    ),
    OpenApiParameter(
        "template", str, many=True, explode=True, description="template names to keep (repeatable; default all)"
    ),
    OpenApiParameter("execution", int, description="one run only (a run of the task lists shown)"),
    OpenApiParameter(
        "agg", str, enum=list(AGGREGATES),
        description="sample: the count at each instant (default); max: the peak inside each bucket",
    ),
    OpenApiParameter(
        "group", str, enum=list(GROUPS),
        description='template: a series per template (default); total: one series, "Total", counted '
        "over all the tasks together, so that with agg=max it is the peak of the total inside each "
        "bucket (at most the sum of the templates' peaks, which need not coincide)",
    ),
    OpenApiParameter(
        "status", str, enum=list(STATUSES),
        description="the status counted (default running; queued and waiting_approval show tasks "
        "waiting for a slot or a gate)",
    ),
    OpenApiParameter("format", str, enum=list(FORMATS), description="json (default) or csv"),
]  # fmt: skip
EXAMPLE = OpenApiExample(
    "two templates",
    value={
        "data": [
            {"timestamp": "2025-05-27T00:00:00Z", "task_template_name": "extract", "concurrent_count": 4},
            {"timestamp": "2025-05-27T00:01:00Z", "task_template_name": "extract", "concurrent_count": 7},
            {"timestamp": "2025-05-27T00:01:00Z", "task_template_name": "transform", "concurrent_count": 2},
        ]
    },
    response_only=True,
    media_type="application/json",
)
RESPONSES = {
    (200, "application/json"): ConcurrencySerializer,
    (200, "text/csv"): OpenApiTypes.STR,
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a bad id or parameter, named, with why"),
}
DESCRIPTION = (
    "How many tasks were in `status` at each instant, by task template, from the task status "
    "audit: a task counts from its entry into the status to its next transition, or to now "
    "while it is still in it, however long before the window it entered. Zero counts are "
    'left out; more than 50 templates are folded into "Other". `group=total` gives one series, '
    '"Total", over all the tasks together instead of one per template. `format=csv` gives the same '
    "points as `timestamp,task_template_name,concurrent_count` lines."
)


def timeline_for(task_lists, params: dict) -> tuple[selectors.Timeline, ExecutionRun | None]:
    """The timeline a valid ConcurrencyQuery asks for over `task_lists`, and the run its
    `execution` names (400 naming `execution` when that run is not among the lists)."""
    run = None
    if params["execution"] is not None:
        run = ExecutionRun.objects.filter(pk=params["execution"], task_list__in=task_lists).first()
        if run is None:
            raise ValidationError({"execution": [f"no run {params['execution']} among the task lists shown"]})
    timeline = selectors.task_concurrency(
        task_lists=task_lists,
        grid=params["grid"],
        status=params["status"],
        agg=params["agg"],
        templates=params["template"],
        execution=params["execution"],
        group=params["group"],
    )
    return timeline, run


class _Timeline(APIView):
    permission_classes = [Needs]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonErrors

    def timeline(self, request, task_lists) -> HttpResponse:
        query = ConcurrencyQuery(data=request.query_params, context={"now": timezone.now()})
        query.is_valid(raise_exception=True)
        params = query.validated_data
        timeline, _ = timeline_for(task_lists, params)
        if params["format"] == "csv":
            response = HttpResponse(render.as_csv(timeline), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="task_concurrency.csv"'
            return response
        return HttpResponse(render.as_json(timeline), content_type="application/json")


class TaskListConcurrencyView(_Timeline):
    @extend_schema(
        summary="A task list's concurrency timeline: tasks in a status by template (seed 004 §6)",
        description=DESCRIPTION,
        parameters=[path_id("task_list_id", "the task list's id"), *QUERY],
        responses={
            **RESPONSES,
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="no such task list, or not one of your teams'"
            ),
        },
        examples=[EXAMPLE],
    )
    def get(self, request, task_list_id):
        tl = get_or_404(visible_task_lists(request.user), pk=id_from(task_list_id, "task_list_id"))
        return self.timeline(request, TaskList.objects.filter(pk=tl.pk))


class FleetConcurrencyView(_Timeline):
    @extend_schema(
        summary="The fleet's concurrency timeline: every task list you may see, by template",
        description=DESCRIPTION,
        parameters=QUERY,
        responses=RESPONSES,
        examples=[EXAMPLE],
    )
    def get(self, request):
        return self.timeline(request, visible_task_lists(request.user))


# The contract's paths have no trailing slash; the same views answer with one, outside the schema.
@extend_schema(exclude=True)
class TaskListConcurrencySlashView(TaskListConcurrencyView):
    pass


@extend_schema(exclude=True)
class FleetConcurrencySlashView(FleetConcurrencyView):
    pass
