"""A replay scored against its ground truth: the truth JSON a simulated belt was written
with (`sorter.replay.belt_sim`), its belt geometry, and the scorecard of a run.

`run_with_truth(config, options, decisions, status, truth_path)` is `sorter run --truth`
and `make demo`: the config takes the belt geometry the video was made with, the run is
driven by `sorter.runtime.runner.Runner`, and the scorecard (`sorter.replay.scorecard`) is
added to the summary before the decision log stores it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sorter.config import Config, apply_overrides
from sorter.errors import DatasetError
from sorter.monitor.audit import DecisionLog, DecisionRecord
from sorter.monitor.status import Status
from sorter.replay.scorecard import Scorecard, render_scorecard, score
from sorter.runtime.runner import Runner, RunOptions, RunResult

log = logging.getLogger(__name__)


def load_truth(path: str | Path) -> dict[str, Any]:
    """Read a truth JSON; DatasetError naming the file when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{p}: truth file not found; it is written beside the video") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{p}: not a belt truth JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise DatasetError(f"{p}: not a belt truth JSON (no 'items' list)")
    return data


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


def score_run(records: list[DecisionRecord], truth: dict[str, Any], config: Config) -> Scorecard:
    """The scorecard of a run's decisions, with this config's bins and gate geometry (the
    ideal fire times)."""
    reject = config.bins.reject
    speed = config.belt.speed_mm_s
    delays = {int(k): g.distance_mm / speed for k, g in config.gates.items()}
    return score(
        [r.as_dict() for r in records],
        truth,
        bin_of=lambda grade: config.bins.grades.get(grade, reject),
        gate_delay_s=delays,
        reject_bin=reject,
        gate_distance_mm={int(k): g.distance_mm for k, g in config.gates.items()},
    )


def run_with_truth(
    config: Config, opts: RunOptions, decisions: DecisionLog, status: Status, truth_path: Path
) -> RunResult:
    """Run a replay with the truth's belt geometry and score it (`result.scorecard`, and
    `summary["scorecard"]`, stored in the decision log with the rest of the summary)."""
    truth = load_truth(truth_path)
    config = geometry_from_truth(config, truth)
    log.info("belt geometry from %s: %s", truth_path, config.belt)
    with Runner(config, opts, decisions, status) as runner:
        while runner.step():
            pass
        result = runner.stop()
        result.scorecard = score_run(result.records, truth, config)
        result.summary["scorecard"] = result.scorecard.as_dict()
    return result


def scorecard_tables(result: RunResult) -> list[Any]:
    """The scorecard as a table to print after the run summary (none without a truth)."""
    return [] if result.scorecard is None else [render_scorecard(result.scorecard)]
