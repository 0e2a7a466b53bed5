"""REST endpoints of definitions: task lists, their plan, and import (config/api.py has the
rules every endpoint follows)."""

from __future__ import annotations

import django_filters
from django.conf import settings
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api import BooleanFilter, Needs, Pagination, get_or_404, id_from, path_id
from waves.loaders import DefinitionError, load_bytes
from waves.models import Task, TaskList
from waves.selectors import task_list_plan
from waves.services import task_list_import
from waves.teams import TeamError, team_for_import, visible_task_lists


class TaskListSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="title")
    team = serializers.CharField(source="team.name", default=None, allow_null=True, help_text="null: no team")
    format = serializers.CharField(source="source_format")
    task_count = serializers.IntegerField()

    class Meta:
        model = TaskList
        fields = (
            "id", "name", "description", "team", "format", "max_parallelism", "task_count",
            "created_at", "archived_at", "replaced_by",
        )  # fmt: skip
        read_only_fields = fields


LIST_COLUMNS = (
    "id", "title", "description", "team__name", "source_format", "max_parallelism", "task_count", "created_at",
    "archived_at", "replaced_by_id",
)  # fmt: skip


def _list_row(r: dict) -> dict:
    """TaskListSerializer's output for a row of LIST_COLUMNS."""
    return {
        "id": r["id"], "name": r["title"], "description": r["description"], "team": r["team__name"],
        "format": r["source_format"], "max_parallelism": r["max_parallelism"], "task_count": r["task_count"],
        "created_at": _iso(r["created_at"]), "archived_at": _iso(r["archived_at"]), "replaced_by": r["replaced_by_id"],
    }  # fmt: skip


def _iso(value) -> str | None:
    """A time as a serializer's DateTimeField shows it (as executions.api.common.iso, which
    this app does not import): ISO 8601, `Z` for UTC."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _task_count() -> Coalesce:
    """A list's tasks counted by a subquery: a join grouped by list made the page's COUNT(*)
    group every list's tasks too."""
    tasks = Task.objects.filter(task_list=OuterRef("pk")).order_by().values("task_list")
    return Coalesce(Subquery(tasks.annotate(n=Count("pk")).values("n")), 0)


class PlanSerializer(serializers.Serializer):
    waves = serializers.ListField(child=serializers.ListField(child=serializers.CharField()))
    critical_path = serializers.ListField(child=serializers.CharField())
    width = serializers.IntegerField()
    estimated_makespan_minutes = serializers.FloatField()
    serial_minutes = serializers.FloatField()
    unestimated = serializers.ListField(child=serializers.CharField())


class TaskListDetailSerializer(TaskListSerializer):
    plan = serializers.SerializerMethodField()

    class Meta(TaskListSerializer.Meta):
        fields = (*TaskListSerializer.Meta.fields, "plan")
        read_only_fields = fields

    @extend_schema_field(PlanSerializer)
    def get_plan(self, obj) -> dict:
        plan = task_list_plan(obj)
        return PlanSerializer(
            {
                "waves": plan.analysis.waves,
                "critical_path": plan.analysis.critical_path,
                "width": plan.analysis.width,
                "estimated_makespan_minutes": plan.estimated_total,
                "serial_minutes": plan.serial_total,
                "unestimated": plan.unestimated,
            }
        ).data


class TaskListFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(field_name="title", lookup_expr="icontains")
    team = django_filters.CharFilter(field_name="team__name")
    archived = BooleanFilter(field_name="archived_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = TaskList
        fields = ("name", "team", "archived")


class DefinitionText(parsers.BaseParser):
    """The body as bytes (at most one past IMPORT_MAX_BYTES): the loader reads them as it reads
    a file, so the API and `import_tasklist` give the same messages."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read(settings.TIDEWATCH["IMPORT_MAX_BYTES"] + 1) if stream else b""


SUFFIX = {"application/json": ".json", "text/plain": ".pipeline", "application/yaml": ".yaml", "application/x-yaml": ".yaml", "text/yaml": ".yaml"}


# The import's examples: a workflow (the mapping a YAML or JSON file holds) and a pipeline table.
WORKFLOW = {
    "name": "hello",
    "steps": [{"id": "fetch", "run": "echo fetch"}, {"id": "report", "run": "echo report", "depends_on": ["fetch"]}],
}
PIPELINE = "1 | build | - | auto | g1 | 5 | compile\n2 | test | 1 | auto | g1 | 3 | run the tests\n"


class ImportSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=200)
    replace = serializers.BooleanField(required=False, default=False)
    team = serializers.CharField(required=False, max_length=150)


ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a bad id or parameter, named"),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="no such task list, or not one of your teams'"),
}


@extend_schema_view(
    list=extend_schema(
        summary="Task lists the user's teams own",
        responses={200: TaskListSerializer(many=True), 400: ERRORS[400]},
    ),
    retrieve=extend_schema(
        summary="A task list with its plan (waves, critical path, width, makespan)",
        parameters=[path_id("id", "the task list's id")],
        responses={200: TaskListDetailSerializer, **ERRORS},
    ),
)
class TaskListViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [Needs]
    write_permission = "waves.add_tasklist"
    parser_classes = [DefinitionText]  # only create reads a body
    lookup_value_regex = "[^/]+"
    pagination_class = Pagination
    filterset_class = TaskListFilter
    serializer_class = TaskListSerializer

    def get_queryset(self):
        return (
            visible_task_lists(self.request.user)
            .select_related("team")
            # The normalised definition (about 0.5 KB a step) is not shown: not read either.
            .defer("definition")
            .annotate(task_count=_task_count())
            .order_by("-id")
        )

    def list(self, request, *args, **kwargs):
        # The page as plain rows, not a ModelSerializer per row (most of the page's time), as
        # executions.api.common.PlainList reads its lists; tests/api/test_plain_rows.py checks
        # that both give the same bytes. The serializer stays for the schema.
        queryset = self.filter_queryset(self.get_queryset()).values(*LIST_COLUMNS)
        return self.get_paginated_response([_list_row(r) for r in self.paginate_queryset(queryset)])

    def get_serializer_class(self):
        return TaskListDetailSerializer if self.action == "retrieve" else TaskListSerializer

    def get_object(self):
        return get_or_404(self.get_queryset(), pk=id_from(self.kwargs["pk"]))

    @extend_schema(
        summary="Import a workflow file or pipeline table",
        description="The body is the file: `application/yaml` or `application/json` for a workflow "
        "(a mapping with `name` and `steps`), `text/plain` for a pipeline table. Bad input is 400 "
        "with the same message as `import_tasklist`, and nothing is written.",
        parameters=[
            OpenApiParameter("name", str, description="the list's name (default: the file's `name:`)"),
            OpenApiParameter("replace", bool, description="archive the live list of that name"),
            OpenApiParameter("team", str, description="the owning team (default: your only team)"),
        ],
        request={
            "application/yaml": OpenApiTypes.OBJECT,
            "application/json": OpenApiTypes.OBJECT,
            "text/plain": OpenApiTypes.STR,
        },
        responses={
            201: TaskListSerializer,
            400: OpenApiResponse(
                OpenApiTypes.OBJECT, description="a bad body or parameter, named, with the import's message"
            ),
        },
        examples=[
            OpenApiExample("workflow", value=WORKFLOW, media_type="application/yaml", request_only=True),
            OpenApiExample("workflow", value=WORKFLOW, media_type="application/json", request_only=True),
            OpenApiExample("pipeline table", value=PIPELINE, media_type="text/plain", request_only=True),
        ],
    )
    def create(self, request):
        options = ImportSerializer(data=request.query_params)
        options.is_valid(raise_exception=True)
        name, replace = options.validated_data.get("name"), options.validated_data["replace"]
        try:
            team = team_for_import(request.user, options.validated_data.get("team"))
        except TeamError as exc:
            raise ValidationError({"team": [str(exc)]})
        media = (request.content_type or "").split(";")[0].strip().lower()
        # An empty body reaches no parser, and DRF gives `{}` for it, not bytes: it is the empty file.
        body = request.data if isinstance(request.data, bytes) else b""
        try:
            definition = load_bytes(body, source="<request>", suffix=SUFFIX.get(media, ""), name=name)
            with transaction.atomic():
                old = TaskList.objects.filter(title=(name or definition.name).strip(), archived_at__isnull=True)
                if replace and old.exists() and not visible_task_lists(request.user).filter(pk=old[0].pk).exists():
                    raise ValidationError({"replace": ["the live list of that name belongs to another team"]})
                tl = task_list_import(definition=definition, name=name, replace=replace, source_path="api")
                tl.team = team
                tl.save(update_fields=["team"])
        except DefinitionError as exc:
            raise ValidationError({"body": [str(exc)]})
        tl = self.get_queryset().get(pk=tl.pk)
        return Response(TaskListSerializer(tl).data, status=status.HTTP_201_CREATED)
