"""Running the sorting loop: `Runner` (start / step / stop) and `run()`.

`Runner(config, options, decisions, status)` builds the parts (`sorter.runtime.wiring`),
`start()` opens the link, the source and the decision log and installs the signal handlers,
`step()` feeds one frame to `sorter.runtime.loop.SortingLoop` (or notes a camera stall:
controller put safe), `stop()` flushes the fates still pending and returns the
`RunResult`; `close()` (the context manager's exit) stores the summary in the decision log
and closes everything. `run()` does all of that until the source ends or `options.stop` is
set. Scoring against a truth file is the caller's (`sorter.replay.truth`).

Time comes from one clock object (firmware_bridge.clock):
- camera: MonotonicClock; frames carry monotonic capture times (host = source timeline);
- replay `--realtime`: MonotonicClock; the video is paced at its fps from a start time
  (`FrameSource.start_at`), host time = start + frame.t; capture runs on its own thread
  with a short queue;
- replay `--fast`: VirtualClock set to each frame's t before it is processed, and the
  `sim://` controller follows the same clock, so the whole run is deterministic.

Controller events reach the status view as one line of words (`sorter.actuation.link_events`),
and `systemctl status` shows `sorter.monitor.status.status_line` at most once a second. The
capture side never waits on the controller: SORT returns at once and each command's fate
(fired, late, nak, timeout, cancelled) arrives on the link's thread and updates the log.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from firmware_bridge.clock import MonotonicClock, VirtualClock
from firmware_bridge.command import Fate
from sorter.actuation.link import ControllerLinkLike
from sorter.actuation.link_events import on_event
from sorter.actuation.scheduling import Scheduler, Timeline
from sorter.config import Config
from sorter.errors import SorterError
from sorter.grading.model_check import model_id
from sorter.grading.policy import Policy
from sorter.grading.shadow import ShadowGrader, load_shadow
from sorter.monitor import notify
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.status import Status, status_line
from sorter.perception.lens import make_lens
from sorter.perception.sources import Frame, FrameSource, ThreadedSource, open_source
from sorter.perception.surround import model_background
from sorter.runtime.liveness import Liveness, LoopWatch
from sorter.runtime.loop import ClassifierLike, SortingLoop
from sorter.runtime.reload import Loaded, ModelReloader
from sorter.runtime.wiring import (
    camera_settings,
    configure_link,
    crop_window_px,
    load_classifier,
    make_locator,
    make_scale_marker,
    make_tracker,
    open_link,
)

log = logging.getLogger(__name__)


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
    model: Path | None = None
    """Model file (overrides the config)."""
    progress: Callable[[Status], None] | None = None
    """Called after each frame (the terminal view)."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to stop the run cleanly (signals set it too)."""
    reload: threading.Event = field(default_factory=threading.Event)
    """Set to reload the model file between two frames (SIGHUP sets it; `sorter.runtime.reload`)."""
    handle_signals: bool = True
    """Install SIGINT/SIGTERM/SIGHUP handlers (only from the main thread)."""
    classifier: ClassifierLike | None = None
    """An already loaded classifier (tests, benchmarks); else one is loaded from the model."""
    source: FrameSource | None = None
    """An already built frame source (instead of camera/video/images); treated as live."""
    link: ControllerLinkLike | None = None
    """An already built controller link (instead of opening config.serial.url)."""
    shadow: Path | None = None
    """A candidate model graded beside the active one (overrides [model] shadow)."""
    shadow_classifier: ClassifierLike | None = None
    """An already loaded candidate (tests); else one is loaded from `shadow`."""


@dataclass
class RunResult:
    """What a run produced."""

    summary: dict[str, Any]
    """The JSON summary (frames, wall_s, stages, latency_s, counts...); stored in the decision
    log when the runner closes, so a caller may add to it first (the scorecard)."""
    records: list[DecisionRecord]
    """Every decision, in item order."""
    scorecard: Any = None
    """sorter.replay.scorecard.Scorecard when the caller scored the run against a truth file
    (`sorter.replay.truth.run_with_truth`)."""


