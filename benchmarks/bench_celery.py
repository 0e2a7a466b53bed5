"""Throughput of the celery backend against the local runner, on the same DAG and database.

    .venv/bin/python benchmarks/bench_celery.py --database-url postgres://postgres@127.0.0.1:5432/tw_bench \
        [--broker redis://127.0.0.1:6379/12] [--tasks 200] [--workers 2] [--pool solo] [--concurrency 1] \
        [--max-parallelism 8] [--sleep 0] [--repeat 3]

Each repetition: a fresh PostgreSQL database (dropped and created) and var dir, the DAG
imported once (`--tasks` independent tasks running `true`, or `sleep S` with --sleep), then
`run_tasklist ID --json` with the local runner and with `--backend celery`, the latter
against `--workers` Celery workers (`celery -A config worker -P POOL -c N`) started for it on
a queue of its own, each with its own var dir, and stopped by pid afterwards. Reports tasks
per second of the run's own wall (`wall_seconds`), medians over the repetitions. Not a test:
it prints and exits 0 once it ran.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench_executor import PYTHON, ROOT, BenchError, Database, Step, median, sandbox, table, write_workflow


def start_workers(env: dict, workdir: Path, count: int, pool: str, concurrency: int) -> list[subprocess.Popen]:
    procs = []
    for n in range(1, count + 1):
        log = workdir / f"worker-{n}.log"
        wenv = dict(env, TIDEWATCH_VAR_DIR=str(workdir / f"worker-{n}"))
        argv = [
            PYTHON, "-m", "celery", "-A", "config", "worker", "-P", pool, "-c", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-Q", env["CELERY_TASK_DEFAULT_QUEUE"], "-n", f"bench{n}-{uuid.uuid4().hex[:6]}@%h", "-l", "info",
        ]  # fmt: skip
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=wenv, stdout=out, stderr=subprocess.STDOUT))
    for n, proc in enumerate(procs, 1):
        log = workdir / f"worker-{n}.log"
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"worker {n} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(box, task_list_id: str, par: int, *extra: str) -> dict:
    proc = box.manage("run_tasklist", task_list_id, "--max-parallelism", str(par), "--json", *extra)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"run_tasklist printed no JSON ({proc.returncode}):\n{proc.stderr[-2000:]}") from None
    if result["status"] != "succeeded":
        raise BenchError(f"the run did not succeed: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="postgres://user@host:port/NAME (dropped and created)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.0, help="each task sleeps this long (0: `true`)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", default="solo", choices=["solo", "prefork"])
    parser.add_argument("--concurrency", type=int, default=1, help="processes per worker (prefork)")
    parser.add_argument("--max-parallelism", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    db = Database(args.database_url)
    if db.vendor != "postgresql":
        parser.error("the celery backend needs PostgreSQL: workers share the database")
    steps = [Step(f"t{i}", args.sleep) for i in range(args.tasks)]
    local, remote = [], []
    for rep in range(1, args.repeat + 1):
        box = sandbox(db, "celery")
        box.env.update(CELERY_BROKER_URL=args.broker, CELERY_TASK_DEFAULT_QUEUE=f"bench-{uuid.uuid4().hex[:8]}")
        wf = write_workflow(box.workdir / "bench.yaml", "bench", steps, args.max_parallelism)
        proc = box.manage("import_tasklist", str(wf), "--name", "bench")
        if proc.returncode:
            raise BenchError(f"import_tasklist failed:\n{proc.stderr[-2000:]}")
        task_list_id = proc.stdout.splitlines()[0].strip()
        a = run(box, task_list_id, args.max_parallelism)
        workers = start_workers(box.env, box.workdir, args.workers, args.pool, args.concurrency)
        try:
            b = run(box, task_list_id, args.max_parallelism, "--backend", "celery")
        finally:
            stop(workers)
        local.append(args.tasks / a["wall_seconds"])
        remote.append(args.tasks / b["wall_seconds"])
        print(
            f"repetition {rep}: local {a['wall_seconds']:.2f}s ({local[-1]:.0f} tasks/s), "
            f"celery {b['wall_seconds']:.2f}s ({remote[-1]:.0f} tasks/s), peak {b['peak_concurrency']}",
            flush=True,
        )
    workers = f"{args.workers} x {args.pool}" + (f" -c {args.concurrency}" if args.pool == "prefork" else "")
    rows = [
        ["local runner", f"{median(local):.0f}", f"{min(local):.0f}-{max(local):.0f}"],
        [f"celery ({workers})", f"{median(remote):.0f}", f"{min(remote):.0f}-{max(remote):.0f}"],
    ]
    what = f"{args.tasks} independent `{steps[0].run}` tasks, max parallelism {args.max_parallelism}, PostgreSQL"
    print(table(f"Throughput (tasks/s of run wall): {what}", ["backend", "median", "range"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
