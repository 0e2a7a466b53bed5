"""Real Celery workers for the celery backend's tests.

Workers are `celery -A config worker` subprocesses consuming a queue private to the test
(a Redis database of their own: CELERY_TEST_REDIS_DB, default 13), connected to the test's
database, each with a work directory of its own (a worker shares no disk with the
executor). They share the database with the test and the executor, so these tests need
PostgreSQL (SQLite test databases are per process) and a Redis: without them they are
skipped, saying why (test_inline.py runs the same code in one process, on any database).
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

from tests.conftest import ROOT

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
REDIS_DB = os.environ.get("CELERY_TEST_REDIS_DB", "13")


def broker_url() -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", "", ""))


def redis_reachable() -> bool:
    parts = urlsplit(REDIS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def postgres_and_redis():
    """Skips the test, saying why, unless real workers can share its database and a broker."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "Celery workers are separate processes sharing the database: these tests need "
            "PostgreSQL (DATABASE_URL=postgres://...), not a per-process SQLite test database"
        )
    if not redis_reachable():
        pytest.skip(f"Redis is unreachable at {REDIS_URL} (set REDIS_URL): the Celery broker is needed")


@pytest.fixture
def celery_env(postgres_and_redis, child_env, settings):
    """Environment of the executor and the workers: the test's database, a private queue,
    fast heartbeats. The test process itself is configured the same way."""
    queue = f"tw-test-{uuid.uuid4().hex[:10]}"
    env = dict(child_env)
    env.update(
        CELERY_BROKER_URL=broker_url(),
        CELERY_TASK_DEFAULT_QUEUE=queue,
        TIDEWATCH_HEARTBEAT_SECONDS="1",
        TIDEWATCH_STALE_AFTER_SECONDS="6",  # a loaded machine may delay a beat: not a lost worker
    )
    settings.CELERY_BROKER_URL = env["CELERY_BROKER_URL"]
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    settings.TIDEWATCH = {**settings.TIDEWATCH, "HEARTBEAT_SECONDS": 1, "STALE_AFTER_SECONDS": 6}
    from config.celery import app

    app.conf.broker_url = env["CELERY_BROKER_URL"]
    yield env
    import redis  # what kombu keeps of the test's queues (bindings): gone with the test

    with redis.Redis.from_url(env["CELERY_BROKER_URL"]) as client:
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)


class Worker:
    def __init__(self, proc: subprocess.Popen, log: Path, name: str):
        self.proc, self.log, self.name = proc, log, name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def workers(celery_env, tmp_path):
    """start(pool="solo", concurrency=1, queues=(default,)) -> a ready Worker; every worker
    is stopped at the end of the test, by its pid."""
    started: list[Worker] = []

    def start(pool: str = "solo", concurrency: int = 1, queues=None) -> Worker:
        n = len(started) + 1
        name = f"{celery_env['CELERY_TASK_DEFAULT_QUEUE']}-{n}"
        env = dict(celery_env, TIDEWATCH_VAR_DIR=str(tmp_path / f"worker-{n}"))
        log = tmp_path / f"worker-{n}.log"
        queues = ",".join(queues or [celery_env["CELERY_TASK_DEFAULT_QUEUE"]])
        argv = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-P", pool, "-c", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queues,
            "-n", f"{name}@%h", "-l", "info",
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(proc, log, name)
        started.append(worker)
        deadline = time.monotonic() + 60
        while " ready." not in worker.text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {name} did not start:\n{worker.text()}")
            time.sleep(0.1)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in started:
        try:
            worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def executor(celery_env):
    """start(*run_tasklist args) -> the `manage.py run_tasklist ...` process (stdout/stderr piped)."""
    procs: list[subprocess.Popen] = []

    def start(*args) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_tasklist", *map(str, args)],
            cwd=ROOT, env=celery_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
