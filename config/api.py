"""What every app's REST endpoints share: ids, pagination, permissions, errors.

Each app serves its own endpoints (`waves/api.py`, `executions/api/`,
`observability/api.py`); config/api_urls.py gathers them under /api/v2/. A view is thin:
validate, call one selector or service, serialize.

- **Teams.** Everything hangs off a task list, and a task list belongs to a team (an auth
  Group). Views start from `waves.teams.visible_task_lists(user)` (or a queryset filtered
  through it), so a row of another team is 404, never 403: ids do not leak.
- **Ids.** A path id is read with `id_from()`: anything that is not a whole number a row can
  have (letters, 0, past the bigint range) is 400 naming the parameter, never a 500.
- **Writes** need a model permission on top of seeing the row: the view names it in
  `write_permission` and uses `permission_classes = [Needs]`.
- **Path ids** match anything (`lookup_value_regex = "[^/]+"`) so that `id_from()` can say
  what is wrong with them.
- **Lists** are paginated: limit/offset (`Pagination`), or a cursor over a unique key for the
  big append-only tables (`cursor(ordering)`).
"""

from __future__ import annotations

import django_filters
from django import forms
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import exceptions, pagination, permissions, status
from rest_framework.exceptions import ValidationError

MAX_ID = 2**63 - 1


def id_from(value, name: str = "id") -> int:
    """A path or query id, or 400 naming `name`."""
    text = str(value).strip()
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ID:
        return int(text)
    raise ValidationError({name: [f"must be a whole number from 1 to {MAX_ID}, not {str(value)[:40]!r}"]})


def get_or_404(queryset, **lookup):
    """The one row of `queryset` (already scoped to what the user may see), or 404."""
    row = queryset.filter(**lookup).first()
    if row is None:
        raise Http404("not found")
    return row


def bounded_int(params, name: str, default: int | None, minimum: int, maximum: int) -> int | None:
    """A whole-number query parameter within bounds, or 400 naming it."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if raw.isascii() and raw.isdigit() and minimum <= int(raw) <= maximum:
        return int(raw)
    raise ValidationError({name: [f"must be a whole number from {minimum} to {maximum}"]})


def _bounds(parameters: list[dict], **bounds: tuple[int, int]) -> list[dict]:
    """The pagination parameters of the schema, with the bounds the view enforces."""
    for parameter in parameters:
        if parameter["name"] in bounds:
            low, high = bounds[parameter["name"]]
            parameter["schema"] = {**parameter["schema"], "minimum": low, "maximum": high}
    return parameters


class Pagination(pagination.LimitOffsetPagination):
    default_limit = 50
    max_limit = 1000

    def get_limit(self, request):
        return bounded_int(request.query_params, self.limit_query_param, self.default_limit, 1, self.max_limit)

    def get_offset(self, request):
        return bounded_int(request.query_params, self.offset_query_param, 0, 0, MAX_ID)

    def get_schema_operation_parameters(self, view):
        return _bounds(super().get_schema_operation_parameters(view), limit=(1, self.max_limit), offset=(0, MAX_ID))


class _StrictBoolean(forms.NullBooleanField):
    widget = forms.TextInput

    def to_python(self, value):
        text = str(value).strip().lower() if value is not None else ""
        if text == "":
            return None
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise forms.ValidationError("must be true or false")

    def validate(self, value):
        pass


class BooleanFilter(django_filters.BooleanFilter):
    """true/false (1/0, yes/no); anything else is 400 naming the parameter."""

    field_class = _StrictBoolean


class _Cursor(pagination.CursorPagination):
    page_size_query_param = "limit"
    max_page_size = 1000

    def get_page_size(self, request):
        return bounded_int(request.query_params, "limit", self.page_size, 1, self.max_page_size)

    def get_schema_operation_parameters(self, view):
        return _bounds(super().get_schema_operation_parameters(view), limit=(1, self.max_page_size))

    def decode_cursor(self, request):
        """A cursor this endpoint did not hand out is 400 naming `cursor` (DRF says 404); its
        position must be a whole number a column can hold (the orderings are integer
        columns), or it would reach the database."""
        if not request.query_params.get(self.cursor_query_param):
            return None  # the first page
        try:
            decoded = super().decode_cursor(request)
        except exceptions.NotFound:
            decoded = None
        position = decoded.position if decoded else None
        if decoded is None or (
            position is not None and not (position.isascii() and position.isdigit() and int(position) <= MAX_ID)
        ):
            raise ValidationError({"cursor": ["not a cursor this endpoint handed out"]})
        return decoded


def cursor(ordering: str, page_size: int = 100) -> type[pagination.CursorPagination]:
    """Cursor pagination over a unique, indexed key: as fast on page 10,000 as on page 1."""
    return type("Cursor", (_Cursor,), {"ordering": ordering, "page_size": page_size})


class Needs(permissions.BasePermission):
    """Safe methods: any signed-in user (rows are scoped by team). Writes: also the model
    permission the view names in `write_permission` (e.g. "executions.change_executionrun")."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        needed = getattr(view, "write_permission", None)
        return bool(needed) and user.has_perm(needed)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "the request conflicts with the current state"
    default_code = "conflict"


class _WholeNumber(forms.Field):
    def __init__(self, *args, minimum: int = 1, maximum: int = MAX_ID, **kwargs):
        self.minimum, self.maximum = minimum, maximum
        super().__init__(*args, **kwargs)

    def to_python(self, value):
        text = "" if value is None else str(value).strip()
        if text == "":
            return None
        if text.isascii() and text.isdigit() and self.minimum <= int(text) <= self.maximum:
            return int(text)
        raise forms.ValidationError(f"must be a whole number from {self.minimum} to {self.maximum}")


class _WholeNumberFilter(django_filters.Filter):
    field_class = _WholeNumber


def whole_number(
    field_name: str, *, minimum: int = 1, maximum: int = MAX_ID, **kwargs
) -> django_filters.Filter:
    """A filter on an integer column: a value the column cannot hold is 400 naming the
    parameter, never a database error."""
    found = _WholeNumberFilter(field_name=field_name, minimum=minimum, maximum=maximum, **kwargs)
    schema = {
        "type": "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": kwargs.get("help_text", ""),
    }
    return extend_schema_field(schema)(found)


def path_id(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, str, OpenApiParameter.PATH, pattern="^[^/]+$", description=f"{what} (a whole number)"
    )


# Responses every endpoint can give, whatever its view declares: DRF answers an anonymous
# request 401 when it carries a `Token` header it cannot use and 403 otherwise, and a write
# without its model permission 403. Added to the schema by `declare_auth_errors`.
AUTH_ERRORS = {
    "401": "not authenticated: a bad or missing `Authorization: Token` header",
    "403": "not authenticated (no session, no token), or a write without its model permission",
}


def declare_auth_errors(result, generator, request, public):
    """drf-spectacular post-processing hook: every operation documents AUTH_ERRORS."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and "responses" in operation:
                for code, description in AUTH_ERRORS.items():
                    operation["responses"].setdefault(code, {"description": description})
    return result
