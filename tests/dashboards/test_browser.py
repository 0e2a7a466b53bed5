"""The dashboards in headless Chromium against daphne: every page opens with no script error
and draws its charts; a run started from the admin changes its nodes' colours and counts
without a reload; a gate is approved with its button; the CSV exports."""

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from executions import transitions
from executions.models import ParallelExecutionWave, TaskStatus, WaveTask
from tests.admin_fixtures import populate

pytestmark = pytest.mark.slow

CANVAS_DRAWN = """(canvas) => {
  const chart = Chart.getChart(canvas);
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
  return { datasets: chart ? chart.data.datasets.length : -1, painted };
}"""


LABELS = "Chart.getChart(document.getElementById('tw-concurrency-chart')).data.datasets.map((d) => d.label)"


def drawn(page, selector):
    return page.eval_on_selector(selector, CANVAS_DRAWN)


def test_every_dashboard_opens_and_draws(page, shots):
    session = populate(3)
    run = session.runs.order_by("id").first()
    steps = list(WaveTask.objects.filter(execution=run).exclude(key="gate"))
    # Two minutes ago: at the concurrency chart's last instants (a whole minute, before now).
    started = timezone.now() - timedelta(minutes=2)
    transitions.transition(steps, TaskStatus.QUEUED, expected=TaskStatus.PENDING, now=started)
    transitions.transition(steps, TaskStatus.RUNNING, expected=TaskStatus.QUEUED, now=started)
    waves = ParallelExecutionWave.objects.filter(execution__session=session, wave_number=0)
    waves.update(started_at=started)
    base = page.base
    page.goto(base + "/admin/")
    assert page.locator("#dashboards a").count() == 4

    page.goto(f"{base}/admin/dashboards/runs/{run.pk}/")
    page.wait_for_selector("#tw-run[data-ready='1']")
    page.wait_for_function("Chart.getChart(document.getElementById('tw-gantt'))")
    assert page.locator(".tw-node").count() == run.wave_tasks.count()
    chart = drawn(page, "#tw-gantt")
    assert chart["datasets"] == 2 and chart["painted"] > 0
    ticks = page.evaluate(
        "Chart.getChart(document.getElementById('tw-gantt')).scales.x.ticks.map((t) => t.label)"
    )
    assert ticks and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", t) for t in ticks), ticks  # 24-hour, compact
    page.emulate_media(color_scheme="dark")  # the admin's dark theme: the same page, its variables
    page.reload()
    page.wait_for_selector("#tw-run[data-ready='1']")
    page.wait_for_function("Chart.getChart(document.getElementById('tw-gantt'))")
    page.screenshot(path=shots / "run-view-dark.png", full_page=True)
    page.emulate_media(color_scheme="light")
    page.wait_for_function("Chart.defaults.color === '#666'")  # the light theme's quiet colour
    page.evaluate("document.documentElement.dataset.theme = 'dark'")  # what the admin's toggle does
    page.wait_for_function("Chart.defaults.color === '#d0d0d0'")  # the dark theme's
    page.evaluate("document.documentElement.dataset.theme = 'auto'")

    page.goto(f"{base}/admin/dashboards/concurrency/?execution={run.pk}")
    page.wait_for_selector("#tw-concurrency[data-drawn]")
    chart = drawn(page, "#tw-concurrency-chart")
    assert chart["datasets"] >= 2 and chart["painted"] > 0  # the templates, and the run's limit
    assert page.input_value("select[name=agg]") == "sample"
    assert page.locator("#tw-peak-note").is_hidden()
    # Peaks: the templates' peaks, the peak of all of them together (a line), and the limit.
    page.select_option("select[name=agg]", "max")
    page.wait_for_function(LABELS + ".includes('peak, all templates')")
    labels = page.evaluate(LABELS)
    assert len(labels) >= 3 and labels[-2:] == ["peak, all templates", "parallelism limit"], labels
    assert page.locator("#tw-peak-note").is_visible()
    page.check("input[name=total]")
    page.wait_for_function(LABELS + ".join() === 'Total,parallelism limit'")  # the total, and the limit
    assert page.locator("#tw-peak-note").is_hidden()

    page.goto(base + "/admin/dashboards/")
    page.wait_for_selector("#tw-fleet[data-ready='1']")
    page.wait_for_selector("#tw-concurrency[data-drawn]")
    assert page.locator("#tw-runs .tw-card").count() == 3
    assert drawn(page, "#tw-fleet-chart")["painted"] > 0

    page.goto(base + "/admin/dashboards/agents/")
    page.wait_for_selector("#tw-agents[data-ready='1']")
    assert page.locator(".tw-agents li").count() > 0

    page.goto(f"{base}/admin/dashboards/waves/{session.pk}/")
    page.wait_for_selector("#tw-waves-timeline[data-drawn]")
    chart = drawn(page, "#tw-waves-chart")
    assert chart["datasets"] == 1 and chart["painted"] > 0
    bars = page.evaluate(
        "Chart.getChart(document.getElementById('tw-waves-chart')).data.datasets[0].data.length"
    )
    assert bars == 3  # wave 0 of each of the three runs
    page.screenshot(path=shots / "wave-timeline.png", full_page=True)
    assert page.errors == []


