/* The concurrency timeline: stacked areas per template (the same x for every series, zeros
   kept, "Other" folded by the server), a total-only toggle (the server's group=total), legend isolate, zoom and pan that
   fetch a finer resolution, PNG and CSV export, the run's parallelism limit as a line, and a
   refresh when tasks change (ws/dashboard/). TW.concurrency(root) makes one; the fleet uses it too.
   With agg=max each template's area is its own peak in the bucket, and peaks of different
   templates need not coincide: their stack may exceed anything that ran at once. So a line,
   "peak, all templates" (group=total&agg=max: the peak of the total), is drawn over them. */
"use strict";
(function () {
  const SECONDS = { "30s": 30, minute: 60, "5m": 300, "1h": 3600 };
  const MAX_POINTS = 2000; // instants fetched for a zoomed window

  TW.concurrency = function (root, { live = true } = {}) {
    const form = root.querySelector("#tw-filters");
    const canvas = root.querySelector("canvas");
    const info = root.querySelector("#tw-info");
    const csv = root.querySelector("#tw-csv");
    let chart = null;
    let win = null; // [start, end] ms of a zoomed or panned window, else null (the form's range)

    const field = (name) => (form ? form.elements[name] : null);
    const value = (name, fallback) => (field(name) ? field(name).value : fallback);
    const totalOnly = () => Boolean(field("total") && field("total").checked);
    const note = root.querySelector("#tw-peak-note");

    function params() {
      const q = new URLSearchParams();
      const iso = (v) => new Date(v).toISOString().replace(".000Z", "Z");
      if (win) {
        q.set("start", iso(win[0]));
        q.set("end", iso(win[1]));
      } else if (value("time_range", "6h")) {
        q.set("time_range", value("time_range", "6h"));
      } else if (value("start")) {
        q.set("start", value("start") + ":00Z");
        if (value("end")) q.set("end", value("end") + ":00Z");
      } else {
        q.set("time_range", "6h");
      }
      q.set("granularity", value("granularity", "minute"));
      for (const name of ["template", "status"]) if (value(name)) q.set(name, value(name));
      q.set("agg", value("agg", "sample"));
      if (totalOnly()) q.set("group", "total");
      if (root.dataset.execution) q.set("execution", root.dataset.execution);
      return q;
    }

    function csvUrl(q) {
      const workflow = value("workflow");
      const base = workflow ? root.dataset.api.replace("task_concurrency", "workflow/" + workflow + "/task_concurrency") : root.dataset.api;
      const c = new URLSearchParams(q);
      c.set("format", "csv");
      return base + "?" + c;
    }

    function isolate(e, item, legend) {
      const c = legend.chart;
      const i = item.datasetIndex;
      const others = c.data.datasets.map((_, k) => k).filter((k) => k !== i && !c.data.datasets[k].stack);
      const alone = others.every((k) => !c.isDatasetVisible(k)) && c.isDatasetVisible(i);
      for (const k of others) c.setDatasetVisibility(k, alone);
      c.setDatasetVisibility(i, true);
      c.update();
    }

    let quiet = false; // resetZoom() also calls onZoomComplete: not a user's zoom
    function unzoom() {
      win = null;
      if (!chart) return;
      quiet = true;
      chart.resetZoom("none");
      quiet = false;
    }

    function zoomed({ chart: c }) {
      if (quiet) return;
      const { min, max } = c.scales.x;
      let g = "1h";
      for (const [name, s] of Object.entries(SECONDS)) {
        if ((max - min) / 1000 / s <= MAX_POINTS) { g = name; break; }
      }
      if (field("granularity")) field("granularity").value = g;
      win = [min, max];
      clearTimeout(zoomed.timer);
      zoomed.timer = setTimeout(load, 250);
    }

    // data: the chart view's body; peak: the group=total&agg=max body when the areas are
    // per-template peaks (its one series becomes a line on a stack of its own), else null.
    function datasets(data, peak) {
      let sets = data.datasets.map((d, i) => ({ ...d, fill: i === 0 ? "origin" : "-1" }));
      if (peak && peak.datasets.length) {
        sets.push({ label: "peak, all templates", data: peak.datasets[0].data, stack: "total", fill: false,
          borderColor: Chart.defaults.color, pointRadius: 0, borderWidth: 2 }); // the theme's text colour
      }
      if (data.limit) {
        sets.push({ label: "parallelism limit", data: data.labels.map(() => data.limit), stack: "limit", fill: false,
          borderColor: TW.STATUS_COLOURS.failed, borderDash: [6, 4], pointRadius: 0, borderWidth: 2 });
      }
      return sets;
    }

    function draw(data, peak) {
      const sets = datasets(data, peak);
      if (note) note.hidden = !peak;
      if (!chart) {
        chart = new Chart(canvas, {
          type: "line",
          data: { labels: data.labels, datasets: sets },
          options: {
            responsive: true, maintainAspectRatio: false, animation: false, normalized: true, spanGaps: true,
            interaction: { mode: "index", intersect: false },
            scales: {
              x: { type: "time", ticks: { maxRotation: 0, autoSkipPadding: 20 } },
              y: { stacked: true, beginAtZero: true, title: { display: true, text: "tasks" }, ticks: { precision: 0 } },
            },
            plugins: {
              legend: { position: "bottom", onClick: isolate },
              tooltip: { filter: (item) => item.raw !== 0 || Boolean(item.dataset.stack) },
              zoom: {
                zoom: { wheel: { enabled: true }, pinch: { enabled: true }, mode: "x", onZoomComplete: zoomed },
                pan: { enabled: true, mode: "x", onPanComplete: zoomed },
              },
            },
          },
        });
      } else {
        chart.data.labels = data.labels;
        chart.data.datasets = sets;
        chart.update("none");
      }
      if (info) info.textContent = data.labels.length + " instants × " + data.datasets.length + " series, every " + data.granularity;
      root.dataset.drawn = String(Number(root.dataset.drawn || 0) + 1);
      performance.mark("tw-drawn");
    }

    function get(q) {
      return fetch(root.dataset.data + "?" + q).then((r) => r.json().then((body) => [r.ok, body]));
    }

    let latest = 0; // the last load asked for: an older answer arriving late is not drawn
    function load() {
      const q = params();
      if (csv) csv.href = csvUrl(q);
      const workflow = value("workflow");
      if (workflow) q.set("workflow", workflow);
      const asks = [get(q)];
      if (q.get("agg") === "max" && !totalOnly()) {
        const t = new URLSearchParams(q);
        t.set("group", "total");
        asks.push(get(t));
      }
      const mine = ++latest;
      return Promise.all(asks).then(([[ok, body], total]) => {
        if (mine !== latest) return;
        if (!ok) { if (info) info.textContent = JSON.stringify(body); return; }
        if (total && !total[0]) { if (info) info.textContent = JSON.stringify(total[1]); return; }
        draw(body, total ? total[1] : null);
      });
    }

    if (form) {
      form.addEventListener("change", (e) => {
        if (e.target.name === "start" || e.target.name === "end") field("time_range").value = "";
        unzoom();
        load();
      });
    }
    const reset = root.querySelector("#tw-reset-zoom");
    if (reset) reset.addEventListener("click", () => { unzoom(); load(); });
    const png = root.querySelector("#tw-png");
    if (png) png.addEventListener("click", () => {
      const a = TW.el("a", { href: chart.toBase64Image(), download: "task_concurrency.png" });
      document.body.appendChild(a); a.click(); a.remove();
    });

    // Live: a task moving refreshes the chart (at most every 2 s) while its window ends now.
    let pending = false;
    function refresh() {
      if (pending || win || value("end")) return;
      pending = true;
      setTimeout(() => { pending = false; load(); }, 2000);
    }
    if (live) TW.live("/ws/dashboard/", { snapshot() {}, event(e) { if (e.type === "task.update") refresh(); } });
    load();
    return { load, refresh };
  };

  document.addEventListener("DOMContentLoaded", () => {
    TW.theme();
    const root = document.getElementById("tw-concurrency");
    if (root && !root.dataset.embedded) TW.concurrency(root);
  });
})();
