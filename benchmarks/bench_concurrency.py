#!/usr/bin/env python
"""The concurrency timeline (issue 17) against seed 004's SQL, on PostgreSQL.

    .venv/bin/python benchmarks/bench_concurrency.py
        [--database-url postgres://postgres@127.0.0.1:5432/tw_bench_conc]
        [--tasks 100000] [--days 30] [--repeat 7] [--seed-repeat 3] [--seed-timeout 300]
        [--ranges 1h,6h,24h,7d,30d] [--aggs sample,max] [--reuse] [--no-check] [--no-index]

Not a test: it prints a table and never fails on a figure (exit 0 once it has run).

1. Drops and creates the database NAME of --database-url, migrates it, and seeds it with
   bulk SQL (generate_series, no ORM): one task list of --tasks tasks over 12 templates, one
   run a day for --days days, each task created pending at its run's start, running at a
   random moment of that day for 1-20 minutes, then succeeded (95 %) or failed; 0.2 % of the
   tasks run for up to 3 days (the seed's one-hour look-back misses them), and those whose end
   is still ahead are running now. Three audit rows a task (created, running, ended).
2. Starts daphne on a free port (`config.asgi:application`), as a member of the list's team
   with a token, and times `GET /api/v2/workflow/{id}/task_concurrency?time_range=R
   &granularity=minute` through HTTP (the whole response read), --repeat times per range
   after one warm-up request.
3. Times seed 004's SQL (section 6, table and column names mapped to Tidewatch's; see
   SEED_SQL) on the same database in the same run, straight through psycopg with no HTTP and
   no JSON: a lower bound of what an endpoint built on it would cost. Each statement runs
   under `statement_timeout = --seed-timeout` seconds; a timed-out run is shown as "> N s".
4. Checks the counts (1h, 6h, 24h): ours at explicit start/end, at the seed's own instants,
   and the seed's, against a reference SQL without the look-back (REFERENCE_SQL), and reports
   how many (timestamp, template) counts each gets wrong (the seed misses the tasks that
   entered running more than an hour before the window).
5. Times the timeline's statement, as the selector builds it, with and without concurrency's
   partial index on (previous_status, changed_at, task_id) (24h, 30d).

Targets (issue 17): 24h under 0.2 s; 30d at minute granularity under 1 s (p50 through HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)
DAPHNE = str(Path(PYTHON).parent / "daphne")
TEMPLATES = ["extract", "transform", "load", "validate", "report", "index", "backup", "sync",
             "render", "compile", "test", "publish"]  # fmt: skip
RANGES = {"1h": "1 hour", "6h": "6 hours", "24h": "24 hours", "7d": "7 days", "30d": "30 days"}
TARGETS = {"24h": 0.2, "30d": 1.0}

# Seed 004 section 6, verbatim but for names: task -> tasks, t.workflow_id -> t.task_list_id,
# 'R' -> 'running' (Tidewatch's statuses are words). %(interval)s is the time_range as an
# interval ('24 hours'), %(workflow)s the task list's id.
SEED_SQL = """
WITH time_grid AS (
  SELECT generate_series(
    now() - %(interval)s::interval,
    now(),
    INTERVAL '1 minute'
  ) AS ts
), task_transitions AS (
  SELECT
    tsa.task_id,
    tsa.new_status,
    tsa.changed_at,
    tt.name as task_template_name,
    LEAD(tsa.changed_at, 1, now()) OVER (
      PARTITION BY tsa.task_id ORDER BY tsa.changed_at
    ) as status_end_time
  FROM task_status_audit tsa
  JOIN tasks t ON tsa.task_id = t.id
  JOIN task_template tt ON t.task_template_id = tt.id
  WHERE t.task_list_id = %(workflow)s
    AND tsa.changed_at >= (now() - %(interval)s::interval) - INTERVAL '1 hour'
), running_periods AS (
  SELECT
    task_id,
    task_template_name,
    changed_at as start_time,
    status_end_time as end_time
  FROM task_transitions
  WHERE new_status = 'running'
), concurrent_counts AS (
  SELECT
    tg.ts as timestamp,
    rp.task_template_name,
    COUNT(rp.task_id) as concurrent_count
  FROM time_grid tg
  LEFT JOIN running_periods rp ON (
    rp.start_time <= tg.ts AND
    rp.end_time > tg.ts
  )
  WHERE rp.task_template_name IS NOT NULL
  GROUP BY tg.ts, rp.task_template_name
  ORDER BY tg.ts, rp.task_template_name
)
SELECT
  timestamp,
  task_template_name,
  concurrent_count
