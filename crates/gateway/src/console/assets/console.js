// The console's one script: live queues, session replay and live follow.
// Served from the gateway itself; the pages carry no inline script (CSP).
"use strict";

const FRAGMENT = { "X-Sluice-Fragment": "1" };

async function fetchFragment(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: FRAGMENT });
  if (response.status === 401) {
    // Signed out (token expired or revoked): the page itself will ask to sign in again.
    window.location.reload();
    return null;
  }
  if (!response.ok) return null;
  return response;
}

// A queue (reviews, access requests) kept current every second without moving what the
// viewer may be about to click: cards already shown are never re-rendered (a reason being
// typed stays), new ones are added at the end (the queue is oldest first), and a card no
// longer pending loses its buttons in place.
function liveQueue(container) {
  const url = container.dataset.liveUrl;
  const cards = () => Array.from(container.querySelectorAll(":scope > article[id]"));
  setInterval(async () => {
    const response = await fetchFragment(url).catch(() => null);
    if (!response) return;
    const template = document.createElement("template");
    template.innerHTML = await response.text(); // rendered and escaped by the gateway
    // (`:scope` means nothing in a fragment: walk its children.)
    const fresh = Array.from(template.content.children).filter((e) => e.tagName === "ARTICLE" && e.id);
    const pending = new Set(fresh.map((card) => card.id));
    for (const card of cards()) {
      if (pending.has(card.id) || card.classList.contains("gone")) continue;
      // In place and at the same size: the first button says so, the others keep their
      // space (hidden by the stylesheet), nothing below moves.
      card.classList.add("gone");
      card.querySelectorAll("form.decide button, form.decide textarea").forEach((e) => { e.disabled = true; });
      const first = card.querySelector("form.decide button");
      if (first) {
        first.textContent = "Closed";
        first.title = "Decided, withdrawn or expired elsewhere; reload to see how";
      }
    }
    const shown = new Set(cards().map((card) => card.id));
    for (const card of fresh) {
      if (shown.has(card.id)) continue;
      const empty = container.querySelector(":scope > p.empty");
      if (empty) empty.remove();
      container.appendChild(card);
    }
  }, 1000);
}

// Session replay: play at recorded timing, pause, step, show all.
function replay(timeline) {
  const play = document.getElementById("play");
  const pause = document.getElementById("pause");
  const step = document.getElementById("step");
  const showAll = document.getElementById("show-all");
  const speed = document.getElementById("speed");
  const position = document.getElementById("replay-pos");
  const LONGEST_PAUSE_MS = 5000;
  let current = -1;   // index of the entry shown last; -1: none yet
  let replaying = false;
  let timer = null;

  const items = () => Array.from(timeline.querySelectorAll(":scope > li.ev"));
  const at = (li) => Number(li.dataset.at || 0);

  function render() {
    const all = items();
    all.forEach((li, i) => {
      li.classList.toggle("future", replaying && i > current);
      li.classList.toggle("current", replaying && i === current);
    });
    position.textContent = replaying ? `${current + 1} / ${all.length}` : `${all.length} events`;
    play.disabled = timer !== null;
    pause.disabled = timer === null;
    step.disabled = replaying && current >= all.length - 1;
    if (replaying && all[current]) all[current].scrollIntoView({ block: "nearest" });
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function advance() {
    const all = items();
    if (current + 1 >= all.length) { stop(); render(); return false; }
    current += 1;
    render();
    return true;
  }

  function schedule() {
    const all = items();
    if (current + 1 >= all.length) { stop(); render(); return; }
    const gap = current < 0 ? 0 : Math.max(0, at(all[current + 1]) - at(all[current]));
    const delay = Math.min(gap, LONGEST_PAUSE_MS) / Number(speed.value || 1);
    timer = setTimeout(() => { if (advance()) schedule(); }, delay);
    render();
  }

  play.addEventListener("click", () => {
    if (!replaying || current >= items().length - 1) { replaying = true; current = -1; }
    stop();
    schedule();
  });
  pause.addEventListener("click", () => { stop(); render(); });
  step.addEventListener("click", () => {
    stop();
    if (!replaying) { replaying = true; current = -1; }
    advance();
  });
  showAll.addEventListener("click", () => { stop(); replaying = false; current = -1; render(); });
  render();
  return { refresh: render };
}

// Live follow of an open session: every second, the entries written since the last
// answer (read from the position it gave), new ones appended, completed ones replaced.
function follow(timeline, player) {
  const url = timeline.dataset.followUrl;
  let resume = timeline.dataset.resume || "";
  const tick = async () => {
    const response = await fetchFragment(`${url}?from=${encodeURIComponent(resume)}`).catch(() => null);
    if (response) {
      resume = response.headers.get("x-resume") || resume;
      const template = document.createElement("template");
      template.innerHTML = await response.text(); // rendered and escaped by the gateway
      for (const li of Array.from(template.content.children)) {
        const existing = document.getElementById(li.id);
        if (existing) {
          li.className = existing.className;
          existing.replaceWith(li);
        } else {
          timeline.appendChild(li);
        }
      }
      player.refresh();
      if (response.headers.get("x-session-open") === "0") {
        const badge = document.getElementById("follow");
        if (badge) badge.textContent = "session ended";
        return;
      }
    }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-url]").forEach(liveQueue);
  const timeline = document.getElementById("timeline");
  if (timeline) {
    const player = replay(timeline);
    if (timeline.dataset.followUrl) follow(timeline, player);
  }
  if (document.querySelector("#verify[data-running]")) {
    setTimeout(() => window.location.reload(), 1000);
  }
});
