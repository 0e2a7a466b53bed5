"""The local runner's poll(): attempts started together are reported together.

A fake clock and scripted exits make the timing exact; the runner's real processes are
tested through the executor (tests/executions/test_engine.py)."""

from types import SimpleNamespace

import pytest

from executions.runners import local
from executions.runners.base import Finished

MS = 0.001


class Script:
    """Stands in for LocalRunner._poll: time passes only while it waits, and each attempt
    ends at its scripted time."""

    def __init__(self, runner, ends: dict[str, float]):
        self.runner, self.ends, self.now = runner, dict(ends), 100.0
        self.polls = 0

    def monotonic(self) -> float:
        return self.now

    def poll(self, timeout: float):
        self.polls += 1
        due = min(self.ends.values(), default=float("inf"))
        if due > self.now + timeout:
            self.now += timeout
            return []
        self.now = max(self.now, due)
        done = [h for h, t in self.ends.items() if t <= self.now]
        for handle in done:
            del self.ends[handle]
            self.runner.ended_starts.append(self.runner.attempts.pop(handle).started)
        return [Finished(h, 0) for h in done]


@pytest.fixture
def scripted(monkeypatch):
    runner = local.LocalRunner()

    def start(started: dict[str, float], ends: dict[str, float]) -> Script:
        script = Script(runner, {h: 100.0 + t for h, t in ends.items()})
        runner.attempts = {h: SimpleNamespace(started=100.0 + t) for h, t in started.items()}
        monkeypatch.setattr(runner, "_poll", script.poll)
        monkeypatch.setattr(local.time, "monotonic", script.monotonic)
        return script

    yield runner, start
    runner.attempts = {}
    runner.close()


def handles(events) -> list[str]:
    return sorted(e.handle for e in events if isinstance(e, Finished))


def test_attempts_started_together_are_reported_in_one_poll(scripted):
    runner, start = scripted
    # Started 0-9 ms apart, each ending 200 ms after its start (give or take a little).
    start({"a": 0, "b": 3 * MS, "c": 6 * MS, "d": 9 * MS}, {"a": 0.2, "b": 0.2035, "c": 0.206, "d": 0.2095})
    assert handles(runner.poll(1.0)) == ["a", "b", "c", "d"]


def test_a_longer_attempt_started_with_them_is_not_waited_for(scripted):
    runner, start = scripted
    script = start({"short": 0, "long": 1 * MS}, {"short": 0.2, "long": 1.0})
    assert handles(runner.poll(1.0)) == ["short"]
    # It waited 1 ms (how much later "long" started) plus the gap, no more.
    assert script.now == pytest.approx(100.2 + 1 * MS + local.COALESCE_GAP_SECONDS)
    assert handles(runner.poll(1.0)) == ["long"]


def test_attempts_started_long_after_or_before_are_not_waited_for(scripted):
    runner, start = scripted
    later = local.COALESCE_MAX_SECONDS + 5 * MS
    script = start(
        {"early": -50 * MS, "first": 0, "late": later},
        {"first": 0.2, "early": 0.3, "late": 0.2 + later},
    )
    assert handles(runner.poll(1.0)) == ["first"]
    assert script.now == 100.2  # nothing to wait for: returned at once
