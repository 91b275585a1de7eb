"""The default training recipe's settings, in one place (no TensorFlow import: the command
line reads them for its help text). Chosen by cross-validation: docs/training.md, "Choosing
the recipe".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeDefaults:
    """Defaults shared by `training.train.TrainConfig` and `sorter-train`."""

    epochs: int = 960
    """Planned epochs (fixed budget, cosine decay; the time budget may cut them)."""
    batch_size: int = 64
    """Images per step."""
    val_fraction: float = 0.1
    """Validation share per grade (reported, not used for choices unless early stopping)."""
    schedule: str = "cosine"
    """Learning-rate schedule."""
    early_stopping: bool = False
    """Stop on validation loss (off: every run trains its planned epochs, so a run on all
    images, `--val-fraction 0`, trains exactly like the cross-validated recipe)."""
    class_weight_power: float = 0.5
    """Class weights (n / (k n_c)) ** power."""
    ensemble: int = 0
    """Teachers trained and distilled into the model (0: a single network)."""
    weight_decay: float = 0.05
    """Decoupled weight decay of the kernels (0: plain Adam)."""
    widths: tuple[int, ...] = (18, 36, 72)
    """pi-cnn's stage widths (training.model.PI_CNN_WIDTHS): three quarters of the earlier
    PI_CNN_WIDE, so that two passes (`test_views`) stay within the Pi 4's 5 ms (19.2 M
    multiply-accumulates against 16.8 M for one pass of PI_CNN_WIDE)."""
    test_views: tuple[str, ...] = ("id", "hv")
    """Test-time views averaged inside the model (training.model.FLIP_VIEWS names): the
    image and its 180-degree turn. The run scores itself with them and `sorter-export`
    builds them into the exported graph unless told otherwise."""


DEFAULTS = RecipeDefaults()
"""The default recipe."""
BASE_EPOCHS = 60
"""`sorter-train cv --epochs` default: a recipe of training.cv trains this x its
`epochs_factor` (the default recipe's factor 16 gives `DEFAULTS.epochs`)."""
DEFAULT_BUDGET_MIN = 35.0
"""Minutes a default `sorter-train` run may take on the machine it runs on (the planned
epochs are cut to fit, from the measured time of the first epochs)."""
