from django import forms
from django.db import models


class IntBooleanField(models.SmallIntegerField):
    """A boolean stored as 0/1 in a smallint column.

    Seed 000's query patterns compare flags to integers (`is_error = 1`); PostgreSQL has no
    `boolean = integer` operator, so these columns are integers on every database while
    Python sees True/False.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", False)
        kwargs.setdefault("choices", [(True, "Yes"), (False, "No")])
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        return None if value is None else bool(value)

    def to_python(self, value):
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value.strip().lower() in {"1", "true", "yes", "on"}
        return bool(value)

    def get_prep_value(self, value):
        value = self.to_python(value)
        return None if value is None else int(value)

    def formfield(self, **kwargs):
        return forms.BooleanField(required=False, label=self.verbose_name.capitalize())
