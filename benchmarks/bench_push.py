#!/usr/bin/env python
"""Live push benchmark: from the commit of an event to its arrival at websocket clients.

    .venv/bin/python benchmarks/bench_push.py                       # both setups below
    .venv/bin/python benchmarks/bench_push.py --setup embedded      # SQLite, in-memory layer, 1 daphne
    .venv/bin/python benchmarks/bench_push.py --setup redis \\
        --database-url postgres://postgres@127.0.0.1:5432/tw_bench_push --redis-url redis://127.0.0.1:6379/0

Not a test: it prints figures and never fails on one (exit 0 once it has run). For each setup it
makes a fresh database (a new SQLite file, or the PostgreSQL database of --database-url dropped
and created again) and its own TIDEWATCH_VAR_DIR, migrates, and starts daphne processes on
127.0.0.1 (one for `embedded`; `--daphnes`, default 2, for `redis`, with channels-redis).

- **latency**: `--clients` (50) websocket clients (the `websockets` library, token auth), spread
  over the daphne processes, watch one run. A writer in another process commits `--events`
  (300) events one transaction each, `--rate` (50) a second, and notes the time of each commit
  (after COMMIT returns); each client notes when each event arrives. Latency = arrival - commit
  for every (event, client) pair: p50, p95, max. Every client must get every event exactly once
  in id order; the script says if one did not. Target: p95 under 100 ms.
- **idle cost**: the same clients stay connected for `--idle` (10) seconds with nothing written:
  the relays' CPU (the daphne processes', from /proc) and, on PostgreSQL, the transactions and
  rows the database served (pg_stat_database) per second.
- **executor throughput**: a run of `--tasks` (300) independent `true` tasks, max parallelism 8,
  executed by `manage.py execute_run` with no client watching, then another with the clients
  watching it: tasks per second of run wall, and whether the clients got all its events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("BENCH_PYTHON") or (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)


# --- the child side: runs with Django set up against the benchmark's database --------------------


def child(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from executions import services
    from executions.models import Event, ExecutionRun
    from waves.models import Task, TaskList, TaskTemplate

    command = argv[0]
    if command == "setup":
        team = Group.objects.create(name="bench")
        user = User.objects.create_user("bench", password="bench-pw")
        user.groups.add(team)
        token = Token.objects.create(user=user).key
        template = TaskTemplate.objects.create(name="shell")
        quiet = TaskList.objects.create(title="push", team=team)
        Task.objects.create(task_list=quiet, key="a", title="A", template=template, command="true")
        wide = TaskList.objects.create(title="wide", team=team, max_parallelism=8)
        Task.objects.bulk_create(
            Task(task_list=wide, key=f"t{i}", title=f"T{i}", template=template, command="true", position=i)
            for i in range(int(argv[1]))
        )
        run = services.run_start(quiet)
        print(json.dumps({"token": token, "run": run.pk, "wide": wide.pk}))
    elif command == "layout":
        run = services.run_start(TaskList.objects.get(pk=int(argv[1])), max_parallelism=8)
        print(run.pk)
    elif command == "write":
        run_id, n, rate = int(argv[1]), int(argv[2]), float(argv[3])
        run = ExecutionRun.objects.get(pk=run_id)
        commits = {}
        period = 1 / rate
        next_at = time.monotonic()
        for i in range(n):
            next_at += period
            with transaction.atomic():
                event = Event.objects.create(
                    execution=run, type="run.update", payload={"bench": i}, created_at=timezone.now()
                )
            commits[event.pk] = time.time()
            time.sleep(max(0.0, next_at - time.monotonic()))
        print(json.dumps(commits))
    elif command == "dbstats":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database"
                " WHERE datname = current_database()"
            )
            print(json.dumps(cursor.fetchone()))
    elif command == "ids":
        print(
            json.dumps(
                list(
                    Event.objects.filter(execution_id=int(argv[1]))
                    .order_by("id")
                    .values_list("id", flat=True)
                )
            )
        )


# --- the benchmark side --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daphnes(env: dict, count: int, log_path: Path) -> list[tuple[subprocess.Popen, int]]:
    """`count` daphne processes on free ports of 127.0.0.1, each listening when this returns."""
    daphnes = []
    with log_path.open("ab") as log:
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen(
                [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            daphnes.append((proc, port))
    for proc, port in daphnes:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                stop_daphnes(daphnes)
                raise SystemExit(f"daphne exited: {log_path.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    stop_daphnes(daphnes)
                    raise SystemExit("daphne did not listen within 30 s")
                time.sleep(0.1)
    return daphnes


def stop_daphnes(daphnes: list[tuple[subprocess.Popen, int]]) -> None:
    for proc, _ in daphnes:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc, _ in daphnes:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Setup:
    def __init__(self, name: str, database_url: str | None, redis_url: str | None, daphnes: int, tmp: Path):
        self.name, self.tmp = name, tmp
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update(TIDEWATCH_VAR_DIR=str(tmp / "var"), PYTHONUNBUFFERED="1", LOG_LEVEL="ERROR")
        if database_url:
            fresh_postgres(database_url)
            self.env["DATABASE_URL"] = database_url
        else:
            self.env["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.postgres = bool(database_url)
        self.daphne_count = daphnes
        self.daphnes: list[tuple[subprocess.Popen, int]] = []

    def manage(self, *args, timeout=600) -> str:
        proc = subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), *map(str, args)],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode not in (0, 1):
            raise SystemExit(f"manage.py {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def child(self, *args, timeout=600) -> str:
        proc = subprocess.run(
            [PYTHON, __file__, "--child", *map(str, args)],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout.strip().splitlines()[-1]

    def start_daphnes(self) -> None:
        self.daphnes = start_daphnes(self.env, self.daphne_count, self.tmp / "daphne.log")

    def stop_daphnes(self) -> None:
        stop_daphnes(self.daphnes)
        self.daphnes = []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc, _ in self.daphnes:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def urls(self, path: str) -> list[str]:
        return [f"ws://127.0.0.1:{port}{path}" for _, port in self.daphnes]


def fresh_postgres(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit((parts.scheme.replace("postgres", "postgresql", 1) if parts.scheme == "postgres" else parts.scheme,
                        parts.netloc, "/postgres", "", ""))  # fmt: skip
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class Client:
    """One websocket: notes when each event arrives."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.arrivals: dict[int, float] = {}
        self.order: list[int] = []
        self.ready = asyncio.Event()
        self.after = 0
        self.ws = None

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(
            self.url,
            additional_headers={"Authorization": f"Token {self.token}"},
            open_timeout=30,
            max_size=None,
        ) as ws:
            self.ws = ws
            async for text in ws:
                now = time.time()
                message = json.loads(text)
                if message.get("type") == "snapshot":
                    self.after = message["after"]
                    self.ready.set()
                elif "id" in message:
                    self.arrivals.setdefault(message["id"], now)
                    self.order.append(message["id"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def watching(setup: Setup, path: str, token: str, clients: int):
    urls = setup.urls(path)
    crowd = [Client(urls[i % len(urls)], token) for i in range(clients)]
    tasks = [asyncio.create_task(c.run()) for c in crowd]
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in crowd)), 60)
    return crowd, tasks


