"""What every figure shares: its result type, the run context and small statistics helpers.

A figure is a module with `NUMBER`, `TITLE`, `missing() -> str | None` (why it cannot run
here, None when its dependencies exist) and `run(ctx) -> list[Row]`. It raises
`NotAvailable` when something it needs is absent at run time; any other exception is a bug
and is reported as an error in the table.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
"""The source checkout the benchmarks run from."""


class NotAvailable(Exception):
    """A figure's dependency (a module, a tool, a model) is not there: reported, not failed."""


@dataclass
class Row:
    """One line of the results table: a measurement next to its baseline."""

    measure: str
    """What was measured, e.g. "val accuracy, pi-cnn int8"."""
    value: str
    """The measured value, formatted with its unit."""
    baseline: str = ""
    """What it is compared with, measured in the same run."""
    baseline_value: str = ""
    """The baseline's value, formatted with its unit."""
    ratio: str = ""
    """value / baseline (or as the note says), formatted."""
    note: str = ""
    """Anything a reader needs to interpret the row."""


@dataclass
class FigureResult:
    """The outcome of one figure."""

    number: int
    """1..9, as numbered in benchmarks/README.md."""
    title: str
    """Short name of the figure."""
    status: str
    """"ok", "n/a" (a dependency is missing) or "error" (the harness or a part failed)."""
    rows: list[Row] = field(default_factory=list)
    """The figure's table rows (empty unless status is "ok")."""
    reason: str = ""
    """Why the figure is n/a or an error."""
    seconds: float = 0.0
    """Wall time the figure took."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "rows": [r.__dict__ for r in self.rows],
        }


@dataclass
class Context:
    """Settings and shared artefacts of one benchmark run."""

    smoke: bool
    """Tiny sizes: checks that every figure is produced, measures nothing worth quoting."""
    workdir: Path
    """Scratch directory for models, videos and logs (deleted after the run)."""
    data_dir: Path
    """CUCUMBER-9 source batches (prototype_1)."""
    seed: int = 0
    """Seed of the validation split and of generated belts."""
    epochs: int = 12
    """Epoch budget of each training run in figure 1 (early stopping may end sooner)."""
    controller: str | None = None
    """Figure 8 against this controller URL (e.g. a real Uno on /dev/ttyACM0) instead of
    the firmware under QEMU."""
    python: str = ""
    """Interpreter used for subprocesses (`sorter run`, Keras latency)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Artefacts shared between figures (datasets, trained models, exported files, belts)."""
    notes: list[str] = field(default_factory=list)
    """Run-level notes printed under the table (epoch budget, model used, ...)."""

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def have_module(name: str) -> bool:
    """True when `name` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def need_modules(*names: str) -> str | None:
    """A 'not available' reason for the first missing module, or None."""
    for name in names:
        if not have_module(name):
            return f"{name} not present yet"
    return None


def need_attrs(module: str, *attrs: str) -> str | None:
    """Like need_modules, and also checks that the module defines `attrs` (imports it)."""
    missing = need_modules(module)
    if missing:
        return missing
    mod = importlib.import_module(module)
    for attr in attrs:
        if not hasattr(mod, attr):
            return f"{module}.{attr} not present yet"
    return None


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """Median, p99, max, mean and count of `values` (NaN when there are none)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        nan = math.nan
        return {"p50": nan, "p99": nan, "max": nan, "mean": nan, "n": 0}
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "n": int(arr.size),
    }


def ratio(a: float, b: float) -> str:
    """`a / b` formatted as "1.23x", or "-" when undefined."""
    if b == 0 or math.isnan(a) or math.isnan(b):
        return "-"
    r = a / b
    return f"{r:.3g}x" if r < 1000 else f"{r:.0f}x"


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with sensible precision."""
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1000.0
    if abs(ms) >= 100:
        return f"{ms:.0f} ms"
    if abs(ms) >= 1:
        return f"{ms:.2f} ms"
    return f"{ms:.3f} ms"


def fmt_bytes(n: float) -> str:
    """A byte count as KB/MB (powers of 1000, as file sizes are usually quoted)."""
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} KB"
    return f"{n:.0f} B"


def fmt_count(n: float) -> str:
    """A large count as k/M/G."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f}"


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` on the monotonic clock."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
