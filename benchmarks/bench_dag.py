"""Benchmark waves.dag.analyze against networkx, and the 100-node plan including the DB load.

    .venv/bin/python benchmarks/bench_dag.py

Not a test: timings depend on the machine. Targets: 100 nodes < 1 ms (analysis) and < 20 ms
(including the database load); 100,000 nodes / 500,000 edges <= 0.7x networkx.
networkx is timed two ways: building the DiGraph from the same edge list + generations (the
same work `analyze` does from the same input), and generations alone on a prebuilt graph.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from waves.dag import analyze  # noqa: E402

EDGES_PER_NODE = 5


def random_dag(n: int, seed: int = 7) -> tuple[list[str], list[tuple[str, str]]]:
    """n nodes, ~5 distinct edges per node, each from an earlier node to a later one."""
    rng = random.Random(seed)
    nodes = [f"task-{i}" for i in range(n)]
    edges = set()
    for i in range(1, n):
        for j in rng.sample(range(i), min(i, EDGES_PER_NODE)):
            edges.add((j, i))
    order = list(range(n))
    rng.shuffle(order)  # input order unrelated to topological order
    return [nodes[i] for i in order], [(nodes[a], nodes[b]) for a, b in edges]


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def nx_build_and_generations(nodes, edges):
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return list(nx.topological_generations(g))


def bench_pure() -> list[tuple]:
    rows = []
    for n, runs in ((100, 200), (10_000, 7), (100_000, 5)):
        nodes, edges = random_dag(n)
        a = analyze(nodes, edges)
        assert len(a.waves) == len(nx_build_and_generations(nodes, edges))
        ours = median_time(lambda nodes=nodes, edges=edges: analyze(nodes, edges), runs)
        full = median_time(lambda nodes=nodes, edges=edges: nx_build_and_generations(nodes, edges), runs)
        g = nx.DiGraph(edges)
        g.add_nodes_from(nodes)
        gens = median_time(lambda g=g: list(nx.topological_generations(g)), runs)
        rows.append((n, len(edges), ours, full, gens))
    return rows


def bench_with_db(n: int = 100, runs: int = 50) -> tuple[float, float]:
    """Import a 100-node list into a temporary SQLite DB; time task_list_graph + analyze."""
    tmp = tempfile.mkdtemp(prefix="tw-bench-")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["TIDEWATCH_VAR_DIR"] = tmp
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from waves.loaders import Definition, StepDef, validate
    from waves.selectors import task_list_graph
    from waves.services import task_list_import

    call_command("migrate", verbosity=0)
    nodes, edges = random_dag(n)
    deps: dict[str, list[str]] = {k: [] for k in nodes}
    for up, down in edges:
        deps[down].append(up)
    d = Definition(
        name="bench",
        steps=[StepDef(key=k, template="bench", position=i, depends_on=deps[k]) for i, k in enumerate(nodes)],
    )
    validate(d)
    tl = task_list_import(definition=d)

    def load_and_analyze():
        analyze(*task_list_graph(tl))

    load_and_analyze()  # warm the connection and query compilation
    return median_time(load_and_analyze, runs), median_time(lambda: task_list_graph(tl), runs)


def main():
    print(f"Python {sys.version.split()[0]}, networkx {nx.__version__}; median of several runs\n")
    print(f"{'nodes':>8} {'edges':>8} {'analyze':>10} {'nx build+gen':>13} {'ratio':>6} {'nx gen only':>12}")
    for n, m, ours, full, gens in bench_pure():
        print(
            f"{n:>8} {m:>8} {ours * 1e3:>8.2f}ms {full * 1e3:>11.2f}ms {ours / full:>6.2f} {gens * 1e3:>10.2f}ms"
        )
    total, load = bench_with_db()
    print(
        f"\n100 nodes from SQLite: task_list_graph + analyze {total * 1e3:.2f} ms (load alone {load * 1e3:.2f} ms)"
    )


if __name__ == "__main__":
    main()
