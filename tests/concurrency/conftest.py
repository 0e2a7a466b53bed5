"""The API's users (tests/api/conftest.py): anonymous, member, reader, outsider, superuser."""

from tests.api.conftest import as_user, member, outsider, reader, superuser, teams  # noqa: F401
