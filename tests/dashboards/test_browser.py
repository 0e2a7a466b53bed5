"""The dashboards in headless Chromium against daphne: every page opens with no script error
and draws its charts; a run started from the admin changes its nodes' colours and counts
without a reload; a gate is approved with its button; the CSV exports."""

from datetime import timedelta

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


def drawn(page, selector):
    return page.eval_on_selector(selector, CANVAS_DRAWN)


def test_every_dashboard_opens_and_draws(page, shots):
    session = populate(3)
    run = session.runs.order_by("id").first()
    steps = list(WaveTask.objects.filter(execution=run).exclude(key="gate"))
    transitions.transition(steps, TaskStatus.QUEUED, expected=TaskStatus.PENDING)
    transitions.transition(steps, TaskStatus.RUNNING, expected=TaskStatus.QUEUED)
    waves = ParallelExecutionWave.objects.filter(execution__session=session, wave_number=0)
    waves.update(started_at=timezone.now() - timedelta(minutes=2))
    base = page.base
    page.goto(base + "/admin/")
    assert page.locator("#dashboards a").count() == 4

    page.goto(f"{base}/admin/dashboards/runs/{run.pk}/")
    page.wait_for_selector("#tw-run[data-ready='1']")
    page.wait_for_function("Chart.getChart(document.getElementById('tw-gantt'))")
    assert page.locator(".tw-node").count() == run.wave_tasks.count()
    chart = drawn(page, "#tw-gantt")
    assert chart["datasets"] == 2 and chart["painted"] > 0

    page.goto(f"{base}/admin/dashboards/concurrency/?execution={run.pk}")
    page.wait_for_selector("#tw-concurrency[data-drawn]")
    chart = drawn(page, "#tw-concurrency-chart")
    assert chart["datasets"] >= 2 and chart["painted"] > 0  # the templates, and the run's limit
    page.check("input[name=total]")
    assert drawn(page, "#tw-concurrency-chart")["datasets"] == 2  # the total, and the limit

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
    bars = page.evaluate("Chart.getChart(document.getElementById('tw-waves-chart')).data.datasets[0].data.length")
    assert bars == 3  # wave 0 of each of the three runs
    page.screenshot(path=shots / "wave-timeline.png", full_page=True)
    assert page.errors == []
