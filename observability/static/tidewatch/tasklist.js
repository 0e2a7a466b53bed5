/* A task list's page: its plan drawn as a Mermaid graph (waves as boxes), in the admin's theme. */
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const theme = document.documentElement.dataset.theme;
  const dark = theme === "dark" || (theme !== "light" && matchMedia("(prefers-color-scheme: dark)").matches);
  mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: dark ? "dark" : "default" });
  mermaid.run({ querySelector: ".tw-mermaid" }).then(() => {
    for (const el of document.querySelectorAll(".tw-mermaid")) el.dataset.drawn = "1";
  });
});
