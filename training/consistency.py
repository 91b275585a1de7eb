"""Consistency between two camera renders of the same picture (a Jensen-Shannon term).

The belt's gap is items near a grade boundary whose grade a camera's small changes flip
(benchmarks/camera_path_gap.py). Training on renders teaches each render's grade; this
also asks the model to give the SAME probabilities to two views of one picture, as
AugMix (Hendrycks et al., 2020) does with its Jensen-Shannon consistency loss.

With `TrainConfig.consistency` = w > 0, `training.camera_augment.pool_dataset(pairs=True)`
puts two views of each picture side by side in a batch (rows 2i and 2i+1: the usual
clean-or-render view, then another render), and `PairConsistency` adds, to each row's
cross-entropy, w x KL(p_row || m) with m the mean of the pair's two probabilities: over a
pair that is w x 2 JS(p_a, p_b), so the batch mean is cross-entropy + w x JS, AugMix's
form. Adjacent rows keep a pair on one replica under tf.distribute (batches are split
into contiguous, even-sized parts).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

EPS = 1e-7


@keras.saving.register_keras_serializable(package="sorter_training")
class PairConsistency(keras.losses.Loss):
    """Per row: `base` (cross-entropy, no reduction) + weight x KL(p_row || mean of its
    pair). Rows 2i and 2i+1 of a batch are two views of one picture."""

    def __init__(self, base: keras.losses.Loss, weight: float, **kw: Any) -> None:
        super().__init__(name=kw.pop("name", "pair_consistency"), **kw)
        self.base = base
        self.weight = float(weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ce = self.base.call(y_true, y_pred)
        p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0)
        pairs = ops.reshape(p, (-1, 2, ops.shape(p)[-1]))
        m = ops.mean(pairs, axis=1, keepdims=True)
        kl = ops.sum(pairs * (ops.log(pairs) - ops.log(m)), axis=-1)
        return ops.cast(ce, "float32") + self.weight * ops.reshape(kl, (-1,))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "base": keras.saving.serialize_keras_object(self.base),
            "weight": self.weight,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PairConsistency:
        base = keras.saving.deserialize_keras_object(config.pop("base"))
        return cls(base, **config)
