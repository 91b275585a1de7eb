"""Grade crops with the exported model on LiteRT (the device runtime; never TensorFlow).

The model takes raw uint8 RGB pixels (normalisation is inside it); input size, labels and
crop rule come from the model's own metadata (`sorter.grading.metadata`), never from constants here.
Quantisation and dequantisation are explicit: the input is quantised with the input tensor's
scale and zero point (identity for the usual uint8 scale 1 / zero point 0 input), and the
output is dequantised with the output tensor's, so int8 and float models give probabilities.

The default model (`Classifier(None)`) is found, in order: the file named by the environment
variable SORTER_MODEL; `models/cucumber9-int8.tflite` in the source checkout this package was
imported from; `<sys.prefix>/share/produce-sorter/models/`; `/usr/share/produce-sorter/models/`;
`/opt/produce-sorter/models/`.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sorter.errors import ImageError, ModelError
from sorter.grading.metadata import ModelMetadata, read_model_bytes
from sorter.native import native_notices_captured
from sorter.perception.preprocess import IMAGE_SUFFIXES, to_model_input

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "cucumber9-int8.tflite"
"""File name of the bundled default model."""

MODEL_ENV = "SORTER_MODEL"
"""Environment variable naming the model to use when none is given."""

_INSTALL_HINT = (
    "no TFLite runtime found: install LiteRT with `pip install ai-edge-litert` "
    "(64-bit OS needed), or tflite-runtime as a fallback in a numpy<2 venv"
)


def model_search_dirs() -> list[Path]:
    """Folders searched for the bundled default model, in order."""
    checkout = Path(__file__).resolve().parents[2] / "models"
    return [
        checkout,
        Path(sys.prefix) / "share" / "produce-sorter" / "models",
        Path("/usr/share/produce-sorter/models"),
        Path("/opt/produce-sorter/models"),
    ]


def default_model_path() -> Path:
    """The model to use when none is given (see the module docstring for the order)."""
    env = os.environ.get(MODEL_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelError(
                f"{MODEL_ENV}={env}: no such model file; point it at a .tflite or unset it"
            )
        return path
    dirs = model_search_dirs()
    for folder in dirs:
        candidate = folder / DEFAULT_MODEL_NAME
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(d) for d in dirs)
    raise ModelError(
        f"no bundled model {DEFAULT_MODEL_NAME} found (looked in {looked}); "
        f"pass --model or set {MODEL_ENV}"
    )


def interpreter_class() -> Callable[..., Any]:
    """LiteRT's Interpreter, else tflite_runtime's; ModelError with an install hint if neither."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        log.debug("ai_edge_litert not importable; trying tflite_runtime")
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteRuntimeInterpreter

        return TfliteRuntimeInterpreter
    except ImportError as err:
        raise ModelError(_INSTALL_HINT) from err