FROM concurrent_counts
WHERE concurrent_count > 0
"""

# --- the database ----------------------------------------------------------------------------


def admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise SystemExit("--database-url needs a database name")
    return urlunsplit(parts._replace(path="/postgres")), name


def fresh_database(url: str) -> None:
    import psycopg

    admin, name = admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict, *args: str) -> None:
    subprocess.run([PYTHON, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def seed(conn, tasks: int, days: int, now: datetime) -> dict:
    """The benchmark's history, written with set-based SQL. Returns ids and counts."""
    t0 = now - timedelta(days=days)
    per_day = -(-tasks // days)
    cur = conn.cursor()
    cur.execute("SELECT setseed(0.17)")
    cur.execute("INSERT INTO auth_group (name) VALUES ('bench-concurrency') RETURNING id")
    team = cur.fetchone()[0]
    cur.execute(
        "INSERT INTO task_template (name, description, queue, created_at) "
        "SELECT unnest(%s::text[]), '', '', now() RETURNING id",
        (TEMPLATES,),
    )
    template_ids = [row[0] for row in cur.fetchall()]
    cur.execute(
        "INSERT INTO task_lists_v2 (title, description, team_id, max_parallelism, source_path, "
        "source_format, definition, created_at) VALUES ('bench-concurrency', '', %s, 64, '', "
        "'workflow', '{}', now()) RETURNING id",
        (team,),
    )
    task_list = cur.fetchone()[0]
    cur.execute(
        """
        INSERT INTO tasks (key, display_id, title, kind, command, inputs, env, retries,
                           parallel_group, branch_name, join_policy, condition, approval,
                           position, task_list_id, task_template_id)
        SELECT 't' || i, '', '', 'task', 'true', '{}', '{}', 0, '', '', 'all', '', false, i, %s,
               (%s::bigint[])[1 + (i * 7 + i / 13) %% %s]
        FROM generate_series(0, %s - 1) AS i
        """,
        (task_list, template_ids, len(template_ids), tasks),
    )
    # One run a day, one wave each.
    cur.execute(
        """
        INSERT INTO task_list_execution_runs (status, backend, max_parallelism, schedule, attempt,
            created_at, started_at, completed_at, peak_concurrency, executor_hostname,
            cancel_requested_by, error, task_list_id, gate_wait_seconds)
        SELECT 'succeeded', 'local', 64, 'critical_path', 1, %(t0)s + d * interval '1 day',
               %(t0)s + d * interval '1 day', NULL, 0, '', '', '', %(tl)s, 0
        FROM generate_series(0, %(days)s - 1) AS d ORDER BY d
        """,
        {"t0": t0, "tl": task_list, "days": days},
    )
    cur.execute(
        "INSERT INTO parallel_execution_waves (wave_number, status, max_parallelism, execution_id) "
        "SELECT 0, 'succeeded', 64, id FROM task_list_execution_runs WHERE task_list_id = %s",
        (task_list,),
    )
    # Each task's times: its run's day, a start within the day, a duration.
    cur.execute(
        """
        CREATE TEMP TABLE bench_times ON COMMIT DROP AS
        SELECT t.id AS task_id, t.position / %(per_day)s AS day,
               %(t0)s + (t.position / %(per_day)s) * interval '1 day' AS created,
               %(t0)s + (t.position / %(per_day)s) * interval '1 day'
                   + random() * interval '1 day' AS started,
               CASE WHEN random() < 0.002 THEN random() * interval '3 days'
                    ELSE interval '1 minute' + random() * interval '19 minutes' END AS took,
               CASE WHEN random() < 0.05 THEN 'failed' ELSE 'succeeded' END AS outcome
        FROM tasks t WHERE t.task_list_id = %(tl)s
        """,
        {"per_day": per_day, "t0": t0, "tl": task_list},
    )
    cur.execute(
        """
        INSERT INTO wave_tasks (key, status, attempt, started_at, completed_at, error,
                                approval_decision, approved_by, execution_id, task_id, wave_id)
        SELECT t.key,
               CASE WHEN b.started + b.took > %(now)s THEN 'running' ELSE b.outcome END, 1,
               b.started,
               CASE WHEN b.started + b.took > %(now)s THEN NULL ELSE b.started + b.took END,
               '', '', '', r.id, t.id, w.id
        FROM bench_times b JOIN tasks t ON t.id = b.task_id
        JOIN task_list_execution_runs r ON r.task_list_id = %(tl)s
             AND r.started_at = b.created
        JOIN parallel_execution_waves w ON w.execution_id = r.id
        ORDER BY b.started
        """,
        {"now": now, "tl": task_list},
    )
    # Three audit rows a task, in time order (ids follow changed_at as transition() writes them).
    cur.execute(
        """
        INSERT INTO task_status_audit (attempt, previous_status, new_status, changed_at,
                                       execution_id, task_id, wave_task_id)
        SELECT attempt, previous_status, new_status, changed_at, execution_id, task_id, wave_task_id
        FROM (
            SELECT 0 AS attempt, NULL AS previous_status, 'pending' AS new_status,
                   b.created AS changed_at, wt.execution_id, wt.task_id, wt.id AS wave_task_id
            FROM bench_times b JOIN wave_tasks wt ON wt.task_id = b.task_id
            UNION ALL
            SELECT 1, 'pending', 'running', b.started, wt.execution_id, wt.task_id, wt.id
            FROM bench_times b JOIN wave_tasks wt ON wt.task_id = b.task_id
            UNION ALL
            SELECT 1, 'running', b.outcome, b.started + b.took, wt.execution_id, wt.task_id, wt.id
            FROM bench_times b JOIN wave_tasks wt ON wt.task_id = b.task_id
            WHERE b.started + b.took <= %(now)s
        ) AS rows ORDER BY changed_at
        """,
        {"now": now},
    )
    cur.execute("SELECT count(*) FROM task_status_audit")
    audit_rows = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM wave_tasks WHERE status = 'running'")
    running_now = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM bench_times WHERE took > interval '1 hour'")
    long_runners = cur.fetchone()[0]
    # A member of the team, with a token.
    cur.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, "
        "is_staff, is_active, date_joined) VALUES ('!', false, 'bench', '', '', '', false, true, now()) "
        "RETURNING id"
    )
    user = cur.fetchone()[0]
    cur.execute("INSERT INTO auth_user_groups (user_id, group_id) VALUES (%s, %s)", (user, team))
    token = secrets.token_hex(20)
    cur.execute("INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, now(), %s)", (token, user))
    conn.commit()
    return {
        "task_list": task_list,
        "token": token,
        "audit_rows": audit_rows,
        "running_now": running_now,
        "long_runners": long_runners,
    }


