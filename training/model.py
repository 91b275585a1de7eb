"""The grading networks (Keras). Input: raw uint8 RGB; rescaling and augmentation are layers.

Architectures (``--arch``):

- ``deep-mnist``: TensorFlow's "Deep MNIST for Experts" as Makoto Koike adapted it, literally:
  conv 5x5x32 + ReLU + 2x2 max-pool, conv 5x5x64 + ReLU + 2x2 max-pool, dense 1024 + ReLU +
  dropout 0.5, dense N. At 32x32 it has 4.26 M parameters, nearly all in the first dense layer.
- ``pi-cnn``: made for the Raspberry Pi: three stages of 3x3 convolutions with batch norm,
  then flatten -> dense 128 -> dense N. It keeps flatten + dense (global average pooling lost
  seven points: size grades need the item's extent in the frame) but ~10x fewer parameters.
- ``softmax``: softmax regression on the pixels; a baseline for benchmarks.

Augmentation layers are named ``aug_*``, are active only in training, and are dropped by
`inference_model`, which also fixes the batch size (1 for export: a fixed batch keeps shape
ops out of the graph around Flatten).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
from keras import layers

ARCHS = ("pi-cnn", "deep-mnist", "softmax")
DEFAULT_ARCH = "pi-cnn"
"""Chosen by measurement (docs/training.md, "Choosing the network")."""

DEFAULT_LEARNING_RATE = {"deep-mnist": 1e-4, "pi-cnn": 1e-3, "softmax": 1e-3}
"""Adam learning rates: 1e-4 is the literal Deep MNIST recipe; batch norm trains faster."""

_TRAINING_ONLY = (layers.Dropout, layers.GaussianNoise)
BN_MOMENTUM = 0.9
"""Batch-norm moving-average momentum. A small dataset has few steps per epoch (~70 for
CUCUMBER-9); Keras' 0.99 makes the inference statistics lag the weights by epochs."""


@dataclass
class AugmentConfig:
    """Label-preserving augmentation for produce on a belt (all active only in training)."""

    flip: bool = True
    """Random horizontal and vertical flips (a cucumber's grade does not depend on its side)."""
    independent_flips: bool = False
    """True: the horizontal and the vertical flip are drawn independently (all four views).
    False: one Keras ``RandomFlip("horizontal_and_vertical")``, which flips BOTH axes or
    neither, so the network only ever sees the image and its 180-degree rotation, never a
    mirror image; the runs before this option existed trained that way."""
    shift: float = 0.06
    """Random translation, as a fraction of height/width (0.06 = +-2 px at 32x32)."""
    rotate_deg: float = 8.0
    """Random rotation up to this many degrees either way."""
    brightness: float = 0.15
    """Random brightness change, fraction of the full range."""
    contrast: float = 0.2
    """Random contrast factor range (1 +- contrast)."""
    camera: bool = True
    """Camera realism: sensor noise, slight blur and a small scale jitter."""
    noise: float = 0.02
    """Gaussian noise stddev on [0, 1] pixels (camera realism)."""
    blur_sigma: float = 1.0
    """Upper bound of the random Gaussian blur sigma, in pixels (camera realism)."""
    scale: float = 0.04
    """Random zoom of +-this fraction (camera realism). Keep it a few % at most: the size
    grades are told apart by how big the cucumber is in the fixed window."""

    @classmethod
    def with_camera_pool(cls) -> AugmentConfig:
        """The Keras layers kept beside camera-path renders (training.camera_augment), which
        do the shifts, rotations, blur, noise and light: the 180-degree turn, mild
        brightness and contrast."""
        return cls(shift=0, rotate_deg=0, brightness=0.05, contrast=0.1, camera=False)

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(
            flip=False, shift=0, rotate_deg=0, brightness=0, contrast=0, camera=False, scale=0
        )

    def as_dict(self) -> dict[str, Any]:
        """For config.json."""
        return asdict(self)


