#!/usr/bin/env python
"""Import benchmark: what `import_tasklist` does (load_path, then task_list_import) for
workflows of 5,000, 10,000 and 20,000 steps, written as YAML and as pretty-printed JSON.

    .venv/bin/python benchmarks/bench_import.py [--sizes 5000,10000,20000] [--repeat 1]
                     [--max-seconds 120]

Not a test: it prints a table and never fails on a figure. Everything goes to a new SQLite
database in a temp dir, migrated first. Each import is cut off after --max-seconds (the
table says so) and then the larger sizes of that format are skipped, so a run is bounded.
Import should be linear in file size: the time per step stays flat as the size doubles.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def workflow(n: int) -> dict:
    """n steps in a mesh: each depends on the previous one (by reference) and on the one 7
    back; every tenth step has a `when`, templates are shared, some fields on every step."""
    steps = []
    for i in range(n):
        step: dict = {"id": f"step-{i}", "title": f"Step {i}", "template": f"tpl-{i % 20}"}
        step["run"] = f"./work.sh --part {i}" + (f" --after ${{steps.step-{i - 1}.outputs.n}}" if i else "")
        if i >= 7:
            step["depends_on"] = [f"step-{i - 7}"]
        step["inputs"] = {"part": i, "tags": ["a", "b"]}
        step["timeout"] = 600
        step["estimated_minutes"] = 1.5
        if i and i % 10 == 0:
            step["when"] = f"steps['step-{i - 1}'].outputs.n > 0"
        steps.append(step)
    return {"name": f"bench-{n}", "max_parallelism": 8, "steps": steps}


def write(path: Path, doc: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(doc, indent=2))
    else:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        path.write_text(yaml.dump(doc, Dumper=dumper, sort_keys=False))
    return path


class CutOff(Exception):
    pass


def _alarm(signum, frame):
    raise CutOff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000", help="step counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="imports per case; the table shows medians")
    parser.add_argument("--max-seconds", type=int, default=120, help="cut-off for one import")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-import-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["TIDEWATCH_VAR_DIR"] = str(tmp)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from waves.loaders import load_path
    from waves.services import task_list_import

    call_command("migrate", verbosity=0)
    signal.signal(signal.SIGALRM, _alarm)
    print(f"Python {sys.version.split()[0]}, SQLite in {tmp}; median of {args.repeat}\n")
    header = f"{'format':<6} {'steps':>7} {'MB':>6} {'load':>8} {'write':>8} {'total':>8} {'per step':>10}"
    print(header)
    print("-" * len(header))
    for suffix in (".yaml", ".json"):
        cut = False
        for n in sizes:
            fmt = suffix[1:]
            if cut:
                print(f"{fmt:<6} {n:>7} {'skipped (a smaller size was cut off)':>44}")
                continue
            path = write(tmp / f"bench-{n}{suffix}", workflow(n))
            loads, writes = [], []
            for rep in range(args.repeat):
                signal.alarm(args.max_seconds)
                try:
                    t0 = time.perf_counter()
                    definition = load_path(path)
                    t1 = time.perf_counter()
                    task_list_import(definition=definition, name=f"{fmt}-{n}-{rep}", source_path=str(path))
                    t2 = time.perf_counter()
                except CutOff:
                    cut = True
                    break
                finally:
                    signal.alarm(0)
                loads.append(t1 - t0)
                writes.append(t2 - t1)
            mb = path.stat().st_size / 2**20
            if cut:
                print(f"{fmt:<6} {n:>7} {mb:>6.1f} {f'cut off after {args.max_seconds} s':>37}")
                continue
            load, wr = statistics.median(loads), statistics.median(writes)
            total = load + wr
            print(
                f"{fmt:<6} {n:>7} {mb:>6.1f} {load:>7.2f}s {wr:>7.2f}s {total:>7.2f}s {total / n * 1e6:>8.0f}us"
            )


if __name__ == "__main__":
    main()