def existing(conn) -> dict:
    """What --reuse needs from a database seeded before."""
    row = conn.execute(
        "SELECT tl.id, tok.key FROM task_lists_v2 tl, auth_user u JOIN authtoken_token tok ON tok.user_id = u.id "
        "WHERE tl.title = 'bench-concurrency' AND u.username = 'bench'"
    ).fetchone()
    if row is None:
        raise SystemExit("--reuse: the database holds no benchmark data; run without --reuse first")
    audit_rows = conn.execute("SELECT count(*) FROM task_status_audit").fetchone()[0]
    running_now = conn.execute("SELECT count(*) FROM wave_tasks WHERE status = 'running'").fetchone()[0]
    return {"task_list": row[0], "token": row[1], "audit_rows": audit_rows, "running_now": running_now,
            "long_runners": None}  # fmt: skip


# --- measuring -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """daphne serving the project on a free port; stopped by its pid."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [DAPHNE, "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait(self, path: str, token: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daphne exited {self.proc.returncode}; see {self.log.name}")
            try:
                get(self.url(path), token)
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"daphne did not answer within {timeout} s; see {self.log.name}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def get(url: str, token: str) -> tuple[float, bytes]:
    """Seconds until the whole body is read, and the body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status}")
    return time.perf_counter() - start, body


def quantiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def seed_run(conn, task_list: int, interval: str, timeout_s: float):
    """Seconds for seed 004's SQL (None past the timeout) and its rows."""
    conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
    start = time.perf_counter()
    try:
        rows = conn.execute(SEED_SQL, {"interval": interval, "workflow": task_list}).fetchall()
    except Exception as exc:  # psycopg.errors.QueryCanceled
        conn.rollback()
        if "statement timeout" not in str(exc):
            raise
        return None, []
    finally:
        conn.execute("SET statement_timeout = 0")
    return time.perf_counter() - start, rows


