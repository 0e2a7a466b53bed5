#!/usr/bin/env python
"""Scheduling benchmark: longest-remaining-path first (`--schedule critical_path`) against
first-come first-served (`--schedule fifo`) and `make -j4`.

    .venv/bin/python benchmarks/bench_schedule.py [--repeat 3] [--database-url postgres://...]

20 independent tasks listed first, then a chain of 5; every task `sleep 0.5`; 4 slots.
FIFO (and make, which starts prerequisites in the order listed) runs the 20 first and the
chain after: 5 x 0.5 + 5 x 0.5 = 5.0 s. Starting the chain first and filling the other 3
slots with independent tasks gives the best possible 3.5 s (7 rounds of 0.5 s).
Target: critical_path <= 1.1 x best.
"""

from __future__ import annotations

import argparse
import sys

from bench_executor import (
    HEADER,
    BenchError,
    Database,
    Step,
    critical_path_seconds,
    fmt,
    measure,
    measure_make,
    prerequisites_met,
    table,
    verdict,
)

INDEPENDENT, CHAIN, SECONDS, SLOTS = 20, 5, 0.5, 4
BEST = 3.5  # chain first, 3 independents beside each chain link, then the last 5 in 2 rounds


def dag() -> list[Step]:
    steps = [Step(f"free{i:02d}", SECONDS) for i in range(INDEPENDENT)]
    steps += [Step(f"chain{i}", SECONDS, [f"chain{i - 1}"] if i else []) for i in range(CHAIN)]
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians reported)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgres://user@host:port/NAME: run on PostgreSQL, NAME dropped and created for every run",
    )
    args = parser.parse_args(argv)
    if not prerequisites_met(parser):
        return 2
    db = Database(args.database_url)
    steps = dag()
    print(f"Scheduling benchmark on {db.vendor}, {args.repeat} runs each\n", flush=True)
    try:
        make = measure_make("schedule", steps, SLOTS, args.repeat)
        critical = measure(db, "schedule", steps, SLOTS, args.repeat, schedule="critical_path")
        fifo = measure(db, "schedule", steps, SLOTS, args.repeat, schedule="fifo")
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    ratio = critical.wall / BEST
    print()
    print(
        table(
            f"{INDEPENDENT} independent + a chain of {CHAIN}, all `sleep {SECONDS:g}`, {SLOTS} slots; "
            f"ratio against the best possible {BEST:.1f}s (critical path {critical_path_seconds(steps):.1f}s)",
            HEADER,
            [critical.row(BEST), fifo.row(BEST), make.row(BEST)],
        )
    )
    print(f"critical_path / best = {ratio:.3f}  {verdict(ratio, 1.1)}")
    print(f"fifo / best = {fifo.wall / BEST:.3f}; make -j{SLOTS} / best = {make.wall / BEST:.3f}")
    print(f"critical_path saves {fmt(fifo.wall - critical.wall)} over fifo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
