"""Live counters of the sorting loop, shared by the terminal, the dashboard and /metrics.

One `Status` object, updated by the pipeline's threads and read by anyone: every method
takes its lock, and `snapshot()` returns a JSON-able copy (docs/INTERFACES.md lists its keys).
Counters and the latency histogram are also kept in a private prometheus_client registry
(`status.registry`) that the dashboard serves at /metrics. A lane's sorter (`[lane] id`) adds
the label lane="ID" to every series it exposes (`LabelledRegistry`), so one Prometheus can
scrape every lane of a packhouse and tell them apart (docs/fleet.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from rich.console import Console
from rich.table import Table

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Histogram buckets for the frame -> command latency, in seconds."""


@dataclass
class Overlay:
    """An item box to draw on the live frame."""

    id: int
    """Track id."""
    box: tuple[int, int, int, int]
    """x, y, w, h in pixels."""
    grade: str = ""
    """Grade once decided."""
    confidence: float = 0.0
    """Confidence once decided."""
    bin: str = ""
    """Bin once decided."""


class LabelledRegistry(CollectorRegistry):
    """A CollectorRegistry that adds constant labels (e.g. lane="2") to every sample it
    collects, whoever registered the metric; a label the metric sets itself wins."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.const_labels = {k: v for k, v in (labels or {}).items() if v}
        """The labels added to every sample (empty values dropped)."""

    def collect(self) -> Iterable[Metric]:
        """Every metric family of the registered collectors, with the constant labels."""
        for family in super().collect():
            if not self.const_labels:
                yield family
                continue
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [
                s._replace(labels={**self.const_labels, **s.labels}) for s in family.samples
            ]
            yield out


class Status:
    """Thread-safe live state of one run (`lane`: the [lane] id labelled on every series)."""

    def __init__(
        self, *, window_s: float = 5.0, keep: int = 50, url: str = "", lane: str = ""
    ) -> None:
        self.lane = lane
        """The lane id ("" on a single-lane farm: no lane label)."""
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._window_s = window_s
        self._in_times: deque[float] = deque()
        self._proc_times: deque[float] = deque()
        self._item_times: deque[float] = deque()
        self._latencies: deque[float] = deque(maxlen=5000)
        self._last_frame_mono: float | None = None
        self.frames_in = 0
        self.frames = 0
        self.drops = 0
        self.items = 0
        self.bins: dict[str, int] = {}
        self.grades: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self._fates: dict[int, str] = {}
        self.stages: dict[str, float] = {}
        self.line_x: float | None = None
        self.link: dict[str, Any] = {"state": "none", "url": url, "safe": False}
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._decisions: deque[dict[str, Any]] = deque(maxlen=keep)
        self._crops: dict[int, np.ndarray] = {}
        self._crop_order: deque[int] = deque(maxlen=keep)
        self._alarms: dict[str, str] = {}
        self._frame: tuple[np.ndarray, list[dict[str, Any]]] | None = None

        self.registry: CollectorRegistry = LabelledRegistry({"lane": lane})
        r = self.registry
        self._m_frames_in = Counter("sorter_frames_in", "Frames captured", registry=r)
        self._m_frames = Counter("sorter_frames_processed", "Frames processed", registry=r)
        self._m_drops = Counter("sorter_frames_dropped", "Frames dropped (queue full)", registry=r)
        self._m_items = Counter(
            "sorter_items", "Items decided, by bin and grade", ["bin", "grade"], registry=r
        )
        self._m_status = Counter(
            "sorter_commands", "Decision fates by status", ["status"], registry=r
        )
        self._m_latency = Histogram(
            "sorter_latency_seconds",
            "Frame capture to SORT command",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._m_link = Gauge("sorter_link_up", "1 when the controller link is up", registry=r)
        self._m_safe = Gauge("sorter_safe_state", "1 when the controller is safe", registry=r)
        self._m_stalled = Gauge("sorter_camera_stalled", "1 while frames stall", registry=r)
        self.log_health: dict[str, Any] = {"errors": 0, "backlog": 0, "dropped": 0, "error": None}
        """The decision log's writes (`decision_log`)."""
        self._m_log_errors = Counter(
            "sorter_decision_log_errors", "Failed decision-log write attempts", registry=r
        )
        self._m_log_dropped = Counter(
            "sorter_decision_log_dropped",
            "Queued decision-log writes dropped (backlog full)",
            registry=r,
        )
        self._m_log_backlog = Gauge(
            "sorter_decision_log_backlog", "Decision-log writes queued, not yet done", registry=r
        )
        self.shadow_counts: dict[str, int] = {"items": 0, "agree": 0, "dropped": 0}
        """Shadow mode (`sorter run --shadow`): items with a shadow verdict, of which the
        candidate chose the active model's grade, views it dropped."""
        self._m_shadow = Counter(
            "sorter_shadow_items",
            "Items graded by the shadow model, by agreement with the active one",
            ["agree"],
            registry=r,
        )
        self._m_shadow_dropped = Counter(
            "sorter_shadow_views_dropped", "Views the shadow model dropped (its queue full)",
            registry=r,
        )  # fmt: skip

        self._geometry_metrics(r)

    def _geometry_metrics(self, r: CollectorRegistry) -> None:
        """The belt speed (measured, configured), sizes per grade, the scale check."""
        self._sizes: dict[str, list[float]] = {}
        """grade -> [items, sum of length_mm, of width_mm, of bend_mm]."""
        self.scale: dict[str, Any] = {}
        """The latest scale check (`scale_check`): ratio, drift, when."""
        self._m_scale = Gauge(
            "sorter_scale_drift",
            "Measured camera scale / belt.px_per_mm - 1 (the fixed marker's scale check)",
            registry=r,
        )
        self.belt: dict[str, float | None] = {"speed_mm_s": None, "configured_mm_s": None}
        """The belt speed the tracker measures and the configured one (`belt_speed`)."""
        self._m_speed = Gauge(
            "sorter_belt_speed_mm_s", "Belt speed measured by the tracker, mm/s", registry=r
        )
        self._m_speed_cfg = Gauge(
            "sorter_belt_speed_configured_mm_s", "Belt speed in the config, mm/s", registry=r
        )

    # -- updates from the loop ------------------------------------------------------
    def _add_size(self, grade: str, record: dict[str, Any]) -> None:
        """Add an item's size (length_mm, width_mm, bend_mm in its record) to its grade's."""
        values = [record.get(k) for k in ("length_mm", "width_mm", "bend_mm")]
        if any(not isinstance(v, int | float) for v in values):
            return
        with self._lock:
            acc = self._sizes.setdefault(grade, [0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            for k, v in enumerate(values, start=1):
                acc[k] += float(v)  # type: ignore[arg-type]

    def scale_check(self, ratio: float, tolerance: float, when: float) -> None:
        """A scale check: measured px/mm over the configured (`ratio`); the scale_drift alarm
        while it is off by more than `tolerance` (a fraction: the camera was bumped)."""
        drift = ratio - 1.0
        with self._lock:
            self.scale = {"ratio": ratio, "drift": drift, "t": when}
            if abs(drift) > tolerance:
                self._alarms["scale_drift"] = (
                    f"camera scale {100 * drift:+.1f}% off belt.px_per_mm (the scale marker); "
                    "the camera moved? re-run `sorter calibrate-camera --belt ...`"
                )
            else:
                self._alarms.pop("scale_drift", None)
        self._m_scale.set(drift)

    def belt_speed(self, measured: float, configured: float, tolerance: float) -> None:
        """The measured belt speed (mm/s); the belt_speed alarm while it is off the
        configured one by more than `tolerance` (a fraction), cleared below 0.8 of that."""
        off = abs(measured / configured - 1.0) if configured > 0 else 0.0
        with self._lock:
            self.belt = {"speed_mm_s": measured, "configured_mm_s": configured}
            raised = "belt_speed" in self._alarms
            if off > tolerance or (raised and off > 0.8 * tolerance):
                self._alarms["belt_speed"] = (
                    f"belt at {measured:.0f} mm/s, {100 * off:.0f}% off the configured "
                    f"{configured:.0f} mm/s; check the belt, or set [belt] speed_mm_s / "
                    'timing = "measured"'
                )
            else:
                self._alarms.pop("belt_speed", None)
        self._m_speed.set(measured)
        self._m_speed_cfg.set(configured)

    def frame_in(self) -> None:
        """A frame was captured."""
        now = time.monotonic()
        with self._lock:
            self.frames_in += 1
            self._last_frame_mono = now
            self._push(self._in_times, now)
        self._m_frames_in.inc()

    def frame_dropped(self, n: int = 1) -> None:
        """`n` frames were dropped because processing fell behind."""
        with self._lock:
            self.drops += n
        self._m_drops.inc(n)

    def frame_done(
        self, image: np.ndarray | None = None, overlays: list[Overlay] | None = None
    ) -> None:
        """A frame was processed (optionally kept as the live view with its overlays)."""
        now = time.monotonic()
        with self._lock:
            self.frames += 1
            self._push(self._proc_times, now)
            if image is not None:
                self._frame = (image, [_overlay_dict(o) for o in overlays or []])
        self._m_frames.inc()

    def add_stage(self, name: str, seconds: float) -> None:
        """Accumulate time spent in a processing stage."""
        with self._lock:
            self.stages[name] = self.stages.get(name, 0.0) + seconds

    def add_stages(self, seconds: dict[str, float]) -> None:
        """Accumulate several stages at once (one lock for a frame's timings)."""
        with self._lock:
            for name, value in seconds.items():
                self.stages[name] = self.stages.get(name, 0.0) + value

    def decided(
        self, record: dict[str, Any], latency_s: float | None, crop: np.ndarray | None = None
    ) -> None:
        """An item was decided (record: the decision log's fields)."""
        now = time.monotonic()
        bin_name, grade = str(record.get("bin")), str(record.get("label"))
        with self._lock:
            self.items += 1
            self.bins[bin_name] = self.bins.get(bin_name, 0) + 1
            self.grades[grade] = self.grades.get(grade, 0) + 1
            self._push(self._item_times, now, window=60.0)
            if latency_s is not None:
                self._latencies.append(latency_s)
            keys = ("item", "t_line", "label", "confidence", "bin", "gate", "status")
            self._decisions.appendleft({k: record.get(k) for k in keys})
            item = int(record.get("item", -1))
            if crop is not None:
                if len(self._crop_order) == self._crop_order.maxlen:
                    self._crops.pop(self._crop_order[0], None)
                self._crop_order.append(item)
                self._crops[item] = crop
        self._m_items.labels(bin=bin_name, grade=grade).inc()
        self._add_size(grade, record)
        if latency_s is not None:
            self._m_latency.observe(latency_s)

    def fate(self, item: int, status: str) -> None:
        """A decision reached its final status (again, when the controller corrects it)."""
        with self._lock:
            old = self._fates.get(item)
            if old == status:
                return
            if old is not None:
                self.statuses[old] -= 1
                if not self.statuses[old]:
                    del self.statuses[old]
            self._fates[item] = status
            self.statuses[status] = self.statuses.get(status, 0) + 1
            for d in self._decisions:
                if d.get("item") == item:
                    d["status"] = status
                    break
        self._m_status.labels(status=status).inc()

    def event(self, kind: str, text: str) -> None:
        """A controller or loop event (FIRED, LATE, SAFE_STATE, FAULT, STALL...)."""
        with self._lock:
            self._events.appendleft({"t": time.monotonic() - self._t0, "kind": kind, "text": text})

    def set_link(self, state: str, *, safe: bool | None = None) -> None:
        """The controller link's state ("connected", "lost", "none"...) and safe flag."""
        with self._lock:
            self.link["state"] = state
            if safe is not None:
                self.link["safe"] = safe
            up = state in ("connected", "ready", "up")
            is_safe = bool(self.link["safe"])
            if state in ("lost", "disconnected"):
                self._alarms["controller_lost"] = "controller link lost; reconnecting"
            else:
                self._alarms.pop("controller_lost", None)
        self._m_link.set(1 if up else 0)
        self._m_safe.set(1 if is_safe else 0)

    def decision_log(self, health: Any) -> None:
        """The decision log's health (`sorter.monitor.audit.LogHealth`: errors, backlog,
        dropped, last_error): counted on /metrics and in the snapshot; a `decision_log`
        alarm while its writes fail."""
        with self._lock:
            old = self.log_health
            new_errors = max(0, int(health.errors) - int(old["errors"]))
            new_dropped = max(0, int(health.dropped) - int(old["dropped"]))
            self.log_health = {
                "errors": int(health.errors),
                "backlog": int(health.backlog),
                "dropped": int(health.dropped),
                "error": health.last_error,
            }
            if health.last_error:
                self._alarms["decision_log"] = (
                    f"decision log writes failing ({health.last_error}; {health.errors} "
                    f"failed attempts); {health.backlog} queued, retrying; items still go to "
                    "their bins"
                )
            else:
                self._alarms.pop("decision_log", None)
        self._m_log_errors.inc(new_errors)
        self._m_log_dropped.inc(new_dropped)
        self._m_log_backlog.set(int(health.backlog))

    def shadow(self, agree: bool, dropped_total: int) -> None:
        """An item got a shadow verdict (`agree`: same grade as the active model's);
        `dropped_total`: the views the shadow has dropped so far."""
        with self._lock:
            self.shadow_counts["items"] += 1
            self.shadow_counts["agree"] += int(agree)
            new = max(0, dropped_total - self.shadow_counts["dropped"])
            self.shadow_counts["dropped"] += new
        self._m_shadow.labels(agree="yes" if agree else "no").inc()
        if new:
            self._m_shadow_dropped.inc(new)

    def alarm(self, kind: str, text: str | None) -> None:
        """Raise (text) or clear (None) an alarm: camera_stalled, controller_lost, safe_state."""
        with self._lock:
            if text is None:
                self._alarms.pop(kind, None)
            else:
                self._alarms[kind] = text
        if kind == "camera_stalled":
            self._m_stalled.set(0 if text is None else 1)

    # -- reading --------------------------------------------------------------------
    def latest_frame(self) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        """The last processed frame (RGB) and its overlays, or None."""
        with self._lock:
            return self._frame

    def crop(self, item: int) -> np.ndarray | None:
        """The crop of a recent decision, or None."""
        with self._lock:
            return self._crops.get(item)

    def latency_percentiles(self) -> dict[str, float]:
        """p50/p99/max of the frame -> command latency in seconds (and n)."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64)
        if lat.size == 0:
            return {"n": 0}
        return {
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
            "n": int(lat.size),
        }

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of everything (keys in docs/INTERFACES.md)."""
        now = time.monotonic()
        lat = self.latency_percentiles()
        with self._lock:
            self._trim(now)
            age = None if self._last_frame_mono is None else now - self._last_frame_mono
            buckets = [
                [le * 1000.0, int(sum(1 for x in self._latencies if x <= le))]
                for le in LATENCY_BUCKETS_S
            ]
            return {
                "lane": self.lane,
                "uptime_s": now - self._t0,
                "fps_in": _rate(self._in_times, now, self._window_s),
                "fps_processed": _rate(self._proc_times, now, self._window_s),
                "frames_in": self.frames_in,
                "frames": self.frames,
                "drops": self.drops,
                "last_frame_age_s": age,
                "line_x": self.line_x,
                "items": self.items,
                "items_per_min": _rate(self._item_times, now, 60.0) * 60.0,
                "bins": dict(self.bins),
                "grades": dict(self.grades),
                "statuses": dict(self.statuses),
                "latency_ms": {
                    "p50": lat["p50"] * 1000.0 if "p50" in lat else None,
                    "p99": lat["p99"] * 1000.0 if "p99" in lat else None,
                    "buckets": buckets,
                },
                "link": dict(self.link),
                "events": list(self._events),
                "decisions": [dict(d) for d in self._decisions],
                "alarms": [{"kind": k, "text": v} for k, v in self._alarms.items()],
                "stages": dict(self.stages),
                "decision_log": dict(self.log_health),
                "shadow": dict(self.shadow_counts),
                "belt": dict(self.belt),
                "sizes": {
                    g: {
                        "items": int(a[0]),
                        "length_mm": a[1] / a[0],
                        "width_mm": a[2] / a[0],
                        "bend_mm": a[3] / a[0],
                    }
                    for g, a in self._sizes.items()
                },
                "scale": dict(self.scale),
            }

    # -- helpers --------------------------------------------------------------------
    def _push(self, q: deque[float], now: float, window: float | None = None) -> None:
        q.append(now)
        horizon = now - (window or self._window_s)
        while q and q[0] < horizon:
            q.popleft()

    def _trim(self, now: float) -> None:
        for q, w in (
            (self._in_times, self._window_s),
            (self._proc_times, self._window_s),
            (self._item_times, 60.0),
        ):
            while q and q[0] < now - w:
                q.popleft()


def _rate(q: deque[float], now: float, window: float) -> float:
    """Events per second over the events kept in `q` (0 with fewer than two)."""
    if len(q) < 2:
        return 0.0
    span = q[-1] - q[0]
    return (len(q) - 1) / span if span > 0 else 0.0


def _overlay_dict(o: Overlay) -> dict[str, Any]:
    return {
        "id": o.id,
        "box": list(o.box),
        "grade": o.grade,
        "confidence": o.confidence,
        "bin": o.bin,
    }


# ------------------------------------------------------------------------------------
# Text views


def status_line(snap: dict[str, Any]) -> str:
    """One line for `systemctl status`: fps, items, per-bin counts, link state, alarms.

    e.g. "12.3 fps, 341 items (2L 120, M 200, reject 21), 0 drops, link connected".
    """
    bins = ", ".join(f"{k} {v}" for k, v in sorted(snap.get("bins", {}).items()))
    link = snap.get("link", {})
    state = str(link.get("state", "-")) + (" SAFE" if link.get("safe") else "")
    parts = [
        f"{snap.get('fps_processed', 0.0):.1f} fps",
        f"{snap.get('items', 0)} items" + (f" ({bins})" if bins else ""),
        f"{snap.get('drops', 0)} drops",
        f"link {state}",
    ]
    parts += [f"ALARM {a['text']}" for a in snap.get("alarms", []) if a.get("text")]
    return ", ".join(parts)


def render_status(snap: dict[str, Any]) -> Table:
    """The live terminal view of a status snapshot."""
    t = Table(title="produce-sorter", show_header=False, expand=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    lat = snap.get("latency_ms", {})
    p50, p99 = lat.get("p50"), lat.get("p99")
    t.add_row("fps in / processed", f"{snap['fps_in']:.1f} / {snap['fps_processed']:.1f}")
    t.add_row("frames / drops", f"{snap['frames']} / {snap['drops']}")
    t.add_row("items / per min", f"{snap['items']} / {snap['items_per_min']:.0f}")
    t.add_row("bins", " ".join(f"{k}:{v}" for k, v in sorted(snap["bins"].items())) or "-")
    t.add_row("fates", " ".join(f"{k}:{v}" for k, v in sorted(snap["statuses"].items())) or "-")
    t.add_row(
        "latency p50 / p99",
        "-" if p50 is None else f"{p50:.1f} / {p99:.1f} ms",
    )
    link = snap["link"]
    t.add_row("link", f"{link['state']} {link['url']}" + (" SAFE" if link.get("safe") else ""))
    for alarm in snap.get("alarms", []):
        t.add_row("[red]alarm[/red]", f"[red]{alarm['text']}[/red]")
    return t


def print_summary(console: Console, summary: dict[str, Any], *extra: Any) -> None:
    """Print the end-of-run summary, then any `extra` renderables (the scorecard's table)."""
    console.print()  # a live display may have left the cursor at the end of its last line
    t = Table(title="run summary", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    lat = summary.get("latency_s", {})
    t.add_row(
        "frames (in / processed / dropped)",
        f"{summary['frames_in']} / {summary['frames']} / {summary['drops']}",
    )
    t.add_row("items decided", str(summary["items"]))
    t.add_row("bins", " ".join(f"{k}:{v}" for k, v in sorted(summary["bins"].items())) or "-")
    t.add_row("fates", " ".join(f"{k}:{v}" for k, v in sorted(summary["statuses"].items())))
    if lat.get("n"):
        t.add_row(
            "latency frame -> command",
            f"p50 {lat['p50'] * 1000:.1f} ms, p99 {lat['p99'] * 1000:.1f} ms",
        )
    t.add_row("wall time", f"{summary['wall_s']:.1f} s ({summary['mode']})")
    if "error" in summary:
        t.add_row("[red]stopped by[/red]", f"[red]{summary['error']}[/red]")
    console.print(t)
    for renderable in extra:
        console.print(renderable)
