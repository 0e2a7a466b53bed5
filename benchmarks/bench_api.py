#!/usr/bin/env python
"""REST API at scale (issue 16, item 5): the read endpoints of /api/v2/ on a seeded PostgreSQL.

    .venv/bin/python benchmarks/bench_api.py [--database-url postgres://postgres@127.0.0.1:5432/tw_bench_api]
                     [--reuse] [--requests 200] [--warmup 20] [--rounds 10] [--max-seconds 30]
                     [--methods http,inprocess] [--only run-list,transcript-deep,...] [--explain]
                     [--checkout DIR] [--against DIR [--against-database-url URL]]
                     [--json PATH] [--before PATH]

Not a test: it prints tables and never fails on a figure (exit 2 when a prerequisite is
missing, 1 when the seed or a server fails). What it does:

1. Drops and creates the database of --database-url (with --reuse: keeps it when it holds
   this script's seed and no migration the checkout lacks), migrates it (`manage.py migrate`,
   always: a new index migration reaches a reused database), and seeds it in SQL (INSERT ...
   SELECT over generate_series, no ORM, about 40 s): 100 task lists of 100 tasks (each with
   its normalised definition, about 52 KB) in 10 teams, 1,000 runs x 10 waves x 10 wave tasks
   in 100 sessions (the last 20 runs still running, 200 running agents), an agent per started
   task, 1,000,000 transcript entries, 200,000 tool uses (10% errors), 100,000 assertion
   results, 300,000 task status audit rows and as many event-log rows, and the wave
   statistics observability would have counted; one wave of a finished run holds a tenth of
   the transcript, tool uses and assertions (the deep pages). Then VACUUM ANALYZE.
2. Serves the checkout with daphne (`.venv/bin/daphne config.asgi:application` on 127.0.0.1,
   in a subprocess this script starts and stops by its pid) and times every endpoint through
   HTTP (one keep-alive connection, one request at a time) with the token of (a) a superuser
   and (b) a member of one team of ten, who sees a tenth of the lists. The requests go in
   rounds over all the series, so that other load on the machine spreads over all of them.
   Server time through HTTP is the round trip less the median round trip of a request the
   server answers without a query (an anonymous GET of the run list: 403 from DRF).
3. Times the same requests in-process with `django.test.Client` on the same database: the
   whole Django handler (middleware, authentication, view, serialization) without the HTTP
   server, once with a new database connection per request (as under daphne, where every
   request opens one) and once with the connection kept; counts each endpoint's queries
   (`CaptureQueriesContext`). `--explain` prints EXPLAIN (ANALYZE, BUFFERS) of every query.

`--against DIR` measures a second checkout (say a worktree of the commit before a change) on
its own database in the same HTTP rounds, and its in-process figures in a child process, and
shows both side by side; `--before PATH` shows an earlier --json file the same way.

Target (issue 16): p95 under 20 ms of server time for each endpoint.
See benchmarks/README.md, "API at scale (bench_api.py)".
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = os.environ.get("BENCH_PYTHON") or (
    str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
)
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/tw_bench_api"
TARGET_MS = 20.0

# --- the seed ----------------------------------------------------------------------------------

SEED_VERSION = "3"
TEAMS = 10
LISTS = 100
WAVES = 10  # per run (and per list: a list's tasks fall into 10 waves of 10)
PER_WAVE = 10
TASKS_PER_LIST = WAVES * PER_WAVE
RUNS = 1_000
RUNS_PER_SESSION = 10
SESSIONS = RUNS // RUNS_PER_SESSION
RUNNING_RUNS = 20  # the newest two sessions are still going: their wave RUNNING_WAVE runs
RUNNING_WAVE = 5
TRANSCRIPT = 1_000_000
TOOL_USES = 200_000
AUDIT = 300_000
ASSERTIONS = 100_000  # not in the list; 10% fail
# One wave of a finished run of team 1 holds a tenth of the transcript and of the tool uses:
# its pages are the deep ones.
HOT_RUN = 501
HOT_WAVE_NUMBER = 5
HOT_TRANSCRIPT = 100_000
HOT_TOOL_USES = 20_000
HOT_ASSERTIONS = 10_000
ROOT_TOKEN = "b" * 40
MEMBER_TOKEN = "c" * 40

VOLUMES = {
    "teams": TEAMS,
    "task lists": LISTS,
    "tasks": LISTS * TASKS_PER_LIST,
    "runs": RUNS,
    "waves": RUNS * WAVES,
    "wave tasks": RUNS * WAVES * PER_WAVE,
    "transcript entries": TRANSCRIPT,
    "tool uses": TOOL_USES,
    "audit rows": AUDIT,
    "assertion results": ASSERTIONS,
    "sessions": SESSIONS,
}


def seed_sql() -> list[tuple[str, str]]:
    """(label, SQL) in order. Ids are given explicitly (the tables are empty after migrate):
    run r, wave (r, w) = (r-1)*10 + w + 1, wave task (r, w, k) = (r-1)*100 + w*10 + k + 1, and
    the agent of a wave task has the wave task's id."""
    p = {
        "teams": TEAMS,
        "lists": LISTS,
        "waves": WAVES,
        "per_wave": PER_WAVE,
        "tpl": TASKS_PER_LIST,
        "runs": RUNS,
        "rps": RUNS_PER_SESSION,
        "running": RUNNING_RUNS,
        "rwave": RUNNING_WAVE,
        "hot_run": HOT_RUN,
        "hot_wave": (HOT_RUN - 1) * WAVES + HOT_WAVE_NUMBER + 1,
        "hot_transcript": HOT_TRANSCRIPT,
        "spread_transcript": TRANSCRIPT - HOT_TRANSCRIPT,
        "hot_tools": HOT_TOOL_USES,
        "spread_tools": TOOL_USES - HOT_TOOL_USES,
        "audit": AUDIT,
        "hot_assertions": HOT_ASSERTIONS,
        "spread_assertions": ASSERTIONS - HOT_ASSERTIONS,
        "root": ROOT_TOKEN,
        "member": MEMBER_TOKEN,
    }
    steps = [
        (
            "teams, users, tokens",
            """
            INSERT INTO auth_group (id, name)
                SELECT g, 'bench-team-' || lpad(g::text, 2, '0') FROM generate_series(1, {teams}) g;
            INSERT INTO auth_user (id, password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined)
                VALUES (1, '!', true, 'bench-root', '', '', '', true, true, now()),
                       (2, '!', false, 'bench-member', '', '', '', false, true, now());
            INSERT INTO auth_user_groups (user_id, group_id) VALUES (2, 1);
            INSERT INTO authtoken_token (key, created, user_id)
                VALUES ('{root}', now(), 1), ('{member}', now(), 2);
            """,
        ),
        (
            "task lists and tasks",
            """
            INSERT INTO task_template (id, name, description, queue, created_at)
                SELECT g, 'bench-template-' || g, '', '', now() FROM generate_series(1, 20) g;
            INSERT INTO task_lists_v2 (id, title, description, max_parallelism, source_path, source_format,
                                       definition, created_at, team_id)
                SELECT l, 'bench list ' || lpad(l::text, 3, '0'), '', {per_wave}, '', 'workflow', '{{}}',
                       now() - interval '5 days', ((l - 1) % {teams}) + 1
                FROM generate_series(1, {lists}) l;
            INSERT INTO tasks (id, key, display_id, title, kind, command, inputs, env, retries, parallel_group,
                               branch_name, join_policy, estimated_minutes, condition, approval, position,
                               task_list_id, task_template_id)
                SELECT (l - 1) * {tpl} + i + 1, 'step-' || lpad(i::text, 3, '0'), 'S' || i,
                       'Step ' || i || ' of list ' || l, 'task',
                       'echo step ' || i || ' && ./scripts/do-thing --input data/part-' || i
                       || '.csv --output out/part-' || i || '.json', '{{}}', '{{}}', 0, '', '', 'all',
                       1.0, '', false, i, l, (i % 20) + 1
                FROM generate_series(1, {lists}) l, generate_series(0, {tpl} - 1) i;
            -- each task of wave w > 0 depends on the task in its place in wave w - 1
            INSERT INTO task_dependencies (id, task_id, depends_on_id)
                SELECT row_number() OVER (), (l - 1) * {tpl} + i + 1, (l - 1) * {tpl} + i - {per_wave} + 1
                FROM generate_series(1, {lists}) l, generate_series({per_wave}, {tpl} - 1) i;
            -- the normalised definition import_tasklist keeps, step for step (about 52 KB a list)
            UPDATE task_lists_v2 l SET definition = d.definition
                FROM (
                    SELECT t.task_list_id, jsonb_build_object(
                        'name', min(l2.title), 'description', '', 'max_parallelism', {per_wave},
                        'format', 'workflow', 'steps', jsonb_agg(jsonb_build_object(
                            'key', t.key, 'title', t.key, 'display_id', t.key, 'template', t.key, 'kind', 'task',
                            'command', t.command, 'inputs', '{{}}'::jsonb, 'env', '{{}}'::jsonb, 'timeout_s', NULL,
                            'retries', 0, 'parallel_group', '', 'branch_name', '', 'parent', NULL,
                            'join_policy', 'all', 'max_parallelism', NULL, 'estimated_minutes', 1.0,
                            'condition', '', 'for_each', NULL, 'repeat', NULL, 'approval', false,
                            'position', t.position,
                            'depends_on', CASE WHEN t.position >= {per_wave}
                                THEN jsonb_build_array('step-' || lpad((t.position - {per_wave})::text, 3, '0'))
                                ELSE '[]'::jsonb END,
                            'line', 4 + 4 * t.position) ORDER BY t.position)) AS definition
                    FROM tasks t JOIN task_lists_v2 l2 ON l2.id = t.task_list_id GROUP BY t.task_list_id
                ) d
                WHERE l.id = d.task_list_id;
            """,
        ),
        (
            "runs, waves, wave tasks, agents, sessions",
            """
            CREATE TEMP TABLE b_run AS
                SELECT r, ((r - 1) % {lists}) + 1 AS list_id, ((r - 1) / {rps}) + 1 AS session_id,
                       r > {runs} - {running} AS running,
                       r <= {runs} - {running} AND r % 25 = 0 AS failed,
                       CASE WHEN r > {runs} - {running}
                            THEN now() - interval '400 seconds' - ({runs} - r) * interval '5 seconds'
                            ELSE now() - interval '3 days' + ((r - 1) / {rps}) * interval '20 minutes'
                                 + ((r - 1) % {rps}) * interval '10 seconds'
                       END AS started_at
                FROM generate_series(1, {runs}) r;
            CREATE TEMP TABLE b_wave AS
                SELECT (r - 1) * {waves} + w + 1 AS id, r, w, list_id, running, failed,
                       CASE WHEN running THEN CASE WHEN w < {rwave} THEN 'succeeded'
                                                   WHEN w = {rwave} THEN 'running' ELSE 'pending' END
                            WHEN failed AND w = {waves} - 1 THEN 'failed' ELSE 'succeeded' END AS status,
                       CASE WHEN running AND w > {rwave} THEN NULL
                            ELSE started_at + w * interval '60 seconds' END AS started_at,
                       CASE WHEN running AND w >= {rwave} THEN NULL
                            ELSE started_at + w * interval '60 seconds' + interval '55 seconds' END AS completed_at
                FROM b_run, generate_series(0, {waves} - 1) w;
            CREATE TEMP TABLE b_wt AS
                SELECT (wv.r - 1) * {tpl} + wv.w * {per_wave} + k + 1 AS id, wv.id AS wave_id, wv.r, wv.w, k,
                       (wv.list_id - 1) * {tpl} + wv.w * {per_wave} + k + 1 AS task_id,
                       'step-' || lpad((wv.w * {per_wave} + k)::text, 3, '0') AS key,
                       CASE WHEN wv.status = 'failed' AND k = {per_wave} - 1 THEN 'failed'
                            WHEN wv.status = 'failed' THEN 'succeeded' ELSE wv.status END AS status,
                       wv.started_at + k * interval '500 milliseconds' AS started_at,
                       CASE WHEN wv.completed_at IS NULL THEN NULL
                            ELSE wv.started_at + interval '30 seconds' + k * interval '2 seconds' END AS completed_at
                FROM b_wave wv, generate_series(0, {per_wave} - 1) k;
            CREATE INDEX ON b_wt (id);

            INSERT INTO concurrent_execution_sessions (id, started_at, completed_at, status, execution_count,
                    total_wave_count, total_task_count, total_agent_count, running_agents, running_tasks,
                    peak_concurrent_agents, peak_concurrent_tasks, created_at)
                SELECT session_id, min(started_at),
                       CASE WHEN bool_or(running) THEN NULL ELSE max(started_at) + {waves} * interval '60 seconds' END,
                       CASE WHEN bool_or(running) THEN 'active' ELSE 'completed' END,
                       count(*), count(*) * {waves}, count(*) * {tpl},
                       count(*) * {tpl} - count(*) FILTER (WHERE running) * ({waves} - {rwave} - 1) * {per_wave},
                       count(*) FILTER (WHERE running) * {per_wave}, count(*) FILTER (WHERE running) * {per_wave},
                       count(*) * {per_wave}, count(*) * {per_wave}, min(started_at)
                FROM b_run GROUP BY session_id;
            INSERT INTO task_list_execution_runs (id, status, backend, max_parallelism, schedule, attempt,
                    created_at, started_at, completed_at, wall_seconds, task_seconds, peak_concurrency,
                    executor_hostname, executor_pid, executor_heartbeat, cancel_requested_by, error,
                    session_id, task_list_id, gate_wait_seconds)
                SELECT r, CASE WHEN running THEN 'running' WHEN failed THEN 'failed' ELSE 'succeeded' END,
                       'local', {per_wave}, 'critical_path', 1, started_at - interval '1 second', started_at,
                       CASE WHEN running THEN NULL ELSE started_at + {waves} * interval '60 seconds' END,
                       CASE WHEN running THEN NULL ELSE {waves} * 60.0 END,
                       CASE WHEN running THEN NULL ELSE {tpl} * 39.0 END,
                       {per_wave}, 'bench-host', 40000 + r, CASE WHEN running THEN now() END, '',
                       CASE WHEN failed THEN 'a step failed' ELSE '' END, session_id, list_id, 0
                FROM b_run;
            INSERT INTO parallel_execution_waves (id, wave_number, status, started_at, completed_at,
                                                  max_parallelism, execution_id)
                SELECT id, w, status, started_at, completed_at, {per_wave}, r FROM b_wave;
            INSERT INTO wave_tasks (id, key, status, attempt, started_at, completed_at, exit_code, error,
                                    approval_decision, approved_by, execution_id, task_id, wave_id)
                SELECT id, key, status, CASE WHEN status = 'pending' THEN 0 ELSE 1 END,
                       CASE WHEN status = 'pending' THEN NULL ELSE started_at END, completed_at,
                       CASE status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END,
                       CASE WHEN status = 'failed' THEN 'exit code 1' ELSE '' END, '', '', r, task_id, wave_id
                FROM b_wt ORDER BY id;
            INSERT INTO build_agent_instances (id, instance_id, attempt, status, started_at, last_heartbeat,
                    completed_at, hostname, pid, exit_code, task_id, execution_id, wave_id, wave_task_id)
                SELECT id, 'bench-' || id || '-1', 1, status, started_at, coalesce(completed_at, now()),
                       completed_at, 'bench-host', 50000 + k, CASE status WHEN 'succeeded' THEN 0
                       WHEN 'failed' THEN 1 END, task_id, r, wave_id, id
                FROM b_wt WHERE status <> 'pending' ORDER BY started_at, id;
            """,
        ),
        (
            "task status audit (300,000) and event log",
            """
            CREATE TEMP TABLE b_audit AS
                SELECT wt.id AS wave_task_id, wt.task_id, wt.r, 0 AS attempt, NULL::text AS previous_status,
                       'pending' AS new_status, run.started_at - interval '1 second' AS changed_at, 0 AS step
                FROM b_wt wt JOIN b_run run USING (r)
                UNION ALL
                SELECT id, task_id, r, 1, 'pending', 'running', started_at, 2 FROM b_wt WHERE status <> 'pending'
                UNION ALL
                SELECT id, task_id, r, 1, 'running', status, completed_at, 3 FROM b_wt
                WHERE status IN ('succeeded', 'failed');
            -- Top up to the round figure: that many finished tasks waited in the queue first
            -- (pending -> queued -> running instead of pending -> running).
            CREATE TEMP TABLE b_queued AS
                SELECT id FROM b_wt WHERE status IN ('succeeded', 'failed') AND w > 0
                ORDER BY (id * 7919) % 100003, id
                LIMIT greatest(0, {audit} - (SELECT count(*) FROM b_audit));
            UPDATE b_audit SET previous_status = 'queued' WHERE step = 2 AND wave_task_id IN (SELECT id FROM b_queued);
            INSERT INTO b_audit
                SELECT wt.id, wt.task_id, wt.r, 0, 'pending', 'queued', wt.started_at - interval '100 milliseconds', 1
                FROM b_wt wt JOIN b_queued q USING (id);
            INSERT INTO task_status_audit (attempt, previous_status, new_status, changed_at, actor, reason,
                                           execution_id, task_id, wave_task_id)
                SELECT attempt, previous_status, new_status, changed_at, 'executor', NULL, r, task_id, wave_task_id
                FROM b_audit ORDER BY changed_at, wave_task_id, step;
            INSERT INTO event_log (type, payload, created_at, execution_id)
                SELECT 'task.update', jsonb_build_object('wave_task', a.wave_task_id, 'key', wt.key,
                       'status', a.new_status), a.changed_at, a.execution_id
                FROM task_status_audit a JOIN wave_tasks wt ON wt.id = a.wave_task_id ORDER BY a.id;
            """,
        ),
        (
            "transcript (1,000,000), tool uses (200,000), assertions (100,000)",
            """
            CREATE TEMP TABLE b_started AS
                SELECT row_number() OVER (ORDER BY id) AS n, id, wave_id, r, w, task_id, started_at
                FROM b_wt WHERE status <> 'pending';
            CREATE INDEX ON b_started (n);
            CREATE TEMP TABLE b_hot AS
                SELECT row_number() OVER (ORDER BY id) - 1 AS n, id, wave_id, r, w, task_id, started_at
                FROM b_wt WHERE wave_id = {hot_wave};
            CREATE TEMP TABLE b_lines AS
                SELECT s.id AS wave_task_id, s.wave_id, s.r, s.w, s.task_id, g,
                       s.started_at + ((g - 1) / (SELECT count(*) FROM b_started)) * interval '1 second'
                       + (g % 997) * interval '1 microsecond' AS created_at
                FROM generate_series(1, {spread_transcript}) g
                JOIN b_started s ON s.n = ((g - 1) % (SELECT count(*) FROM b_started)) + 1
                UNION ALL
                SELECT h.id, h.wave_id, h.r, h.w, h.task_id, {spread_transcript} + g,
                       h.started_at + interval '5 seconds' + g * interval '200 microseconds'
                FROM generate_series(1, {hot_transcript}) g JOIN b_hot h ON h.n = (g - 1) % 10;
            INSERT INTO transcript_entries (wave_number, instance_id, sequence, entry_type, content, created_at,
                                            agent_id, execution_id, task_id, wave_id, wave_task_id)
                SELECT w, 'bench-' || wave_task_id || '-1',
                       row_number() OVER (PARTITION BY r ORDER BY created_at, g),
                       CASE WHEN g % 20 = 0 THEN 'system' WHEN g % 10 = 0 THEN 'stderr' ELSE 'stdout' END,
                       'bench output line ' || g || ': ' || repeat('x', (g % 61)::int), created_at,
                       wave_task_id, r, task_id, wave_id, wave_task_id
                FROM b_lines ORDER BY created_at, g;
            DROP TABLE b_lines;
            INSERT INTO tool_uses (tool_name, input, output, is_error, is_blocked, start_time, end_time,
                                   duration_ms, agent_id, execution_id, task_id, wave_id, wave_task_id)
                SELECT (ARRAY['grep', 'read_file', 'write_file', 'shell', 'http_get'])[1 + (t.g % 5)::int],
                       jsonb_build_object('arg', t.g), '{{"ok": true}}'::jsonb,
                       CASE WHEN t.g % 10 = 0 THEN 1 ELSE 0 END, CASE WHEN t.g % 100 = 1 THEN 1 ELSE 0 END,
                       t.at, t.at + interval '50 milliseconds', 50, t.wave_task_id, t.r, t.task_id, t.wave_id,
                       t.wave_task_id
                FROM (
                    SELECT g, s.id AS wave_task_id, s.wave_id, s.r, s.task_id,
                           s.started_at + ((g - 1) / (SELECT count(*) FROM b_started)) * interval '1 second'
                           + interval '300 milliseconds' AS at
                    FROM generate_series(1, {spread_tools}) g
                    JOIN b_started s ON s.n = ((g - 1) % (SELECT count(*) FROM b_started)) + 1
                    UNION ALL
                    SELECT {spread_tools} + g, h.id, h.wave_id, h.r, h.task_id,
                           h.started_at + interval '5 seconds' + g * interval '1 millisecond'
                    FROM generate_series(1, {hot_tools}) g JOIN b_hot h ON h.n = (g - 1) % 10
                ) t ORDER BY t.at, t.g;
            INSERT INTO assertion_results (name, passed, message, created_at, agent_id, execution_id, task_id,
                                           wave_id, wave_task_id)
                SELECT 'check-' || (t.g % 50), CASE WHEN t.g % 10 = 0 THEN 0 ELSE 1 END,
                       CASE WHEN t.g % 10 = 0 THEN 'expected 0, got 1' ELSE '' END, t.at, t.wave_task_id, t.r,
                       t.task_id, t.wave_id, t.wave_task_id
                FROM (
                    SELECT g, s.id AS wave_task_id, s.wave_id, s.r, s.task_id,
                           s.started_at + ((g - 1) / (SELECT count(*) FROM b_started)) * interval '1 second'
                           + interval '700 milliseconds' AS at
                    FROM generate_series(1, {spread_assertions}) g
                    JOIN b_started s ON s.n = ((g - 1) % (SELECT count(*) FROM b_started)) + 1
                    UNION ALL
                    SELECT {spread_assertions} + g, h.id, h.wave_id, h.r, h.task_id,
                           h.started_at + interval '5 seconds' + g * interval '2 milliseconds'
                    FROM generate_series(1, {hot_assertions}) g JOIN b_hot h ON h.n = (g - 1) % 10
                ) t ORDER BY t.at, t.g;
            """,
        ),
        (
            "wave statistics (as observability.services.statistics_recompute counts them)",
            """
            INSERT INTO wave_statistics (task_count, completed_count, failed_count, skipped_count, pass_rate,
                    transcript_entry_count, tool_use_count, tool_error_count, tool_blocked_count,
                    assertion_count, assertion_pass_count, assertion_fail_count, skill_trace_count,
                    started_at, completed_at, duration_ms, updated_at, execution_id, wave_id)
                SELECT t.n, t.ok, t.bad, 0,
                       CASE WHEN t.ok + t.bad > 0 THEN t.ok::float / (t.ok + t.bad) END,
                       coalesce(tr.n, 0), coalesce(tu.n, 0), coalesce(tu.err, 0), coalesce(tu.blocked, 0),
                       coalesce(ar.n, 0), coalesce(ar.ok, 0), coalesce(ar.n - ar.ok, 0), 0,
                       w.started_at, w.completed_at,
                       (extract(epoch FROM w.completed_at - w.started_at) * 1000)::bigint, now(),
                       w.execution_id, w.id
                FROM parallel_execution_waves w
                JOIN (SELECT wave_id, count(*) AS n, count(*) FILTER (WHERE status = 'succeeded') AS ok,
                             count(*) FILTER (WHERE status = 'failed') AS bad
                      FROM wave_tasks GROUP BY wave_id) t ON t.wave_id = w.id
                LEFT JOIN (SELECT wave_id, count(*) AS n FROM transcript_entries GROUP BY wave_id) tr
                       ON tr.wave_id = w.id
                LEFT JOIN (SELECT wave_id, count(*) AS n, count(*) FILTER (WHERE is_error = 1) AS err,
                                  count(*) FILTER (WHERE is_blocked = 1) AS blocked
                           FROM tool_uses GROUP BY wave_id) tu ON tu.wave_id = w.id
                LEFT JOIN (SELECT wave_id, count(*) AS n, count(*) FILTER (WHERE passed = 1) AS ok
                           FROM assertion_results GROUP BY wave_id) ar ON ar.wave_id = w.id
                ORDER BY w.id;
            """,
        ),
    ]
    return [(label, sql.format(**p)) for label, sql in steps]


