#!/usr/bin/env python
"""Executor benchmarks: Tidewatch's `run_tasklist` against `make -j N` on the same DAG.

    .venv/bin/python benchmarks/bench_executor.py [--only efficiency,unbalanced,throughput]
                     [--repeat 3] [--database-url postgres://postgres@127.0.0.1:5432/tw_bench]

Not a test: it prints tables (medians of --repeat runs) and never fails on a figure.
Each run gets a fresh database (a new SQLite file, or the PostgreSQL database of
--database-url dropped and created again) and its own TIDEWATCH_VAR_DIR, migrated first.
See benchmarks/README.md for what each case measures and its target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("BENCH_PYTHON") or (
    str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
)


# --- DAGs, workflow files and Makefiles ----------------------------------------------------


@dataclass
class Step:
    id: str
    seconds: float  # what its command sleeps (0 for `true`)
    depends_on: list[str] = field(default_factory=list)
    command: str | None = None

    @property
    def run(self) -> str:
        return self.command or (f"sleep {self.seconds:g}" if self.seconds else "true")


def write_workflow(
    path: Path, name: str, steps: list[Step], max_parallelism: int, *, estimates: bool = True
) -> Path:
    doc = {"name": name, "max_parallelism": max_parallelism, "steps": []}
    for step in steps:
        entry: dict = {"id": step.id, "run": step.run}
        if step.depends_on:
            entry["depends_on"] = list(step.depends_on)
        if estimates and step.seconds:
            entry["estimated_minutes"] = step.seconds / 60
        doc["steps"].append(entry)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_makefile(path: Path, steps: list[Step]) -> Path:
    """Every step a phony target; `all` lists them in the given order (make starts them so)."""
    ids = [s.id for s in steps]
    lines = [".PHONY: all " + " ".join(ids), "all: " + " ".join(ids), ""]
    for step in steps:
        lines += [f"{step.id}: {' '.join(step.depends_on)}".rstrip(), f"\t@{step.run}", ""]
    path.write_text("\n".join(lines))
    return path


def critical_path_seconds(steps: list[Step]) -> float:
    by_id = {s.id: s for s in steps}
    memo: dict[str, float] = {}

    def finish(sid: str) -> float:
        if sid not in memo:
            s = by_id[sid]
            memo[sid] = s.seconds + max((finish(d) for d in s.depends_on), default=0.0)
        return memo[sid]

    return max(finish(s.id) for s in steps)


# --- databases -----------------------------------------------------------------------------


class Database:
    """A fresh database per run: a new SQLite file, or a dropped-and-created PostgreSQL one."""

    def __init__(self, url: str | None):
        self.url = url

    @property
    def vendor(self) -> str:
        return "postgresql" if self.url and urlsplit(self.url).scheme.startswith("postg") else "sqlite"

    def fresh(self, workdir: Path) -> str:
        if self.vendor == "sqlite":
            path = workdir / "bench.sqlite3"
            path.unlink(missing_ok=True)
            return f"sqlite:///{path}"  # workdir is absolute: sqlite:////tmp/...
        import psycopg

        parts = urlsplit(self.url)
        name = parts.path.lstrip("/") or "tw_bench"
        admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit(parts._replace(path=f"/{name}"))


# --- running things --------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class Sandbox:
    """One run's temp dir, database and environment for `manage.py`."""

    workdir: Path
    env: dict

    def manage(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return proc


def sandbox(db: Database, label: str) -> Sandbox:
    workdir = Path(tempfile.mkdtemp(prefix=f"tw-bench-{label}-"))
    env = dict(os.environ)
    env["DATABASE_URL"] = db.fresh(workdir)
    env["TIDEWATCH_VAR_DIR"] = str(workdir / "var")
    env["PYTHONUNBUFFERED"] = "1"
    (workdir / "var").mkdir()
    box = Sandbox(workdir, env)
    proc = box.manage("migrate", "--noinput")
    if proc.returncode:
        raise BenchError(f"migrate failed:\n{proc.stderr[-2000:]}")
    return box


def tidewatch_run(
    db: Database, label: str, steps: list[Step], max_parallelism: int, *, schedule: str | None = None
) -> dict:
    """Import the DAG into a fresh database and run it; returns run_tasklist's JSON plus outer wall."""
    box = sandbox(db, label)
    try:
        wf = write_workflow(box.workdir / f"{label}.yaml", label, steps, max_parallelism)
        proc = box.manage("import_tasklist", str(wf), "--name", label)
        if proc.returncode:
            raise BenchError(f"import_tasklist failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        task_list_id = proc.stdout.splitlines()[0].strip()
        args = ["run_tasklist", task_list_id, "--max-parallelism", str(max_parallelism), "--json"]
        if schedule:
            args += ["--schedule", schedule]
        start = time.perf_counter()
        proc = box.manage(*args)
        outer = time.perf_counter() - start
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(
                f"run_tasklist printed no JSON ({proc.returncode}):\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}"
            ) from None
        result["outer_wall_seconds"] = outer
        result["exit_code"] = proc.returncode
        return result
    finally:
        shutil.rmtree(box.workdir, ignore_errors=True)


def make_run(label: str, steps: list[Step], jobs: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix=f"tw-bench-make-{label}-"))
    try:
        makefile = write_makefile(workdir / "Makefile", steps)
        start = time.perf_counter()
        proc = subprocess.run(
            ["make", "-s", "-j", str(jobs), "-f", str(makefile), "all"],
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode:
            raise BenchError(f"make failed:\n{proc.stderr[-2000:]}")
        return wall
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def executor_available() -> str | None:
    """None when `run_tasklist` and `import_tasklist` answer --help, else why not."""
    for command in ("import_tasklist", "run_tasklist"):
        proc = subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), command, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode:
            return f"`manage.py {command} --help` failed: {proc.stderr.strip().splitlines()[-1:]}"
    return None


# --- reporting ---------------------------------------------------------------------------------


def prerequisites_met(parser: argparse.ArgumentParser) -> bool:
    """make on PATH (else a usage error), and the executor's commands importable."""
    if shutil.which("make") is None:
        parser.error("make is not on PATH")
    why = executor_available()
    if why:
        print(f"The executor is not available: {why}", file=sys.stderr)
    return not why


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, unit: str = "s") -> str:
    return "—" if value != value else f"{value:.3f}{unit}"  # NaN -> dash


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(out)