class Runner:
    """One run of the sorting loop; see the module docstring. Use it as a context manager:

        with Runner(config, options, decisions, status) as runner:   # start()
            while runner.step():
                ...
            result = runner.stop()
        # close(): summary stored in the decision log, source and link closed

    `decisions` is not yet opened; `status` may be served by a dashboard meanwhile.
    """

    def __init__(
        self, config: Config, opts: RunOptions, decisions: DecisionLog, status: Status
    ) -> None:
        self.config = config
        self.opts = opts
        self.decisions = decisions
        self.status = status
        self.live = opts.camera is not None or opts.source is not None
        """A camera (or a source handed in): frames are on the host clock already."""
        self.url = config.serial.url
        self.mode = choose_mode(opts, self.url, self.live)
        """ "realtime" or "fast"."""
        self.virtual: VirtualClock | None = VirtualClock() if self.mode == "fast" else None
        """The replay clock of a fast run (the simulator follows it)."""
        self.clock: MonotonicClock | VirtualClock = self.virtual or MonotonicClock()
        self.classifier: ClassifierLike = opts.classifier or load_classifier(config, opts.model)
        self.window = crop_window_px(config, self.classifier)
        self.locator = make_locator(config)
        model_background(config.locate.surround, self.classifier)  # "model" needs one
        self.scale_marker = make_scale_marker(config)  # a bad [camera] scale_marker fails here
        Policy(config, self.classifier.labels)  # check per-grade thresholds against the labels
        self.model_path: str | None = _model_file(config, opts, self.classifier)
        """The model file a reload reads again (None: a classifier without a file)."""
        self.model_id: str | None = model_id(self.model_path) if self.model_path else None
        self.reloads: list[dict[str, Any]] = []
        """Every reload attempt: {frame, path, ok, model_id | error, views_dropped}."""
        self._reloader: ModelReloader | None = None
        self.shadow: ShadowGrader | None = make_shadow(config, opts, self.mode, self.window)
        """The candidate graded beside the active model (shadow mode), or None."""
        self.source: FrameSource = opts.source or open_source(
            camera=opts.camera,
            video=opts.video,
            images=opts.images,
            realtime=self.mode == "realtime" and not self.live,
            clock=self.clock,
            camera_settings=camera_settings(config),
        )
        self.timeline = Timeline(0.0)
        """Source -> host time; its offset is set on the first frame (`_timeline_offset`)."""
        self.link: ControllerLinkLike | None = None
        self.loop: SortingLoop | None = None
        self.frames = 0
        """Frames processed."""
        self.error: SorterError | None = None
        """The error that ended the stream early (a source that broke), if any."""
        self.result: RunResult | None = None
        self._wall0 = time.monotonic()
        self._stack = contextlib.ExitStack()
        self._src: FrameSource = self.source
        self._scheduler: Scheduler | None = None
        self._systemd: SystemdStatus | None = None
        self._frames: Iterator[tuple[Frame | None, float]] | None = None
        self._stalled = False
        self.liveness = Liveness(
            max(config.serial.loop_timeout_ms / 1000.0, config.camera.stall_s + 1.0)
        )
        """The loop's progress: a beat per step; stale -> the link is silenced (LoopWatch)."""
        self._watch: LoopWatch | None = None

    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start / step / stop ------------------------------------------------------------
    def start(self) -> None:
        """Install the signal handlers, open the link (CONFIG sent) and the source, open the
        decision log and tell systemd the service is ready. Everything opened is closed
        again if a later part fails."""
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> None:
        opts, config, status, stack = self.opts, self.config, self.status, self._stack
        status.link["url"] = "dry-run" if opts.dry_run else self.url
        stack.enter_context(_Signals(opts.stop, opts.reload, opts.handle_signals))
        if not opts.dry_run:
            link = opts.link if opts.link is not None else open_link(config, self.url, self.clock)
            stack.enter_context(link)
            self.link = link
            configure_link(link, config)
            status.set_link(link.state, safe=False)
            link.on_event(lambda ev: on_event(status, ev))
        # live and paced replays capture on their own thread (drop oldest); still images
        # and fast replays are read in step with processing
        if self.mode == "realtime" and opts.images is None:
            self._src = ThreadedSource(self.source, maxsize=config.camera.queue_frames)
        stack.enter_context(self._src)
        if self.shadow is not None:
            stack.enter_context(self.shadow)
        self.decisions.open(
            source=str(opts.camera if opts.camera is not None else opts.video or opts.images),
            model=str(getattr(self.classifier, "model_path", "")),
            labels=list(self.classifier.labels),
        )
        stack.callback(_close_if_open, self.decisions)
        # write failures: counted on /metrics and the dashboard, a decision_log alarm
        self.decisions.watch(status.decision_log)
        notify.ready()
        self._systemd = SystemdStatus()
        self._scheduler = Scheduler(
            config, self.clock, self.link, timeline=self.timeline, dry_run=opts.dry_run
        )
        self._frames = _frames(self._src, config.camera.stall_s, opts.stop, status)
        # a hung loop must let the controller fall to safe on its own heartbeat timeout
        self.liveness.beat()
        self._watch = LoopWatch(self.liveness, self.link, status.alarm).start()
        stack.callback(self._watch.stop)

    def step(self) -> bool:
        """Process the next frame, or note a stall (no frame for camera.stall_s). False once
        the source has ended, `stop` was set or the source broke (`error`)."""
        if self._frames is None or self._systemd is None:
            raise RuntimeError("Runner.step() before start()")
        self.liveness.beat()
        self._check_reload()
        try:
            got = next(self._frames, None)
        except SorterError as err:  # a source that broke mid-stream: keep what was done
            self.error = err
            log.error("%s", err)
            return False
        self.liveness.beat()
        if got is None:
            return False
        frame, received = got
        if frame is None:
            if not self._stalled:
                self._stalled = True
                _stall(self.status, self.link, self.config.camera.stall_s)
            self._systemd.update(self.status)
            return True
        if self._stalled:
            self._stalled = False
            _resumed(self.status, self.link)
        self._process(frame, received)
        self.liveness.beat()
        self._systemd.update(self.status)
        if self.opts.progress is not None:
            self.opts.progress(self.status)
        return True

    def _process(self, frame: Frame, received: float) -> None:
        status = self.status
        status.frame_in()
        if isinstance(self._src, ThreadedSource) and self._src.drops > status.drops:
            status.frame_dropped(self._src.drops - status.drops)
        loop = self.loop or self._first_frame(frame)
        if self.virtual is not None:
            self.virtual.set(max(self.virtual.now(), frame.t))
        if self.opts.images is not None:
            loop.process_still(frame, received)
        else:
            loop.process(frame, received)
        self.frames += 1
        notify.watchdog()
        if self.link is not None and self.link.state != status.link["state"]:
            status.set_link(self.link.state)

    # -- reloading the model (SIGHUP) ---------------------------------------------------
    def request_reload(self) -> None:
        """Reload the model file between two frames (what SIGHUP does)."""
        self.opts.reload.set()

    def _check_reload(self) -> None:
        """Start a requested reload; swap the model in when its load has finished (a fast
        replay waits for it)."""
        if self.opts.reload.is_set():
            self.opts.reload.clear()
            if self.model_path is None:
                self._reload_refused("no model file to reload (a classifier handed in)")
            else:
                if self._reloader is None:
                    self._reloader = ModelReloader(self.config, self.model_path)
                if not self._reloader.start():
                    self.opts.reload.set()  # one is loading: ask again once it is done
        if self._reloader is not None:
            done = self._reloader.result(wait=None if self.virtual is not None else 0.0)
            if done is not None:
                self._apply_reload(done)

    def _apply_reload(self, done: Loaded) -> None:
        if done.classifier is None:
            self._reload_refused(str(done.error))
            return
        clf = done.classifier
        try:
            model_background(self.config.locate.surround, clf)
        except SorterError as err:
            self._reload_refused(str(err))
            return
        window = crop_window_px(self.config, clf)
        dropped = 0
        if self.loop is not None:
            dropped = self.loop.swap_classifier(clf, window, done.model_id)
        self.classifier, self.window, self.model_id = clf, window, done.model_id
        text = f"model {done.path} ({done.model_id}) grades from frame {self.frames + 1} on"
        log.warning("reload: %s", text)
        self.status.alarm("model_reload", None)
        self.status.event("RELOADED", text)
        self.reloads.append(
            {"frame": self.frames, "path": done.path, "ok": True, "model_id": done.model_id,
             "views_dropped": dropped}
        )  # fmt: skip

    def _reload_refused(self, why: str) -> None:
        text = f"model reload refused, still sorting with {self.model_id or 'the old model'}: {why}"
        log.error("%s", text)
        self.status.alarm("model_reload", text)
        self.status.event("RELOAD", text)
        self.reloads.append({"frame": self.frames, "path": self.model_path, "ok": False,
                             "error": why})  # fmt: skip

    def _first_frame(self, frame: Frame) -> SortingLoop:
        """The first frame gives the frame size (tracker) and the timeline offset."""
        assert self._scheduler is not None
        self.timeline.offset = self._timeline_offset(frame)
        h, w = frame.image.shape[:2]
        self.loop = SortingLoop(
            self.config,
            self.classifier,
            self.locator,
            make_tracker(self.config, (w, h)),
            self._scheduler,
            self.decisions,
            self.status,
            window=self.window,
            keep_crops=self.decisions.crops_dir is not None,
            lens=make_lens(self.config.lens, (w, h)),
            scale_marker=self.scale_marker,
            shadow=self.shadow,
        )
        self.loop.model_id = self.model_id
        return self.loop

    def _timeline_offset(self, frame: Frame) -> float:
        """Host minus source time. 0 for a camera (its frames are on the host clock) and for
        a fast replay (the virtual clock follows the frames); for a paced replay the clock
        time the source paced its first frame from, else (a source that read no clock) now
        minus the frame's time."""
        if self.live or self.virtual is not None:
            return 0.0
        start = self._src.start_at
        return start if start is not None else float(self.clock.now()) - frame.t

    def stop(self) -> RunResult:
        """End the run: tracks still open end undecided, pending fates are waited for
        (bounded) and cancelled, the controller is put safe when stopped or broken. Returns
        the result; `close()` stores its summary."""
        opts, status = self.opts, self.status
        if self._scheduler is None or self._systemd is None:
            raise RuntimeError("Runner.stop() before start()")
        if opts.stop.is_set():
            notify.stopping()
        if self._watch is not None:  # no more steps: the flush below must not be silenced
            self._watch.stop()
        if self.loop is not None:
            self.loop.finish()
        _flush_pending(self.decisions, self._scheduler, self.clock, self.link, self.config)
        if not self.decisions.flush(timeout=5.0):  # the database matches memory from here
            log.error("decision log: writes still queued at stop: %s", self.decisions.health())
        if self.link is not None and (opts.stop.is_set() or self.error is not None):
            with contextlib.suppress(Exception):
                self.link.safe()
            status.set_link("safe", safe=True)
        self._systemd.update(status, force=True)
        records = self.decisions.records()
        summary = _summary(status, self.decisions, records, self.loop, opts, self.mode, self.url)
        summary.update(frames=self.frames, wall_s=time.monotonic() - self._wall0)
        if self.shadow is not None:
            summary["shadow"] = self.shadow.stats()
        summary["model"] = {"path": self.model_path, "id": self.model_id, "reloads": self.reloads}
        if self.error is not None:
            summary["error"] = str(self.error)
        self.result = RunResult(summary=summary, records=records)
        return self.result

    def close(self) -> None:
        """Store the summary (after `stop()`) and close the log, the source and the link;
        restore the signal handlers."""
        try:
            if self.result is not None and self.decisions.is_open:
                self.decisions.close(self.result.summary)
        finally:
            self._stack.close()