SEQUENCED = (
    "auth_group", "auth_user", "auth_user_groups", "task_template", "task_lists_v2", "tasks",
    "task_dependencies", "concurrent_execution_sessions", "task_list_execution_runs",
    "parallel_execution_waves", "wave_tasks", "build_agent_instances", "task_status_audit", "event_log",
    "transcript_entries", "tool_uses", "assertion_results", "wave_statistics",
)  # fmt: skip
COUNTED = (
    "task_lists_v2", "tasks", "task_list_execution_runs", "parallel_execution_waves", "wave_tasks",
    "build_agent_instances", "transcript_entries", "tool_uses", "assertion_results", "task_status_audit", "event_log",
    "concurrent_execution_sessions", "wave_statistics",
)  # fmt: skip


# --- the scratch database ----------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise BenchError(f"{url} names no database")
    return name, urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))


def database_exists(url: str) -> bool:
    import psycopg

    name, admin = admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def recreate_database(url: str) -> None:
    import psycopg

    name, admin = admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def psycopg_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def seeded(url: str) -> bool:
    import psycopg

    with psycopg.connect(psycopg_url(url)) as conn:
        row = conn.execute("SELECT to_regclass('bench_api_seed')").fetchone()
        if not row or row[0] is None:
            return False
        got = dict(conn.execute("SELECT key, value FROM bench_api_seed").fetchall())
    return got.get("version") == SEED_VERSION and got.get("volumes") == json.dumps(VOLUMES, sort_keys=True)


