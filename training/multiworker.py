"""Training past one machine: `sorter-train train --multi-worker` under
tf.distribute.MultiWorkerMirroredStrategy (docs/fleet.md, "Training past one machine").

Every worker runs the same command with its own TF_CONFIG (the cluster's HOST:PORT list and
this worker's index); they read the same data, build the same model, and each step averages
the gradients of all workers' replicas (collective all-reduce over gRPC), so a step sees the
global batch (`--batch-size`) split between the workers. Worker 0 (or the "chief" task) is
the chief: it writes the run folder; the others write theirs to a temporary folder that is
removed at the end.

Keras 3's `Model.fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras
issue 20585: its symbolic build reduces a batch across replicas and fails), so the workers
train with the custom loop below: `strategy.run` of one step per global batch on a
distributed, data-sharded tf.data pipeline, the loss averaged over the global batch
(`tf.nn.compute_average_loss`), the optimizer's own cross-replica gradient sum. The recipe
is the single-machine one (same model, augmentation, class weights, cosine schedule,
epochs) except what cannot be shared between workers: the time budget (each worker would
cut at a different epoch) and early stopping are off.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from sorter.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """This process's place in the TF_CONFIG cluster."""

    workers: int
    """Number of tasks (workers and chief)."""
    task: str
    """This task's type ("worker" or "chief")."""
    index: int
    """This task's index within its type."""

    @property
    def is_chief(self) -> bool:
        """The task that writes the run folder: "chief", else worker 0 when there is none."""
        return self.task == "chief" or (self.task == "worker" and self.index == 0)


def cluster_from_env(env: dict[str, str] | None = None) -> Cluster:
    """The cluster TF_CONFIG describes; ConfigError naming what is wrong."""
    text = (env if env is not None else os.environ).get("TF_CONFIG", "")
    hint = (
        'set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:2222", '
        '"host2:2222"]}, "task": {"type": "worker", "index": 0}} (docs/fleet.md)'
    )
    if not text:
        raise ConfigError(f"--multi-worker: TF_CONFIG is not set; {hint}")
    try:
        doc = json.loads(text)
        cluster, task = doc["cluster"], doc["task"]
        kind, index = str(task["type"]), int(task["index"])
        sizes = {k: len(v) for k, v in cluster.items()}
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--multi-worker: TF_CONFIG is not valid ({err}); {hint}") from err
    if kind not in ("worker", "chief") or not 0 <= index < sizes.get(kind, 0):
        raise ConfigError(
            f"--multi-worker: TF_CONFIG task {kind} {index} is not in its cluster "
            f"({', '.join(f'{k}: {n}' for k, n in sizes.items())}); {hint}"
        )
    return Cluster(workers=sizes.get("worker", 0) + sizes.get("chief", 0), task=kind, index=index)


def make_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy; create it before any other TensorFlow op of the process."""
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info("MultiWorkerMirroredStrategy: %d replica(s) in sync", strategy.num_replicas_in_sync)
    return strategy


def _per_example_loss(soft: bool, label_smoothing: float) -> keras.losses.Loss:
    if soft:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)
    return keras.losses.SparseCategoricalCrossentropy(reduction=None)


def fit(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    train_ds: tf.data.Dataset,
    *,
    epochs: int,
    global_batch: int,
    learning_rate: float,
    cosine: bool,
    class_weight: dict[int, float] | None,
    soft: bool,
    label_smoothing: float = 0.0,
) -> dict[str, list[float]]:
    """Train `model` (built and compiled in `strategy`'s scope) for `epochs` on every
    worker at once; the per-epoch history {"loss": [...], "accuracy": [...]}."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    n_classes = int(model.outputs[0].shape[-1])
    weights = np.ones(n_classes, np.float32)
    for k, w in (class_weight or {}).items():
        weights[int(k)] = w
    with strategy.scope():
        loss_fn = _per_example_loss(soft, label_smoothing)
        table = tf.constant(weights)
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)
        seen_loss = keras.metrics.Sum()
        seen_right = keras.metrics.Sum()
        seen_n = keras.metrics.Sum()

    def step(x: Any, y: Any) -> None:
        labels = tf.argmax(y, axis=-1) if soft else tf.cast(tf.reshape(y, [-1]), tf.int64)
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            per = loss_fn(y, probs) * tf.gather(table, labels)
            loss = tf.nn.compute_average_loss(per, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        right = tf.cast(tf.equal(tf.argmax(probs, axis=-1), labels), tf.float32)
        seen_loss.update_state(tf.reduce_sum(per))
        seen_right.update_state(tf.reduce_sum(right))
        seen_n.update_state(tf.cast(tf.shape(per)[0], tf.float32))

    @tf.function
    def distributed_step(batch: Any) -> None:
        strategy.run(step, args=batch)

    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for epoch in range(epochs):
        if cosine:
            t = min(1.0, epoch / max(1, epochs))
            optimizer.learning_rate.assign(
                learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
            )
        for metric in (seen_loss, seen_right, seen_n):
            metric.reset_state()
        for batch in dist:
            distributed_step(batch)
        n = max(1.0, float(seen_n.result()))
        history["loss"].append(float(seen_loss.result()) / n)
        history["accuracy"].append(float(seen_right.result()) / n)
        log.info(
            "epoch %d/%d: loss %.4f, accuracy %.3f (all workers)",
            epoch + 1, epochs, history["loss"][-1], history["accuracy"][-1],
        )  # fmt: skip
    return history


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Wait until every worker gets here (a worker leaving while the chief still writes its
    run folder is reported by the chief's coordination service as a crash)."""
    ones = strategy.run(lambda: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)
