/* The run view: waves as columns, tasks as nodes coloured by status (running ones pulse),
   steps running in parallel, the speedup, approvals, and a Gantt of queued and running time.
   Drawn from the snapshot of ws/executions/<id>/, then kept current by its events. */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  TW.theme();
  const root = document.getElementById("tw-run");
  const urls = TW.json("tw-urls");
  const mayDecide = root.dataset.steer === "1";
  const csrf = (document.querySelector("[name=csrfmiddlewaretoken]") || {}).value;
  const DONE = new Set(["succeeded", "failed", "skipped", "cancelled", "lost"]);
  const DENSE = 150; // steps in a wave above which nodes are drawn as small squares
  let run = {};
  const tasks = new Map(); // wave task id -> task
  const waves = new Map(); // wave id -> {wave, nodes element, header element}
  const $ = (id) => document.getElementById(id);

  const legend = $("tw-legend");
  for (const s of Object.keys(TW.STATUS_COLOURS)) {
    const item = TW.el("span", { style: "--c: " + TW.STATUS_COLOURS[s] }, s.replace("_", " "));
    legend.appendChild(item);
  }

  const isStep = (t) => t.kind !== "group" && !t.hasInstances;

  function nodeOf(t) {
    const a = TW.el("a", { class: "tw-node st-" + t.status, "data-task": t.id, title: t.key + ": " + t.status });
    a.href = urls.transcript + "?wave_task__id__exact=" + t.id;
    a.textContent = t.key;
    t.node = a;
    return a;
  }

  function waveColumn(w) {
    const col = TW.el("section", { class: "tw-wave", id: "tw-wave-" + w.wave_number });
    const head = TW.el("header");
    const link = TW.el("a", { href: urls.wave.replace("/0/", "/" + w.id + "/") }, "Wave " + w.wave_number);
    const info = TW.el("small", { class: "tw-muted" });
    const tasksLink = TW.el("a", { href: urls.tasks + "?wave__id__exact=" + w.id }, "tasks");
    head.append(link, info, tasksLink);
    const nodes = TW.el("div", { class: "tw-nodes" });
    col.append(head, nodes);
    $("tw-waves").appendChild(col);
    return { wave: w, nodes, info };
  }

  function render() {
    const box = $("tw-waves");
    box.textContent = "";
    waves.clear();
    for (const t of tasks.values()) if (t.parent_id && tasks.has(t.parent_id)) tasks.get(t.parent_id).hasInstances = true;
    for (const w of snapshotWaves) waves.set(w.id, waveColumn(w));
    const perWave = new Map();
    for (const t of tasks.values()) {
      if (!isStep(t)) continue;
      if (!perWave.has(t.wave_id)) perWave.set(t.wave_id, []);
      perWave.get(t.wave_id).push(t);
    }
    for (const [waveId, list] of perWave) {
      const col = waves.get(waveId);
      if (!col) continue;
      const frag = document.createDocumentFragment();
      for (const t of list) frag.appendChild(nodeOf(t));
      col.nodes.classList.toggle("tw-dense", list.length > DENSE);
      col.nodes.appendChild(frag);
    }
    counts();
  }

  function counts() {
    let running = 0, done = 0, total = 0;
    const perWave = new Map();
    const waiting = [];
    for (const t of tasks.values()) {
      if (!isStep(t)) continue;
      total++;
      if (t.status === "running") running++;
      if (DONE.has(t.status)) done++;
      if (t.status === "waiting_approval") waiting.push(t);
      const c = perWave.get(t.wave_id) || { done: 0, total: 0, running: 0 };
      c.total++;
      if (DONE.has(t.status)) c.done++;
      if (t.status === "running") c.running++;
      perWave.set(t.wave_id, c);
    }
    $("tw-parallel").textContent = running;
    $("tw-done").textContent = done;
    $("tw-total").textContent = total;
    for (const [id, col] of waves) {
      const c = perWave.get(id) || { done: 0, total: 0, running: 0 };
      col.info.textContent = c.done + "/" + c.total + (c.running ? " · " + c.running + " running" : "");
    }
    approvals(waiting);
    clock();
  }

  function approvals(waiting) {
    const list = $("tw-approval-list");
    $("tw-approvals").hidden = waiting.length === 0;
    list.textContent = "";
    for (const t of waiting) {
      const li = TW.el("li", { "data-key": t.key });
      li.appendChild(TW.el("span", {}, t.key));
      if (mayDecide) {
        const forms = TW.el("span");
        for (const action of ["approve", "reject"]) {
          const f = TW.el("form", { method: "post", action: urls[action] });
          f.append(
            TW.el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }),
            TW.el("input", { type: "hidden", name: "key", value: t.key })
          );
          const b = TW.el("button", { type: "submit", class: "button tw-" + action }, action === "approve" ? "Approve" : "Reject");
          f.appendChild(b);
          forms.appendChild(f);
        }
        li.appendChild(forms);
      }
      list.appendChild(li);
    }
  }

  function clock() {
    const now = Date.now();
    const status = $("tw-run-status");
    status.textContent = (run.status || "").replace("_", " ");
    status.style.background = { running: TW.STATUS_COLOURS.running, succeeded: TW.STATUS_COLOURS.succeeded,
      failed: TW.STATUS_COLOURS.failed, cancelled: TW.STATUS_COLOURS.cancelled }[run.status] || TW.STATUS_COLOURS.pending;
    const started = TW.ms(run.started_at);
    const ended = TW.ms(run.completed_at);
    const wall = run.wall_seconds || (started ? ((ended || now) - started) / 1000 : null);
    $("tw-wall").textContent = TW.duration(wall);
    $("tw-peak").textContent = run.peak_concurrency || 0;
    let speedup = null;
    if (run.wall_seconds && run.task_seconds) {
      speedup = run.task_seconds / (run.wall_seconds - (run.gate_wait_seconds || 0));
    } else if (started) {
      let busy = 0;
      for (const t of tasks.values()) {
        if (isStep(t) && t.started) busy += ((t.ended || now) - t.started) / 1000;
      }
      const working = wall - (run.gate_wait_seconds || 0);
      if (working > 0 && busy > 0) speedup = busy / working;
    }
    $("tw-speedup").textContent = speedup ? speedup.toFixed(1) + "x faster" : "speedup: not yet";
  }

  // --- the Gantt: one row per task, queued [queued, started), running [started, ended or now) ---
  let gantt = null;
  let ganttRows = [];
  let ganttPending = false;

  function drawGantt() {
    ganttPending = false;
    const now = Date.now();
    const rows = ganttRows.filter((t) => t.queued || t.started);
    const labels = rows.map((t) => t.key);
    const queued = rows.map((t) => (t.queued && (t.started || now) > t.queued ? [t.queued, t.started || now] : null));
    const running = rows.map((t) => (t.started ? [t.started, t.ended || now] : null));
    const colours = rows.map((t) => TW.STATUS_COLOURS[t.status] || TW.STATUS_COLOURS.running);
    // The time axis of floating bars is given its bounds: left alone it starts at 0 (1970).
    const ends = [...queued, ...running].filter(Boolean);
    const xmin = Math.min(...ends.map((b) => b[0]));
    const xmax = Math.max(...ends.map((b) => b[1]));
    // Grown 20 rows at a time: each change of height is a resize of the chart.
    $("tw-gantt-box").style.height = Math.max(140, Math.ceil(rows.length / 20) * 20 * 14 + 70) + "px";
    if (!gantt) {
      gantt = new Chart($("tw-gantt"), {
        type: "bar",
        data: { labels, datasets: [
          { label: "queued", data: queued, backgroundColor: TW.STATUS_COLOURS.queued, grouped: false, barPercentage: 0.9 },
          { label: "running", data: running, backgroundColor: colours, grouped: false, barPercentage: 0.9 },
        ] },
        options: {
          indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
          scales: {
            // 24-hour clock labels ("02:28:18", date-fns patterns); ticks no finer than a second.
            x: { type: "time", position: "top", min: xmin, max: xmax, ticks: { maxRotation: 0, autoSkipPadding: 24 },
              time: { minUnit: "second", displayFormats: { second: "HH:mm:ss", minute: "HH:mm:ss", hour: "HH:mm", day: "MMM d" } } },
            y: { ticks: { autoSkip: false, font: { size: 10 } } },
          },
          plugins: { legend: { position: "bottom" }, tooltip: { callbacks: {
            label: (c) => c.dataset.label + ": " + TW.duration((c.raw[1] - c.raw[0]) / 1000),
          } } },
        },
      });
    } else {
      gantt.data.labels = labels;
      gantt.data.datasets[0].data = queued;
      gantt.data.datasets[1].data = running;
      gantt.data.datasets[1].backgroundColor = colours;
      gantt.options.scales.x.min = xmin;
      gantt.options.scales.x.max = xmax;
      gantt.update("none");
    }
  }
  // At most once a second: nodes and counts change at once, the Gantt follows.
  const scheduleGantt = () => { if (!ganttPending) { ganttPending = true; setTimeout(drawGantt, 1000); } };

  // --- live ---
  let snapshotWaves = [];
  const queuedAt = new Map(); // wave task id -> when it last entered the queue (from the audit)
  function task(row) {
    return { id: row.id, key: row.key, wave_id: row.wave_id, wave_number: row.wave_number, kind: row.kind,
      parent_id: row.parent_id, status: row.status, started: TW.ms(row.started_at), ended: TW.ms(row.completed_at),
      queued: queuedAt.get(row.id) || null };
  }

  TW.live(urls.ws, {
    snapshot(m) {
      run = m.run;
      snapshotWaves = m.waves;
      const old = tasks;
      const fresh = new Map(m.tasks.map((row) => [row.id, task(row)]));
      for (const [id, t] of fresh) if (old.has(id)) t.queued = old.get(id).queued;
      tasks.clear();
      for (const [id, t] of fresh) tasks.set(id, t);
      ganttRows = ganttRows.length ? ganttRows.map((r) => tasks.get(r.id) || r) : [...tasks.values()];
      render();
      scheduleGantt();
      root.dataset.ready = "1";
      performance.mark("tw-ready");
    },
    event(e) {
      const p = e.payload || {};
      if (e.type === "task.update") {
        let t = tasks.get(p.wave_task_id);
        const at = TW.ms(p.at) || Date.now();
        if (!t) {
          t = task({ id: p.wave_task_id, key: p.key, wave_id: p.wave_id, status: p.status });
          tasks.set(t.id, t);
          ganttRows.push(t);
          const col = waves.get(t.wave_id);
          if (col) col.nodes.appendChild(nodeOf(t));
        }
        t.status = p.status;
        if (p.status === "queued") t.queued = at;
        if (p.status === "running") { t.started = at; t.ended = null; }
        if (DONE.has(p.status)) t.ended = at;
        if (t.node) { t.node.className = "tw-node st-" + t.status; t.node.title = t.key + ": " + t.status; }
        counts();
        scheduleGantt();
      } else if (e.type === "run.update") {
        Object.assign(run, p);
        clock();
      } else if (e.type === "wave.update") {
        const col = waves.get(p.wave_id);
        if (col) col.wave.status = p.status;
        else { snapshotWaves.push({ id: p.wave_id, wave_number: p.wave_number, status: p.status }); render(); }
      }
    },
  });

  fetch(urls.gantt).then((r) => r.json()).then((data) => {
    const byId = new Map(data.tasks.map((r) => [r.id, r]));
    for (const [id, r] of byId) {
      if (r.queued) queuedAt.set(id, r.queued);
      const t = tasks.get(id);
      if (t) { t.queued = t.queued || r.queued; t.started = t.started || r.started; }
    }
    const order = data.tasks.map((r) => tasks.get(r.id) || { ...r, status: r.status });
    for (const t of tasks.values()) if (!byId.has(t.id)) order.push(t);
    ganttRows = order.filter((t) => t.kind !== "group");
    drawGantt();
    performance.mark("tw-gantt");
  });

  setInterval(() => {
    clock();
    if (run.status === "running") scheduleGantt();
  }, 1000);
});
