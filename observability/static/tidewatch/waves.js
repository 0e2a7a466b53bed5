/* The wave timeline of a session: per task list, each wave as a floating bar from its start to
   its end (or now), labelled with its task count; redrawn when a wave changes (ws/dashboard/). */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  TW.theme();
  const root = document.getElementById("tw-waves-timeline");
  if (!root) return;
  const palette = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3"];
  let chart = null;

  function draw(data) {
    const lists = [...new Set(data.waves.map((w) => w.task_list + " (run " + w.run + ")"))];
    const rows = data.waves.filter((w) => w.started);
    const labels = rows.map((w) => w.task_list + " · run " + w.run + " · wave " + w.wave + " (" + w.tasks + " tasks)");
    const bars = rows.map((w) => [w.started, w.ended || data.now]);
    const colours = rows.map((w) => palette[lists.indexOf(w.task_list + " (run " + w.run + ")") % palette.length]);
    // The time axis of floating bars is given its bounds: left alone it starts at 0 (1970).
    const xmin = Math.min(...bars.map((b) => b[0]));
    const xmax = Math.max(...bars.map((b) => b[1]));
    document.getElementById("tw-waves-box").style.height = Math.max(160, rows.length * 22 + 80) + "px";
    if (!chart) {
      chart = new Chart(document.getElementById("tw-waves-chart"), {
        type: "bar",
        data: { labels, datasets: [{ label: "waves", data: bars, backgroundColor: colours }] },
        options: {
          indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
          scales: { x: { type: "time", position: "top", min: xmin, max: xmax, ticks: { maxRotation: 0, autoSkipPadding: 24 } } },
          plugins: { legend: { display: false }, tooltip: { callbacks: {
            label: (c) => TW.duration((c.raw[1] - c.raw[0]) / 1000),
          } } },
        },
      });
    } else {
      chart.data.labels = labels;
      chart.data.datasets[0].data = bars;
      chart.data.datasets[0].backgroundColor = colours;
      chart.options.scales.x.min = xmin;
      chart.options.scales.x.max = xmax;
      chart.update("none");
    }
    root.dataset.drawn = "1";
  }
  const load = () => fetch(root.dataset.data).then((r) => r.json()).then(draw);
  let pending = false;
  TW.live("/ws/dashboard/", {
    snapshot() {},
    event(e) {
      if (e.type === "wave.update" && !pending) { pending = true; setTimeout(() => { pending = false; load(); }, 1000); }
    },
  });
  load();
});
