"""Steering runs: start, resume, cancel, approve and reject a step."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, parsers, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from config.api import Conflict, Needs, get_or_404, id_from, path_id
from executions import services
from executions.api.common import ERRORS, RUN_ID, status_field
from executions.api.runs import _run
from executions.errors import NotFound, ServiceError
from executions.models import (
    ExecutionRun,
    RunStatus,
    TaskStatus,
)
from waves.teams import visible_task_lists

# --- start, resume, cancel, approve, reject ----------------------------------------------------


class RunOptionsSerializer(serializers.Serializer):
    max_parallelism = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=services.MAX_PARALLELISM,
        help_text="tasks at once (default: the task list's)",
    )  # fmt: skip
    schedule = serializers.ChoiceField(
        choices=services.SCHEDULES, required=False, help_text="which ready task goes first"
    )
    simulate = serializers.FloatField(
        required=False, allow_null=True, max_value=services.SIMULATE_MAX,
        help_text="sleep this many seconds per estimated minute instead of running the commands",
    )  # fmt: skip

    def validate_simulate(self, value):
        if value is not None and value <= 0:
            raise ValidationError("must be above 0")
        return value

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise ValidationError({name: ["unknown option"] for name in unknown})
        return attrs


class RunStartedSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    url = serializers.URLField(help_text="the run: follow it there")


class NoExecutor(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "could not start an executor"
    default_code = "no_executor"


class Refused(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "refused"


def _started(request, run: ExecutionRun) -> Response:
    """Start the executor of a laid-out run in the background; 202 with where to follow it."""
    try:
        services.run_spawn(run)
    except OSError as exc:
        services.run_request_cancel(run, actor=request.user.get_username())  # nothing will claim it
        raise NoExecutor(f"could not start an executor for run {run.pk}: {exc}")
    url = request.build_absolute_uri(reverse("api:execution-detail", args=[run.pk]))
    return Response(
        {"run_id": run.pk, "url": url}, status=status.HTTP_202_ACCEPTED, headers={"Location": url}
    )


def _options(request) -> dict:
    options = RunOptionsSerializer(data=request.data)
    options.is_valid(raise_exception=True)
    return options.validated_data


class _Write(generics.GenericAPIView):
    permission_classes = [Needs]
    parser_classes = [parsers.JSONParser]


class RunStartView(_Write):
    write_permission = "executions.add_executionrun"
    serializer_class = RunOptionsSerializer

    @extend_schema(
        summary="Start a run of a task list; it executes in the background",
        description="Lays the run out and starts a detached executor (`manage.py execute_run`). "
        "Follow the run at `url`. A run the service refuses (e.g. steps without a command) is 400.",
        parameters=[path_id("task_list_id", "the task list's id")],
        request=RunOptionsSerializer,
        responses={
            202: RunStartedSerializer,
            400: ERRORS[400],
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="no such task list, or not one of your teams'"
            ),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="no executor could be started"),
        },
    )
    def post(self, request, task_list_id):
        task_list = get_or_404(visible_task_lists(request.user), pk=id_from(task_list_id, "task_list_id"))
        options = _options(request)
        try:
            run = services.run_start(task_list, **options)
        except ServiceError as exc:
            raise Refused(str(exc))
        return _started(request, run)


class RunResumeView(_Write):
    write_permission = "executions.change_executionrun"
    serializer_class = RunOptionsSerializer

    @extend_schema(
        summary="Resume a failed or cancelled run: what did not succeed runs again",
        description="Lays out a new run (options not given are the old run's) and starts its "
        "executor in the background. Refused (409, with the reason) for a run that is still "
        "running, succeeded, or was resumed already.",
        parameters=[RUN_ID],
        request=RunOptionsSerializer,
        responses={
            202: RunStartedSerializer,
            **ERRORS,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="the run cannot be resumed: why"),
            503: OpenApiResponse(OpenApiTypes.OBJECT, description="no executor could be started"),
        },
    )
    def post(self, request, execution_id):
        run = _run(request, execution_id)
        options = _options(request)
        try:
            new = services.run_resume(run, **options)
        except ServiceError as exc:
            raise Conflict(str(exc))
        return _started(request, new)


class CancelledSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    url = serializers.URLField()
    status = status_field(RunStatus)
    cancel_requested_at = serializers.DateTimeField()


class RunCancelView(_Write):
    write_permission = "executions.change_executionrun"
    serializer_class = CancelledSerializer

    @extend_schema(
        summary="Cancel a run, wherever its executor runs",
        description="Records the request; the executor that owns the run stops launching and "
        "terminates its tasks within a second. A run no executor owns is closed at once.",
        parameters=[RUN_ID],
        request=None,
        responses={
            202: CancelledSerializer,
            **ERRORS,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="the run has already ended"),
        },
    )
    def post(self, request, execution_id):
        run = _run(request, execution_id)
        if not services.run_request_cancel(run, actor=request.user.get_username()):
            raise Conflict(f"run {run.pk} has already ended ({run.status})")
        url = request.build_absolute_uri(reverse("api:execution-detail", args=[run.pk]))
        body = {
            "run_id": run.pk,
            "url": url,
            "status": run.status,
            "cancel_requested_at": run.cancel_requested_at,
        }
        return Response(CancelledSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class StepDecisionSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    key = serializers.CharField()
    status = status_field(TaskStatus)
    approval_decision = serializers.CharField(help_text="approved or rejected")
    approved_by = serializers.CharField()
    approved_at = serializers.DateTimeField()


def _step_key(value: str) -> str:
    if not (0 < len(value) <= 220) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError({"key": ["must be a step key: 1 to 220 characters, no control characters"]})
    return value


class _Decide(_Write):
    write_permission = "executions.change_wavetask"
    serializer_class = StepDecisionSerializer
    approve = True

    def post(self, request, execution_id, key):
        run = _run(request, execution_id)
        key = _step_key(key)
        try:
            wt = services.step_decide(run, key, approve=self.approve, actor=request.user.get_username())
        except NotFound as exc:
            raise exceptions.NotFound(str(exc))
        except ServiceError as exc:
            raise Conflict(str(exc))
        body = {
            "run_id": run.pk, "key": wt.key, "status": wt.status, "approval_decision": wt.approval_decision,
            "approved_by": wt.approved_by, "approved_at": wt.approved_at,
        }  # fmt: skip
        return Response(StepDecisionSerializer(body).data)


def _decide_schema(verb: str, then: str):
    return extend_schema(
        summary=f"{verb.capitalize()} a step waiting at an approval gate",
        description=f"A step waiting at its gate moves on at once ({then}); one the run has not "
        "reached yet keeps the decision. Who and when are recorded.",
        parameters=[
            RUN_ID,
            OpenApiParameter("key", str, OpenApiParameter.PATH, description="the step's key"),
        ],
        request=None,
        responses={
            200: StepDecisionSerializer,
            400: ERRORS[400],
            404: OpenApiResponse(
                OpenApiTypes.OBJECT, description="no such run or step, or not one of your teams'"
            ),
            409: OpenApiResponse(
                OpenApiTypes.OBJECT, description="not an approval step, decided already, or past its gate"
            ),
        },
    )


class StepApproveView(_Decide):
    approve = True

    @_decide_schema("approve", "queued")
    def post(self, request, execution_id, key):
        return super().post(request, execution_id, key)


class StepRejectView(_Decide):
    approve = False

    @_decide_schema("reject", "failed")
    def post(self, request, execution_id, key):
        return super().post(request, execution_id, key)
