/* The fleet: every active run the user may see (from ws/dashboard/: its snapshot, then run and
   task events), each with its progress by status, and one concurrency chart for all of them. */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  TW.theme();
  const root = document.getElementById("tw-fleet");
  const chart = TW.concurrency(document.getElementById("tw-concurrency"), { live: false });
  const ACTIVE = new Set(["pending", "running"]);
  const ORDER = ["succeeded", "failed", "running", "waiting_approval", "queued", "skipped", "cancelled", "lost", "pending"];
  let runs = new Map();

  function card(run) {
    const c = TW.el("section", { class: "tw-card", "data-run": run.execution_id });
    const h = TW.el("h2");
    h.appendChild(TW.el("a", { href: root.dataset.runUrl.replace("/0/", "/" + run.execution_id + "/") },
      "Run " + run.execution_id + ": " + run.task_list_title));
    c.append(h, TW.el("div", { class: "tw-progress" }), TW.el("div", { class: "tw-muted tw-line" }));
    return c;
  }

  function draw() {
    const box = document.getElementById("tw-runs");
    let running = 0;
    for (const [id, run] of runs) {
      if (!ACTIVE.has(run.status)) { if (run.card) run.card.remove(); runs.delete(id); continue; }
      if (!run.card) { run.card = card(run); box.appendChild(run.card); }
      const steps = run.steps || {};
      const total = Object.values(steps).reduce((a, b) => a + b, 0) || 1;
      const bar = run.card.querySelector(".tw-progress");
      bar.textContent = "";
      for (const s of ORDER) {
        if (steps[s]) bar.appendChild(TW.el("span", { style: "width:" + (100 * steps[s]) / total + "%; background:" + TW.STATUS_COLOURS[s], title: s + ": " + steps[s] }));
      }
      running += steps.running || 0;
      const started = TW.ms(run.started_at);
      run.card.querySelector(".tw-line").textContent = run.status + " · " + (steps.running || 0) + " running · " +
        ((steps.succeeded || 0) + (steps.failed || 0)) + "/" + total + " done · " + (started ? TW.duration((Date.now() - started) / 1000) : "not started");
    }
    document.getElementById("tw-active").textContent = runs.size;
    document.getElementById("tw-running").textContent = running;
    document.getElementById("tw-none").hidden = runs.size > 0;
  }

  let reconnect = false;
  const socket = TW.live("/ws/dashboard/", {
    snapshot(m) {
      for (const run of runs.values()) if (run.card) run.card.remove();
      runs = new Map(m.runs.map((r) => [r.execution_id, r]));
      reconnect = false;
      draw();
      root.dataset.ready = "1";
    },
    event(e) {
      const p = e.payload || {};
      const run = runs.get(e.execution_id);
      if (!run) {
        // A run this page has not seen: a fresh snapshot has its title and counts.
        if (!reconnect && e.type !== "stats.update") { reconnect = true; socket.restart(); }
        return;
      }
      if (e.type === "run.update") Object.assign(run, p);
      if (e.type === "task.update") {
        run.steps = run.steps || {};
        if (p.previous_status && run.steps[p.previous_status]) run.steps[p.previous_status]--;
        run.steps[p.status] = (run.steps[p.status] || 0) + 1;
        chart.refresh();
      }
      draw();
    },
  });
  setInterval(draw, 1000);
});
