"""Pure-Python DAG analysis: waves, critical path, remaining work and a schedule estimate.

No Django import here: the executor, the loaders and the benchmark all call it directly.
Everything runs on integer indices (lists, not dicts) because that is what keeps
`analyze` linear and fast on 100,000-node graphs; names only appear in the result.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class CycleError(ValueError):
    """The graph has a cycle; `cycle` lists it with the first node repeated at the end."""

    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("cycle: " + " -> ".join(cycle))


@dataclass(slots=True)
class Analysis:
    nodes: list[str]
    waves: list[list[str]]
    wave_of: dict[str, int]
    width: int
    critical_path: list[str]
    critical_length: float
    # Own duration + the longest chain after the node: the executor's dispatch priority.
    remaining: dict[str, float]
    upstream: dict[str, list[str]]
    downstream: dict[str, list[str]]

    def ancestors(self, node: str) -> set[str]:
        return _reach(self.upstream, node)

    def descendants(self, node: str) -> set[str]:
        return _reach(self.downstream, node)


def _reach(adjacency: Mapping[str, list[str]], node: str) -> set[str]:
    if node not in adjacency:
        raise ValueError(f"unknown node {node!r}")
    seen: set[str] = set()
    stack = list(adjacency[node])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(adjacency[n])
    return seen


def analyze(
    nodes: Sequence[str],
    edges: Iterable[tuple[str, str]],
    durations: Mapping[str, float] | None = None,
) -> Analysis:
    """Topological generations (Kahn), longest paths and adjacency of a DAG.

    `edges` are (upstream, downstream) pairs. Raises ValueError on an unknown or duplicate
    node and CycleError (a ValueError) naming one real cycle.
    """
    # We allocate ~2 lists per node and nothing cyclic.
    with gc_paused():
        return _analyze(nodes, edges, durations)


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic GC while building many small acyclic objects: it would only rescan
    them again and again (a third of the time on big graphs and big workflow files)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _analyze(nodes, edges, durations) -> Analysis:
    nodes = list(nodes)
    n = len(nodes)
    index = {name: i for i, name in enumerate(nodes)}
    if len(index) != n:
        seen: set[str] = set()
        dup = next(x for x in nodes if x in seen or seen.add(x))
        raise ValueError(f"duplicate node {dup!r}")
    succ: list[list[int]] = [[] for _ in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    edges = list(edges)
    try:
        # map() over the dict keeps the per-edge lookups in C.
        ups = list(map(index.__getitem__, [e[0] for e in edges]))
        downs = list(map(index.__getitem__, [e[1] for e in edges]))
    except KeyError as exc:
        up, down = next(e for e in edges if exc.args[0] in e)
        raise ValueError(f"unknown node {exc.args[0]!r} in edge {up!r} -> {down!r}") from None
    for u, v in zip(ups, downs, strict=True):
        succ[u].append(v)
        pred[v].append(u)

    # Kahn by generations. indeg counts edges, so duplicate edges are harmless.
    indeg = [len(p) for p in pred]
    wave = [i for i in range(n) if not indeg[i]]
    waves_i: list[list[int]] = []
    order: list[int] = []
    while wave:
        wave.sort()  # keep input order inside a wave
        waves_i.append(wave)
        order.extend(wave)
        nxt = []
        for u in wave:
            for v in succ[u]:
                indeg[v] -= 1
                if not indeg[v]:
                    nxt.append(v)
        wave = nxt
    if len(order) != n:
        raise CycleError([nodes[i] for i in _find_cycle(pred, indeg)])

    # Longest remaining chain, filled in reverse topological order.
    if durations is None:
        dur = [1.0] * n
    else:
        dur = [float(durations.get(name, 1.0)) for name in nodes]
    rem = [0.0] * n
    for u in reversed(order):
        s = succ[u]
        rem[u] = dur[u] + (max(map(rem.__getitem__, s)) if s else 0.0)

    # The critical path starts at the heaviest node (always a source) and follows the
    # heaviest successor; ties go to the earlier node in input order.
    path: list[int] = []
    if n:
        u = max(range(n), key=lambda i: (rem[i], -i))
        while True:
            path.append(u)
            if not succ[u]:
                break
            u = max(succ[u], key=lambda i: (rem[i], -i))

    name_of = nodes.__getitem__
    waves = [list(map(name_of, w)) for w in waves_i]
    wave_of = {}
    for k, w in enumerate(waves):
        for name in w:
            wave_of[name] = k
    return Analysis(
        nodes=nodes,
        waves=waves,
        wave_of=wave_of,
        width=max(map(len, waves), default=0),
        critical_path=[nodes[i] for i in path],
        critical_length=rem[path[0]] if path else 0.0,
        remaining=dict(zip(nodes, rem, strict=True)),
        upstream=dict(zip(nodes, [list(map(name_of, p)) for p in pred], strict=True)),
        downstream=dict(zip(nodes, [list(map(name_of, s)) for s in succ], strict=True)),
    )


def _find_cycle(pred: list[list[int]], indeg: list[int]) -> list[int]:
    """One cycle among the nodes Kahn could not place, in edge direction, closed.

    Every unplaced node has an unplaced predecessor, so walking predecessors from any of
    them must revisit a node; the revisited stretch is a cycle.
    """
    start = next(i for i, d in enumerate(indeg) if d)
    pos: dict[int, int] = {}
    walk: list[int] = []
    u = start
    while u not in pos:
        pos[u] = len(walk)
        walk.append(u)
        u = next(p for p in pred[u] if indeg[p])
    cycle = walk[pos[u] :][::-1]  # we walked against the edges
    return cycle + [cycle[0]]


def estimate_makespan(analysis: Analysis, durations: Mapping[str, float] | None, slots: int) -> float:
    """Finish time of greedy list scheduling on `slots` slots.

    Same policy as the executor: whenever a slot is free, start the ready node with the
    highest `remaining` (ties: input order).
    """
    if slots < 1:
        raise ValueError("slots must be >= 1")
    pos = {name: i for i, name in enumerate(analysis.nodes)}

    def dur(name: str) -> float:
        return 1.0 if durations is None else float(durations.get(name, 1.0))

    missing = {name: len(ups) for name, ups in analysis.upstream.items()}
    ready = [(-analysis.remaining[name], pos[name], name) for name, m in missing.items() if not m]
    heapq.heapify(ready)
    running: list[tuple[float, int, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < slots:
            _, i, name = heapq.heappop(ready)
            heapq.heappush(running, (now + dur(name), i, name))
        now = running[0][0]
        # Finish everything ending at `now` before dispatching again.
        while running and running[0][0] == now:
            _, _, name = heapq.heappop(running)
            for d in analysis.downstream[name]:
                missing[d] -= 1
                if not missing[d]:
                    heapq.heappush(ready, (-analysis.remaining[d], pos[d], d))
    return now