def verdict(value: float, target: float, *, at_most: bool = True) -> str:
    if value != value:
        return "n/a"
    ok = value <= target if at_most else value >= target
    return ("PASS" if ok else "MISS") + f" (target {'≤' if at_most else '≥'} {target:g})"


class Series:
    """Repeated measurements of one configuration: tidewatch runs or make runs."""

    def __init__(self, name: str):
        self.name = name
        self.walls: list[float] = []
        self.outer: list[float] = []
        self.statuses: list[str] = []
        self.peaks: list[int] = []

    def add_run(self, result: dict) -> None:
        self.walls.append(float(result.get("wall_seconds") or float("nan")))
        self.outer.append(result["outer_wall_seconds"])
        self.statuses.append(str(result.get("status")))
        self.peaks.append(int(result.get("peak_concurrency") or 0))

    def add_make(self, wall: float) -> None:
        self.walls.append(wall)
        self.outer.append(wall)
        self.statuses.append("ok")

    @property
    def wall(self) -> float:
        return median(self.walls)

    @property
    def outer_wall(self) -> float:
        return median(self.outer)

    def row(self, reference: float | None = None, tasks: int | None = None) -> list[str]:
        row = [self.name, fmt(self.wall), fmt(self.outer_wall)]
        row.append(f"{self.wall / reference:.2f}x" if reference else "")
        if tasks is not None:
            row.append(f"{tasks / self.wall:.0f}/s")
        row.append(str(max(self.peaks)) if self.peaks else "")
        row.append(",".join(sorted(set(self.statuses))))
        return row


