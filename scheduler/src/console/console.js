// Halyard console: refresh the live parts of a page every second, ask before changes.
"use strict";

function follow(el) {
  const url = el.dataset.live;
  let timer = null;
  async function tick() {
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
      if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
      if (!r.ok) { return; }
      const v = await r.json();
      for (const [id, html] of Object.entries(v.parts || {})) {
        const part = document.getElementById(id);
        if (part && part.innerHTML !== html) {
          part.innerHTML = html;
          if (part.tagName === "PRE") { part.scrollTop = part.scrollHeight; }
        }
      }
      el.dataset.updated = String(Date.now());
      if (v.done) { el.dataset.done = "true"; clearInterval(timer); }
    } catch (e) {
      // The node restarted or the network dropped: the next tick tries again.
    }
  }
  if (el.dataset.done !== "true") {
    timer = setInterval(tick, 1000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (e) => {
      if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
    });
  });
  const log = document.getElementById("log");
  if (log) { log.scrollTop = log.scrollHeight; }
});

// A spec file chosen in the jobs page is read into its text box (nothing is sent until
// the form is submitted).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[type=file][data-into]").forEach((input) => {
    input.addEventListener("change", async () => {
      const file = input.files && input.files[0];
      const target = document.getElementById(input.dataset.into);
      if (file && target) { target.value = await file.text(); }
    });
  });
});
