"""python manage.py check_worker [--ping]

What a Celery worker (or an executor with --backend celery) needs, checked with this host's
settings: the database (reachable and migrated) and the broker (CELERY_BROKER_URL). With
--ping, also the workers that answer on the broker, and the queues they consume. Prints
one line per check; exit 0 when all pass, 1 when one fails (the line on stderr says why).
"""

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection
from django.db.utils import Error as DatabaseError

from executions.models import RemoteAttempt


class Command(BaseCommand):
    help = "Check that a Celery worker can reach the database and the broker."

    def add_arguments(self, parser):
        parser.add_argument("--ping", action="store_true", help="also list the workers that answer")

    def handle(self, *args, ping=False, **opts):
        failed = not self.database()
        failed |= not self.broker(ping)
        if failed:
            raise SystemExit(1)

    def ok(self, text: str) -> bool:
        self.stdout.write(f"{text}")
        return True

    def fail(self, text: str) -> bool:
        self.stderr.write(text)
        return False

    def database(self) -> bool:
        s = connection.settings_dict
        where = f"{connection.vendor} {s['NAME']}" + (f" on {s['HOST']}:{s['PORT'] or 5432}" if s["HOST"] else "")
        try:
            RemoteAttempt.objects.exists()
        except DatabaseError as exc:
            return self.fail(f"database: FAILED ({where}): {exc}".strip())
        note = ""
        if connection.vendor == "sqlite":
            note = " (SQLite: workers on other machines need the same PostgreSQL as the executor)"
        return self.ok(f"database: ok ({where}){note}")

    def broker(self, ping: bool) -> bool:
        url = settings.CELERY_BROKER_URL
        if not url:
            return self.fail("broker: FAILED: CELERY_BROKER_URL is not set (redis://HOST:6379/0 or amqp://...)")
        from config.celery import app

        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=5)
                shown = conn.as_uri()  # the password masked
        except Exception as exc:
            return self.fail(f"broker: FAILED ({app.conf.broker_url.split('@')[-1]}): {exc}")
        self.ok(f"broker: ok ({shown}); default queue {settings.CELERY_TASK_DEFAULT_QUEUE}")
        if not ping:
            return True
        replies = app.control.inspect(timeout=2).active_queues() or {}
        if not replies:
            return self.fail("workers: none answered within 2 s")
        for name, queues in sorted(replies.items()):
            self.ok(f"worker: {name} consumes {', '.join(q['name'] for q in queues)}")
        return True
