"""The sorting loop: frames in, gate commands and decision records out.

Per frame (`SortingLoop.process`):
    locate -> track -> crop a fixed window of belt around each item in full view
    (window_px = the model's crop window_mm * px_per_mm)
    -> sorter.perception.preprocess.to_model_input -> classifier (one batch per frame)
    -> for each item crossing the decision line, `sorter.actuation.decider.Decider`: policy
    (mean of its views' scores) -> scheduler (SORT via the link, or late/dry-run) -> decision
    log + status; fates come back on the link's thread.

Controller events reach the status view as one line of words (`sorter.actuation.link_events`), and
`systemctl status` shows `sorter.monitor.status.status_line` at most once a second.

`run(config, options)` wires the pieces: source, clock, link, log, dashboard, signals.
Time comes from one clock object (firmware_bridge.clock):
- camera: MonotonicClock; frames carry monotonic capture times (host = source timeline);
- replay `--realtime`: MonotonicClock; the video is paced at its fps from a start time,
  host time = start + frame.t; capture runs on its own thread with a short queue;
- replay `--fast`: VirtualClock set to each frame's t before it is processed, and the
  `sim://` controller follows the same clock, so the whole run is deterministic.

The capture side never waits on the controller: SORT returns at once and each command's
fate (fired, late, nak, timeout, cancelled) arrives on the link's thread and updates the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np

from sorter.actuation.decider import Decider, ItemViews
from sorter.actuation.link_events import on_event
from sorter.actuation.scheduling import Scheduler, Timeline
from sorter.config import Config, apply_overrides
from sorter.errors import ConfigError, SorterError
from sorter.grading.policy import Policy
from sorter.monitor import notify
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.status import Overlay, Status, status_line
from sorter.perception.preprocess import to_model_input
from sorter.perception.sources import (
    CameraSettings,
    Frame,
    FrameSource,
    ThreadedSource,
    open_source,
)
from sorter.perception.tracking import Track, Tracker, TrackerConfig
from sorter.perception.vision import BackgroundModel, Locator, LocatorConfig, crop_window, window_px

log = logging.getLogger(__name__)


class ClassifierLike(Protocol):
    """What the loop needs from sorter.grading.classifier.Classifier."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def input_size(self) -> tuple[int, int]: ...

    def classify(self, batch: np.ndarray) -> np.ndarray: ...


