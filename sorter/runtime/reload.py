"""Switching a running sorter to another model without stopping the line (SIGHUP).

`sorter model promote` replaces the model file atomically; the sorter keeps grading with
the model it loaded until told to reload: SIGHUP (systemd's `ExecReload=/bin/kill -HUP
$MAINPID`, so `systemctl reload produce-sorter`), or `Runner.request_reload()`.

`ModelReloader` loads and checks the file (`sorter.grading.model_check.check_model`:
metadata, labels == the config's bins, one inference) on its own thread while the loop goes
on grading with the old model; the runner swaps the classifier between two frames once the
new one is ready (`SortingLoop.swap_classifier`). Items already being tracked keep their
views (their scores reordered when the new model lists the same grades in another order)
and are decided once, as usual: a reload loses no item and sends no SORT twice. A fast
replay (virtual clock) waits for the load, so it stays deterministic.

A file that fails the check (labels that do not match the bins, a truncated file, no
metadata) is refused: logged, a `model_reload` alarm on the dashboard and in `systemctl
status`, and the sorter goes on with the model it has. The alarm clears at the next good
reload.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sorter.config import Config
from sorter.errors import SorterError
from sorter.grading.model_check import check_model, model_id

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """The result of one reload attempt."""

    path: str
    classifier: Any = None
    """The checked classifier, or None when the file was refused."""
    model_id: str | None = None
    error: str | None = None


class ModelReloader:
    """Loads and checks a model file on a worker thread (one load at a time)."""

    def __init__(self, config: Config, path: str | Path) -> None:
        self.config = config
        self.path = str(path)
        self._thread: threading.Thread | None = None
        self._result: Loaded | None = None
        self._done = threading.Event()

    @property
    def busy(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def start(self) -> bool:
        """Start a load (False when one is already running)."""
        if self.busy:
            return False
        self._done.clear()
        self._result = None
        self._thread = threading.Thread(target=self._load, name="model-reload", daemon=True)
        self._thread.start()
        return True

    def result(self, wait: float | None = 0.0) -> Loaded | None:
        """The finished load (once), or None while it runs (waiting up to `wait` s)."""
        if self._thread is None:
            return None
        if not self._done.wait(wait):
            return None
        self._thread = None
        out, self._result = self._result, None
        return out

    def _load(self) -> None:
        try:
            clf = check_model(self.path, self.config)
            self._result = Loaded(self.path, clf, model_id(self.path))
        except SorterError as err:
            self._result = Loaded(self.path, error=str(err))
        except Exception as err:  # a reload never takes the sorter down
            log.exception("model reload: unexpected failure")
            self._result = Loaded(self.path, error=f"{self.path}: cannot load ({err})")
        finally:
            self._done.set()


def reorder(scores: list[Any], old: list[str], new: list[str]) -> list[Any] | None:
    """Score vectors in `old` label order re-indexed into `new` order (None when the two
    models do not list the same grades)."""
    if sorted(old) != sorted(new) or len(old) != len(new):
        return None
    idx = [old.index(g) for g in new]
    return [s[idx] for s in scores]