HEADER = ["runner", "wall (median)", "outer wall", "ratio", "peak", "status"]
HEADER_TPUT = ["runner", "wall (median)", "outer wall", "ratio", "tasks/s", "peak", "status"]


# --- the cases ---------------------------------------------------------------------------------


def dag_levels(levels: int, width: int, seconds: float) -> list[Step]:
    steps = []
    for lv in range(levels):
        prev = [f"l{lv - 1}_{i}" for i in range(width)] if lv else []
        steps += [Step(f"l{lv}_{i}", seconds, prev) for i in range(width)]
    return steps


def dag_unbalanced(waves: int, shorts: int, long_s: float, short_s: float, *, mode: str) -> list[Step]:
    """Each wave: one long and `shorts` short tasks.

    mode "staggered": short tasks depend on the previous wave's short tasks, the long task on
        the previous wave's short tasks too: the longs overlap, a DAG-greedy scheduler
        finishes in about (waves-1)*short + long;
    mode "long-chain": the long task depends on the previous long (as well-meant as it looks,
        the chain of longs is the critical path, equal to the barrier time: no scheduler can win);
    mode "barrier": every task depends on the whole previous wave (the wave-barrier schedule).
    """
    steps: list[Step] = []
    for w in range(waves):
        prev_shorts = [f"w{w - 1}_s{i}" for i in range(shorts)] if w else []
        prev_long = [f"w{w - 1}_long"] if w else []
        if mode == "barrier":
            long_deps = short_deps = prev_long + prev_shorts
        elif mode == "long-chain":
            long_deps, short_deps = prev_long, prev_shorts
        else:
            long_deps, short_deps = prev_shorts, prev_shorts
        steps.append(Step(f"w{w}_long", long_s, long_deps))
        steps += [Step(f"w{w}_s{i}", short_s, short_deps) for i in range(shorts)]
    return steps


def measure(db: Database, label: str, steps: list[Step], par: int, repeat: int, *, schedule=None) -> Series:
    series = Series(f"tidewatch{f' --schedule {schedule}' if schedule else ''} ({db.vendor})")
    for i in range(repeat):
        result = tidewatch_run(db, label, steps, par, schedule=schedule)
        series.add_run(result)
        print(
            f"  [{label} #{i + 1}] {series.name}: wall {result.get('wall_seconds')}s, "
            f"outer {result['outer_wall_seconds']:.2f}s, status {result.get('status')}, "
            f"peak {result.get('peak_concurrency')}",
            flush=True,
        )
    return series


def measure_make(label: str, steps: list[Step], jobs: int, repeat: int) -> Series:
    series = Series(f"make -j{jobs}")
    for i in range(repeat):
        series.add_make(make_run(label, steps, jobs))
        print(f"  [{label} #{i + 1}] make -j{jobs}: {series.walls[-1]:.3f}s", flush=True)
    return series


def case_efficiency(db: Database, repeat: int) -> str:
    steps = dag_levels(5, 8, 0.2)
    par = 8
    make = measure_make("efficiency", steps, par, repeat)
    ours = measure(db, "efficiency", steps, par, repeat)
    ratio = ours.wall / make.wall
    return "\n".join(
        [
            table(
                f"(a) efficiency: 5 levels x 8 tasks of `sleep 0.2`, full level-to-level dependencies, "
                f"max parallelism {par}; ideal {critical_path_seconds(steps):.1f}s",
                HEADER,
                [make.row(make.wall), ours.row(make.wall)],
            ),
            f"tidewatch wall / make wall = {ratio:.3f}  {verdict(ratio, 1.10)}",
            f"tidewatch outer wall (incl. Django start-up) / make = {ours.outer_wall / make.wall:.3f}",
        ]
    )


