#!/usr/bin/env python
"""Output-volume benchmark: what a task's output costs the executor (`run_tasklist`).

    .venv/bin/python benchmarks/bench_output.py [--before [COMMIT]] [--checkout DIR | --after COMMIT]
                     [--only stdout,events,longline] [--timeout 600]

One step prints a lot, and the `manage.py run_tasklist` process that runs it is measured:
wall time, peak RSS (`/usr/bin/time -v`, else getrusage(RUSAGE_CHILDREN) in a small wrapper),
CPU time, growth of the SQLite file, the transcript rows it left (count, longest content,
total characters) and the size of its TIDEWATCH_VAR_DIR. Scenarios:

  baseline  one short line (the executor's own footprint);
  stdout    200 MB of stdout in 100-byte lines;
  events    1,000,000 malformed lines appended to $TIDEWATCH_EVENTS;
  longline  one 50 MB line on stdout;
  eventline one 50 MiB line in $TIDEWATCH_EVENTS (not JSON: it is kept as an invalid event).

The "after" column is --checkout (default: this repository), or with --after COMMIT a
temporary git worktree of COMMIT (its committed code only). --before adds a "before" column:
a detached git worktree of COMMIT (default ce7eaef, the executor before the per-attempt caps)
in a temp dir, removed at the end. Both run with this script's Python (the project's venv),
`manage.py` from the checkout with cwd set to it, a fresh SQLite database and TIDEWATCH_VAR_DIR
per run. Every run_tasklist is bounded by --timeout: past it, its process group gets SIGTERM,
then SIGKILL, and the run reads "timeout".

Not a test: it prints one table and exits 0 once it has run (2 when the checkout's executor
commands are missing). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from bench_executor import PYTHON, ROOT, table

BEFORE_COMMIT = "ce7eaef"
TIME = "/usr/bin/time"
MiB = 2**20

# A 99-character line: with yes's newline, 100 bytes a line.
LINE_99 = ("tidewatch-output-volume-benchmark-" * 3)[:99]

SCENARIOS = {
    "baseline": (
        "(0) baseline: one short line",
        "echo hello",
    ),
    "stdout": (
        "(a) 200 MB of stdout, 100-byte lines",
        f"yes '{LINE_99}' | head -c 200000000",
    ),
    "events": (
        "(b) 1M malformed $TIDEWATCH_EVENTS lines",
        "yes 'not json' | head -n 1000000 >> \"$TIDEWATCH_EVENTS\"",
    ),
    "longline": (
        "(c) one 50 MB line on stdout",
        "head -c 50000000 /dev/zero | tr '\\0' x; echo",
    ),
    "eventline": (
        "(d) one 50 MiB line in $TIDEWATCH_EVENTS",
        'head -c 52428800 /dev/zero | tr \'\\0\' x >> "$TIDEWATCH_EVENTS"; echo >> "$TIDEWATCH_EVENTS"',
    ),
}

# Stands in for /usr/bin/time when it is missing: run the command, then report the largest
# peak RSS among the waited-for children (the executor and its tasks) in time -v's words.
WRAPPER = """\
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"User time (seconds): {ru.ru_utime}\\nSystem time (seconds): {ru.ru_stime}\\n")
    out.write(f"Maximum resident set size (kbytes): {ru.ru_maxrss}\\n")