class SortingLoop:
    """Processes frames one at a time; owns no threads and no devices.

    Seeing items (locate, track, classify their full views) is done here; deciding an item
    that crosses the line, sending its SORT and following its fate is `sorter.actuation.decider`'s.
    """

    def __init__(
        self,
        config: Config,
        classifier: ClassifierLike,
        locator: Any,
        tracker: Tracker,
        scheduler: Scheduler,
        decisions: DecisionLog,
        status: Status,
        *,
        window: tuple[int, int],
        keep_crops: bool = False,
    ) -> None:
        self.config = config
        self.classifier = classifier
        self.locator = locator
        self.tracker = tracker
        self.status = status
        self.decider = Decider(
            config, classifier.labels, scheduler, decisions, status, keep_crops=keep_crops
        )
        self.window = window
        self.keep_crops = keep_crops
        self._items: dict[int, ItemViews] = {}
        self.lost = 0
        """Tracks that ended without crossing the decision line (after being seen whole)."""
        status.line_x = tracker.line

    def process(self, frame: Frame, received: float) -> list[DecisionRecord]:
        """Process one frame; `received` is `time.perf_counter()` when it was read.

        Returns the decisions made on this frame.
        """
        t0 = time.perf_counter()
        detections = self.locator.locate(frame.image)
        t1 = time.perf_counter()
        tracks = self.tracker.update(detections, frame.t, frame.index)
        t2 = time.perf_counter()
        seen = [tr for tr in tracks if tr.last.frame_index == frame.index]
        self._classify_views(frame, seen)
        t3 = time.perf_counter()
        self.status.add_stages({"locate": t1 - t0, "track": t2 - t1, "classify": t3 - t2})

        made = [self._decide(track, frame.t, received) for track in self.tracker.crossings]
        for track in self.tracker.ended:
            self._forget(track)
        self.status.frame_done(frame.image, [self._overlay(tr) for tr in seen])
        return made

    def process_still(self, frame: Frame, received: float) -> DecisionRecord:
        """Bench mode: the frame is one item's picture (no tracking); decide it at once."""
        t0 = time.perf_counter()
        batch = to_model_input(frame.image, self.classifier.input_size)[None]
        scores = self.classifier.classify(batch)
        self.status.add_stage("classify", time.perf_counter() - t0)
        views = ItemViews([np.asarray(scores[0], dtype=np.float32)], [frame.image])
        rec = self.decider.decide(frame.index + 1, views, frame.t, received)
        self.status.frame_done(frame.image, [])
        return rec

    def finish(self) -> None:
        """End of stream: every track still open ends undecided."""
        for track in self.tracker.flush():
            self._forget(track)

    # -- steps ----------------------------------------------------------------------
    def _classify_views(self, frame: Frame, seen: Sequence[Track]) -> None:
        """Grade, in one batch, every undecided item seen whole in this frame."""
        todo: list[tuple[int, np.ndarray]] = []
        for track in seen:
            view = track.last
            if not view.full or self.decider.decided(track.id) is not None:
                continue
            d = view.detection
            todo.append((track.id, crop_window(frame.image, d.cx, d.cy, self.window)))
        if not todo:
            return
        size = self.classifier.input_size
        batch = np.stack([to_model_input(crop, size) for _, crop in todo])
        scores = self.classifier.classify(batch)
        for (item, crop), s in zip(todo, scores, strict=True):
            views = self._items.setdefault(item, ItemViews())
            views.scores.append(np.asarray(s, dtype=np.float32))
            if self.keep_crops:
                views.crops.append(crop)

    def _decide(self, track: Track, t_frame: float, received: float) -> DecisionRecord:
        views = self._items.pop(track.id, ItemViews())
        t_line = track.t_line if track.t_line is not None else t_frame
        return self.decider.decide(track.id, views, t_line, received)

    def _forget(self, track: Track) -> None:
        views = self._items.pop(track.id, None)
        decided = self.decider.decided(track.id) is not None
        if track.t_line is None and not decided and views and views.scores:
            self.lost += 1
            log.warning("item %d left the view without crossing the decision line", track.id)

    def _overlay(self, track: Track) -> Overlay:
        d = track.last.detection
        rec = self.decider.decided(track.id)
        return Overlay(
            id=track.id,
            box=(d.x, d.y, d.w, d.h),
            grade=rec.label if rec else "",
            confidence=rec.confidence if rec else 0.0,
            bin=rec.bin if rec else "",
        )


# ------------------------------------------------------------------------------------
# Running the loop


@dataclass
class RunOptions:
    """What `sorter run` was asked to do (the config holds everything else)."""

    camera: int | str | None = None
    """Camera number or device path."""
    video: Path | None = None
    """Video file to replay."""
    images: Path | None = None
    """Folder of still images."""
    mode: str | None = None
    """"realtime", "fast" or None (camera: realtime; replay: fast against sim:// or dry run)."""
    dry_run: bool = False
    """Send nothing to a controller (status dry-run)."""
    truth: Path | None = None
    """Ground-truth JSON of a simulated belt: its geometry is used and a scorecard printed."""
    model: Path | None = None
    """Model file (overrides the config)."""
    progress: Callable[[Status], None] | None = None
    """Called after each frame (the terminal view)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop the run cleanly (signals set it too)."""
    handle_signals: bool = True
    """Install SIGINT/SIGTERM handlers (only from the main thread)."""
    classifier: ClassifierLike | None = None
    """An already loaded classifier (tests, benchmarks); else one is loaded from the model."""
    source: FrameSource | None = None
    """An already built frame source (instead of camera/video/images); treated as live."""
    link: Any = None
    """An already built controller link (instead of opening config.serial.url)."""


