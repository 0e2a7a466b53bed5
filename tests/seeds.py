"""Seed 003's three example pipelines: (table, waves of concurrent groups, critical path minutes)."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SEED_003 = {
    "example1": (
        """1 | base | - | auto | - | 10 | Setup
2 | base | - | auto | backend | 30 | Auth service
3 | base | - | auto | backend | 30 | User service
4 | base | - | auto | - | 10 | Backend validation
5 | base | - | auto | web-features | 30 | Calendar feature (web)
6 | base | - | auto | web-features | 30 | Tasks feature (web)
7 | base | - | auto | mobile-features | 30 | Calendar feature (mobile)
8 | base | - | auto | mobile-features | 30 | Tasks feature (mobile)
9 | base | - | auto | - | 10 | Integration tests""",
        [["backend"], ["web-features", "mobile-features"]],
        90,
    ),
    "example2": (
        """1 | base | - | auto | - | 10 | Setup
2 | base | - | auto | dev | 30 | Backend
3 | base | - | auto | dev | 30 | Frontend
4 | base | - | auto | dev | 30 | Tests
5 | base | - | auto | - | 10 | Integration tests""",
        [["dev"]],
        50,
    ),
    "example3": (
        (EXAMPLES / "multi_platform.pipeline").read_text(),
        [["backend"], ["web-app", "mobile-app"], ["email-integration", "sms-integration"]],
        130,
    ),
}
