"""Throughput of the celery backend against the local runner, on the same DAG and database.

    .venv/bin/python benchmarks/bench_celery.py --database-url postgres://postgres@127.0.0.1:5432/tw_bench \
        [--broker redis://127.0.0.1:6379/12] [--tasks 200] [--workers 2] [--pool solo] [--concurrency 1] \
        [--max-parallelism 8] [--sleep 0] [--repeat 3]
    .venv/bin/python benchmarks/bench_celery.py --database-url ... --soak 8 [--tasks 40] [--sleep 0.05]

Each repetition: a fresh PostgreSQL database (dropped and created) and var dir, the DAG
imported once (`--tasks` independent tasks running `true`, or `sleep S` with --sleep), then
`run_tasklist ID --json` with the local runner and with `--backend celery`, the latter
against `--workers` Celery workers (`celery -A config worker -P POOL -c N`) started for it on
a queue of its own, each with its own var dir, and stopped by pid afterwards. Reports tasks
per second of the run's own wall (`wall_seconds`), medians over the repetitions.

`--soak N`: N task lists (each `--tasks` tasks in 4 levels, printing a line and an event
each) run at once by N separate executor processes, on the local runner and then on Celery,
each backend in a fresh database. Reports tasks per second over the whole (all tasks / first
start to last end), and checks what was recorded: every task's audit rows replay to its
status, wave statistics equal `recompute_statistics`, and the runs share one session whose
peak of agents equals the most agents whose recorded lifetimes overlap.

Not a test: it prints and exits 0 once it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench_executor import PYTHON, ROOT, BenchError, Database, Step, median, sandbox, table, write_workflow
from bench_push import Client, percentile, start_daphnes, stop_daphnes, stop_watching


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


CHECK = r"""
import json, os, sys
from collections import defaultdict
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from django.forms.models import model_to_dict
from executions.models import BuildAgentInstance, ExecutionRun, TaskStatusAudit, WaveTask
from observability import services
from observability.models import WaveStatistics

ids = json.loads(sys.argv[1])
history = defaultdict(list)
for wt, prev, new in TaskStatusAudit.objects.filter(execution_id__in=ids).order_by("id").values_list(
    "wave_task_id", "previous_status", "new_status"
):
    history[wt].append((prev, new))
broken = 0
for wt in WaveTask.objects.filter(execution_id__in=ids):
    status = None
    for prev, new in history[wt.pk]:
        broken += prev != status
        status = new
    broken += status != wt.status
def stats():
    rows = WaveStatistics.objects.filter(execution_id__in=ids).order_by("wave_id")
    return [model_to_dict(r, exclude=["id", "updated_at"]) for r in rows]
before = stats()
for i in ids:
    services.statistics_recompute(execution_id=i)
sessions = set(ExecutionRun.objects.filter(pk__in=ids).values_list("session_id", flat=True))
def highest(points):
    peak = cur = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at one instant
        cur += d
        peak = max(peak, cur)
    return peak
agents = []
for a in BuildAgentInstance.objects.filter(execution_id__in=ids):
    agents += [(a.started_at, 1), (a.completed_at, -1)]
running = []
for at, prev, new in TaskStatusAudit.objects.filter(execution_id__in=ids).values_list(
    "changed_at", "previous_status", "new_status"
):
    if (new == "running") != (prev == "running"):
        running.append((at, 1 if new == "running" else -1))
from executions.models import ConcurrentExecutionSession as C
recorded = [(s.peak_concurrent_agents, s.peak_concurrent_tasks) for s in C.objects.filter(pk__in=sessions)]
print(json.dumps({"audit_breaks": broken, "statistics_equal": before == stats() and bool(before),
                  "sessions": len(sessions), "session_peaks": recorded,
                  "peaks_from_records": (highest(agents), highest(running))}))
"""


def soak_steps(tasks: int, sleep: float) -> list[Step]:
    """`tasks` steps in 4 levels, each depending on the whole previous level."""
    width = max(1, tasks // 4)
    out: list[Step] = []
    for level in range(4):
        prev = [f"l{level - 1}_{i}" for i in range(width)] if level else []
        for i in range(width):
            command = (
                f"echo step {level}.{i}; "
                """echo '{"type": "assertion", "name": "ok", "passed": true}' >> "$TIDEWATCH_EVENTS"; """
                + (f"sleep {sleep:g}" if sleep else "true")
            )
            out.append(Step(f"l{level}_{i}", sleep, prev, command))
    return out


LAYOUT = r"""
import json, os, sys, uuid
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from executions import services
from waves.models import TaskList

user = User.objects.create_superuser(f"soak-{uuid.uuid4().hex[:8]}", password=uuid.uuid4().hex)
runs = [services.run_start(TaskList.objects.get(pk=i), backend=sys.argv[2]).pk for i in json.loads(sys.argv[1])]
print(json.dumps({"token": Token.objects.create(user=user).key, "runs": runs}))
"""

EVENTS = r"""
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
from executions.models import Event

rows = Event.objects.filter(execution_id__in=json.loads(sys.argv[1])).order_by("id")
out = {}
for pk, run, at in rows.values_list("id", "execution_id", "created_at"):
    out.setdefault(run, []).append((pk, at.timestamp()))