@dataclass
class RunResult:
    """What a run produced."""

    summary: dict[str, Any]
    """The JSON summary (frames, wall_s, stages, latency_s, counts, scorecard...)."""
    records: list[DecisionRecord]
    """Every decision, in item order."""
    scorecard: Any = None
    """sorter.replay.scorecard.Scorecard when a truth file was given."""


def load_truth(path: Path) -> dict[str, Any]:
    """Read a simulated belt's ground-truth JSON (sorter.replay.belt_sim's format)."""
    from sorter.replay.belt_sim import load_truth as read

    return dict(read(path))


def geometry_from_truth(config: Config, truth: dict[str, Any]) -> Config:
    """The config with the belt geometry a simulated video was made with."""
    px_per_mm = truth.get("px_per_mm")
    speed_px_s = truth.get("speed_px_s")
    size = truth.get("size")
    line_x = truth.get("line_x")
    over: dict[str, Any] = {}
    if isinstance(px_per_mm, int | float) and px_per_mm > 0:
        over["belt.px_per_mm"] = float(px_per_mm)
        if isinstance(speed_px_s, int | float) and speed_px_s > 0:
            over["belt.speed_mm_s"] = float(speed_px_s) / float(px_per_mm)
    if isinstance(size, list) and size and isinstance(line_x, int | float):
        over["belt.decision_line"] = float(line_x) / float(size[0])
    over["belt.direction"] = "left-to-right"
    return apply_overrides(config, over)


def make_locator(config: Config) -> Locator:
    """A Locator from the [locate] section (keys named as LocatorConfig's)."""
    c = config.locate
    names = {f.name for f in dataclasses.fields(LocatorConfig)}
    lc = LocatorConfig(**{k: v for k, v in dataclasses.asdict(c).items() if k in names})
    background = None
    if c.method == "background":
        if not c.background:
            raise ConfigError(
                "locate.background: method 'background' needs the empty-belt file; "
                'make one with `sorter calibrate-belt` or set locate.method = "color"'
            )
        background = BackgroundModel.load(c.background)
    return Locator(lc, background)


def camera_settings(config: Config) -> CameraSettings:
    """sorter.perception.sources.CameraSettings from [camera]. A camera silent for camera.stall_s is
    reported as stalled (controller put safe); silent 5x longer (at least 10 s) ends the run."""
    c = config.camera
    return CameraSettings(
        size=(c.width, c.height),
        fps=c.fps,
        backend=c.backend,
        read_timeout_s=max(10.0, 5.0 * c.stall_s),
    )


def make_tracker(config: Config, frame_size: tuple[int, int]) -> Tracker:
    """A Tracker from the [belt] and [track] sections for this frame size."""
    b, t = config.belt, config.track
    tc = TrackerConfig(
        direction=b.direction,
        line=b.decision_line * frame_size[0],
        speed_px_s=b.speed_mm_s * b.px_per_mm,
        max_jump_px=t.max_jump_px,
        max_cross_px=t.max_cross_px,
        max_missed=t.max_missed,
        speed_smoothing=t.speed_smoothing,
    )
    return Tracker(tc, frame_size=frame_size)


def _load_classifier(config: Config, model: Path | None) -> Any:
    from sorter.grading.classifier import Classifier

    path = model or (Path(config.model.path) if config.model.path else None)
    return Classifier(path, num_threads=config.model.threads)


def _open_link(config: Config, url: str, clock: Any) -> Any:
    from firmware_bridge.link import ControllerLink

    s = config.serial
    return ControllerLink(
        url,
        clock=clock,
        heartbeat_s=s.heartbeat_ms / 1000.0,
        ack_timeout_s=s.ack_timeout_ms / 1000.0,
        retries=s.retries,
    )


def _configure_link(link: Any, config: Config) -> None:
    n_gates = max(int(k) for k in config.gates) + 1 if config.gates else 1
    pulses = [
        config.gates[str(i)].pulse_ms if str(i) in config.gates else 1 for i in range(n_gates)
    ]
    link.configure(n_gates, pulses)


