"""The local runner on its own, with real processes: what it reports, what it keeps within
the caps, what it hides from a task, and what an attempt leaves in its work directory."""

import json
import time

import pytest

from executions.runners import attempt_result
from executions.runners.base import Finished, LaunchSpec, Output, Started
from executions.runners.local import LocalRunner
from executions.runners.workdir import ENV_VALUE_MAX_BYTES, attempt_dir


@pytest.fixture
def work(settings, tmp_path):
    settings.TIDEWATCH = {**settings.TIDEWATCH, "WORK_DIR": tmp_path / "work"}
    return settings


@pytest.fixture
def runner(work):
    made = []

    def make() -> LocalRunner:
        made.append(LocalRunner())
        return made[-1]

    yield make
    for r in made:
        r.close()


def run_one(runner: LocalRunner, command: str, *, key="t", attempt=1, timeout=30.0, **spec) -> list:
    runner.launch(LaunchSpec(run_id=7, key=key, attempt=attempt, command=command, **spec))
    events, deadline = [], time.monotonic() + timeout
    while not any(isinstance(e, Finished) for e in events):
        assert time.monotonic() < deadline, f"no Finished after {timeout}s: {events[-5:]}"
        events += runner.poll(0.05)
    return events


def finished(events) -> Finished:
    return next(e for e in events if isinstance(e, Finished))


def lines(events, stream="stdout") -> list[str]:
    return [e.text for e in events if isinstance(e, Output) and e.stream == stream]


def test_start_is_reported_at_the_next_poll_with_its_time_and_end_with_its_own(runner):
    r = runner()
    before = time.time()
    events = run_one(r, "echo hi; sleep 0.2")
    start = next(e for e in events if isinstance(e, Started))
    end = finished(events)
    assert start.pid > 0 and start.hostname and before <= start.at <= end.at
    assert end.at - start.at >= 0.15  # the start is stamped once Popen returns, a little after exec
    assert (end.exit_code, lines(events)) == (0, ["hi"])


def test_an_attempt_that_cannot_start_finishes_with_the_reason_and_launch_does_not_raise(runner):
    r = runner()
    events = run_one(r, "echo " + "x" * (200 * 1024))  # one argument longer than Linux allows
    end = finished(events)
    assert end.exit_code is None
    assert end.error.startswith("could not start: ") and "too long" in end.error
    assert not any(isinstance(e, Started) for e in events)


def test_the_executors_secrets_never_reach_a_task(runner, work, monkeypatch):
    for name in ("DATABASE_URL", "SECRET_KEY", "REDIS_URL", "CELERY_BROKER_URL", "PGPASSWORD", "AWS_TOKEN"):
        monkeypatch.setenv(name, "s3cret")
    monkeypatch.setenv("HARMLESS", "visible")
    work.TIDEWATCH = {**work.TIDEWATCH, "ENV_DENY": ["AWS_*"]}
    events = run_one(runner(), "env", env={"OWN": "mine"})
    seen = dict(line.split("=", 1) for line in lines(events) if "=" in line)
    assert "s3cret" not in seen.values()
    assert seen["HARMLESS"] == "visible" and seen["OWN"] == "mine"
    assert {"TIDEWATCH_OUTPUT", "TIDEWATCH_INPUTS", "TIDEWATCH_EVENTS", "TIDEWATCH_WORK_DIR"} <= seen.keys()


def test_inputs_go_to_a_file_and_to_variables_when_they_fit(runner):
    big = "y" * (ENV_VALUE_MAX_BYTES + 1)
    events = run_one(
        runner(),
        'printf "%s|" "$TIDEWATCH_INPUT_SMALL_ONE"; test -z "${TIDEWATCH_INPUT_BIG+set}" && echo nobig;'
        ' python3 -c "import json,os; print(len(json.load(open(os.environ[\'TIDEWATCH_INPUTS\']))[\'big\']))"',
        inputs={"small-one": {"n": 1}, "big": big},
    )
    assert finished(events).exit_code == 0
    assert lines(events) == ['{"n": 1}|nobig', str(len(big))]
    assert any("'big'" in note and "$TIDEWATCH_INPUTS" in note for note in lines(events, "system"))