print(json.dumps(out))
"""


def child(box, script: str, *args: str) -> dict:
    proc = subprocess.run([PYTHON, "-c", script, *args], cwd=ROOT, env=box.env, capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"a child script failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def watched(box, args, runs: list[int], token: str, ports: list[int]) -> dict:
    """The runs executed by one executor process each while `args.clients` websocket clients,
    spread over the runs and the daphne processes, watch them. Returns the executors' summaries,
    the wall, and what the clients saw of every event the runs logged."""
    crowd = []
    for i in range(args.clients):
        client = Client(f"ws://127.0.0.1:{ports[i % len(ports)]}/ws/executions/{runs[i % len(runs)]}/", token)
        client.watches = runs[i % len(runs)]
        crowd.append(client)
    tasks = [asyncio.create_task(c.run()) for c in crowd]
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in crowd)), 60)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [PYTHON, str(ROOT / "manage.py"), "execute_run", str(run), "--json"],
            cwd=ROOT, env=box.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for run in runs
    ]
    outs = await asyncio.gather(*(asyncio.to_thread(p.communicate, timeout=1800) for p in procs))
    outer = time.perf_counter() - start
    results = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        try:
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            raise BenchError(f"execute_run printed no JSON ({proc.returncode}):\n{err[-2000:]}") from None
    logged = {int(k): v for k, v in (await asyncio.to_thread(child, box, EVENTS, json.dumps(runs))).items()}
    expected = {id(c): [pk for pk, _ in logged.get(c.watches, []) if pk > c.after] for c in crowd}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(c.order) < len(expected[id(c)]) for c in crowd):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything more would be a duplicate
    await stop_watching(crowd, tasks)
    created = {pk: at for events in logged.values() for pk, at in events}
    latencies = [(c.arrivals[pk] - created[pk]) * 1000 for c in crowd for pk in expected[id(c)] if pk in c.arrivals]
    return {
        "results": results,
        "outer": outer,
        "complete": sum(c.order == expected[id(c)] for c in crowd),
        "events": sum(len(e) for e in logged.values()),
        "latencies": latencies,
    }


def soak(db: Database, args, backend: str) -> dict:
    box = sandbox(db, f"soak-{backend}")
    box.env.update(CELERY_BROKER_URL=args.broker, CELERY_TASK_DEFAULT_QUEUE=f"soak-{uuid.uuid4().hex[:8]}")
    box.env.update(REDIS_URL=args.redis_url, LOG_LEVEL="ERROR")  # the channel layer of the daphnes
    steps = soak_steps(args.tasks, args.sleep)
    ids = []
    for n in range(args.soak):
        wf = write_workflow(box.workdir / f"soak{n}.yaml", f"soak{n}", steps, args.max_parallelism)
        proc = box.manage("import_tasklist", str(wf), "--name", f"soak{n}")
        if proc.returncode:
            raise BenchError(f"import_tasklist failed:\n{proc.stderr[-2000:]}")
        ids.append(proc.stdout.splitlines()[0].strip())
    laid = child(box, LAYOUT, json.dumps(ids), backend)
    daphnes = start_daphnes(box.env, args.daphnes, box.workdir / "daphne.log")
    workers = []
    try:
        if backend == "celery":
            workers = start_workers(box.env, box.workdir, args.workers, args.pool, args.concurrency)
        seen = asyncio.run(watched(box, args, laid["runs"], laid["token"], [port for _, port in daphnes]))
    finally:
        stop(workers)
        stop_daphnes(daphnes)
    found = child(box, CHECK, json.dumps(laid["runs"]))
    shutil.rmtree(box.workdir, ignore_errors=True)
    total = len(steps) * args.soak
    lat = seen["latencies"] or [0.0]
    figures = {
        "succeeded": f"{sum(r['status'] == 'succeeded' for r in seen['results'])}/{args.soak}",
        "tasks_per_s": total / seen["outer"],
        "outer_s": seen["outer"],
        "events": seen["events"],
        "clients_complete": f"{seen['complete']}/{args.clients}",
        "push_p50_ms": statistics.median(lat),
        "push_p95_ms": percentile(lat, 95),
        "push_max_ms": max(lat),
        **found,
    }
    print(f"{backend}: {json.dumps(figures)}", flush=True)
    return figures


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
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="N task lists at once (see above)")
    parser.add_argument("--clients", type=int, default=50, help="(soak) websocket clients watching the runs")
    parser.add_argument("--daphnes", type=int, default=2, help="(soak) daphne processes the clients spread over")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="(soak) the channel layer")
    args = parser.parse_args(argv)
    db = Database(args.database_url)
    if db.vendor != "postgresql":
        parser.error("the celery backend needs PostgreSQL: workers share the database")
    if args.soak:
        local, remote = soak(db, args, "local"), soak(db, args, "celery")
        rows = [[key, str(local[key]) if not isinstance(local[key], float) else f"{local[key]:.1f}",
                 str(remote[key]) if not isinstance(remote[key], float) else f"{remote[key]:.1f}"]
                for key in local]  # fmt: skip
        what = (
            f"{args.soak} task lists x {len(soak_steps(args.tasks, args.sleep))} tasks, one executor each, "
            f"{args.clients} websocket clients on {args.daphnes} daphnes, PostgreSQL + Redis"
        )
        print(table(f"Soak: {what}", ["", "local runner", f"celery ({args.workers} x {args.pool})"], rows))
        return 0
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
        try:
            a = run(box, task_list_id, args.max_parallelism)
            workers = start_workers(box.env, box.workdir, args.workers, args.pool, args.concurrency)
            try:
                b = run(box, task_list_id, args.max_parallelism, "--backend", "celery")
            finally:
                stop(workers)
        finally:
            shutil.rmtree(box.workdir, ignore_errors=True)
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