class _Signals:
    """SIGINT/SIGTERM set `stop`; a second one raises KeyboardInterrupt."""

    def __init__(self, stop: threading.Event, enabled: bool) -> None:
        self.stop = stop
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: stopping (flushing pending decisions)", signal.Signals(signum).name)
        self.stop.set()

    def __enter__(self) -> _Signals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run(config: Config, opts: RunOptions, decisions: DecisionLog, status: Status) -> RunResult:
    """Run the loop until the source ends or `opts.stop` is set; see the module docstring.

    `decisions` is not yet opened; `status` may be served by a dashboard meanwhile.
    """
    from firmware_bridge.clock import MonotonicClock, VirtualClock

    truth = load_truth(opts.truth) if opts.truth else None
    if truth is not None:
        config = geometry_from_truth(config, truth)
        log.info("belt geometry from %s: %s", opts.truth, config.belt)
    live = opts.camera is not None or opts.source is not None
    url = config.serial.url
    mode = choose_mode(opts, url, live)
    clock: Any = VirtualClock() if mode == "fast" else MonotonicClock()
    classifier = opts.classifier or _load_classifier(config, opts.model)
    meta = getattr(classifier, "metadata", None)
    window_mm = tuple(meta.crop.window_mm) if meta is not None else (250.0, 250.0)
    win = window_px((float(window_mm[0]), float(window_mm[1])), config.belt.px_per_mm)
    locator = make_locator(config)
    Policy(config, classifier.labels)  # check per-grade thresholds against the labels early

    recorder = _StartRecorder(clock)
    source = opts.source or open_source(
        camera=opts.camera,
        video=opts.video,
        images=opts.images,
        realtime=mode == "realtime" and not live,
        clock=recorder,
        camera_settings=camera_settings(config),
    )
    wall0 = time.monotonic()
    stop = opts.stop
    link: Any = None
    loop: SortingLoop | None = None
    frames_seen = 0
    source_error: SorterError | None = None
    stalled = False
    status.link["url"] = "dry-run" if opts.dry_run else url
    with contextlib.ExitStack() as stack:
        stack.enter_context(_Signals(stop, opts.handle_signals))
        if not opts.dry_run:
            link = opts.link if opts.link is not None else _open_link(config, url, clock)
            stack.enter_context(link)
            _configure_link(link, config)
            status.set_link(str(getattr(link, "state", "connected")), safe=False)
            if hasattr(link, "on_event"):
                link.on_event(lambda ev: on_event(status, ev))
        # live and paced replays capture on their own thread (drop oldest); still images
        # and fast replays are read in step with processing
        threaded = mode == "realtime" and opts.images is None
        src: FrameSource = (
            ThreadedSource(source, maxsize=config.camera.queue_frames) if threaded else source
        )
        stack.enter_context(src)
        decisions.open(
            source=str(opts.camera if opts.camera is not None else opts.video or opts.images),
            model=str(getattr(classifier, "model_path", "")),
            labels=list(classifier.labels),
        )
        stack.callback(_close_if_open, decisions)
        notify.ready()
        systemd = SystemdStatus()
        timeline = Timeline(0.0)
        scheduler = Scheduler(config, clock, link, timeline=timeline, dry_run=opts.dry_run)
        try:
            for frame, received in _frames(src, config.camera.stall_s, stop, status):
                if frame is None:  # stall
                    if not stalled:
                        stalled = True
                        _stall(status, link, config.camera.stall_s)
                    systemd.update(status)
                    continue
                if stalled:
                    stalled = False
                    _resumed(status, link)
                status.frame_in()
                if isinstance(src, ThreadedSource) and src.drops > status.drops:
                    status.frame_dropped(src.drops - status.drops)
                if loop is None:  # the first frame gives the frame size and the timeline
                    if not live:  # a camera's frames are on the host clock already: offset 0
                        fast = mode == "fast"
                        timeline.offset = 0.0 if fast else _offset(recorder.start, clock, frame)
                    h, w = frame.image.shape[:2]
                    tracker = make_tracker(config, (w, h))
                    loop = SortingLoop(
                        config, classifier, locator, tracker, scheduler, decisions, status,
                        window=win, keep_crops=decisions.crops_dir is not None,
                    )  # fmt: skip
                if mode == "fast":
                    clock.set(max(clock.now(), frame.t))
                if opts.images is not None:
                    loop.process_still(frame, received)
                else:
                    loop.process(frame, received)
                frames_seen += 1
                notify.watchdog()
                if link is not None:
                    state = str(getattr(link, "state", "connected"))
                    if state != status.link["state"]:
                        status.set_link(state)
                systemd.update(status)
                if opts.progress is not None:
                    opts.progress(status)
        except SorterError as err:  # a source that broke mid-stream: keep what was done
            source_error = err
            log.error("%s", err)
        if stop.is_set():
            notify.stopping()
        if loop is not None:
            loop.finish()
        _flush_pending(decisions, scheduler, clock, link, mode, config)
        if link is not None and (stop.is_set() or source_error is not None):
            with contextlib.suppress(Exception):
                link.safe()
            status.set_link("safe", safe=True)
        systemd.update(status, force=True)
        records = decisions.records()
        summary = _summary(status, decisions, records, loop, opts, mode, url)
        summary.update(frames=frames_seen, wall_s=time.monotonic() - wall0)
        if source_error is not None:
            summary["error"] = str(source_error)
        scorecard = None
        if truth is not None:
            scorecard = _score(records, truth, config)
            summary["scorecard"] = (
                scorecard.as_dict() if hasattr(scorecard, "as_dict") else scorecard
            )
        decisions.close(summary)
    return RunResult(summary=summary, records=records, scorecard=scorecard)


