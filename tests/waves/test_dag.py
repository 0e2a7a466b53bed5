"""waves.dag: waves, cycles, critical path and the schedule estimate (no database)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waves.dag import CycleError, analyze, estimate_makespan


@st.composite
def dags(draw, max_nodes=30):
    n = draw(st.integers(1, max_nodes))
    nodes = [f"n{i}" for i in draw(st.permutations(range(n)))]
    # Edges only from lower to higher position: acyclic by construction.
    pairs = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4 * n))
    edges = [(nodes[a], nodes[b]) for a, b in pairs if a < b]
    return nodes, edges


@given(dags())
def test_every_edge_goes_from_a_lower_wave_to_a_higher_one(graph):
    nodes, edges = graph
    a = analyze(nodes, edges)
    assert sorted(k for w in a.waves for k in w) == sorted(nodes)
    for up, down in edges:
        assert a.wave_of[up] < a.wave_of[down]


@given(dags())
def test_a_tasks_wave_is_one_more_than_its_latest_dependency(graph):
    nodes, edges = graph
    a = analyze(nodes, edges)
    for node in nodes:
        ups = a.upstream[node]
        assert a.wave_of[node] == (1 + max(a.wave_of[u] for u in ups) if ups else 0)


@given(dags(), st.data())
def test_a_planted_cycle_is_always_found_and_is_a_real_cycle(graph, data):
    nodes, edges = graph
    length = data.draw(st.integers(1, min(len(nodes), 6)))
    ring = data.draw(st.permutations(nodes))[:length]
    planted = [(ring[i], ring[(i + 1) % length]) for i in range(length)]
    all_edges = set(edges) | set(planted)
    with pytest.raises(CycleError) as info:
        analyze(nodes, list(all_edges))
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and len(cycle) >= 2
    for up, down in zip(cycle, cycle[1:], strict=False):
        assert (up, down) in all_edges
    assert str(info.value) == "cycle: " + " -> ".join(cycle)


@settings(max_examples=50)
@given(dags(), st.integers(1, 5))
def test_makespan_lies_between_the_critical_path_and_the_serial_total(graph, slots):
    nodes, edges = graph
    durations = {n: float(i % 4 + 1) for i, n in enumerate(nodes)}
    a = analyze(nodes, edges, durations)
    total = estimate_makespan(a, durations, slots)
    assert a.critical_length <= total <= sum(durations.values())
    assert estimate_makespan(a, durations, len(nodes)) == a.critical_length


def test_seed_002_three_fetches_then_a_report_gives_two_waves():
    a = analyze(
        ["fetch_user_data", "fetch_product_data", "fetch_inventory_data", "generate_report"],
        [(f, "generate_report") for f in ("fetch_user_data", "fetch_product_data", "fetch_inventory_data")],
    )
    assert a.waves == [["fetch_user_data", "fetch_product_data", "fetch_inventory_data"], ["generate_report"]]
    assert a.width == 3


def test_waves_keep_input_order():
    a = analyze(["z", "y", "x", "w"], [("x", "w"), ("z", "w")])
    assert a.waves == [["z", "y", "x"], ["w"]]


def test_critical_path_follows_the_heaviest_chain():
    d = {"a": 1, "b": 5, "c": 1, "d": 2}
    a = analyze(["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], d)
    assert a.critical_path == ["a", "b", "d"]
    assert a.critical_length == 8
    assert a.remaining == {"a": 8, "b": 7, "c": 3, "d": 2}


def test_without_durations_every_node_weighs_one():
    a = analyze(["a", "b", "c"], [("a", "b"), ("b", "c")])
    assert a.critical_length == 3 and a.critical_path == ["a", "b", "c"]


def test_ancestors_and_descendants():
    a = analyze(["a", "b", "c", "d"], [("a", "b"), ("b", "c")])
    assert a.ancestors("c") == {"a", "b"}
    assert a.descendants("a") == {"b", "c"}
    assert a.descendants("d") == set()


def test_seed_002_speedup_four_seconds_instead_of_eight():
    d = {"a": 2, "b": 2, "c": 2, "d": 2}
    a = analyze(list(d), [("a", "d"), ("b", "d"), ("c", "d")], d)
    assert estimate_makespan(a, d, 4) == 4
    assert estimate_makespan(a, d, 1) == 8


def test_makespan_dispatches_the_longest_remaining_path_first():
    # With one slot free at a time, starting "long" first lets "tail" overlap "short".
    d = {"short": 1, "long": 1, "tail": 5}
    a = analyze(["short", "long", "tail"], [("long", "tail")], d)
    assert estimate_makespan(a, d, 2) == 6
    assert estimate_makespan(a, d, 1) == 7


def test_unknown_node_in_an_edge_is_named():
    with pytest.raises(ValueError, match="unknown node 'ghost'"):
        analyze(["a"], [("a", "ghost")])


def test_self_loop_is_a_cycle():
    with pytest.raises(CycleError, match="cycle: a -> a"):
        analyze(["a"], [("a", "a")])
