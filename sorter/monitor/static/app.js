// produce-sorter dashboard: polls /api/status and refreshes /frame.jpg. No build step.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token");
  const q = (extra) => {
    const p = new URLSearchParams(extra || {});
    if (token) p.set("token", token);
    const s = p.toString();
    return s ? "?" + s : "";
  };
  const $ = (id) => document.getElementById(id);
  const fmt = (v, d) => (typeof v === "number" && isFinite(v) ? v.toFixed(d === undefined ? 0 : d) : "-");
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  $("metrics").href = "metrics" + q();
  $("api").href = "api/status" + q();
  $("review").href = "review" + q();

  function bars(id, counts) {
    const box = $(id);
    box.replaceChildren();
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...entries.map((e) => e[1]));
    for (const [name, n] of entries) {
      const row = el("div", "row");
      row.append(el("span", "", name));
      const bar = el("div", "bar");
      bar.style.width = (100 * n / max).toFixed(1) + "%";
      const track = el("div");
      track.append(bar);
      row.append(track, el("span", "n", String(n)));
      box.append(row);
    }
    if (!entries.length) box.append(el("span", "muted", "none yet"));
  }

  function histogram(lat) {
    const box = $("hist");
    box.replaceChildren();
    const buckets = (lat && lat.buckets) || [];
    let prev = 0;
    const counts = buckets.map(([le, cum]) => { const n = cum - prev; prev = cum; return [le, n]; });
    const max = Math.max(1, ...counts.map((c) => c[1]));
    for (const [le, n] of counts) {
      const b = el("div");
      b.style.height = (100 * n / max).toFixed(1) + "%";
      b.title = n + " at <= " + le + " ms";
      b.append(el("span", "", "≤" + le));
      box.append(b);
    }
  }

  function render(s) {
    const link = s.link || {};
    const pill = $("link");
    pill.textContent = "link: " + (link.state || "?") + (link.safe ? " (SAFE)" : "");
    pill.className = "pill " + (link.safe ? "warn" : ["connected", "ready", "up"].includes(link.state) ? "ok" : link.state === "none" ? "" : "bad");
    $("uptime").textContent = "up " + fmt(s.uptime_s) + " s";
    if (s.lane) {  // a packhouse lane ([lane] id): say which one in the heading and the tab
      $("title").textContent = "produce-sorter lane " + s.lane;
      document.title = "lane " + s.lane + " - produce-sorter";
    }
    const alarms = s.alarms || [];
    const ab = $("alarms");
    ab.hidden = !alarms.length;
    ab.replaceChildren(...alarms.map((a) => el("div", "", "⚠ " + a.kind.replace("_", " ") + ": " + a.text)));
    $("items").textContent = fmt(s.items);
    $("ipm").textContent = fmt(s.items_per_min, 1);
    $("fps").textContent = fmt(s.fps_processed, 1);
    $("fpsin").textContent = fmt(s.fps_in, 1);
    $("drops").textContent = fmt(s.drops);
    $("logerr").textContent = fmt((s.decision_log || {}).errors);
    const lat = s.latency_ms || {};
    $("lat").textContent = fmt(lat.p50, 1) + " / " + fmt(lat.p99, 1);
    bars("bins", s.bins);
    bars("grades", s.grades);
    const belt = s.belt || {};
    $("speed").textContent = fmt(belt.speed_mm_s) + " / " + fmt(belt.configured_mm_s);
    const scale = s.scale || {};
    $("scale").textContent = scale.drift === undefined ? "-" : fmt(100 * scale.drift, 2) + "%";
    const sizes = s.sizes || {};
    $("sizes").replaceChildren(...Object.keys(sizes).sort().map((g) => {
      const z = sizes[g];
      const tr = el("tr");
      tr.append(el("td", "", g), el("td", "", fmt(z.items)), el("td", "", fmt(z.length_mm, 1)),
        el("td", "", fmt(z.width_mm, 1)), el("td", "", fmt(z.bend_mm, 1)));
      return tr;
    }));
    histogram(lat);
    // Periodic STATUS reports would drown the rest: show what happened, not the heartbeat.
    const events = (s.events || []).filter((e) => e.kind !== "STATUS");
    $("events").replaceChildren(...events.slice(0, 30).map((e) => {
      const li = el("li");
      li.append(el("span", "kind", e.kind), el("span", "", e.text + " (" + fmt(e.t, 1) + " s)"));
      return li;
    }));
    $("decisions").replaceChildren(...(s.decisions || []).slice(0, 20).map((d) => {
      const tr = el("tr");
      const img = el("img");
      img.loading = "lazy";
      img.alt = "crop of item " + d.item;
      img.src = "crop/" + d.item + ".jpg" + q();
      img.onerror = () => { img.style.visibility = "hidden"; };
      const td = el("td");
      td.append(img);
      tr.append(td, el("td", "", String(d.item)), el("td", "", d.label || "-"),
        el("td", "", fmt(100 * d.confidence) + "%"), el("td", "", d.bin || "-"),
        el("td", "", d.gate === null || d.gate === undefined ? "-" : String(d.gate)),
        el("td", "st-" + d.status, d.status || "-"));
      return tr;
    }));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  async function poll() {
    try {
      const r = await fetch("api/status" + q(), { cache: "no-store" });
      if (r.ok) render(await r.json());
      else $("updated").textContent = "status: HTTP " + r.status;
    } catch (err) {
      $("updated").textContent = "dashboard unreachable";
    }
    setTimeout(poll, 1000);
  }

  // Swap the live view only once the next JPEG has loaded: no flicker on a phone.
  let n = 0;
  function refreshFrame() {
    const next = new Image();
    next.onload = () => { $("frame").src = next.src; setTimeout(refreshFrame, 250); };
    next.onerror = () => setTimeout(refreshFrame, 1000);
    next.src = "frame.jpg" + q({ n: String(n++) });
  }
  poll();
  refreshFrame();
})();