def case_unbalanced(db: Database, repeat: int) -> str:
    waves, shorts, long_s, short_s, par = 4, 6, 1.0, 0.2, 8
    staggered = dag_unbalanced(waves, shorts, long_s, short_s, mode="staggered")
    chain = dag_unbalanced(waves, shorts, long_s, short_s, mode="long-chain")
    barrier_dag = dag_unbalanced(waves, shorts, long_s, short_s, mode="barrier")
    barrier_s = waves * max(long_s, short_s)  # sum over waves of the longest task
    make = measure_make("unbalanced", staggered, par, repeat)
    ours = measure(db, "unbalanced", staggered, par, repeat)
    chain_run = measure(db, "unbalanced-longchain", chain, par, repeat)
    chain_run.name = f"tidewatch, longs chained ({db.vendor})"
    barrier = measure(db, "unbalanced-barrier", barrier_dag, par, repeat)
    barrier.name = f"tidewatch, explicit barriers ({db.vendor})"
    ratio_computed = ours.wall / barrier_s
    ratio_measured = ours.wall / barrier.wall
    return "\n".join(
        [
            table(
                f"(b) unbalanced: {waves} waves of one `sleep {long_s:g}` and {shorts} `sleep {short_s:g}`, "
                f"max parallelism {par}; ratio against the computed barrier time {barrier_s:.1f}s; "
                f"critical path {critical_path_seconds(staggered):.1f}s",
                HEADER,
                [
                    make.row(barrier_s),
                    ours.row(barrier_s),
                    chain_run.row(barrier_s),
                    barrier.row(barrier_s),
                ],
            ),
            f"tidewatch / computed barrier ({barrier_s:.1f}s) = {ratio_computed:.3f}  {verdict(ratio_computed, 0.8)}",
            f"tidewatch / measured barrier run ({fmt(barrier.wall)}) = {ratio_measured:.3f}  "
            f"{verdict(ratio_measured, 0.8)}",
            f"tidewatch / make = {ours.wall / make.wall:.3f}",
            "(longs chained: each long depends on the previous long, so the chain of longs "
            f"({critical_path_seconds(chain):.1f}s) equals the barrier time and no scheduler can beat it)",
        ]
    )


def case_throughput(db: Database, repeat: int, count: int = 500) -> str:
    steps = [Step(f"t{i}", 0.0) for i in range(count)]
    par = 8
    make = measure_make("throughput", steps, par, repeat)
    ours = measure(db, "throughput", steps, par, repeat)
    rate = count / ours.wall
    return "\n".join(
        [
            table(
                f"(c) throughput: {count} independent `true` tasks, max parallelism {par}",
                HEADER_TPUT,
                [make.row(make.wall, tasks=count), ours.row(make.wall, tasks=count)],
            ),
            f"tidewatch {rate:.0f} tasks/s ({db.vendor})  {verdict(rate, 200, at_most=False)}; "
            f"make {count / make.wall:.0f} tasks/s; "
            f"counting Django start-up: {count / ours.outer_wall:.0f} tasks/s",
        ]
    )


CASES = {"efficiency": case_efficiency, "unbalanced": case_unbalanced, "throughput": case_throughput}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases: {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians reported)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgres://user@host:port/NAME: run on PostgreSQL, NAME dropped and created for every run "
        "(default: a fresh SQLite file per run)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    if not prerequisites_met(parser):
        return 2
    db = Database(args.database_url)
    print(
        f"Tidewatch executor benchmarks on {db.vendor}, {args.repeat} runs each, python {PYTHON}\n",
        flush=True,
    )
    reports = []
    for name in names:
        print(f"== {name}", flush=True)
        try:
            reports.append(CASES[name](db, args.repeat))
        except BenchError as exc:
            reports.append(f"({name}) failed: {exc}")
        print("\n" + reports[-1] + "\n", flush=True)
    print("=" * 72)
    print("\n\n".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