sys.exit(code)
"""


class BenchError(RuntimeError):
    pass


@dataclass
class Checkout:
    label: str  # "before" / "after"
    path: Path
    commit: str = ""
    problem: str | None = None  # why it cannot run, if it cannot

    def manage(self, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PYTHON, str(self.path / "manage.py"), *args],
            env=env,
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class Result:
    status: str = ""  # run status from --json, or "timeout", or "error: ..."
    wall: float = float("nan")
    rss_kib: float = float("nan")
    cpu: float = float("nan")
    db_growth: float = float("nan")
    rows: float = float("nan")
    longest: float = float("nan")
    chars: float = float("nan")
    var_dir: float = float("nan")
    by_type: dict = field(default_factory=dict)


# --- checkouts -----------------------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def check(checkout: Checkout) -> None:
    """Set checkout.problem when its executor commands do not answer, or its code is not the one loaded."""
    env = dict(os.environ, TIDEWATCH_VAR_DIR=tempfile.mkdtemp(prefix="tw-bench-out-check-"))
    env["DATABASE_URL"] = f"sqlite:///{env['TIDEWATCH_VAR_DIR']}/check.sqlite3"
    try:
        for command in ("import_tasklist", "run_tasklist"):
            proc = checkout.manage(env, command, "--help", timeout=120)
            if proc.returncode:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                checkout.problem = f"`manage.py {command} --help` failed: {tail[0]}"
                return
        # The venv has this repository installed in editable mode; manage.py's directory comes
        # first on sys.path, so the checkout's own packages must be the ones imported.
        proc = checkout.manage(env, "shell", "-c", "import executions; print(executions.__file__)")
        loaded = (proc.stdout.strip().splitlines() or [""])[-1]  # after shell's own notices
        if proc.returncode or not loaded.startswith(str(checkout.path) + os.sep):
            checkout.problem = f"imports executions from {loaded or proc.stderr.strip()[-300:]!r}"
    finally:
        shutil.rmtree(env["TIDEWATCH_VAR_DIR"], ignore_errors=True)


def add_worktree(commit: str, label: str) -> tuple[Path, Path]:
    holder = Path(tempfile.mkdtemp(prefix=f"tw-{label}-"))
    tree = holder / "tree"
    git("worktree", "add", "--detach", str(tree), commit)
    return holder, tree


def remove_worktree(holder: Path, tree: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(tree))
    except BenchError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    shutil.rmtree(holder, ignore_errors=True)


# --- one run -------------------------------------------------------------------------------


def files_size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def parse_time_report(path: Path) -> tuple[float, float]:
    """(peak RSS in KiB, user+sys seconds) from `time -v` output (or the wrapper's)."""
    rss = cpu = float("nan")
    if not path.exists():
        return rss, cpu
    user = system = 0.0
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key == "Maximum resident set size (kbytes)":
            rss = float(value)
        elif key == "User time (seconds)":
            user = float(value)
        elif key == "System time (seconds)":
            system = float(value)
    return rss, (user + system if rss == rss else cpu)


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group this script started (the executor stops its tasks), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def transcript_stats(db_path: Path) -> tuple[int, int, int, dict]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        by_type = {
            kind: count
            for kind, count in conn.execute(
                "SELECT entry_type, count(*) FROM transcript_entries GROUP BY entry_type ORDER BY entry_type"
            )
        }
        rows, longest, chars = conn.execute(
            "SELECT count(*), coalesce(max(length(content)), 0), coalesce(sum(length(content)), 0) "
            "FROM transcript_entries"
        ).fetchone()
    finally:
        conn.close()
    return rows, longest, chars, by_type


def run_scenario(checkout: Checkout, name: str, command: str, timeout: float) -> Result:
    result = Result()
    workdir = Path(tempfile.mkdtemp(prefix=f"tw-bench-out-{checkout.label}-{name}-"))
    try:
        db_path = workdir / "bench.sqlite3"
        var_dir = workdir / "var"
        var_dir.mkdir()
        env = dict(os.environ, DATABASE_URL=f"sqlite:///{db_path}", TIDEWATCH_VAR_DIR=str(var_dir))
        env["PYTHONUNBUFFERED"] = "1"
        proc = checkout.manage(env, "migrate", "--noinput")
        if proc.returncode:
            raise BenchError(f"migrate failed: {proc.stderr.strip()[-500:]}")
        flow = workdir / f"{name}.yaml"
        doc = {"name": f"output-{name}", "max_parallelism": 1, "steps": [{"id": "emit", "run": command}]}
        flow.write_text(yaml.safe_dump(doc, sort_keys=False))
        proc = checkout.manage(env, "import_tasklist", str(flow), "--name", f"output-{name}")
        if proc.returncode:
            raise BenchError(f"import_tasklist failed: {proc.stderr.strip()[-500:]}")
        task_list_id = proc.stdout.splitlines()[0].strip()

        db_files = (db_path, db_path.with_name(db_path.name + "-wal"))
        db_before = files_size(*db_files)
        var_before = tree_size(var_dir)
        report = workdir / "time.txt"
        run = [PYTHON, str(checkout.path / "manage.py"), "run_tasklist", task_list_id, "--json"]
        if os.access(TIME, os.X_OK):
            argv = [TIME, "-v", "-o", str(report), *run]
        else:
            argv = [PYTHON, "-c", WRAPPER, str(report), *run]
        out_path, err_path = workdir / "run.out", workdir / "run.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            child = subprocess.Popen(
                argv, env=env, cwd=checkout.path, stdout=out, stderr=err, start_new_session=True
            )
            try:
                child.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                stop_group(child)
            result.wall = time.perf_counter() - start

        if timed_out:
            result.status = f"timeout (> {timeout:g} s)"
            result.wall = float("nan")
        else:
            result.rss_kib, result.cpu = parse_time_report(report)
            lines = out_path.read_text(errors="replace").strip().splitlines()
            try:
                summary = json.loads(lines[-1])
                result.status = str(summary.get("status"))
            except (ValueError, IndexError):
                tail = err_path.read_text(errors="replace").strip().splitlines()
                tail = [t for t in tail if not t.lstrip().startswith(("Command ", "Exit status"))]
                result.status = f"error (exit {child.returncode}): {(tail or ['?'])[-1][:120]}"
            if child.returncode not in (0, 1) and not result.status.startswith("error"):
                result.status += f" (exit {child.returncode})"
        result.db_growth = files_size(*db_files) - db_before
        result.var_dir = tree_size(var_dir) - var_before
        try:
            result.rows, result.longest, result.chars, result.by_type = transcript_stats(db_path)
        except sqlite3.Error as exc:
            result.status += f"; transcript not read: {exc}"
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- reporting -----------------------------------------------------------------------------