def run(config: Config, opts: RunOptions, decisions: DecisionLog, status: Status) -> RunResult:
    """Run the loop until the source ends or `opts.stop` is set (start, step, stop, close)."""
    with Runner(config, opts, decisions, status) as runner:
        while runner.step():
            pass
        return runner.stop()


class _Signals:
    """SIGINT/SIGTERM set `stop`; a second one raises KeyboardInterrupt. SIGHUP sets
    `reload` (the model is reloaded between two frames)."""

    def __init__(self, stop: threading.Event, reload: threading.Event, enabled: bool) -> None:
        self.stop = stop
        self.reload = reload
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s: stopping (flushing pending decisions)", signal.Signals(signum).name)
        self.stop.set()

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGHUP: reloading the model between two frames")
        self.reload.set()

    def __enter__(self) -> _Signals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hup)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _model_file(config: Config, opts: RunOptions, classifier: Any) -> str | None:
    """The file the running model came from (what a reload reads again), if any."""
    if opts.classifier is not None:
        path = getattr(classifier, "model_path", None)
    else:
        path = opts.model or config.model.path or getattr(classifier, "model_path", None)
    return str(path) if path is not None and Path(str(path)).is_file() else None


def make_shadow(
    config: Config, opts: RunOptions, mode: str, window: tuple[int, int]
) -> ShadowGrader | None:
    """The shadow grader of `--shadow` / [model] shadow (None when neither is set). A fast
    replay waits for it (deterministic); elsewhere it drops views it cannot keep up with."""
    if opts.shadow_classifier is not None:
        return ShadowGrader(opts.shadow_classifier, config, block=mode == "fast")
    path = str(opts.shadow) if opts.shadow is not None else config.model.shadow
    if not path:
        return None
    shadow = load_shadow(path, config, block=mode == "fast")
    theirs = crop_window_px(config, shadow.classifier)
    if theirs != window:
        log.warning(
            "shadow model %s was trained on a %dx%d px window, the active model's is %dx%d: "
            "it grades the active model's crops (resized)",
            path,
            *theirs,
            *window,
        )
    return shadow


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
        "decision_log": snap["decision_log"],
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


