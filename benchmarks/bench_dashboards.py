#!/usr/bin/env python
"""Dashboards benchmark, measured in headless Chromium (Debian's /usr/bin/chromium) against daphne.

    .venv/bin/python benchmarks/bench_dashboards.py [--tasks 1000] [--points 20000] [--updates 40]

Not a test: it prints figures and never fails on one. It makes a fresh SQLite database in its own
TIDEWATCH_VAR_DIR, migrates, lays out a run of --tasks steps in 5 waves (pending, no executor),
starts daphne on a free port and logs a superuser into the admin. Times are the page's own
(performance.now(), from the start of the navigation), median of --repeat loads:

- **concurrency first paint**: the concurrency timeline page with a chart of --points points (10
  templates x points/10 instants, stacked): from navigation to the end of the first draw. The
  chart's JSON is served by the browser (page.route) so that only the page's work is timed; the
  server's side of the timeline has its own benchmark (bench_concurrency.py).
- **run view interactive**: the run view of --tasks steps: from navigation to the snapshot drawn
  (every node in its wave, counts, approvals), and to the Gantt drawn; then how long a click on
  the page waits for the main thread.
- **live update applied**: --updates status changes committed one at a time by this process
  (queued, then running); for each websocket message, from its arrival in the page to the end of
  its handler (nodes, counts, Gantt scheduled), and to the next frame painted. Target: 100 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TIDEWATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
WATCH = """
window.twLags = [];
const Native = window.WebSocket;
window.WebSocket = function (url, protocols) {
  const ws = new Native(url, protocols);
  ws.addEventListener("message", () => {
    const arrived = performance.now();
    setTimeout(() => {  // after every listener of this message, the page's included
      const applied = window.twLastApplied || arrived;
      requestAnimationFrame(() => window.twLags.push([applied - arrived, performance.now() - arrived]));
    }, 0);
  });
  return ws;
};
window.WebSocket.prototype = Native.prototype;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def since_navigation(page, mark: str) -> float:
    return page.evaluate(f"performance.getEntriesByName('{mark}')[0].startTime")