def is_nan(value: float) -> bool:
    return value != value


def mib(value: float) -> str:
    if is_nan(value):
        return "—"
    return f"{value / MiB:,.1f} MiB" if abs(value) >= MiB else f"{value / 1024:,.0f} KiB"


def count(value: float) -> str:
    return "—" if is_nan(value) else f"{int(value):,}"


def seconds(value: float) -> str:
    return "—" if is_nan(value) else f"{value:,.1f} s"


# (name, shown, value for the ratio, smallest "before" value worth a ratio)
METRICS = [
    ("run status", lambda r: r.status, None, 0),
    ("wall (run_tasklist process)", lambda r: seconds(r.wall), lambda r: r.wall, 0),
    ("CPU user+sys", lambda r: seconds(r.cpu), lambda r: r.cpu, 0),
    ("peak RSS", lambda r: mib(r.rss_kib * 1024), lambda r: r.rss_kib, 0),
    ("database growth", lambda r: mib(r.db_growth), lambda r: r.db_growth, MiB),
    ("transcript rows", lambda r: count(r.rows), lambda r: r.rows, 0),
    ("longest transcript content (chars)", lambda r: count(r.longest), lambda r: r.longest, 0),
    ("transcript content, total chars", lambda r: count(r.chars), lambda r: r.chars, 0),
    ("TIDEWATCH_VAR_DIR growth", lambda r: mib(r.var_dir), lambda r: r.var_dir, MiB),
]


def ratio(before: float, after: float, smallest: float = 0) -> str:
    if is_nan(before) or is_nan(after) or not before or before < smallest:
        return ""
    return f"{after / before:.2g}x"


