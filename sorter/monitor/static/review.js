// produce-sorter review page: lists /api/review, files answers with POST /api/review.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const meta = (n) => document.querySelector('meta[name="' + n + '"]').content;
  const csrf = meta("csrf-token");
  const canWrite = meta("can-write") === "yes";
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  let grades = [];
  $("back").href = "./" + q;
  const who = $("who");
  who.value = localStorage.getItem("sorter-reviewer") || "";
  who.addEventListener("change", () => localStorage.setItem("sorter-reviewer", who.value));

  function notice(text, bad) {
    const n = $("notice");
    n.hidden = !text;
    n.textContent = text || "";
    n.className = bad ? "bad" : "";
  }

  function counts() {
    const cards = document.querySelectorAll(".crop");
    const waiting = document.querySelectorAll(".crop.review").length;
    $("waiting").textContent = waiting + " unsure · " + cards.length + " shown";
    $("empty").hidden = cards.length > 0;
    cards.forEach((c, i) => c.classList.toggle("current", i === 0));
  }

  async function answer(card, value) {
    if (!canWrite) return;
    card.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    const headers = { "Content-Type": "application/json", "X-CSRF-Token": csrf };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const r = await fetch("api/review", {
        method: "POST",
        headers,
        credentials: "same-origin",
        body: JSON.stringify({ id: card.dataset.id, answer: value, who: who.value }),
      });
      if (!r.ok) throw new Error(await r.text());
      card.remove();
      notice("");
    } catch (err) {
      notice("not saved: " + err.message, true);
      card.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
    counts();
  }

  function button(card, label, value, cls) {
    const b = el("button", cls || "", label);
    b.type = "button";
    b.dataset.answer = value;
    b.disabled = !canWrite;
    b.addEventListener("click", () => answer(card, value));
    return b;
  }

  function card(it) {
    const c = el("section", "crop " + it.kind);
    c.dataset.id = it.id;
    const img = el("img");
    img.alt = "crop " + (it.item === null ? "" : "#" + it.item);
    img.src = "review/crop/" + it.id + ".png" + q;
    const top = (it.top || []).map(([g, s]) => g + " " + (100 * s).toFixed(0) + "%").join(" · ");
    c.append(img, el("div", "top", "model: " + (top || it.grade)));
    c.append(el("div", "kind", it.kind === "review" ? "model unsure" : "model confident (spot check)"));
    const row = el("div", "buttons");
    grades.forEach((g, i) => {
      const label = (i < 9 ? i + 1 + " " : "") + g;
      row.append(button(c, label, g, g === it.grade ? "model" : ""));
    });
    row.append(button(c, "0 not produce", "_not_produce", "np"), button(c, "s skip", "_skip", "skip"));
    c.append(row);
    return c;
  }

  async function load() {
    const r = await fetch("api/review" + q, { credentials: "same-origin" });
    if (!r.ok) { notice(await r.text(), true); return; }
    const data = await r.json();
    grades = data.grades;
    $("crops").replaceChildren(...data.items.map(card));
    if (!canWrite) notice("read-only: reviewing needs a dashboard token ([dashboard] token)");
    counts();
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target === who || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const first = document.querySelector(".crop");
    if (!first) return;
    let value = null;
    if (ev.key >= "1" && ev.key <= "9") value = grades[Number(ev.key) - 1];
    else if (ev.key === "0" || ev.key === "n") value = "_not_produce";
    else if (ev.key === "s" || ev.key === " ") value = "_skip";
    if (value === null || value === undefined) return;
    ev.preventDefault();
    answer(first, value);
  });
  load();
})();
