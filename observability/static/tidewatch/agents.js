/* Parallel agents: per task list (run) and wave, each agent with its running time ticking, the
   ones that finished while the page is open, the steps queued; a footer with the peak
   parallelism, the total, completed and failed. From ws/dashboard/. */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("tw-agents");
  let runs = new Map(); // run id -> run (with steps per status)
  let agents = new Map(); // agent id -> agent
  const keys = new Map(); // wave task id -> step key
  const waveNumbers = new Map(); // wave id -> wave number
  let peak = 0;
  const WORD = { running: "Running", succeeded: "Completed", failed: "Failed", lost: "Lost", cancelled: "Cancelled" };

  function draw() {
    const box = document.getElementById("tw-lists");
    box.textContent = "";
    const now = Date.now();
    let total = 0, completed = 0, failed = 0, queued = 0, running = 0;
    for (const run of runs.values()) {
      const steps = run.steps || {};
      total += Object.values(steps).reduce((a, b) => a + b, 0);
      completed += steps.succeeded || 0;
      failed += steps.failed || 0;
      queued += steps.queued || 0;
      peak = Math.max(peak, run.peak_concurrency || 0);
      const mine = [...agents.values()].filter((a) => a.execution_id === run.execution_id);
      const byWave = new Map();
      for (const a of mine) {
        const w = a.wave_number || waveNumbers.get(a.wave_id) || "?";
        if (!byWave.has(w)) byWave.set(w, []);
        byWave.get(w).push(a);
      }
      const card = TW.el("section", { class: "tw-card", "data-run": run.execution_id });
      const h = TW.el("h2");
      h.appendChild(TW.el("a", { href: root.dataset.runUrl.replace("/0/", "/" + run.execution_id + "/") },
        run.task_list_title + " · run " + run.execution_id));
      card.appendChild(h);
      for (const [w, list] of [...byWave].sort((a, b) => a[0] - b[0])) {
        card.appendChild(TW.el("h3", {}, "Wave " + w));
        const ul = TW.el("ul", { class: "tw-agents" });
        for (const a of list) {
          if (a.status === "running") running++;
          const end = a.status === "running" ? now : TW.ms(a.completed_at) || now;
          const li = TW.el("li", { "data-status": a.status });
          li.append(TW.el("span", {}, a.instance_id + ": " + (a.task_key || keys.get(a.wave_task_id) || "step " + a.wave_task_id)),
            TW.el("span", { class: "tw-status st-" + a.status }, (WORD[a.status] || a.status) + " (" + TW.duration((end - TW.ms(a.started_at)) / 1000) + ")"));
          ul.appendChild(li);
        }
        card.appendChild(ul);
      }
      card.appendChild(TW.el("p", { class: "tw-muted" }, (steps.queued || 0) + " queued · " + (steps.pending || 0) + " pending · " +
        (steps.succeeded || 0) + " completed · " + (steps.failed || 0) + " failed"));
      box.appendChild(card);
    }
    peak = Math.max(peak, running);
    const set = (id, v) => { document.getElementById(id).textContent = v; };
    set("tw-peak", peak); set("tw-total", total); set("tw-completed", completed); set("tw-failed", failed); set("tw-queued", queued);
    document.getElementById("tw-none").hidden = runs.size > 0;
  }

  let restarting = false;
  const socket = TW.live("/ws/dashboard/", {
    snapshot(m) {
      runs = new Map(m.runs.map((r) => [r.execution_id, r]));
      const kept = [...agents.values()].filter((a) => a.status !== "running" && runs.has(a.execution_id));
      agents = new Map([...kept, ...m.agents].map((a) => [a.id, a]));
      restarting = false;
      draw();
      root.dataset.ready = "1";
    },
    event(e) {
      const p = e.payload || {};
      const run = runs.get(e.execution_id);
      if (!run) {
        if (!restarting && e.type !== "stats.update") { restarting = true; socket.restart(); }
        return;
      }
      if (e.type === "run.update") Object.assign(run, p);
      else if (e.type === "wave.update") waveNumbers.set(p.wave_id, p.wave_number);
      else if (e.type === "task.update") {
        keys.set(p.wave_task_id, p.key);
        run.steps = run.steps || {};
        if (p.previous_status && run.steps[p.previous_status]) run.steps[p.previous_status]--;
        run.steps[p.status] = (run.steps[p.status] || 0) + 1;
      } else if (e.type === "agent.update") {
        const a = agents.get(p.agent_id) || {};
        agents.set(p.agent_id, { ...a, ...p, id: p.agent_id });
      }
      draw();
    },
  });
  setInterval(draw, 1000);
});