async def stop_watching(crowd, tasks) -> None:
    await asyncio.gather(*(c.close() for c in crowd), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)


def own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def measure(setup: Setup, args, info: dict) -> dict:
    path = f"/ws/executions/{info['run']}/"
    crowd, tasks = await watching(setup, path, info["token"], args.clients)
    # Idle: connected, nothing written.
    db_before = json.loads(await asyncio.to_thread(setup.child, "dbstats")) if setup.postgres else None
    cpu_before, started = setup.cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.idle)
    idle_seconds = time.monotonic() - started
    idle = {"cpu_percent": 100 * (setup.cpu_seconds() - cpu_before) / idle_seconds}
    if setup.postgres:
        db_after = json.loads(await asyncio.to_thread(setup.child, "dbstats"))
        idle["transactions_per_s"] = (db_after[0] - db_before[0]) / idle_seconds
        idle["rows_per_s"] = (db_after[1] - db_before[1]) / idle_seconds
    # Latency.
    commits = json.loads(await asyncio.to_thread(setup.child, "write", info["run"], args.events, args.rate))
    commits = {int(k): v for k, v in commits.items()}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(len(c.arrivals) >= len(commits) for c in crowd):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything more would be a duplicate
    latencies, complete = [], 0
    for c in crowd:
        latencies += [(c.arrivals[i] - t) * 1000 for i, t in commits.items() if i in c.arrivals]
        complete += c.order == sorted(commits)
    await stop_watching(crowd, tasks)
    return {
        "idle": idle,
        "latency_ms": {
            "p50": statistics.median(latencies),
            "p95": percentile(latencies, 95),
            "max": max(latencies),
            "samples": len(latencies),
        },
        "clients_with_every_event_once_in_order": f"{complete}/{len(crowd)}",
    }


