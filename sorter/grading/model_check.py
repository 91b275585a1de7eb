"""Is this model fit to sort with this config? (`sorter model promote`, a reload on SIGHUP,
`sorter run --shadow`.)

`check_model(path, config)` loads the model with LiteRT (`sorter.grading.classifier`: its
metadata must be readable and agree with its tensors), checks that its labels are exactly the
grades of the config's `[bins.grades]` (`check_labels`) and runs one inference on a dummy
input, which must give one finite score per label. Any failure is a ModelError of one line
naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sorter.config import Config
from sorter.errors import ConfigError, ModelError
from sorter.grading.policy import Policy


def check_labels(labels: Sequence[str], config: Config, source: str = "model") -> None:
    """ModelError unless the model's labels are the config's [bins.grades] grades."""
    have, want = list(labels), set(config.bins.grades)
    missing = sorted(want - set(have))
    extra = [g for g in have if g not in want]
    if not missing and not extra:
        return
    parts = []
    if extra:
        parts.append(f"grades {', '.join(extra)} are not in [bins.grades]")
    if missing:
        parts.append(f"[bins.grades] grades {', '.join(missing)} are not in the model")
    raise ModelError(
        f"{source}: labels do not match the config's bins ({'; '.join(parts)}); "
        f"model labels: {', '.join(have)}; use a model trained for these grades or fix "
        "[bins.grades]"
    )


def model_id(path: str | Path) -> str:
    """A short content id of a model file (first 12 hex digits of its SHA-256)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def check_model(path: str | Path, config: Config) -> Any:
    """The loaded Classifier when the model at `path` may sort with `config` (see module doc);
    ModelError otherwise."""
    from sorter.grading.classifier import Classifier

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file; give the path of a .tflite")
    clf = Classifier(p, num_threads=config.model.threads)
    check_labels(clf.labels, config, str(p))
    try:
        Policy(config, clf.labels)
    except ConfigError as err:
        raise ModelError(f"{p}: {err}") from err
    h, w = clf.input_size
    try:
        probs = clf.classify(np.zeros((1, h, w, 3), dtype=np.uint8))
    except Exception as err:
        raise ModelError(
            f"{p}: one inference on a dummy input failed ({err}); re-export the model"
        ) from err
    if probs.shape != (1, len(clf.labels)) or not np.isfinite(probs).all():
        raise ModelError(
            f"{p}: one inference on a dummy input gave {probs.shape} scores, not "
            f"{len(clf.labels)} finite ones; re-export the model"
        )
    return clf
