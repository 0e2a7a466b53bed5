"""The Celery app of the celery backend (`run_tasklist --backend celery`).

Workers start with `celery -A config worker -Q tidewatch[,QUEUE...]`. Everything comes from
Django settings (CELERY_BROKER_URL, CELERY_TASK_DEFAULT_QUEUE, any other CELERY_* name).
What the executor relies on is set here and not a knob: a message is acknowledged only
after its task ran (late ack), a worker reserves one message at a time, and a message whose
worker process died is handed back to the broker. A message delivered twice is harmless:
the attempt it names runs once (executions/tasks.py).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tidewatch", include=["executions.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,  # results travel through the database (executions.RemoteAttempt)
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