def choose_mode(opts: RunOptions, url: str, live: bool) -> str:
    """ "realtime" or "fast" for this run (see RunOptions.mode); SorterError when impossible."""
    sim = url.startswith("sim://")
    mode = opts.mode or ("realtime" if live or not (sim or opts.dry_run) else "fast")
    if mode == "fast" and live:
        raise SorterError("--fast works on replay only (--video/--images), not on a camera")
    if mode == "fast" and not (sim or opts.dry_run):
        raise SorterError(
            f"--fast replays on a virtual clock, which only the simulator follows: use "
            f"--serial sim:// or --dry-run, or --realtime against {url}"
        )
    return mode


def _summary(
    status: Status,
    decisions: DecisionLog,
    records: list[DecisionRecord],
    loop: SortingLoop | None,
    opts: RunOptions,
    mode: str,
    url: str,
) -> dict[str, Any]:
    """The run's summary (what `sorter run --json` prints), from the status and the log."""
    snap = status.snapshot()
    return {
        "frames": snap["frames"],  # the caller sets frames and wall_s
        "wall_s": snap["uptime_s"],
        "mode": mode,
        "serial": "dry-run" if opts.dry_run else url,
        "frames_in": snap["frames_in"],
        "drops": snap["drops"],
        "items": snap["items"],
        "lost": loop.lost if loop else 0,
        "bins": snap["bins"],
        "grades": snap["grades"],
        "statuses": _count(r.status for r in records)
        if decisions.keep is None
        else snap["statuses"],
        "stages": snap["stages"],
        "latency_s": status.latency_percentiles(),
        "stopped": opts.stop.is_set(),
        "run": decisions.run,
    }


class SystemdStatus:
    """Keeps `systemctl status` current: `notify.status(status_line(...))` at most once per
    `interval_s` (a no-op off systemd)."""

    def __init__(
        self,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        enabled: bool | None = None,
    ):
        self.interval_s = interval_s
        self._clock = clock
        self.enabled = notify.default().enabled if enabled is None else enabled
        """Off systemd (no notify socket) nothing is built or sent."""
        self._last: float | None = None

    def update(self, status: Status, *, force: bool = False) -> bool:
        """Send the status line if the last one is `interval_s` old (or `force`)."""
        if not self.enabled:
            return False
        now = self._clock()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        notify.status(status_line(status.snapshot()))
        return True


