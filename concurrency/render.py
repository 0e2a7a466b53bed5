"""A timeline as the endpoint's JSON or CSV body.

Thirty days at minute granularity is 43,201 instants times the templates: several hundred
thousand points, tens of megabytes. A serializer or `json.dumps` over that many dicts takes
seconds; here each point is a join of two cached strings (the instant's prefix and the
template's "name, count" suffix for that count), and zero counts are left out with a C-level
filter. The result is byte for byte what `json.dumps` would write with `separators=(",", ":")`
(`tests/concurrency` checks it).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

from concurrency.selectors import US, Grid, Timeline, from_us

DAY_US = 86400 * US
CSV_HEADER = "timestamp,task_template_name,concurrent_count\r\n"


def timestamps(grid: Grid) -> list[str]:
    """ISO 8601 in UTC with a Z: `2025-05-27T00:01:00Z`, with `.ffffff` only when the
    instants are not whole seconds."""
    first, step, count = grid.first_us, grid.step_us, grid.count
    if first % US or step % US or DAY_US % step:
        return [from_us(first + k * step).replace(tzinfo=None).isoformat() + "Z" for k in range(count)]
    # Every granularity divides a day: the clock times of the instants are the same each day.
    step_s = step // US
    clocks = [
        f"T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
        for second in range(first // US % step_s, 86400, step_s)
    ]
    out: list[str] = []
    k = 0
    while k < count:
        day, second = divmod((first + k * step) // US, 86400)
        today = clocks[second // step_s : second // step_s + count - k]
        out += map((date(1970, 1, 1) + timedelta(days=day)).isoformat().__add__, today)
        k += len(today)
    return out


def _body(prefixes: list[bytes], timeline: Timeline, suffix, head: bytes, tail: bytes, trim: bool) -> bytes:
    """head, then prefix(instant) + suffix(template, count) for every count above zero, by
    instant and then in series order, then tail. With `trim`, the last suffix loses its last
    byte (a separator: JSON has no trailing comma)."""
    columns = []
    for name, values in timeline.series:
        top = max(values, default=0)
        if top <= 0:
            continue
        table = [b""] + [suffix(name, c).encode() for c in range(1, top + 1)]
        if min(values) < 0:  # only an inconsistent audit: shown as zero, i.e. left out
            values = [v if v > 0 else 0 for v in values]
        columns.append(map(table.__getitem__, values))
    if not columns:
        return head + tail
    rows = zip(prefixes, zip(*columns, strict=True), strict=True)
    parts = [head, *(prefix.join((b"", *filter(None, column))) for prefix, column in rows), tail]
    if trim:
        last = next(i for i in range(len(parts) - 2, -1, -1) if parts[i])
        parts[last] = parts[last][:-1]
    return b"".join(parts)


def as_json(timeline: Timeline) -> bytes:
    prefixes = [b'{"timestamp":"%s","task_template_name":' % ts.encode() for ts in timestamps(timeline.grid)]
    suffix = lambda name, c: f'{json.dumps(name)},"concurrent_count":{c}}},'  # noqa: E731
    return _body(prefixes, timeline, suffix, b'{"data":[', b"]}", trim=True)


def _csv_field(text: str) -> str:
    """`text` as the csv module quotes a field (a newline in it too)."""
    out = io.StringIO()
    csv.writer(out).writerow([text])
    return out.getvalue().removesuffix("\r\n")


def as_csv(timeline: Timeline) -> bytes:
    prefixes = [ts.encode() for ts in timestamps(timeline.grid)]
    suffix = lambda name, c: f",{_csv_field(name)},{c}\r\n"  # noqa: E731
    return _body(prefixes, timeline, suffix, CSV_HEADER.encode(), b"", trim=False)