def seed_json_size(rows) -> int:
    """What an endpoint on the seed's SQL would send for these rows (the same compact JSON)."""
    data = [
        {"timestamp": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "task_template_name": name,
         "concurrent_count": count}
        for ts, name, count in rows
    ]  # fmt: skip
    return len(json.dumps({"data": data}, separators=(",", ":")))


# A correct reference in SQL for the check: the seed's query at a given now, without its
# one-hour look-back, and with periods per wave task (a task may run in several runs).
REFERENCE_SQL = """
WITH time_grid AS (
  SELECT generate_series(%(now)s::timestamptz - %(interval)s::interval, %(now)s::timestamptz,
                         INTERVAL '1 minute') AS ts
), task_transitions AS (
  SELECT tsa.wave_task_id, tsa.new_status, tsa.changed_at, tt.name AS task_template_name,
         LEAD(tsa.changed_at, 1, %(now)s::timestamptz) OVER (
           PARTITION BY tsa.wave_task_id ORDER BY tsa.changed_at, tsa.id) AS status_end_time
  FROM task_status_audit tsa JOIN tasks t ON tsa.task_id = t.id
  JOIN task_template tt ON t.task_template_id = tt.id
  WHERE t.task_list_id = %(workflow)s
), running_periods AS (
  SELECT task_template_name, changed_at AS start_time, status_end_time AS end_time
  FROM task_transitions WHERE new_status = 'running'
    AND status_end_time > %(now)s::timestamptz - %(interval)s::interval
)
SELECT tg.ts, rp.task_template_name, count(*)
FROM time_grid tg JOIN running_periods rp ON rp.start_time <= tg.ts AND rp.end_time > tg.ts
GROUP BY 1, 2
"""
SEED_AT_SQL = SEED_SQL.replace("now()", "%(now)s::timestamptz")