async def throughput(setup: Setup, args, info: dict) -> dict:
    result = {}
    for label, clients in (("no client", 0), (f"{args.clients} clients", args.clients)):
        run_id = int(await asyncio.to_thread(setup.child, "layout", info["wide"]))
        crowd, tasks = (
            (await watching(setup, f"/ws/executions/{run_id}/", info["token"], clients))
            if clients
            else ([], [])
        )
        cpu_before, own_before = setup.cpu_seconds(), own_cpu_seconds()
        out = await asyncio.to_thread(setup.manage, "execute_run", run_id, "--json")
        summary = json.loads(out.strip().splitlines()[-1])
        entry = {"wall_s": summary["wall_seconds"], "tasks_per_s": args.tasks / summary["wall_seconds"]}
        # On a small machine the servers and the clients compete with the executor for CPU.
        entry["daphne_cpu_s"] = setup.cpu_seconds() - cpu_before
        entry["clients_cpu_s"] = own_cpu_seconds() - own_before
        if clients:
            logged = json.loads(await asyncio.to_thread(setup.child, "ids", run_id))
            # What was written before a socket opened (the layout) is in its snapshot.
            expected = {id(c): [i for i in logged if i > c.after] for c in crowd}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(len(c.order) < len(expected[id(c)]) for c in crowd):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            entry["clients_complete"] = f"{sum(c.order == expected[id(c)] for c in crowd)}/{len(crowd)}"
            entry["events"] = len(logged)
            await stop_watching(crowd, tasks)
        result[label] = entry
    return result


def bench(name: str, args, database_url: str | None, redis_url: str | None, daphnes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-push-{name}-") as tmp:
        setup = Setup(name, database_url, redis_url, daphnes, Path(tmp))
        setup.manage("migrate", "--noinput")
        info = json.loads(setup.child("setup", args.tasks))
        setup.start_daphnes()
        try:
            figures = asyncio.run(measure(setup, args, info))
            if args.tasks:
                figures["executor"] = asyncio.run(throughput(setup, args, info))
        finally:
            setup.stop_daphnes()
        return figures


def show(name: str, description: str, figures: dict) -> None:
    lat = figures["latency_ms"]
    verdict = "PASS" if lat["p95"] < 100 else "MISS"
    print(f"\n== {name}: {description}")
    print(
        f"push latency, commit -> client: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms "
        f"over {lat['samples']} (event, client) pairs  [{verdict}: p95 < 100 ms]"
    )
    print(
        f"clients that got every event once, in id order: {figures['clients_with_every_event_once_in_order']}"
    )
    idle = figures["idle"]
    line = f"idle, clients connected: daphne CPU {idle['cpu_percent']:.1f}% of one core"
    if "transactions_per_s" in idle:
        line += f", database {idle['transactions_per_s']:.0f} transactions/s, {idle['rows_per_s']:.0f} rows read/s"
    print(line)
    for label, entry in figures.get("executor", {}).items():
        extra = (
            f", clients that got all {entry['events']} events once in order: {entry['clients_complete']}"
            if "clients_complete" in entry
            else ""
        )
        print(
            f"executor, {label} watching: {entry['tasks_per_s']:.0f} tasks/s (run wall {entry['wall_s']:.2f} s; "
            f"CPU meanwhile: daphne {entry['daphne_cpu_s']:.2f} s, clients {entry['clients_cpu_s']:.2f} s, "
            f"{os.cpu_count()} cores){extra}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="events committed per second")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the throughput run (0: skip)")
    parser.add_argument("--daphnes", type=int, default=2, help="daphne processes of the redis setup")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tw_bench_push")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    results = {}
    if args.setup in ("embedded", "both"):
        results["embedded"] = bench("embedded", args, None, None, 1)
        show("embedded", "SQLite, in-memory channel layer, 1 daphne", results["embedded"])
    if args.setup in ("redis", "both"):
        results["redis"] = bench("redis", args, args.database_url, args.redis_url, args.daphnes)
        show("redis", f"PostgreSQL, channels-redis, {args.daphnes} daphnes", results["redis"])
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