@dataclass(frozen=True)
class TensorQuant:
    """Affine quantisation of one tensor: real = (q - zero_point) * scale."""

    dtype: np.dtype[Any]
    """Tensor element type (uint8, int8 or float32)."""
    scale: float
    """Quantisation scale; 0.0 means the tensor is not quantised."""
    zero_point: int
    """Quantisation zero point."""

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Real values (here: raw pixels 0..255) -> tensor values."""
        if self.dtype == np.float32:
            return values.astype(np.float32)
        info = np.iinfo(self.dtype)
        if self.scale == 0.0 or (self.scale == 1.0 and self.zero_point == 0):
            if values.dtype == self.dtype:
                return values
            return np.clip(np.rint(values), info.min, info.max).astype(self.dtype)
        q = np.rint(values.astype(np.float32) / self.scale + self.zero_point)
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Tensor values -> real float32 values."""
        if self.dtype == np.float32 or self.scale == 0.0:
            return values.astype(np.float32)
        return ((values.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


class Classifier:
    """A LiteRT model with its metadata; grades uint8 RGB crops into label probabilities."""

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 1) -> None:
        if num_threads < 1:
            raise ModelError(f"num_threads must be at least 1, got {num_threads}")
        path = Path(model_path) if model_path is not None else default_model_path()
        data = read_model_bytes(path)
        self.model_path: Path = path
        """The .tflite file this classifier runs."""
        self.metadata: ModelMetadata = ModelMetadata.from_model_bytes(data, path)
        """The model's metadata (labels, input size, crop rule, fidelity...)."""
        self.num_threads: int = num_threads
        """Interpreter threads."""
        interpreter_cls = interpreter_class()
        try:
            with native_notices_captured():  # LiteRT's "Created ... XNNPACK delegate" line
                self._interp = interpreter_cls(model_content=data, num_threads=num_threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(
                f"{path}: the TFLite runtime cannot load this model ({err}); "
                "re-export it with sorter-export"
            ) from err
        self._lock = threading.Lock()
        self._input, self._in_q = self._only_tensor(self._interp.get_input_details(), "input")
        self._output, self._out_q = self._only_tensor(self._interp.get_output_details(), "output")
        self._check_against_metadata()

    @property
    def labels(self) -> tuple[str, ...]:
        """Grade names in output order."""
        return self.metadata.labels

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.metadata.input_size

    def _only_tensor(self, details: list[dict[str, Any]], kind: str) -> tuple[int, TensorQuant]:
        if len(details) != 1:
            raise ModelError(
                f"{self.model_path}: model has {len(details)} {kind}s; a grading model has one"
            )
        d = details[0]
        scale, zero_point = d.get("quantization", (0.0, 0))
        return int(d["index"]), TensorQuant(np.dtype(d["dtype"]), float(scale), int(zero_point))

    def _check_against_metadata(self) -> None:
        meta, path = self.metadata, self.model_path
        in_d = self._interp.get_input_details()[0]
        out_d = self._interp.get_output_details()[0]
        h, w = meta.input_size
        in_shape = tuple(int(x) for x in in_d["shape"])
        if len(in_shape) != 4 or in_shape[1:] != (h, w, 3):
            raise ModelError(
                f"{path}: model input shape {list(in_shape)} does not match its metadata "
                f"input_size [{h}, {w}] x 3 channels; re-export the model"
            )
        if self._in_q.dtype.name != meta.input_dtype:
            raise ModelError(
                f"{path}: model input type {self._in_q.dtype.name} does not match its "
                f"metadata input_dtype {meta.input_dtype}; re-export the model"
            )
        out_shape = [int(x) for x in out_d["shape"]]
        if out_shape[-1] != len(meta.labels):
            raise ModelError(
                f"{path}: model outputs {out_shape[-1]} scores but its metadata lists "
                f"{len(meta.labels)} labels ({', '.join(meta.labels)}); "
                "the labels do not belong to this model, re-export it"
            )
        if self._out_q.dtype.name != meta.output_dtype:
            raise ModelError(
                f"{path}: model output type {self._out_q.dtype.name} does not match its "
                f"metadata output_dtype {meta.output_dtype}; re-export the model"
            )
        self._batch = in_shape[0]

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) float32 for a uint8 batch (N, h, w, 3) at the model's size.

        A single (h, w, 3) image is treated as a batch of one.
        """
        arr = np.asarray(batch)
        if arr.ndim == 3:
            arr = arr[None]
        h, w = self.input_size
        if arr.ndim != 4 or arr.shape[1:] != (h, w, 3) or arr.dtype != np.uint8:
            raise ImageError(
                f"classify() needs uint8 images of shape (N, {h}, {w}, 3), got "
                f"{arr.shape} {arr.dtype}; use classify_crops() for crops of any size"
            )
        out = np.empty((arr.shape[0], len(self.labels)), dtype=np.float32)
        with self._lock:
            for i in range(arr.shape[0]):
                out[i] = self._run_one(arr[i : i + 1])
        return out

    def classify_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, C) for RGB uint8 crops of any size (through `to_model_input`)."""
        if len(crops) == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        batch = np.stack([to_model_input(c, self.input_size) for c in crops])
        return self.classify(batch)

    def _run_one(self, image: np.ndarray) -> np.ndarray:
        self._interp.set_tensor(self._input, self._in_q.quantize(image))
        self._interp.invoke()
        raw = self._interp.get_tensor(self._output)
        return self._out_q.dequantize(raw).reshape(-1)

    def top(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """(label, confidence) of the highest score of each row."""
        idx = np.argmax(probs, axis=1)
        return [(self.labels[i], float(probs[r, i])) for r, i in enumerate(idx)]

    def time_invokes(self, runs: int, warmup: int = 10, seed: int = 0) -> list[float]:
        """Seconds per invoke (set input, invoke, read output) on random pixels, `runs` times."""
        rng = np.random.default_rng(seed)
        h, w = self.input_size
        image = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        times: list[float] = []
        with self._lock:
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                self._run_one(image)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        return times


@dataclass(frozen=True)
class LatencyStats:
    """Invoke latency of a model at one thread count."""

    threads: int
    """Interpreter threads."""
    runs: int
    """Timed invokes (after warm-up)."""
    median_ms: float
    """Median latency, milliseconds."""
    p99_ms: float
    """99th percentile latency, milliseconds."""
    throughput_ips: float
    """Images per second, one image at a time (runs / total time)."""


def measure_latency(
    model_path: str | Path | None, threads: int, runs: int = 200, warmup: int = 20
) -> LatencyStats:
    """Measure invoke latency of a model at `threads` threads."""
    if runs < 1:
        raise ModelError(f"runs must be at least 1, got {runs}")
    clf = Classifier(model_path, num_threads=threads)
    times = clf.time_invokes(runs, warmup=warmup)
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(np.ceil(0.99 * len(ordered))) - 1)]
    return LatencyStats(
        threads=threads,
        runs=runs,
        median_ms=statistics.median(times) * 1e3,
        p99_ms=p99 * 1e3,
        throughput_ips=len(times) / sum(times),
    )


@dataclass(frozen=True)
class ImageItem:
    """An image file to grade, with its true grade when the folder layout tells it."""

    path: Path
    """The image file."""
    truth: str | None
    """Grade named by its parent folder (folder-per-grade tree), else None."""


def collect_images(paths: Iterable[str | Path], labels: Sequence[str]) -> list[ImageItem]:
    """Image files named or found (recursively, sorted) under `paths`.

    Inside a folder given on the command line, an image whose parent folder is named after
    one of `labels` gets that grade as its truth (folder-per-grade trees, including
    train/val/test subtrees). Raises ImageError for a path that does not exist.
    """
    known = set(labels)
    items: list[ImageItem] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    parent = f.parent.name
                    items.append(ImageItem(f, parent if parent in known else None))
        elif p.is_file():
            items.append(ImageItem(p, None))
        else:
            raise ImageError(f"{p}: no such file or folder; check the path")
    return items
