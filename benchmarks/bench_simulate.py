#!/usr/bin/env python
"""Seed 003's example pipelines under `run_tasklist --simulate SCALE`.

    .venv/bin/python benchmarks/bench_simulate.py [--scale 0.02] [--repeat 3]

Example 1 takes 90 minutes on its critical path (120 with groups one after another),
Example 3 takes 130 (190). With SCALE seconds per minute the run should take the
critical-path time x SCALE, within 10%. Not a test: prints a table, never fails.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")

sys.path.insert(0, str(ROOT))
from tests.seeds import SEED_003  # noqa: E402 - the one copy of the seed's tables

# name -> (pipeline table, critical path minutes, minutes with groups one after another)
EXAMPLES = {
    "example-1": (SEED_003["example1"][0], 90, 120),
    "example-3": (SEED_003["example3"][0], 130, 190),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.02, help="seconds per simulated minute")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TIDEWATCH_VAR_DIR": tmp, "DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3"}
        manage = [PYTHON, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, check=True)
        print(f"scale {args.scale} s per minute, median of {args.repeat}")
        print(
            f"{'pipeline':<10} {'critical path':>14} {'groups serial':>14} {'measured':>9} {'ratio to cp':>12}"
        )
        for name, (text, critical, serial) in EXAMPLES.items():
            path = Path(tmp) / f"{name}.pipeline"
            path.write_text(text)
            subprocess.run(
                [*manage, "import_tasklist", str(path), "--name", name],
                env=env,
                check=True,
                capture_output=True,
            )
            walls = []
            for _ in range(args.repeat):
                out = subprocess.run(
                    [
                        *manage,
                        "run_tasklist",
                        name,
                        "--simulate",
                        str(args.scale),
                        "--max-parallelism",
                        "8",
                        "--json",
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                walls.append(json.loads(out)["wall_seconds"])
            wall = statistics.median(walls)
            print(
                f"{name:<10} {critical * args.scale:>13.2f}s {serial * args.scale:>13.2f}s {wall:>8.2f}s "
                f"{wall / (critical * args.scale):>11.3f}x"
            )


if __name__ == "__main__":
    main()