def _augmentation(aug: AugmentConfig, seed: int) -> list[layers.Layer]:
    """Augmentation layers on [0, 1] float pixels, computed in float32."""
    out: list[layers.Layer] = []
    kw: dict[str, Any] = {"dtype": "float32"}
    if aug.flip and aug.independent_flips:
        out.append(layers.RandomFlip("horizontal", seed=seed, name="aug_flip_h", **kw))
        out.append(layers.RandomFlip("vertical", seed=seed + 8, name="aug_flip_v", **kw))
    elif aug.flip:
        out.append(layers.RandomFlip("horizontal_and_vertical", seed=seed, name="aug_flip", **kw))
    if aug.rotate_deg > 0:
        out.append(
            layers.RandomRotation(aug.rotate_deg / 360.0, seed=seed + 1, name="aug_rotate", **kw)
        )
    if aug.shift > 0:
        out.append(
            layers.RandomTranslation(aug.shift, aug.shift, seed=seed + 2, name="aug_shift", **kw)
        )
    if aug.camera and aug.scale > 0:
        out.append(
            layers.RandomZoom((-aug.scale, aug.scale), seed=seed + 3, name="aug_scale", **kw)
        )
    if aug.brightness > 0:
        out.append(
            layers.RandomBrightness(
                aug.brightness, value_range=(0, 1), seed=seed + 4, name="aug_brightness", **kw
            )
        )
    if aug.contrast > 0:
        out.append(
            layers.RandomContrast(
                aug.contrast, value_range=(0, 1), seed=seed + 5, name="aug_contrast", **kw
            )
        )
    if aug.camera and aug.blur_sigma > 0:
        out.append(
            layers.RandomGaussianBlur(
                factor=1.0,
                kernel_size=3,
                sigma=(min(0.1, aug.blur_sigma), aug.blur_sigma),
                value_range=(0, 1),
                seed=seed + 6,
                name="aug_blur",
                **kw,
            )
        )
    if aug.camera and aug.noise > 0:
        out.append(layers.GaussianNoise(aug.noise, seed=seed + 7, name="aug_noise", **kw))
    return out


def _deep_mnist(x: Any) -> Any:
    x = layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, activation="relu", name="fc1")(x)
    return layers.Dropout(0.5, name="dropout")(x)


def _conv_bn(x: Any, filters: int, name: str) -> Any:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


PI_CNN_WIDTHS = (18, 36, 72)
"""Filters of pi-cnn's three stages (`build_model(widths=...)` changes them). Two passes
(the default 180-degree test-time average) cost a little more than one pass of PI_CNN_WIDE
(19.2 M multiply-accumulates against 16.8 M), within a Pi 4 core's 5 ms (estimate)."""
PI_CNN_WIDE = (24, 48, 96)
"""The earlier default widths (one pass; the recipes cross-validated before 2026-12-02)."""


def _pi_cnn(x: Any, widths: tuple[int, ...] = PI_CNN_WIDTHS, dense: int = 128) -> Any:
    for stage, width in enumerate(widths, start=1):
        x = _conv_bn(x, width, f"conv{stage}a")
        if stage < len(widths):
            x = _conv_bn(x, width, f"conv{stage}b")
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, use_bias=False, name="fc1")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="fc1_bn")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    return layers.Dropout(0.4, name="dropout")(x)