def _close_if_open(decisions: DecisionLog) -> None:
    """Close the log on an error path (the normal path closes it with the summary)."""
    if decisions.is_open:
        decisions.close()


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


def _stall(status: Status, link: ControllerLinkLike | None, stall_s: float) -> None:
    text = f"no frame for {stall_s:.1f} s: camera stalled; controller told to go safe"
    log.error("%s", text)
    status.alarm("camera_stalled", text)
    status.event("STALL", text)
    if link is not None:
        try:
            link.safe()
            status.set_link(link.state, safe=True)
        except Exception as err:  # the stall is the news; a failing SAFE is logged with it
            log.error("could not put the controller in the safe state: %s", err)


def _resumed(status: Status, link: ControllerLinkLike | None) -> None:
    status.alarm("camera_stalled", None)
    status.event("RESUMED", "frames are arriving again")
    if link is not None:
        link.resume()


def _flush_pending(
    decisions: DecisionLog,
    scheduler: Scheduler,
    clock: MonotonicClock | VirtualClock,
    link: ControllerLinkLike | None,
    config: Config,
) -> None:
    """Wait (bounded) for the fates of sent commands; cancel what is left."""
    scheduler.release_all()  # timing measured: SORTs held back go out now
    pending = decisions.pending()
    if not pending or link is None:
        return
    last_fire = max((r.fire_at or 0.0) for r in pending)
    if scheduler.last_fire_host is not None:
        last_fire = max(last_fire, scheduler.timeline.to_source(scheduler.last_fire_host))
    slack = config.serial.window_ms / 1000.0 + config.serial.ack_timeout_ms / 1000.0 * (
        config.serial.retries + 1
    )
    end_host = scheduler.timeline.to_host(last_fire) + slack + 0.2
    deadline = time.monotonic() + max(5.0, end_host - clock.now() + 5.0)
    if isinstance(clock, VirtualClock):
        while clock.now() < end_host:  # let the simulator reach every fire time
            clock.set(min(end_host, clock.now() + 0.01))
    while decisions.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    for rec in decisions.pending():
        log.warning("item %d: no fate from the controller; cancelling", rec.item)
        with contextlib.suppress(Exception):
            link.cancel(rec.item)
        decisions.update_fate(rec.item, Fate.CANCELLED, bin_name=config.bins.reject)


def _count(values: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
