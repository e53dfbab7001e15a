// mailferry web UI: the only script. Pages work without it; it adds two conveniences.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Sessions page with "refresh every 5 s": reload while the tab is visible.
  const live = Number(document.body.dataset.live || 0);
  if (live > 0) {
    setInterval(() => { if (!document.hidden) location.reload(); }, live * 1000);
  }
  // Destructive queue actions ask first.
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
});
