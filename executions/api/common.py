"""What the run endpoints share: parameters, the error responses, small helpers."""

from __future__ import annotations

import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from config.api import path_id

# --- parameters --------------------------------------------------------------------------------


def choice(choices, **kwargs) -> django_filters.ChoiceFilter:
    return django_filters.ChoiceFilter(choices=choices, **kwargs)


RUN_ID = path_id("execution_id", "the run's id")
ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="a bad id or parameter, named"),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="no such run, or not one of your teams'"),
}


def status_field(choices) -> serializers.CharField:
    # A string with its values listed, not an enum: several "status" choice sets would make
    # drf-spectacular name their enums by hash (and warn).
    return serializers.CharField(read_only=True, help_text="one of: " + ", ".join(choices.values))


def _seconds(start, end) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


# --- plain rows --------------------------------------------------------------------------------


class PlainList:
    """A list view (before generics.ListAPIView in the bases) whose page is read as
    `.values(*columns)` and turned into the response's dicts by `rows()`, each a small
    function that builds exactly what the view's serializer would.

    A ModelSerializer walks its field objects for every attribute of every row, and building
    model instances for it cost as much again: most of the time of a page of 50 or 100 rows.
    The serializer class stays the view's `serializer_class`, so the schema is still derived
    from it; tests/api/test_plain_rows.py checks that both give the same bytes."""

    columns: tuple[str, ...] = ()

    def rows(self, page: list[dict]) -> list[dict]:
        raise NotImplementedError

    def list(self, request, *args, **kwargs):
        queryset = self.filter_queryset(self.get_queryset()).values(*self.columns)
        return self.get_paginated_response(self.rows(self.paginate_queryset(queryset)))