def check(server, conn, info: dict, range_name: str) -> dict:
    """Ours (explicit start/end at the seed's instants) against the reference, and the seed
    against the reference, at one now."""
    now = conn.execute("SELECT now()").fetchone()[0]
    conn.rollback()
    interval = RANGES[range_name]
    params = {"now": now, "interval": interval, "workflow": info["task_list"]}
    reference = {(ts, name): n for ts, name, n in conn.execute(REFERENCE_SQL, params).fetchall()}
    seed = {(ts, name): n for ts, name, n in conn.execute(SEED_AT_SQL, params).fetchall()}
    conn.rollback()
    start = now - {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1)}[range_name]
    query = urllib.parse.urlencode(
        {"start": start.isoformat(), "end": now.isoformat(), "granularity": "minute"}
    )
    _, body = get(server.url(f"/api/v2/workflow/{info['task_list']}/task_concurrency?{query}"), info["token"])
    ours = {
        (datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")), p["task_template_name"]): p["concurrent_count"]
        for p in json.loads(body)["data"]
    }  # fmt: skip
    # The last instant is the reference's now, when (start <= t < end) its tasks still running
    # have just ended; our request came a moment later, when they had not: not compared.
    keys = {k for k in reference.keys() | ours.keys() | seed.keys() if k[0] < now}
    wrong = lambda found: sum(1 for k in keys if reference.get(k) != found.get(k))  # noqa: E731
    return {
        "points": sum(1 for k in reference if k[0] < now),
        "ours_wrong": wrong(ours),
        "seed_wrong": wrong(seed),
    }


def index_effect(database_url: str, task_list: int, ranges: list[str], repeat: int = 5) -> list[dict]:
    """The timeline's statement (as the selector builds it, with its planner settings) timed
    with and without concurrency's partial index on (previous_status, changed_at, task_id),
    dropped inside a transaction that is rolled back; with the plan's line that reads the
    rows leaving the status."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from concurrency import selectors
    from waves.models import TaskList

    out = []
    for range_name in ranges:
        grid = selectors.Grid.relative(range_name, "minute", timezone.now())
        with CaptureQueriesContext(connection) as queries:
            selectors.task_concurrency(task_lists=TaskList.objects.filter(pk=task_list), grid=grid)
        sql = next(q["sql"] for q in queries.captured_queries if "array_agg" in q["sql"])
        row = {"range": range_name}
        for label, drop in (("with", False), ("without", True)):
            times = []
            with transaction.atomic(), connection.cursor() as cursor:
                for setting in selectors.planner_settings(grid):
                    cursor.execute(setting)
                if drop:
                    cursor.execute("DROP INDEX idx_audit_left_counted_status")
                for _ in range(repeat):
                    start = time.perf_counter()
                    cursor.execute(sql)
                    cursor.fetchall()
                    times.append(time.perf_counter() - start)
                cursor.execute("EXPLAIN " + sql)
                plan = [
                    line
                    for (line,) in cursor.fetchall()
                    if "previous_status" in line or "Seq Scan on task_status_audit" in line
                ]
                transaction.set_rollback(True)
            row[label] = (statistics.median(times), plan[0].strip().split("  (")[0] if plan else "")
        out.append(row)
    return out


# --- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tw_bench_conc")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per range (after one warm-up)")
    parser.add_argument("--seed-repeat", type=int, default=3, help="timed runs of the seed's SQL per range")
    parser.add_argument(
        "--seed-timeout", type=float, default=300.0, help="seconds; the seed's SQL is cut there"
    )
    parser.add_argument("--ranges", default="1h,6h,24h,7d,30d")
    parser.add_argument("--aggs", default="sample,max", help="ours: sample (the seed's meaning) and/or max")
    parser.add_argument("--reuse", action="store_true", help="keep the database of a previous run")
    parser.add_argument("--no-check", action="store_true", help="skip the count check against the reference")
    parser.add_argument("--no-index", action="store_true", help="skip timing the statement without the index")
    args = parser.parse_args()
    ranges = [r for r in args.ranges.split(",") if r]
    if any(r not in RANGES for r in ranges):
        raise SystemExit(f"--ranges: choose among {', '.join(RANGES)}")

    import psycopg

    workdir = Path(tempfile.mkdtemp(prefix="bench_concurrency_"))
    env = dict(os.environ, DATABASE_URL=args.database_url, TIDEWATCH_VAR_DIR=str(workdir / "var"), DEBUG="0")
    env.pop("REDIS_URL", None)
    if args.reuse:
        with psycopg.connect(args.database_url) as conn:
            info = existing(conn)
        print(f"reusing {admin_url(args.database_url)[1]}")
    else:
        print(f"seeding {args.tasks:,} tasks over {args.days} days ...", flush=True)
        fresh_database(args.database_url)
        manage(env, "migrate")
        started = time.perf_counter()
        with psycopg.connect(args.database_url) as conn:
            info = seed(conn, args.tasks, args.days, datetime.now(UTC))
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(f"  seeded in {time.perf_counter() - started:.1f} s (bulk SQL)")
    print(f"  {info['audit_rows']:,} audit rows; {info['running_now']} tasks running now"
          + (f"; {info['long_runners']} tasks run longer than an hour" if info["long_runners"] else ""))  # fmt: skip
    print(f"  load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")

    server = Server(env, workdir / "daphne.log")
    rows = []
    checks = {}
    try:
        path = f"/api/v2/workflow/{info['task_list']}/task_concurrency"
        server.wait(path + "?time_range=1h", info["token"])
        conn = psycopg.connect(args.database_url)
        for range_name in ranges:
            for agg in args.aggs.split(","):
                url = server.url(f"{path}?time_range={range_name}&granularity=minute&agg={agg}")
                _, body = get(url, info["token"])  # warm-up, and the size
                times = [get(url, info["token"])[0] for _ in range(args.repeat)]
                points = len(json.loads(body)["data"])
                row = {
                    "range": range_name,
                    "agg": agg,
                    "ours": quantiles(times),
                    "bytes": len(body),
                    "points": points,
                }
                if agg == "sample":
                    seed_times, seed_rows = [], []
                    for i in range(args.seed_repeat):
                        took, found = seed_run(conn, info["task_list"], RANGES[range_name], args.seed_timeout)
                        if took is None:
                            seed_times = None
                            break
                        seed_times.append(took)
                        seed_rows = found
                        if took > 30 and i == 0:
                            break  # one run is enough to compare a slow query
                    row["seed"] = quantiles(seed_times) if seed_times else None
                    row["seed_runs"] = len(seed_times) if seed_times else 0
                    row["seed_points"] = len(seed_rows) if seed_times else None
                    row["seed_bytes"] = seed_json_size(seed_rows) if seed_times else None
                rows.append(row)
                print(f"  {range_name} {agg}: p50 {row['ours'][0]:.3f} s", flush=True)
            if not args.no_check and range_name in ("1h", "6h", "24h"):
                checks[range_name] = check(server, conn, info, range_name)
        conn.close()
    finally:
        server.stop()
    index = [] if args.no_index else index_effect(args.database_url, info["task_list"], ["24h", "30d"])
    print(f"  load average after: {os.getloadavg()[0]:.2f}")
    report(rows, checks, index, args)
    return 0


def report(rows: list[dict], checks: dict, index: list[dict], args) -> None:
    mb = lambda n: f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"  # noqa: E731
    print()
    print(f"GET .../task_concurrency?time_range=R&granularity=minute through daphne, p50 / p95 of {args.repeat} "
          f"requests; seed 004's SQL through psycopg (no HTTP, no JSON), up to {args.seed_repeat} runs")  # fmt: skip
    print()
    print("| range | agg | ours p50 | ours p95 | points | response | seed SQL p50 | seed SQL p95 | seed rows | "
          "seed as JSON | faster | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        p50, p95 = row["ours"]
        target = TARGETS.get(row["range"]) if row["agg"] == "sample" else None
        verdict = f"< {target} s: {'PASS' if p50 < target else 'MISS'}" if target else ""
        if "seed" not in row:
            seed_cells = ["", "", "", "", ""]
        elif row["seed"] is None:
            seed_cells = [f"> {args.seed_timeout:.0f} s", "", "", "", f"> {args.seed_timeout / p50:.0f}x"]
        else:
            s50, s95 = row["seed"]
            runs = f" ({row['seed_runs']} run)" if row["seed_runs"] == 1 else ""
            seed_cells = [f"{s50:.3f} s{runs}", f"{s95:.3f} s", f"{row['seed_points']:,}", mb(row["seed_bytes"]),
                          f"{s50 / p50:.0f}x" if s50 >= 10 * p50 else f"{s50 / p50:.1f}x"]  # fmt: skip
        cells = [row["range"], row["agg"], f"{p50:.3f} s", f"{p95:.3f} s", f"{row['points']:,}", mb(row["bytes"]),
                 *seed_cells, verdict]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    if checks:
        print()
        print(
            "Counts at the seed's own instants (start/end = its now - range, now; the last, now, left out),"
        )
        print("against a reference SQL without the look-back (periods per wave task, all history):")
        print("(timestamp, template) counts that differ")
        print()
        print("| range | reference points | ours wrong | seed wrong |")
        print("|---|---|---|---|")
        for name, c in checks.items():
            print(f"| {name} | {c['points']:,} | {c['ours_wrong']} | {c['seed_wrong']} |")

    if index:
        print()
        print("The timeline's statement with and without concurrency's partial index on (previous_status,")
        print("changed_at, task_id) (dropped in a transaction rolled back), median of 5, and how the rows")
        print("leaving running are read")
        print()
        print("| range | with the index | scan | without | scan |")
        print("|---|---|---|---|---|")
        for row in index:
            (w, wplan), (wo, woplan) = row["with"], row["without"]
            print(f"| {row['range']} | {w * 1000:.0f} ms | {wplan} | {wo * 1000:.0f} ms | {woplan} |")


if __name__ == "__main__":
    sys.exit(main())