def lay_out(tasks: int):
    from django.contrib.auth.models import User

    from executions import services
    from waves.models import Task, TaskDependency, TaskList, TaskTemplate

    User.objects.create_superuser("bench", password="bench-pw")
    template = TaskTemplate.objects.create(name="bench")
    tl = TaskList.objects.create(title="bench-1000", max_parallelism=50)
    width = max(1, tasks // 5)
    rows = Task.objects.bulk_create(
        Task(task_list=tl, key=f"t{i:04d}", title=f"T{i}", template=template, command="true", position=i)
        for i in range(tasks)
    )
    TaskDependency.objects.bulk_create(
        TaskDependency(task=rows[i], depends_on=rows[i - width]) for i in range(width, tasks)
    )
    return services.run_start(tl, simulate=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="tw-bench-dash-"))
    os.environ.update(
        TIDEWATCH_VAR_DIR=str(var),
        DATABASE_URL=f"sqlite:///{var / 'bench.sqlite3'}",
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_ALLOW_ASYNC_UNSAFE="true",  # playwright's sync API runs a loop in this thread
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from executions import transitions
    from executions.models import TaskStatus, WaveTask

    call_command("migrate", verbosity=0)
    run = lay_out(args.tasks)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(var / "daphne.log", "wb")
    daphne = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(base + "/admin/login/", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(base + "/admin/login/")
            page.fill("#id_username", "bench")
            page.fill("#id_password", "bench-pw")
            page.click("input[type=submit]")
            page.wait_for_url(base + "/admin/")
            print(f"Chromium {browser.version}, {os.cpu_count()} cores; SQLite, daphne, in-memory layer")

            # Concurrency: the first draw of `points` points.
            per = args.points // 10
            start = 1_700_000_000_000
            labels = ",".join(str(start + 60_000 * k) for k in range(per))
            series = ",".join(
                f'{{"label":"template-{s}","data":[{",".join(str((k * (s + 3)) % 7) for k in range(per))}],'
                f'"backgroundColor":"rgba(102,194,165,0.75)","borderColor":"#66c2a5","fill":true,"pointRadius":0}}'
                for s in range(10)
            )
            body = f'{{"labels":[{labels}],"datasets":[{series}],"granularity":"minute","limit":null}}'
            page.route(
                "**/dashboards/concurrency.json*",
                lambda route: route.fulfill(body=body, content_type="application/json"),
            )
            paints = []
            for _ in range(args.repeat):
                page.goto(base + "/admin/dashboards/concurrency/")
                page.wait_for_selector("#tw-concurrency[data-drawn]")
                paints.append(since_navigation(page, "tw-drawn"))
                count = page.evaluate(
                    "Chart.getChart(document.getElementById('tw-concurrency-chart')).data.datasets"
                    ".reduce((n, d) => n + d.data.length, 0)"
                )
            page.unroute("**/dashboards/concurrency.json*")
            print(f"concurrency first paint, {count:,} points: median {statistics.median(paints):.0f} ms "
                  f"(runs: {', '.join(f'{x:.0f}' for x in paints)}); target < 1000 ms")  # fmt: skip

            # Run view: 1,000 nodes, then the Gantt; then a click's wait for the main thread.
            ready, gantt, clicks = [], [], []
            for _ in range(args.repeat):
                page.goto(f"{base}/admin/dashboards/runs/{run.pk}/")
                page.wait_for_selector("#tw-run[data-ready='1']")
                page.wait_for_function("performance.getEntriesByName('tw-gantt').length > 0")
                ready.append(since_navigation(page, "tw-ready"))
                gantt.append(since_navigation(page, "tw-gantt"))
                nodes = page.locator(".tw-node").count()
                t0 = time.perf_counter()
                page.click("#tw-run-status")
                clicks.append((time.perf_counter() - t0) * 1000)
            print(f"run view, {nodes} nodes: drawn at median {statistics.median(ready):.0f} ms, Gantt at "
                  f"{statistics.median(gantt):.0f} ms, a click then answered in {statistics.median(clicks):.0f} ms "
                  f"(round trip through playwright); target interactive < 1000 ms")  # fmt: skip

            # Live: status changes committed here, applied in the page.
            browser_page = browser.new_page(viewport={"width": 1400, "height": 1000})
            browser_page.add_init_script(WATCH)
            browser_page.context.add_cookies(page.context.cookies())
            browser_page.goto(f"{base}/admin/dashboards/runs/{run.pk}/")
            browser_page.wait_for_selector("#tw-run[data-ready='1']")
            steps = list(
                WaveTask.objects.filter(execution=run, wave__wave_number=1).order_by("id")[: args.updates]
            )
            for wt in steps:
                transitions.transition([wt], TaskStatus.QUEUED, expected=TaskStatus.PENDING)
                time.sleep(0.05)
                transitions.transition([wt], TaskStatus.RUNNING, expected=TaskStatus.QUEUED)
                time.sleep(0.05)
            browser_page.wait_for_function(
                f"document.querySelectorAll('.tw-node.st-running').length >= {len(steps)}"
            )
            browser_page.wait_for_timeout(500)
            lags = browser_page.evaluate("window.twLags")
            handler = sorted(a for a, _ in lags)
            frame = sorted(b for _, b in lags)

            def pct(xs, q):
                return xs[min(len(xs) - 1, int(q * len(xs)))]

            print(f"live updates, {len(lags)} messages: arrival -> applied p50 {pct(handler, .5):.1f} ms, "
                  f"p95 {pct(handler, .95):.1f}, max {handler[-1]:.1f}; arrival -> next frame p50 "
                  f"{pct(frame, .5):.1f} ms, p95 {pct(frame, .95):.1f}, max {frame[-1]:.1f}; target < 100 ms")  # fmt: skip
            browser.close()
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
        log.close()


if __name__ == "__main__":
    main()