def python_path(checkout: Path, env: dict) -> str:
    """The checkout first, then whatever PYTHONPATH already held (a settings module of one's own)."""
    return os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH", "")) if p)


def foreign_migrations(url: str, checkout: Path) -> list[str]:
    """Migrations of the project's apps applied to the database that the checkout does not have
    (say, an index added by a later commit): migrate cannot take them back, so such a database
    cannot be reused to measure that checkout."""
    import psycopg

    with psycopg.connect(psycopg_url(url)) as conn:
        if conn.execute("SELECT to_regclass('django_migrations')").fetchone()[0] is None:
            return []
        applied = conn.execute("SELECT app, name FROM django_migrations").fetchall()
    ours = {p.parent.parent.name for p in checkout.glob("*/migrations/__init__.py")}
    return sorted(
        f"{app}.{name}"
        for app, name in applied
        if app in ours and not (checkout / app / "migrations" / f"{name}.py").exists()
    )


def migrate(url: str, env: dict, checkout: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, str(checkout / "manage.py"), "migrate", "--noinput"],
        cwd=checkout,
        env={**env, "DATABASE_URL": url, "PYTHONPATH": python_path(checkout, env)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode:
        raise BenchError(f"migrate failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def seed(url: str) -> dict[str, float]:
    """Run the seed in one transaction (FK triggers off: the rows are consistent by
    construction, checked below); returns seconds per step."""
    import psycopg

    timings: dict[str, float] = {}
    with psycopg.connect(psycopg_url(url)) as conn:
        conn.execute("SET session_replication_role = replica")  # no per-row FK trigger
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for label, sql in seed_sql():
            start = time.perf_counter()
            conn.execute(sql)
            timings[label] = time.perf_counter() - start
            print(f"  seeded {label}: {timings[label]:.1f}s", flush=True)
        start = time.perf_counter()
        for table in SEQUENCED:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        conn.execute("SET session_replication_role = origin")
        dangling = conn.execute(
            """
            SELECT (SELECT count(*) FROM transcript_entries t LEFT JOIN wave_tasks wt ON wt.id = t.wave_task_id
                    WHERE wt.id IS NULL OR wt.wave_id <> t.wave_id OR wt.execution_id <> t.execution_id)
                 + (SELECT count(*) FROM tool_uses t LEFT JOIN build_agent_instances a ON a.id = t.agent_id
                    WHERE a.id IS NULL OR a.wave_task_id <> t.wave_task_id)
                 + (SELECT count(*) FROM task_status_audit t LEFT JOIN wave_tasks wt ON wt.id = t.wave_task_id
                    WHERE wt.id IS NULL OR wt.execution_id <> t.execution_id OR wt.task_id <> t.task_id)
                 + (SELECT count(*) FROM wave_tasks wt JOIN tasks t ON t.id = wt.task_id
                    JOIN task_list_execution_runs r ON r.id = wt.execution_id WHERE t.task_list_id <> r.task_list_id)
            """
        ).fetchone()[0]
        if dangling:
            raise BenchError(f"the seed is inconsistent: {dangling} rows point at the wrong parent")
        conn.execute("CREATE TABLE bench_api_seed (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute(
            "INSERT INTO bench_api_seed VALUES ('version', %s), ('volumes', %s), ('seeded_at', now()::text)",
            [SEED_VERSION, json.dumps(VOLUMES, sort_keys=True)],
        )
        timings["sequences and consistency check"] = time.perf_counter() - start
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        timings["VACUUM ANALYZE"] = time.perf_counter() - start
    return timings


def counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(psycopg_url(url)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}


# --- what is measured --------------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str
    label: str
    path: str  # may hold a query string
    expect: int = 200


def cursor_for(position: int) -> str:
    """A cursor as DRF's CursorPagination encodes one for a position (no offset, forward)."""
    return base64.b64encode(urlencode({"p": str(position)}).encode("ascii")).decode("ascii")


def targets(url: str) -> dict:
    """Ids the endpoints are timed on, all of team 1 (so both users see them)."""
    import psycopg

    with psycopg.connect(psycopg_url(url)) as conn:
        one = lambda sql, *a: conn.execute(sql, a).fetchone()[0]  # noqa: E731
        hot_wave = one("SELECT id FROM parallel_execution_waves WHERE execution_id = %s AND wave_number = %s",
                       HOT_RUN, HOT_WAVE_NUMBER)  # fmt: skip
        running_run = one(
            "SELECT r.id FROM task_list_execution_runs r JOIN task_lists_v2 l ON l.id = r.task_list_id "
            "WHERE r.status = 'running' AND l.team_id = 1 ORDER BY r.id LIMIT 1"
        )
        session = one("SELECT session_id FROM task_list_execution_runs WHERE id = %s", HOT_RUN)
        middle = one(
            "SELECT sequence FROM transcript_entries WHERE wave_id = %s ORDER BY sequence OFFSET %s LIMIT 1",
            hot_wave,
            HOT_TRANSCRIPT // 2,
        )
        team_of_hot = one(
            "SELECT l.team_id FROM task_list_execution_runs r JOIN task_lists_v2 l ON l.id = r.task_list_id "
            "WHERE r.id = %s",
            HOT_RUN,
        )
    if team_of_hot != 1:
        raise BenchError(f"run {HOT_RUN} is not of team 1")
    return {
        "run": HOT_RUN,
        "wave": hot_wave,
        "running_run": running_run,
        "session": session,
        "middle": middle,
    }


def endpoints(t: dict) -> list[Endpoint]:
    api = "/api/v2"
    return [
        # What every authenticated request pays: the token's query and one lookup, then a 404.
        Endpoint("floor", "floor: unknown run (404)", f"{api}/executions/{10**12}/", expect=404),
        Endpoint("task-lists", "task list list (limit 50)", f"{api}/task-lists/"),
        Endpoint("run-list", "run list (limit 50)", f"{api}/executions/"),
        Endpoint("run-detail", "run detail", f"{api}/executions/{t['run']}/"),
        Endpoint("wave-progress", "wave progress (10 waves)", f"{api}/executions/{t['run']}/waves/"),
        Endpoint("agents", "active agents, all runs", f"{api}/agents/active/"),
        Endpoint(
            "run-agents", "active agents of a run", f"{api}/executions/{t['running_run']}/agents/active/"
        ),
        Endpoint("session-summary", "session summary", f"{api}/sessions/{t['session']}/summary/"),
        Endpoint("transcript", "transcript, first page", f"{api}/waves/{t['wave']}/transcript/"),
        # The `next` link of the page at the middle of the hot wave (resolved in resolve_links).
        Endpoint(
            "transcript-deep",
            "transcript, page 502 (cursor)",
            f"{api}/waves/{t['wave']}/transcript/?cursor={cursor_for(t['middle'])}",
        ),
        Endpoint("tool-uses", "tool uses of a wave", f"{api}/waves/{t['wave']}/tool-uses/"),
        Endpoint(
            "tool-errors", "tool-use errors of a wave", f"{api}/waves/{t['wave']}/tool-uses/?is_error=true"
        ),
        Endpoint(
            "assertion-failures",
            "assertion failures of a wave",
            f"{api}/waves/{t['wave']}/assertions/?passed=false",
        ),
        Endpoint("audit", "audit, first page", f"{api}/executions/{t['run']}/audit/"),
        Endpoint("audit-next", "audit, cursor page 2", f"{api}/executions/{t['run']}/audit/"),
    ]


USERS = {"superuser": ROOT_TOKEN, "member": MEMBER_TOKEN}
BASELINE_PATH = "/api/v2/executions/"  # anonymous: 403 before any view code or query


def local_path(link: str) -> str:
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def pctl(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)  # milliseconds
    statuses: set = field(default_factory=set)
    bytes: int = 0
    queries: int | None = None
    sql_ms: float | None = None

    @property
    def p50(self) -> float:
        return pctl(self.samples, 0.50)

    @property
    def p95(self) -> float:
        return pctl(self.samples, 0.95)

    def as_dict(self) -> dict:
        return {
            "n": len(self.samples),
            "p50_ms": round(self.p50, 3),
            "p95_ms": round(self.p95, 3),
            "statuses": sorted(self.statuses),
            "bytes": self.bytes,
            "queries": self.queries,
            "sql_ms": None if self.sql_ms is None else round(self.sql_ms, 3),
        }


class Budget:
    def __init__(self, requests: int, warmup: int, max_seconds: float, rounds: int):
        self.requests, self.warmup, self.max_seconds, self.rounds = requests, warmup, max_seconds, rounds


def measure_all(calls: dict, budget: Budget, prepare=None, progress=None) -> dict:
    """Time every `calls[key]()` -> (status, size). Each is warmed up, then timed in `rounds`
    rounds that go through all of them in turn (so that a burst of other load on the machine
    spreads over every series instead of spoiling one), `requests` times in all, until its
    timed calls have taken `max_seconds`. `prepare()`, if given, runs before each call, untimed."""
    results = {key: Series() for key in calls}
    spent = dict.fromkeys(calls, 0.0)
    for call in calls.values():
        for _ in range(budget.warmup):
            if prepare:
                prepare()
            call()
    per_round = -(-budget.requests // budget.rounds)
    for r in range(budget.rounds):
        for key, call in calls.items():
            series = results[key]
            for _ in range(min(per_round, budget.requests - len(series.samples))):
                if spent[key] > budget.max_seconds:
                    break
                if prepare:
                    prepare()
                start = time.perf_counter()
                status, size = call()
                elapsed = time.perf_counter() - start
                spent[key] += elapsed
                series.samples.append(elapsed * 1000)
                series.statuses.add(status)
                series.bytes = size
        if progress:
            progress(r + 1)
    return results


# --- through HTTP ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """daphne serving config.asgi:application on 127.0.0.1 (stopped by its pid)."""

    def __init__(self, url: str, env: dict, checkout: Path, workdir: Path):
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "daphne.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "-v", "0",
             "config.asgi:application"],
            cwd=checkout,  # daphne puts "." first on sys.path: the checkout's code is served
            env={**env, "DATABASE_URL": url, "DEBUG": "0", "PYTHONPATH": python_path(checkout, env)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", BASELINE_PATH)
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(
                        f"daphne did not come up: {(workdir / 'daphne.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class HttpClient:
    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str, token: str | None) -> tuple[int, bytes]:
        headers = {"Host": "127.0.0.1", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):  # the server closed the kept-alive connection
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def resolve_links(get, eps: list[Endpoint]) -> None:
    """Turn the two cursor endpoints into links the server handed out: the `next` of the page
    at the middle of the hot wave, and the `next` of the run's first audit page."""
    for ep in eps:
        if ep.name in ("transcript-deep", "audit-next"):
            status, body = get(ep.path, ROOT_TOKEN)
            if status != 200:
                raise BenchError(f"{ep.path}: {status} {body[:300]!r}")
            nxt = json.loads(body).get("next")
            if not nxt:
                raise BenchError(f"{ep.path} has no next page")
            ep.path = local_path(nxt)


def progress_printer(label: str, rounds: int):
    def show(done: int) -> None:
        print(f"  {label}: round {done}/{rounds}", flush=True)

    return show


def show_series(label: str, results: dict) -> None:
    for (name, user), series in results.items():
        extra = f"  {series.queries} queries, {series.sql_ms:.1f} ms in the driver" if series.queries else ""
        print(
            f"  {label} {name:18} {user:9} {sorted(series.statuses)} p50 {series.p50:7.2f} ms  "
            f"p95 {series.p95:7.2f} ms  ({len(series.samples)} requests, {series.bytes} bytes){extra}",
            flush=True,
        )


BASELINE = ("baseline", "anonymous")


def run_http(sides: list, env: dict, workdir: Path, budget: Budget) -> dict:
    """One daphne per side (its checkout, its database), all timed in the same rounds, so
    that the sides share whatever else the machine is doing. Returns per side label
    {"baseline": Series, "endpoints": {(name, user): Series}}."""
    servers, clients = {}, {}
    try:
        for side in sides:
            servers[side.label] = Server(side.url, env, side.checkout, workdir / side.label)
            clients[side.label] = HttpClient(servers[side.label].port)
            resolve_links(clients[side.label].get, side.eps)

        def call(client, path, token):
            def go():
                status, body = client.get(path, token)
                return status, len(body)

            return go

        calls = {}
        for side in sides:
            client = clients[side.label]
            calls[(side.label, *BASELINE)] = call(client, BASELINE_PATH, None)
            for ep in side.eps:
                for user, token in USERS.items():
                    calls[(side.label, ep.name, user)] = call(client, ep.path, token)
        results = measure_all(calls, budget, progress=progress_printer("http", budget.rounds))
        for client in clients.values():
            client.close()
    finally:
        for server in servers.values():
            server.stop()
    out = {}
    for side in sides:
        mine = {
            (name, user): series for (label, name, user), series in results.items() if label == side.label
        }
        show_series(f"http {side.label}" if len(sides) > 1 else "http", mine)
        out[side.label] = {"baseline": mine.pop(BASELINE), "endpoints": mine}
    return out


# --- in this process ---------------------------------------------------------------------------


def django_setup(url: str, env: dict, checkout: Path) -> None:
    os.environ.update({k: v for k, v in env.items() if k.startswith("TIDEWATCH")})
    os.environ["DATABASE_URL"] = url
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(checkout))
    import logging

    import django

    django.setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # the floor's 404s, 200 times
    import observability

    if not observability.__file__.startswith(str(checkout) + os.sep):
        raise BenchError(f"imported {observability.__file__}, not the checkout {checkout}")


def run_inprocess(eps: list[Endpoint], budget: Budget, *, explain: bool, fresh: bool) -> dict:
    """fresh: a new database connection for every request, as under daphne (CONN_MAX_AGE 0, and
    ASGI runs each request's sync code in a thread of its own); else the connection is kept
    (the test client never closes it), which leaves out the connection's cost. With a kept
    connection, one more request per endpoint counts its queries (and EXPLAINs them)."""
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")

    def get(path, token):
        extra = {"HTTP_AUTHORIZATION": f"Token {token}"} if token else {}
        resp = client.get(path, **extra)
        return resp.status_code, resp.content

    def call(path, token):
        def go():
            status, body = get(path, token)
            return status, len(body)

        return go

    label = "in-process, new connection" if fresh else "in-process, kept connection"
    calls = {(ep.name, user): call(ep.path, token) for ep in eps for user, token in USERS.items()}
    results = measure_all(
        calls,
        budget,
        prepare=connection.close if fresh else None,
        progress=progress_printer(label, budget.rounds),
    )
    plans = {}
    if not fresh:
        for ep in eps:
            for user, token in USERS.items():
                spent = [0.0]

                def timed(execute, sql, params, many, context, spent=spent):
                    start = time.perf_counter()
                    try:
                        return execute(sql, params, many, context)
                    finally:
                        spent[0] += time.perf_counter() - start

                reset_queries()
                with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(timed):
                    get(ep.path, token)
                series = results[(ep.name, user)]
                series.queries = len(ctx.captured_queries)
                series.sql_ms = spent[0] * 1000
                if explain:
                    plans[(ep.name, user)] = explain_queries(ctx.captured_queries)
    show_series(label, results)
    return {"endpoints": results, "plans": plans}


def explain_queries(captured: list[dict]) -> list[tuple[str, str]]:
    from django.db import connection

    plans = []
    with connection.cursor() as cursor:
        for q in captured:
            sql = q["sql"]
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            plans.append((sql, "\n".join(row[0] for row in cursor.fetchall())))
    return plans


# --- reporting ---------------------------------------------------------------------------------


def fmt(ms: float) -> str:
    return "—" if ms != ms else f"{ms:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)),
        "  ".join("-" * w for w in widths),
    ]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(out)


def figures(eps: list[Endpoint], http_res: dict | None, fresh: dict | None, kept: dict | None) -> dict:
    """The figures of one side by "endpoint/user" (what --json writes). HTTP server time is the
    round trip less the median round trip of the baseline."""
    base = http_res["baseline"].p50 if http_res else float("nan")
    data = {}
    for ep in eps:
        for user in USERS:
            key = (ep.name, user)
            h = http_res["endpoints"].get(key) if http_res else None
            f = fresh["endpoints"].get(key) if fresh else None
            k = kept["endpoints"].get(key) if kept else None
            server = Series(samples=[v - base for v in h.samples]) if h else None
            data[f"{ep.name}/{user}"] = {
                "label": ep.label,
                "path": ep.path,
                "expect": ep.expect,
                "queries": k.queries if k else None,
                "http": h.as_dict() if h else None,
                "http_server_p50_ms": round(server.p50, 3) if h else None,
                "http_server_p95_ms": round(server.p95, 3) if h else None,
                "inprocess_new_connection": f.as_dict() if f else None,
                "inprocess_kept_connection": k.as_dict() if k else None,
            }
    return data


def _pair(entry: dict | None, measure: str) -> tuple[float, float]:
    nan = float("nan")
    if not entry:
        return nan, nan
    if measure == "http_server":
        p50, p95 = entry.get("http_server_p50_ms"), entry.get("http_server_p95_ms")
    else:
        got = entry.get(measure) or {}
        p50, p95 = got.get("p50_ms"), got.get("p95_ms")
    return (nan if p50 is None else p50), (nan if p95 is None else p95)


def _cell(entry: dict | None, measure: str) -> str:
    p50, p95 = _pair(entry, measure)
    return "" if p50 != p50 and p95 != p95 else f"{fmt(p50)} / {fmt(p95)}"


def verdict(entry: dict) -> str:
    """PASS when both measures of server time have a p95 under the target: through HTTP, and
    in-process with the connection kept (daphne takes its connections from a pool, so a new
    connection per request, shown beside them, is not what the server pays); a wrong status
    is named instead."""
    statuses = set()
    for measure in ("http", "inprocess_new_connection", "inprocess_kept_connection"):
        statuses |= set((entry.get(measure) or {}).get("statuses") or [])
    if statuses != {entry.get("expect", 200)}:
        return f"HTTP {sorted(statuses)}"
    judged = [_pair(entry, m)[1] for m in ("http_server", "inprocess_kept_connection")]
    judged = [v for v in judged if v == v]
    return ("PASS" if max(judged) < TARGET_MS else "MISS") if judged else "n/a"


MEASURES = (
    ("http_server", "HTTP server"),
    ("inprocess_new_connection", "in-process, new conn."),
    ("inprocess_kept_connection", "in-process, kept conn."),
)


def render(data: dict, before: dict | None = None) -> str:
    """One side: round trip and the three measures. With `before` (figures of the same
    endpoints, e.g. the checkout before a change): each measure before and after."""
    if before is None:
        header = ["endpoint", "user", "queries", "HTTP round trip", *(m[1] for m in MEASURES), "p95 < 20 ms"]
        rows = [
            [e["label"], key.split("/")[1], str(e["queries"] or ""), _cell(e, "http_raw"),
             *(_cell(e, m) for m, _ in MEASURES), verdict(e)]
            for key, e in data.items()
        ]  # fmt: skip
        for row, e in zip(rows, data.values(), strict=True):
            h = e.get("http") or {}
            row[3] = f"{fmt(h['p50_ms'])} / {fmt(h['p95_ms'])}" if h else ""
        return table(header, rows)
    header = ["endpoint", "user", "queries"]
    for _, name in MEASURES:
        header += [f"{name}: before", "after"]
    header.append("after: p95 < 20 ms")
    rows = []
    for key, e in data.items():
        b = before.get(key)
        queries = f"{(b or {}).get('queries') or '?'} -> {e['queries'] or '?'}"
        row = [e["label"], key.split("/")[1], queries]
        for m, _ in MEASURES:
            row += [_cell(b, m), _cell(e, m)]
        rows.append([*row, verdict(e)])
    return table(header, rows)


# --- main --------------------------------------------------------------------------------------


def prerequisites(parser: argparse.ArgumentParser, url: str, methods: set[str]) -> str | None:
    if not urlsplit(url).scheme.startswith("postg"):
        parser.error("--database-url must be a postgres:// URL (the benchmark is about PostgreSQL)")
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed in this Python"
    try:
        _, admin = admin_url(url)
        with psycopg.connect(admin, autocommit=True, connect_timeout=5):
            pass
    except Exception as exc:  # noqa: BLE001
        return f"cannot reach PostgreSQL at {url}: {exc}"
    if "http" in methods and not (VENV_BIN / "daphne").exists():
        return f"{VENV_BIN / 'daphne'} is missing (make install)"
    return None


@dataclass
class Side:
    """A checkout and the database it is measured on."""

    label: str
    checkout: Path
    url: str
    commit: str = ""
    rows: dict = field(default_factory=dict)
    seed_seconds: dict = field(default_factory=dict)
    targets: dict = field(default_factory=dict)
    eps: list = field(default_factory=list)


def describe(checkout: Path) -> str:
    git = ["git", "-C", str(checkout)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return commit + (" with uncommitted changes" if dirty else "")


def prepare(side: Side, env: dict, *, reuse: bool, only: set[str]) -> None:
    """The side's database migrated and seeded (kept when --reuse and it holds this seed and
    no migration the checkout lacks), and the endpoints to time on it."""
    side.commit = describe(side.checkout)
    print(f"== {side.label}: {side.checkout} at {side.commit}, database {side.url}", flush=True)
    reuse = reuse and database_exists(side.url) and seeded(side.url)
    if reuse and (foreign := foreign_migrations(side.url, side.checkout)):
        print(f"  not reusing the database: it has migrations this checkout lacks: {', '.join(foreign)}")
        reuse = False
    if not reuse:
        recreate_database(side.url)
    print(f"  migrate ({'reused database' if reuse else 'new database'}): ", end="", flush=True)
    print(f"{migrate(side.url, env, side.checkout):.1f}s", flush=True)
    if not reuse:
        start = time.perf_counter()
        side.seed_seconds = seed(side.url)
        print(f"  seed total {time.perf_counter() - start:.1f}s", flush=True)
    side.rows = counts(side.url)
    print("  rows: " + ", ".join(f"{t} {n:,}" for t, n in side.rows.items()), flush=True)
    side.targets = targets(side.url)
    side.eps = [e for e in endpoints(side.targets) if not only or e.name in only]


def inprocess_in_child(side: Side, args, budget: Budget) -> dict:
    """The in-process measures of a side in a child process (one process imports one checkout):
    this script with --methods inprocess on the side's (already prepared) database."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [
            PYTHON, __file__, "--methods", "inprocess", "--reuse", "--checkout", str(side.checkout),
            "--database-url", side.url, "--requests", str(budget.requests), "--warmup", str(budget.warmup),
            "--rounds", str(budget.rounds), "--max-seconds", str(budget.max_seconds), "--json", out.name,
            *(["--only", args.only] if args.only else []),
        ]  # fmt: skip
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise BenchError(f"in-process run of {side.label} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        print(
            "\n".join(line for line in proc.stdout.splitlines() if line.startswith("  in-process")),
            flush=True,
        )
        return json.loads(Path(out.name).read_text())["endpoints"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default=DEFAULT_URL, help=f"scratch database (default {DEFAULT_URL})"
    )
    parser.add_argument("--reuse", action="store_true", help="keep the database when it holds this seed")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint and user")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before them")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the requests are spread over")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="bound on the timed requests of each series"
    )
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="the checkout to serve and measure (default: this one)"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout (say a worktree of the commit before a change) measured in the same "
        "rounds, on its own database, and shown as 'before'",
    )
    parser.add_argument(
        "--against-database-url", help="its database (default: the --database-url name + '_against')"
    )
    parser.add_argument("--methods", default="http,inprocess", help="http, inprocess or both")
    parser.add_argument("--only", default="", help="comma-separated endpoint names (default: all)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of every query")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--before", type=Path, help="a --json file of an earlier run, shown as 'before'")
    args = parser.parse_args(argv)
    # SIGTERM (a background run ignores ^C) unwinds through the finally blocks that stop daphne.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    if not methods <= {"http", "inprocess"}:
        parser.error("--methods takes http and/or inprocess")
    if args.against and args.before:
        parser.error("--against and --before both give a 'before': pick one")
    known = {e.name for e in endpoints({"run": 1, "wave": 1, "running_run": 1, "session": 1, "middle": 1})}
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    if only - known:
        parser.error(
            f"unknown endpoint(s) {', '.join(sorted(only - known))}; known: {', '.join(sorted(known))}"
        )
    why = prerequisites(parser, args.database_url, methods)
    if why:
        print(f"Prerequisite missing: {why}", file=sys.stderr)
        return 2
    sides = [Side("after" if args.against else "measured", args.checkout.resolve(), args.database_url)]
    if args.against:
        parts = urlsplit(args.database_url)
        default = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_against"))
        sides.insert(0, Side("before", args.against.resolve(), args.against_database_url or default))
    for side in sides:
        if not (side.checkout / "manage.py").exists():
            parser.error(f"{side.checkout} is not a Tidewatch checkout (no manage.py)")
    before_file = json.loads(args.before.read_text()) if args.before else None

    workdir = Path(tempfile.mkdtemp(prefix="tw-bench-api-"))
    env = dict(os.environ)
    env["TIDEWATCH_VAR_DIR"] = str(workdir / "var")
    env["PYTHONUNBUFFERED"] = "1"
    (workdir / "var").mkdir()
    try:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"Tidewatch API at scale, {started}", flush=True)
        for side in sides:
            prepare(side, env, reuse=args.reuse, only=only)
        budget = Budget(args.requests, args.warmup, args.max_seconds, max(1, args.rounds))

        http_res = {}
        if "http" in methods:
            print(
                f"== through HTTP (daphne, {args.requests} requests after {args.warmup} warm-up, "
                f"{budget.rounds} rounds{', both sides in the same rounds' if len(sides) > 1 else ''})",
                flush=True,
            )
            http_res = run_http(sides, env, workdir, budget)
        data = {}
        for side in sides:
            if "inprocess" in methods and len(sides) > 1:
                print(f"== in-process, {side.label} (django.test.Client, in a child process)", flush=True)
                data[side.label] = figures(side.eps, http_res.get(side.label), None, None)
                for key, got in inprocess_in_child(side, args, budget).items():
                    if key in data[side.label]:
                        for measure in ("queries", "inprocess_new_connection", "inprocess_kept_connection"):
                            data[side.label][key][measure] = got[measure]
                continue
            fresh = kept = None
            if "inprocess" in methods:
                print("== in-process (django.test.Client)", flush=True)
                django_setup(side.url, env, side.checkout)
                if side.label not in http_res:  # the cursor links, from the in-process client
                    from django.test import Client

                    c = Client(HTTP_HOST="127.0.0.1")

                    def get(path, token, c=c):
                        r = c.get(path, HTTP_AUTHORIZATION=f"Token {token}")
                        return r.status_code, r.content

                    resolve_links(get, side.eps)
                fresh = run_inprocess(side.eps, budget, explain=False, fresh=True)
                kept = run_inprocess(side.eps, budget, explain=args.explain, fresh=False)
                if args.explain:
                    for (name, user), plans in kept["plans"].items():
                        print(f"\n--- {name} / {user}")
                        for sql, plan in plans:
                            print(f"\n{sql}\n{plan}")
            data[side.label] = figures(side.eps, http_res.get(side.label), fresh, kept)

        main_side = sides[-1]
        print("=" * 72)
        print(f"API at scale, {started}, PostgreSQL")
        for side in sides:
            print(f"{side.label}: {side.checkout} at {side.commit}, database {side.url}")
        if before_file:
            print(f"before: {args.before} ({before_file.get('date')}, {before_file.get('commit')})")
        print("volumes: " + ", ".join(f"{k} {v:,}" for k, v in VOLUMES.items()))
        for side in sides:
            if side.label in http_res:
                b = http_res[side.label]["baseline"]
                print(
                    f"HTTP baseline ({side.label}; anonymous GET {BASELINE_PATH}, no query): p50 {b.p50:.2f} ms, "
                    f"p95 {b.p95:.2f} ms. HTTP server = round trip - baseline p50"
                )
        print("p50 / p95 in ms; queries per request (counted in-process)")
        before = data.get("before") if len(sides) > 1 else (before_file or {}).get("endpoints")
        print(render(data[main_side.label], before))
        if args.json:
            out = {
                "date": started,
                "commit": main_side.commit,
                "checkout": str(main_side.checkout),
                "database": main_side.url,
                "volumes": VOLUMES,
                "rows": main_side.rows,
                "seed_seconds": main_side.seed_seconds,
                "targets": main_side.targets,
                "baseline": http_res[main_side.label]["baseline"].as_dict()
                if main_side.label in http_res
                else None,
                "endpoints": data[main_side.label],
            }
            if len(sides) > 1:
                b = sides[0]
                out["against"] = {
                    "commit": b.commit,
                    "checkout": str(b.checkout),
                    "database": b.url,
                    "baseline": http_res[b.label]["baseline"].as_dict() if b.label in http_res else None,
                    "endpoints": data[b.label],
                }
            args.json.write_text(json.dumps(out, indent=2))
            print(f"figures written to {args.json}")
    except BenchError as exc:
        print(f"bench_api failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