WORKFLOW = """\
name: browser-run
max_parallelism: 2
steps:
  - id: first
    template: build
    run: sleep 1
  - id: second
    template: build
    run: sleep 1
  - id: third
    template: check
    depends_on: [first, second]
    run: sleep 1
  - id: publish
    template: ship
    depends_on: third
    approval: true
    run: "true"
"""


def test_a_run_started_from_the_admin_goes_live_and_its_gate_is_approved(page, shots, tmp_path):
    from django.core.management import call_command

    from executions import services
    from executions.models import ExecutionRun, RunStatus

    path = tmp_path / "browser-run.yaml"
    path.write_text(WORKFLOW)
    call_command("import_tasklist", str(path), stdout=open("/dev/null", "w"))
    base = page.base
    try:
        # "Run now" from the task lists' page, through its form, to the live run view.
        page.goto(base + "/admin/waves/tasklist/")
        page.check("input[name=_selected_action]")
        page.select_option("select[name=action]", "run_now")
        page.click("button[name=index]")
        page.fill("#id_max_parallelism", "2")
        page.select_option("#id_schedule", "fifo")
        page.click("#tw-run-now input[type=submit]")
        page.wait_for_selector("#tw-run[data-ready='1']")
        run = ExecutionRun.objects.get(task_list__title="browser-run")
        assert page.url.endswith(f"/admin/dashboards/runs/{run.pk}/")
        page.evaluate("window.twMarker = 'same page'")
        assert page.locator(".tw-node").count() == 4

        # Nodes change colour and counts move, with no reload.
        page.wait_for_selector(".tw-node.st-running, .tw-node.st-succeeded", timeout=60_000)
        page.wait_for_function("Number(document.getElementById('tw-done').textContent) >= 3", timeout=60_000)
        page.wait_for_selector("#tw-approvals:not([hidden]) button.tw-approve", timeout=60_000)
        assert page.evaluate("window.twMarker") == "same page"
        assert page.locator(".tw-node.st-succeeded").count() == 3
        assert page.locator(".tw-node.st-waiting_approval").count() == 1
        page.wait_for_function("Chart.getChart(document.getElementById('tw-gantt')).data.labels.length >= 3")
        assert page.evaluate("Chart.getChart(document.getElementById('tw-gantt')).data.datasets.length") == 2
        page.screenshot(path=shots / "run-view.png", full_page=True)

        # The gate's button approves it; the run then succeeds, live.
        page.click("button.tw-approve")
        page.wait_for_selector("#tw-run[data-ready='1']")
        page.wait_for_function(
            "document.getElementById('tw-run-status').textContent === 'succeeded'", timeout=60_000
        )
        assert page.locator(".tw-node.st-succeeded").count() == 4

        # The concurrency timeline of the run exports its CSV.
        page.goto(f"{base}/admin/dashboards/concurrency/?execution={run.pk}&workflow={run.task_list_id}")
        page.wait_for_selector("#tw-concurrency[data-drawn]")
        page.select_option("select[name=time_range]", "1h")
        page.select_option("select[name=granularity]", "30s")
        page.select_option("select[name=agg]", "max")  # its steps ran a second each: between instants
        page.wait_for_function(
            "Chart.getChart(document.getElementById('tw-concurrency-chart')).data.datasets"
            ".some((d) => d.label === 'peak, all templates')"
        )
        with page.expect_download() as download:
            page.click("#tw-csv")
        text = open(download.value.path()).read()
        assert text.startswith("timestamp,task_template_name,concurrent_count")
        assert "build" in text, (page.get_attribute("#tw-csv", "href"), text)
        page.screenshot(path=shots / "concurrency.png", full_page=True)

        # The list's page draws its plan as a Mermaid graph.
        page.goto(f"{base}/admin/waves/tasklist/{run.task_list_id}/change/")
        page.wait_for_selector(".tw-mermaid[data-drawn] svg")
        assert page.locator(".tw-mermaid svg .node").count() == 4
        assert page.errors == []
    finally:
        for left in ExecutionRun.objects.filter(status__in=[RunStatus.PENDING, RunStatus.RUNNING]):
            services.run_request_cancel(left, actor="test")
        for pid in ExecutionRun.objects.exclude(executor_pid=None).values_list("executor_pid", flat=True):
            wait_for_exit(pid)


def wait_for_exit(pid: int, timeout: float = 30) -> None:
    """Until the executor process `pid` (the server's child, not ours) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