def _offset(start: float | None, clock: Any, frame: Frame) -> float:
    """Host minus source time of a realtime replay: the clock time the source paced its
    first frame from, else (a source that read no clock) now minus the frame's time."""
    return start if start is not None else float(clock.now()) - frame.t


def _close_if_open(decisions: DecisionLog) -> None:
    """Close the log on an error path (the normal path closes it with the summary)."""
    if decisions.is_open:
        decisions.close()


class _StartRecorder:
    """Wraps the run's clock for a replay source, remembering the first `now()` it reads.

    VideoSource paces frame i at start + t_i where start is its first `now()`: that is
    exactly the offset from the source timeline to the host clock.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.start: float | None = None

    def now(self) -> float:
        t = float(self._clock.now())
        if self.start is None:
            self.start = t
        return t

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def _frames(
    src: FrameSource, stall_s: float, stop: threading.Event, status: Status
) -> Iterator[tuple[Frame | None, float]]:
    """(frame, perf_counter when read); (None, t) once per `stall_s` without frames."""
    if isinstance(src, ThreadedSource):
        last = time.monotonic()
        while not stop.is_set():
            try:
                frame = src.get(timeout=min(0.1, stall_s))
            except StopIteration:
                return
            now = time.monotonic()
            if frame is None:
                if now - last >= stall_s:
                    last = now
                    yield None, time.perf_counter()
                continue
            last = now
            yield frame, time.perf_counter()
        return
    it = iter(src)
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            return
        received = time.perf_counter()
        status.add_stage("decode", received - t0)
        yield frame, received


def _stall(status: Status, link: Any, stall_s: float) -> None:
    text = f"no frame for {stall_s:.1f} s: camera stalled; controller told to go safe"
    log.error("%s", text)
    status.alarm("camera_stalled", text)
    status.event("STALL", text)
    if link is not None:
        try:
            link.safe()
            status.set_link(str(getattr(link, "state", "safe")), safe=True)
        except Exception as err:  # the stall is the news; a failing SAFE is logged with it
            log.error("could not put the controller in the safe state: %s", err)


def _resumed(status: Status, link: Any) -> None:
    status.alarm("camera_stalled", None)
    status.event("RESUMED", "frames are arriving again")
    if link is not None and hasattr(link, "resume"):
        link.resume()


def _flush_pending(
    decisions: DecisionLog,
    scheduler: Scheduler,
    clock: Any,
    link: Any,
    mode: str,
    config: Config,
) -> None:
    """Wait (bounded) for the fates of sent commands; cancel what is left."""
    pending = decisions.pending()
    if not pending or link is None:
        return
    last_fire = max((r.fire_at or 0.0) for r in pending)
    slack = config.serial.window_ms / 1000.0 + config.serial.ack_timeout_ms / 1000.0 * (
        config.serial.retries + 1
    )
    end_host = scheduler.timeline.to_host(last_fire) + slack + 0.2
    deadline = time.monotonic() + max(5.0, end_host - clock.now() + 5.0)
    if mode == "fast":
        while clock.now() < end_host:  # let the simulator reach every fire time
            clock.set(min(end_host, clock.now() + 0.01))
    while decisions.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    for rec in decisions.pending():
        log.warning("item %d: no fate from the controller; cancelling", rec.item)
        with contextlib.suppress(Exception):
            link.cancel(rec.item)
        decisions.update_fate(rec.item, "cancelled", bin_name=config.bins.reject)


def _count(values: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _score(records: list[DecisionRecord], truth: dict[str, Any], config: Config) -> Any:
    """E1's scorecard, with this config's bins and gate geometry (ideal fire times)."""
    from sorter.replay.scorecard import score

    reject = config.bins.reject
    speed = config.belt.speed_mm_s
    delays = {int(k): g.distance_mm / speed for k, g in config.gates.items()}
    return score(
        [r.as_dict() for r in records],
        truth,
        bin_of=lambda grade: config.bins.grades.get(grade, reject),
        gate_delay_s=delays,
        reject_bin=reject,
    )