def report(checkouts: list[Checkout], results: dict, names: list[str]) -> str:
    after = checkouts[-1]
    before = checkouts[0] if len(checkouts) > 1 else None
    header = ["scenario", "metric"]
    if before:
        header += [f"before ({before.commit})", f"after ({after.commit})", "after / before"]
    else:
        header += [f"{after.label} ({after.commit})"]
    rows = []
    for name in names:
        title = SCENARIOS[name][0]
        for i, (metric, show, value, smallest) in enumerate(METRICS):
            row = [title if i == 0 else "", metric]
            if before:
                rb, ra = results[before.label, name], results[after.label, name]
                row += [show(rb), show(ra), ratio(value(rb), value(ra), smallest) if value else ""]
            else:
                row += [show(results[after.label, name])]
            rows.append(row)
        kinds = [results[c.label, name].by_type for c in checkouts]
        if any(kinds):
            row = ["", "transcript rows by type"]
            row += [", ".join(f"{k} {v:,}" for k, v in by_type.items()) or "—" for by_type in kinds]
            rows.append(row + [""] * (len(header) - len(row)))
        rows.append([""] * len(header))
    return table(
        "Output volume: one step, `run_tasklist ID --json`, fresh SQLite database", header, rows[:-1]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before",
        nargs="?",
        const=BEFORE_COMMIT,
        default=None,
        metavar="COMMIT",
        help=f"also run COMMIT (default {BEFORE_COMMIT}) from a temporary git worktree, side by side",
    )
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="the checkout to measure (default: this repo)"
    )
    parser.add_argument(
        "--after",
        metavar="COMMIT",
        default=None,
        help="measure COMMIT from a temporary git worktree instead of --checkout (e.g. HEAD, leaving out "
        "uncommitted changes in the work tree)",
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run_tasklist (default 600)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    checkout_path = args.checkout.resolve()
    if not (checkout_path / "manage.py").exists():
        parser.error(f"{checkout_path} has no manage.py")

    worktrees: list[tuple[Path, Path]] = []
    try:
        if args.after:
            worktrees.append(add_worktree(args.after, "after"))
            checkout_path = worktrees[-1][1]
        after = Checkout("after" if args.before else "checkout", checkout_path)
        try:
            after.commit = git("rev-parse", "--short", "HEAD", cwd=checkout_path)
            if git("status", "--porcelain", "--untracked-files=no", cwd=checkout_path):
                after.commit += "+uncommitted"
        except BenchError:
            after.commit = "?"
        checkouts = [after]
        if args.before:
            worktrees.append(add_worktree(args.before, "before"))
            tree = worktrees[-1][1]
            checkouts.insert(0, Checkout("before", tree, git("rev-parse", "--short", "HEAD", cwd=tree)))
        for checkout in checkouts:
            check(checkout)
        if after.problem:
            print(f"The executor is not available in {after.path}: {after.problem}", file=sys.stderr)
            return 2
        print(
            f"Output-volume benchmark, python {PYTHON}, timeout {args.timeout:g} s, "
            f"peak RSS from {TIME if os.access(TIME, os.X_OK) else 'getrusage(RUSAGE_CHILDREN)'}",
            flush=True,
        )
        for checkout in checkouts:
            print(f"  {checkout.label}: {checkout.path} at {checkout.commit}", flush=True)
        results: dict = {}
        for name in names:
            title, command = SCENARIOS[name]
            print(f"== {title}: {command}", flush=True)
            for checkout in checkouts:
                if checkout.problem:
                    results[checkout.label, name] = Result(status=f"not run: {checkout.problem}")
                    continue
                try:
                    res = run_scenario(checkout, name, command, args.timeout)
                except (BenchError, subprocess.TimeoutExpired) as exc:
                    res = Result(status=f"error: {exc}")
                results[checkout.label, name] = res
                print(
                    f"  [{checkout.label}] {res.status}: wall {seconds(res.wall)}, peak RSS "
                    f"{mib(res.rss_kib * 1024)}, db +{mib(res.db_growth)}, {count(res.rows)} transcript rows, "
                    f"longest {count(res.longest)} chars",
                    flush=True,
                )
    finally:
        for holder, tree in worktrees:
            remove_worktree(holder, tree)
    print("\n" + report(checkouts, results, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
