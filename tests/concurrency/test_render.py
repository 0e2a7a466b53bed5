"""The bodies concurrency.render builds by joining cached strings are exactly what the JSON
and CSV libraries would write."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from concurrency.render import as_csv, as_json, timestamps
from concurrency.selectors import Grid, Timeline

NAMES = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12)


@st.composite
def timelines(draw) -> Timeline:
    start = datetime(2025, 5, 27, tzinfo=UTC).replace(microsecond=draw(st.sampled_from([0, 0, 250_000])))
    grid = Grid.explicit(
        start, start.replace(minute=draw(st.integers(0, 20))), draw(st.sampled_from(["30s", "minute"]))
    )
    names = draw(st.lists(NAMES, max_size=5, unique=True))
    series = [
        (name, draw(st.lists(st.integers(-1, 12), min_size=grid.count, max_size=grid.count)))
        for name in names
    ]
    return Timeline(grid, series)


def expected_points(timeline: Timeline) -> list[dict]:
    stamps = timestamps(timeline.grid)
    return [
        {"timestamp": stamps[k], "task_template_name": name, "concurrent_count": values[k]}
        for k in range(timeline.grid.count)
        for name, values in timeline.series
        if values[k] > 0
    ]


@given(timelines())
def test_json_is_what_json_dumps_writes(timeline):
    assert (
        as_json(timeline) == json.dumps({"data": expected_points(timeline)}, separators=(",", ":")).encode()
    )


@given(timelines())
def test_csv_is_what_the_csv_module_writes(timeline):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["timestamp", "task_template_name", "concurrent_count"])
    for p in expected_points(timeline):
        writer.writerow([p["timestamp"], p["task_template_name"], p["concurrent_count"]])
    assert as_csv(timeline) == out.getvalue().encode()


def test_timestamps_are_utc_with_a_z():
    grid = Grid.explicit(
        datetime(2025, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC), "minute"
    )
    assert timestamps(grid) == ["2025-12-31T23:59:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"]
    odd = Grid.explicit(
        datetime(2025, 1, 1, 0, 0, 0, 5, tzinfo=UTC), datetime(2025, 1, 1, 0, 1, tzinfo=UTC), "30s"
    )
    assert timestamps(odd) == ["2025-01-01T00:00:00.000005Z", "2025-01-01T00:00:30.000005Z"]