def build_model(
    arch: str,
    input_size: tuple[int, int],
    n_classes: int,
    *,
    batch_size: int | None = None,
    augment: AugmentConfig | bool = True,
    seed: int = 0,
    widths: tuple[int, ...] = PI_CNN_WIDTHS,
) -> keras.Model:
    """Build an (uncompiled) grading model: uint8 (batch, h, w, 3) in, N probabilities out.

    `augment` True uses the default `AugmentConfig`, False none. `widths` are pi-cnn's
    stage widths. The output layer is float32 even under a mixed-precision policy.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    aug = (
        AugmentConfig() if augment is True else AugmentConfig.off() if augment is False else augment
    )
    h, w = input_size
    inp = keras.Input((h, w, 3), batch_size=batch_size, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, dtype="float32", name="rescale")(inp)
    for layer in _augmentation(aug, seed):
        x = layer(x)
    if arch == "deep-mnist":
        x = _deep_mnist(x)
    elif arch == "pi-cnn":
        x = _pi_cnn(x, tuple(widths))
    else:
        x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(n_classes, activation="softmax", dtype="float32", name="grades")(x)
    return keras.Model(inp, out, name=arch.replace("-", "_"))


def is_training_only(layer: layers.Layer) -> bool:
    """Augmentation and dropout layers: active only in training, dropped for inference."""
    return layer.name.startswith("aug_") or isinstance(layer, _TRAINING_ONLY)


def inference_model(model: keras.Model, batch_size: int | None = 1) -> keras.Model:
    """A float32 copy of `model` without augmentation/dropout and with a fixed batch size.

    The copy has its own layers (weights copied), so the original is left untouched.
    Works for the linear models `build_model` makes.
    """
    src_in = model.inputs[0]
    h, w, c = src_in.shape[1:]
    inp = keras.Input((h, w, c), batch_size=batch_size, dtype="uint8", name="image")
    x = inp
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer) or is_training_only(layer):
            continue
        cfg = layer.get_config()
        cfg["dtype"] = "float32"
        clone = layer.__class__.from_config(cfg)
        x = clone(x)
        clone.set_weights(layer.get_weights())
    return keras.Model(inp, x, name=model.name)


@keras.saving.register_keras_serializable(package="sorter")
class Flip(layers.Layer):
    """Reverse the image along one axis (1 = vertical flip, 2 = horizontal flip)."""

    def __init__(self, axis: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, x: Any) -> Any:
        return keras.ops.flip(x, axis=self.axis)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "axis": self.axis}


FLIP_VIEWS: dict[str, tuple[int, ...]] = {"id": (), "h": (2,), "v": (1,), "hv": (1, 2)}
"""Test-time views by name -> image axes reversed (h = mirror left-right, v = upside down,
hv = both, i.e. a 180-degree turn). All are label-preserving for produce on a belt."""


def flip_average(
    model: keras.Model, views: tuple[str, ...] = ("id", "h", "v", "hv")
) -> keras.Model:
    """Test-time augmentation built into a model: the mean of `model`'s probabilities over
    the given `FLIP_VIEWS` of the image. Same input and output as `model`; its layers are
    shared, so the cost is one forward pass per view. Converts to builtin int8 TFLite ops
    (REVERSE_V2, then the network per view, then an average)."""
    unknown = [v for v in views if v not in FLIP_VIEWS]
    if unknown or not views:
        raise ValueError(f"flip views {list(views)}: choose from {', '.join(FLIP_VIEWS)}")
    src = model.inputs[0]
    inp = keras.Input(tuple(src.shape[1:]), batch_size=src.shape[0], dtype=src.dtype, name="image")
    outs = []
    for v in views:
        x = inp
        for axis in FLIP_VIEWS[v]:
            x = Flip(axis, name=f"tta_flip_{v}_{axis}")(x)
        outs.append(model(x))
    out = outs[0] if len(outs) == 1 else layers.Average(name="tta_mean")(outs)
    return keras.Model(inp, out, name=f"{model.name}_tta")


def scoring_model(model: keras.Model, views: tuple[str, ...] = ()) -> keras.Model:
    """The inference copy of a trained `model` (any batch size) averaged over the test-time
    `views` (none: one pass), as `sorter-export` builds it: what a run scores itself with."""
    infer = inference_model(model, batch_size=None)
    return flip_average(infer, views) if views else infer


def count_params(model: keras.Model) -> int:
    """Total parameters (trainable and not)."""
    return int(model.count_params())
