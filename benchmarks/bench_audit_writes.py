#!/usr/bin/env python
"""Audit writes under load (issue 17): bulk status changes through the one status-change
function, `executions.transitions.transition()`, on PostgreSQL and on SQLite.

    .venv/bin/python benchmarks/bench_audit_writes.py
        [--database-url postgres://postgres@127.0.0.1:5432/tw_bench_audit]
        [--sizes 100,1000,10000] [--repeat 5] [--no-sqlite]

Not a test: it prints a table and never fails on a figure (exit 0 once it has run).

For each database: drops and creates it (PostgreSQL: database NAME of --database-url, through
psycopg on the server's `postgres` database; SQLite: a new file in a temp dir), migrates it,
and lays out, for each size N and each repetition, a fresh run in a session with N pending
wave tasks. Then it times three moves of all N tasks, each one call of transition() and one
transaction, as an executor makes them: pending -> queued, queued -> running, running ->
succeeded (with exit code and end time). Every call writes N audit rows and N event-log rows
(and moves the session's counters) in its transaction, commit included in the time. Two
modes: `direct` (the call alone: services, the API, the admin) and `batch` (inside
`records.batch()`, as the executor's loop makes its changes: the rows are gathered and
written when the block ends). Reported: the median over the repetitions of audit rows per
second (3 N / the three calls' time) and of each move's seconds.

Target (issue 17): at least 20,000 audit rows/s on PostgreSQL. A move's time on PostgreSQL is
mostly the server's: the row lock, the UPDATE, the two COPYs (their indexes), and the commit,
where the deferred foreign-key checks of the audit and event rows run (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)
TARGET = 20_000
MOVES = (("pending", "queued"), ("queued", "running"), ("running", "succeeded"))
# direct: each call its own transaction; batch: inside records.batch(), as the executor's loop
# calls it (the audit and event rows are gathered and written when the block ends).
MODES = ("direct", "batch")


def recreate_postgres(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_postgres(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def measure(url: str, sizes: list[int], repeat: int) -> dict:
    """Migrate the database at `url` and time the moves in a child process of its own (Django
    reads DATABASE_URL once)."""
    with tempfile.TemporaryDirectory() as var:
        env = {**os.environ, "DATABASE_URL": url, "TIDEWATCH_VAR_DIR": var}
        subprocess.run([PYTHON, str(ROOT / "manage.py"), "migrate", "-v", "0"], env=env, cwd=ROOT, check=True)
        out = subprocess.run(
            [PYTHON, __file__, "--child", ",".join(map(str, sizes)), str(repeat)],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(sizes: list[int], repeat: int) -> None:
    """In the child: the timings, as one JSON line {mode: {size: [[s per move], ...]}}."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from contextlib import nullcontext

    from django.db import transaction
    from django.utils import timezone

    from executions.models import ConcurrentExecutionSession, ExecutionRun, ParallelExecutionWave, WaveTask
    from executions.records import batch
    from executions.transitions import transition, wave_tasks_create
    from waves.models import Task, TaskList, TaskTemplate

    template = TaskTemplate.objects.create(name="bench")
    results: dict[str, dict[int, list[list[float]]]] = {mode: {} for mode in MODES}
    for size in sizes:
        tl = TaskList.objects.create(title=f"bench-{size}")
        tasks = Task.objects.bulk_create(
            Task(task_list=tl, key=f"t{i}", template=template, command="true", position=i)
            for i in range(size)
        )
        for mode in MODES:
            runs = []
            for _ in range(repeat + 1):  # the first is a warm-up
                now = timezone.now()
                session = ConcurrentExecutionSession.objects.create(started_at=now)
                run = ExecutionRun.objects.create(
                    task_list=tl, session=session, status="running", started_at=now
                )
                wave = ParallelExecutionWave.objects.create(execution=run, wave_number=0)
                rows = wave_tasks_create(
                    [WaveTask(wave=wave, task=t, execution=run, key=t.key) for t in tasks], actor="bench"
                )
                times = []
                for expected, new in MOVES:
                    fields = {"exit_code": 0, "completed_at": timezone.now()} if new == "succeeded" else {}
                    started = time.perf_counter()
                    with transaction.atomic(), batch() if mode == "batch" else nullcontext():
                        moved = transition(rows, new, expected=expected, actor="bench", **fields)
                    times.append(time.perf_counter() - started)
                    assert len(moved) == size, (expected, new, len(moved))
                runs.append(times)
            results[mode][size] = runs[1:]
    print(json.dumps(results))


def rate(size: int, runs: list[list[float]]) -> float:
    return statistics.median(3 * size / sum(times) for times in runs)


def report(label: str, results: dict) -> None:
    print(f"\n{label}")
    print(
        f"{'mode':>6} {'tasks':>7} {'audit rows/s':>13} {'pending->queued':>16} {'queued->running':>16}"
        f" {'running->done':>14}"
    )
    for mode, by_size in results.items():
        for size, runs in by_size.items():
            moves = [statistics.median(times[k] for times in runs) for k in range(3)]
            print(
                f"{mode:>6} {int(size):>7} {rate(int(size), runs):>13,.0f} "
                + " ".join(f"{m:>15.4f}s" for m in moves)
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tw_bench_audit")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child([int(s) for s in args.child[0].split(",")], int(args.child[1]))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"transition() of N tasks at once, 3 moves per run, median of {args.repeat} runs")
    recreate_postgres(args.database_url)
    try:
        postgres = measure(args.database_url, sizes, args.repeat)
    finally:
        drop_postgres(args.database_url)
    report(f"PostgreSQL (target >= {TARGET:,} audit rows/s)", postgres)
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = measure(f"sqlite:///{tmp}/bench.sqlite3", sizes, args.repeat)
        report("SQLite", sqlite)
    best = max(rate(int(n), runs) for n, runs in postgres["direct"].items())
    print(
        f"\nPostgreSQL best (direct): {best:,.0f} audit rows/s: {'PASS' if best >= TARGET else 'MISS'} (>= {TARGET:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
