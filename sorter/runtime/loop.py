"""The sorting loop: one frame in, decisions out (`SortingLoop.process`).

Per frame:
    locate -> track -> crop a fixed window of belt around each item in full view
    (window_px = the model's crop window_mm * px_per_mm), centred to a fraction of a pixel
    from the item's full-resolution mask ([locate] refine; sorter.perception.measure), a
    tray's or cup's rim filled in ([locate] rim_mm);
    with a lens calibration ([lens], `sorter calibrate-camera`) the detections are moved
    into the undistorted image before tracking and each crop is cut from it, its rim
    filled there (sorter.perception.lens: only the points and the crop windows, never a
    whole frame)
    -> sorter.perception.preprocess.to_model_input -> classifier (one batch per frame)
    -> for each item crossing the decision line, `sorter.actuation.decider.Decider`: policy
    (mean of its views' scores) -> scheduler (SORT via the link, or late/dry-run) -> decision
    log + status; fates come back on the link's thread.

The loop owns no threads and no devices: `sorter.runtime.runner.Runner` feeds it frames.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from sorter.actuation.decider import Decider, ItemViews
from sorter.actuation.scheduling import Scheduler
from sorter.config import Config
from sorter.grading.policy import Policy
from sorter.grading.shadow import ShadowGrader
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.status import Overlay, Status
from sorter.perception.lens import Lens
from sorter.perception.measure import Measurement, item_view, measure
from sorter.perception.preprocess import to_model_input
from sorter.perception.scale_marker import ScaleMarker
from sorter.perception.sizes import item_size
from sorter.perception.sources import Frame
from sorter.perception.surround import model_background
from sorter.perception.tracking import BeltTravel, Track, Tracker
from sorter.perception.vision import Detection, crop_window
from sorter.runtime.reload import reorder

log = logging.getLogger(__name__)

HISTORY = 4
"""Refined positions kept per item for its line crossing."""


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
        lens: Lens | None = None,
        scale_marker: ScaleMarker | None = None,
        shadow: ShadowGrader | None = None,
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
        self.refine = bool(getattr(getattr(locator, "config", None), "refine", False)) and hasattr(
            locator, "mask_full"
        )
        """Crops centred by sorter.perception.measure (the locator's [locate] refine)."""
        rim_mm = float(getattr(getattr(locator, "config", None), "rim_mm", 0.0))
        self.rim_px = rim_mm * config.belt.px_per_mm
        """The carriers' rim at the camera's scale ([locate] rim_mm; item_view fills it)."""
        self.surround = str(getattr(getattr(locator, "config", None), "surround", "keep"))
        self.background = model_background(self.surround, classifier)
        """The model's training background ([locate] surround = "model"), or None."""
        self.lens = lens
        """The lens calibration, or None: detections and crops are taken as the camera saw."""
        self._raw: dict[int, tuple[Detection, Detection]] = {}
        """This frame's detections with a lens: id(undistorted) -> (undistorted, camera's)."""
        self.shadow = shadow
        self.model_id: str | None = None
        """Content id of the model grading now (`model_id` in each record), when known."""
        """The candidate model graded beside this one (`sorter run --shadow`), or None."""
        self.scale_marker = scale_marker
        """The fixed marker of the scale check ([camera] scale_marker), or None."""
        self._next_scale_check: float | None = None
        self._marker_box: tuple[float, float, float, float] | None = None
        """Where the marker was last seen (x0, y0, x1, y1 with its white border): not an item."""
        self._measuring = False
        self.travel = BeltTravel()
        """The belt's odometer from the items' refined centres (timing measured)."""
        self._centres: dict[int, float] = {}
        """This frame's refined centres along the belt, by track id."""
        self._tracker_travel = 0.0
        self._last_t: float | None = None
        self._history: dict[int, list[tuple[float, float]]] = {}
        """Each item's latest refined (t, position along the belt), oldest first, at most
        HISTORY: the line crossing (the half-scale box may cross a frame after its centre)."""
        self._items: dict[int, ItemViews] = {}
        self.lost = 0
        """Tracks that ended without crossing the decision line (after being seen whole)."""
        status.line_x = tracker.line

    def process(self, frame: Frame, received: float) -> list[DecisionRecord]:
        """Process one frame; `received` is `time.perf_counter()` when it was read.

        Returns the decisions made on this frame.
        """
        t0 = time.perf_counter()
        self._check_scale(frame)
        detections = self._undistort(self._not_marker(self.locator.locate(frame.image)))
        t1 = time.perf_counter()
        tracks = self.tracker.update(detections, frame.t, frame.index)
        t2 = time.perf_counter()
        seen = [tr for tr in tracks if tr.last.frame_index == frame.index]
        self._classify_views(frame, seen)
        t3 = time.perf_counter()
        self.status.add_stages({"locate": t1 - t0, "track": t2 - t1, "classify": t3 - t2})

        self._belt_speed(frame.t)
        made = [self._decide(track, frame.t, received) for track in self.tracker.crossings]
        self.decider.scheduler.tick(frame.t)
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
        item = frame.index + 1
        if self.shadow is not None:
            self.shadow.submit([item], self.shadow.batch_for([frame.image], batch))
        views = ItemViews([np.asarray(scores[0], dtype=np.float32)], [frame.image])
        rec = self.decider.decide(item, views, frame.t, received, self._extra_of(item))
        self.status.frame_done(frame.image, [])
        return rec

    def finish(self) -> None:
        """End of stream: every track still open ends undecided."""
        for track in self.tracker.flush():
            self._forget(track)

    # -- steps ----------------------------------------------------------------------
    def _belt_speed(self, t: float) -> None:
        """The tracker's belt odometer, in mm, to the scheduler (timing measured) and the
        belt speed to the status (configured vs measured, alarm past speed_tolerance)."""
        belt = self.config.belt
        scheduler = self.decider.scheduler
        fallback = self.tracker.travel_px - self._tracker_travel  # from its boxes
        self._tracker_travel = self.tracker.travel_px
        if self.refine and self._last_t is not None:  # between refined items: hold the speed
            fallback = scheduler.odometer.speed_mm_s * belt.px_per_mm * (t - self._last_t)
        self._last_t = t
        travel = self.travel.update(t, self._centres, fallback)
        for i, u in self._centres.items():
            seen = self._history.setdefault(i, [])
            seen.append((t, u))
            del seen[:-HISTORY]
        self._centres = {}
        if not self._speed_seen():
            return
        scheduler.observe_travel(t, travel / belt.px_per_mm)
        measured = scheduler.odometer.speed_mm_s
        self.status.belt_speed(measured, belt.speed_mm_s, belt.speed_tolerance)

    def _check_scale(self, frame: Frame) -> None:
        """Every camera.scale_check_s: the fixed marker's scale against belt.px_per_mm."""
        cam = self.config.camera
        if self.scale_marker is None:
            return
        if self._next_scale_check is not None and frame.t < self._next_scale_check:
            return
        self._next_scale_check = frame.t + cam.scale_check_s
        corners = self.scale_marker.corners(frame.image)
        marker = self.scale_marker
        measured = (
            marker.px_per_mm(frame.image, self.lens, corners=corners)
            if corners is not None
            else None
        )
        if corners is not None:
            margin = 0.3 * float(np.ptp(corners[:, 0]))  # the white border and some
            (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
            self._marker_box = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
        if measured is None:
            self.status.alarm(
                "scale_marker",
                f"scale marker {cam.scale_marker} id {cam.scale_marker_id} not in view; "
                "clean it or check the camera's aim",
            )
            return
        self.status.alarm("scale_marker", None)
        ratio = measured / self.config.belt.px_per_mm
        self.status.scale_check(ratio, cam.scale_tolerance, frame.t)

    def _not_marker(self, detections: list[Detection]) -> list[Detection]:
        """The detections without the scale marker (its centre inside the marker's box)."""
        box = self._marker_box
        if box is None:
            return detections
        return [
            d for d in detections if not (box[0] <= d.cx <= box[2] and box[1] <= d.cy <= box[3])
        ]

    def _speed_seen(self) -> bool:
        """True once the tracker has matched an item across two frames (a measurement)."""
        if not self._measuring:
            self._measuring = any(len(tr.views) > 1 for tr in self.tracker.active)
        return self._measuring

    def _undistort(self, detections: list[Detection]) -> list[Detection]:
        """The detections in the undistorted image (with a lens), remembering the camera's."""
        if self.lens is None:
            return detections
        self._raw = {}
        out = []
        for d in detections:
            u = self.lens.undistort_detection(d)
            self._raw[id(u)] = (u, d)
            out.append(u)
        return out

    def _camera(self, d: Detection) -> Detection:
        """The camera's own detection behind an undistorted one of this frame (else `d`)."""
        entry = self._raw.get(id(d))
        return entry[1] if entry is not None and entry[0] is d else d

    def _classify_views(self, frame: Frame, seen: Sequence[Track]) -> None:
        """Grade, in one batch, every undecided item seen whole in this frame."""
        todo: list[tuple[int, np.ndarray, Measurement | None]] = []
        for track in seen:
            view = track.last
            if not view.full or self.decider.decided(track.id) is not None:
                continue
            crop, measured, centre = self._crop(frame.image, view.detection)
            todo.append((track.id, crop, measured))
            if centre is not None:
                self._centres[track.id] = self._along(centre)
        if not self._centres:
            self._follow_decided(frame.image, seen)
        if not todo:
            return
        size = self.classifier.input_size
        batch = np.stack([to_model_input(crop, size) for _, crop, _ in todo])
        scores = self.classifier.classify(batch)
        if self.shadow is not None:  # the same crops, graded on the shadow's own thread
            crops = [crop for _, crop, _ in todo]
            self.shadow.submit([item for item, _, _ in todo], self.shadow.batch_for(crops, batch))
        for (item, crop, measured), s in zip(todo, scores, strict=True):
            views = self._items.setdefault(item, ItemViews())
            views.scores.append(np.asarray(s, dtype=np.float32))
            if measured is not None:
                views.measures.append(measured)
            if self.keep_crops:
                views.crops.append(crop)

    def _crop(
        self, image: np.ndarray, d: Detection
    ) -> tuple[np.ndarray, Measurement | None, tuple[float, float] | None]:
        """The model's window around a detection: at the sub-pixel centre of the item's
        full-resolution mask when [locate] refine is on, else at the box centre. Also the
        measurement and its refined centre in the tracker's image (None: not refined)."""
        if self.lens is not None and self.refine:
            raw = self._camera(d)
            crop, m, centre = self.lens.item_view(
                image,
                raw,
                self.locator,
                self.window,
                rim_px=self.rim_px,
                background=self.background,
            )
            if not m.refined:  # no blob there: the undistorted detection's centre
                return self.lens.crop(image, d.cx, d.cy, self.window), m, None
            return crop, m, centre
        if self.lens is not None:
            return self.lens.crop(image, d.cx, d.cy, self.window), None, None
        if self.refine:
            crop, m = item_view(
                image,
                d,
                self.locator,
                self.window,
                rim_px=self.rim_px,
                background=self.background,
            )
            refined = (m.cx, m.cy) if m.refined else None
            return crop, m, refined
        return crop_window(image, d.cx, d.cy, self.window), None, None

    def _follow_decided(self, image: np.ndarray, seen: Sequence[Track]) -> None:
        """With timing measured and no undecided item measured in this frame, measure one
        decided item seen whole (its centre only), so the belt's odometer stays sub-pixel."""
        if not (self.refine and self.decider.scheduler.measured):
            return
        for track in seen:
            if track.last.full:
                d = self._camera(track.last.detection)
                m = measure(image, d, self.locator)
                if m.refined:
                    c = self.lens.undistort_point(m.cx, m.cy) if self.lens else (m.cx, m.cy)
                    self._centres[track.id] = self._along(c)
                return

    def _along(self, centre: tuple[float, float]) -> float:
        """A point's position along the belt's motion (px)."""
        return self.tracker.along(centre[0], centre[1])

    def _decide(self, track: Track, t_frame: float, received: float) -> DecisionRecord:
        views = self._items.pop(track.id, ItemViews())
        t_line = track.t_line if track.t_line is not None else t_frame
        t_line = self._refined_crossing(track.id, t_line)
        size = item_size(views.measures, self.config.belt.px_per_mm, self.lens)
        extra = self._extra_of(track.id)
        if size is not None:  # length_mm, width_mm, bend_mm in the record
            fields, more = size.as_record(), extra
            extra = (lambda label: {**fields, **more(label)}) if more else (lambda _: fields)
        return self.decider.decide(track.id, views, t_line, received, extra)

    def _extra_of(self, item: int) -> Callable[[str], dict[str, Any]] | None:
        """The record's extra fields for an item being decided: the model that decided it
        (`model_id`) and the shadow's verdict (None when there is neither)."""
        shadow, mid = self.shadow, self.model_id
        if shadow is None and mid is None:
            return None

        def fields(label: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model_id": mid} if mid else {}
            if shadow is not None:
                t0 = time.perf_counter()
                out.update(shadow.verdict(item, label))
                self.status.add_stage("shadow_wait", time.perf_counter() - t0)
                self.status.shadow(out["shadow_label"] == label, shadow.dropped)
            return out

        return fields

    def swap_classifier(
        self, classifier: ClassifierLike, window: tuple[int, int], model: str | None = None
    ) -> int:
        """Grade with `classifier` (its crop `window`, content id `model`) from the next
        frame on (`sorter.runtime.reload`). Items being tracked keep their views, reordered
        into the new label order; when the new model lists other grades their views are
        dropped (they are graded again while in view). Returns the views dropped."""
        old, new = list(self.classifier.labels), list(classifier.labels)
        dropped = 0
        if old != new:
            for views in self._items.values():
                moved = reorder(views.scores, old, new)
                if moved is None:
                    dropped += len(views.scores)
                    views.scores.clear()
                    views.crops.clear()
                    views.measures.clear()
                else:
                    views.scores[:] = moved
        self.decider.policy = Policy(self.config, new)
        self.background = model_background(self.surround, classifier)
        self.classifier = classifier
        self.window = window
        self.model_id = model
        return dropped

    def _refined_crossing(self, item: int, t_line: float) -> float:
        """The crossing time from the item's refined centres in the frames either side of
        the line (sub-pixel, not the half-scale box), when it has both; else `t_line`."""
        seen = self._history.pop(item, [])
        line_u = self.tracker.line_u
        for (t0, u0), (t1, u1) in itertools.pairwise(seen):
            if u0 < line_u <= u1 and t1 > t0:
                return t0 + (line_u - u0) / (u1 - u0) * (t1 - t0)
        return t_line

    def _forget(self, track: Track) -> None:
        self._history.pop(track.id, None)
        views = self._items.pop(track.id, None)
        if self.shadow is not None:
            self.shadow.forget(track.id)
        decided = self.decider.decided(track.id) is not None
        if track.t_line is None and not decided and views and views.scores:
            self.lost += 1
            log.warning("item %d left the view without crossing the decision line", track.id)

    def _overlay(self, track: Track) -> Overlay:
        d = self._camera(track.last.detection)  # drawn on the camera's frame
        rec = self.decider.decided(track.id)
        return Overlay(
            id=track.id,
            box=(d.x, d.y, d.w, d.h),
            grade=rec.label if rec else "",
            confidence=rec.confidence if rec else 0.0,
            bin=rec.bin if rec else "",
        )
