"""sorter.actuation.decider: one item's decision, its SORT and the fates that come back for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sorter.actuation.decider import Decider, ItemViews
from sorter.actuation.scheduling import Scheduler
from sorter.config import GRADES, Config
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status


class _Clock:
    def now(self) -> float:
        return 0.0


class _Command:
    """A SORT command whose fate the test decides (like firmware_bridge's Command)."""

    def __init__(self, status: str = "pending") -> None:
        self.status = status
        self.fired_at: float | None = None
        self.corrected = False
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self.callbacks.append(fn)
        if self.status != "pending":  # already done: called at once, like the real one
            fn(self)

    def finish(self, status: str, *, corrected: bool = False) -> None:
        self.status, self.corrected = status, corrected
        self.fired_at = 5.0 if status == "fired" else None
        for fn in self.callbacks:
            fn(self)


class _Link:
    def __init__(self, commands: list[_Command]) -> None:
        self.commands = commands

    def sort(self, item: int, gate: int, **kw: Any) -> _Command:
        return self.commands.pop(0)


def _decider(tmp_path: Path, commands: list[_Command]) -> tuple[Decider, DecisionLog, Status]:
    config = Config()
    log = DecisionLog(tmp_path / "d.db")
    log.open(labels=list(GRADES))
    status = Status()
    scheduler = Scheduler(config, _Clock(), _Link(commands))
    return Decider(config, GRADES, scheduler, log, status), log, status


def _views(grade: str) -> ItemViews:
    scores = np.full(len(GRADES), 0.01, np.float32)
    scores[GRADES.index(grade)] = 0.92
    return ItemViews([scores, scores])


def test_a_fate_that_returns_before_the_record_is_written_is_applied_after_it(
    tmp_path: Path,
) -> None:
    decider, log, status = _decider(tmp_path, [_Command("fired")])
    rec = decider.decide(1, _views("M"), t_line=1.0, received=0.0)
    assert rec.gate is not None  # a SORT was sent (and its fate came back at once)
    final = log.records()[0]
    assert (final.status, final.bin, final.label) == ("fired", "M", "M")
    assert status.snapshot()["statuses"] == {"fired": 1}
    assert decider.decided(1) is rec


def test_fates_later_and_their_events(tmp_path: Path) -> None:
    late, timeout = _Command(), _Command()
    decider, log, status = _decider(tmp_path, [late, timeout])
    decider.decide(1, _views("S"), t_line=1.0, received=0.0)
    decider.decide(2, _views("L"), t_line=1.1, received=0.0)
    late.finish("late")  # the controller's LATE event tells the dashboard; not twice
    timeout.finish("timeout")
    assert [e["kind"] for e in status.snapshot()["events"]] == ["TIMEOUT"]
    timeout.finish("fired", corrected=True)  # the link corrected a timeout
    by_item = {r.item: r for r in log.records()}
    assert (by_item[1].status, by_item[1].bin) == ("late", "reject")
    assert (by_item[2].status, by_item[2].bin) == ("fired", "L")
    assert status.snapshot()["statuses"] == {"late": 1, "fired": 1}
    assert [e["kind"] for e in status.snapshot()["events"]] == ["FIRED", "TIMEOUT"]