def test_transcript_volume_is_capped_per_attempt_with_a_count_of_what_was_dropped(runner, work):
    work.TIDEWATCH = {**work.TIDEWATCH, "TRANSCRIPT_MAX_BYTES": 4096}
    r = runner()
    events = run_one(r, "yes 0123456789012345678 | head -n 100000")  # 2,000,000 bytes
    kept = lines(events)
    assert finished(events).exit_code == 0
    assert 4096 / 20 <= len(kept) <= 4096 / 20 + 1
    (note,) = lines(events, "system")
    dropped = 100000 - len(kept)
    assert f"{dropped} line(s), {dropped * 20} bytes of output dropped" in note and "4096-byte cap" in note
    # The next attempt has its own budget.
    assert len(lines(run_one(r, "echo again", attempt=2))) == 1


def test_event_lines_are_capped_in_count_and_length(runner, work):
    work.TIDEWATCH = {**work.TIDEWATCH, "EVENTS_MAX_LINES": 5, "EVENT_LINE_MAX_BYTES": 256}
    events = run_one(
        runner(),
        'for i in 1 2 3; do echo "{\\"n\\": $i}" >> "$TIDEWATCH_EVENTS"; done;'
        ' head -c 100000 /dev/zero | tr "\\0" a >> "$TIDEWATCH_EVENTS"; echo >> "$TIDEWATCH_EVENTS";'
        ' for i in 4 5 6 7 8; do echo "{\\"n\\": $i}" >> "$TIDEWATCH_EVENTS"; done',
    )
    end = finished(events)
    assert end.events == [json.dumps({"n": i}) for i in range(1, 6)]
    notes = lines(events, "system")
    assert any("1 event line(s) longer than 256 bytes dropped" in n for n in notes)
    assert any("3 event line(s) past the cap of 5 lines" in n for n in notes)


def test_outputs_over_the_cap_or_not_storable_are_refused_with_the_reason(runner, work):
    work.TIDEWATCH = {**work.TIDEWATCH, "OUTPUT_MAX_BYTES": 1024}
    r = runner()
    big = finished(run_one(r, 'printf \'{"a": "%s"}\' $(head -c 2000 /dev/zero | tr "\\0" a) > "$TIDEWATCH_OUTPUT"'))
    assert big.outputs is None and "larger than the 1024-byte cap" in big.output_error
    nul = finished(run_one(r, 'printf \'{"a": "x\\\\u0000y"}\' > "$TIDEWATCH_OUTPUT"', attempt=2))
    assert nul.outputs is None and "NUL" in nul.output_error
    huge = finished(run_one(r, 'echo \'{"a": 1e309}\' > "$TIDEWATCH_OUTPUT"', attempt=3))
    assert huge.outputs is None and "out of range" in huge.output_error


def test_an_attempt_leaves_its_exit_status_and_outputs_and_a_stopped_one_leaves_none(runner):
    r = runner()
    run_one(r, 'echo \'{"n": 5}\' > "$TIDEWATCH_OUTPUT"; exit 0', key="done[1]")
    assert (attempt_dir(7, "done[1]", 1) / ".exitcode").read_text() == "0\n"
    result = attempt_result("local", 7, "done[1]", 1)
    assert (result.exit_code, result.outputs, result.output_error) == (0, {"n": 5}, None)
    assert attempt_result("local", 7, "done[1]", 2) is None
    # "done_1_" is another step: its directory is another one.
    assert attempt_dir(7, "done_1_", 1) != attempt_dir(7, "done[1]", 1)

    r.launch(LaunchSpec(run_id=7, key="stopped", attempt=1, command="sleep 30"))
    r.poll(0.1)
    r.terminate("stopped#1")
    events = []
    while not any(isinstance(e, Finished) for e in events):
        events += r.poll(0.05)
    assert finished(events).cancelled
    assert attempt_result("local", 7, "stopped", 1) is None


def test_an_exit_status_is_passed_on_unchanged(runner):
    r = runner()
    assert finished(run_one(r, "exit 3")).exit_code == 3
    assert attempt_result("local", 7, "t", 1).exit_code == 3
    assert finished(run_one(r, "kill -TERM $$", attempt=2)).exit_code == -15  # as `sh -c` reports it


def test_a_task_cannot_read_the_executors_stdin_or_tty(runner):
    events = run_one(runner(), "cat; echo read-nothing", timeout=10)
    assert lines(events) == ["read-nothing"]
