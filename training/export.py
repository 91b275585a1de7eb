"""Export a trained run to a LiteRT/TFLite model with metadata, and check it against Keras.

Steps (`export_run`):
1. Load the run folder (model.keras, labels.txt, config.json, split.json, metrics.json).
2. Build the export graph: `training.model.inference_model(model, batch_size=1)` (no
   augmentation or dropout, fixed batch of 1 so no shape ops appear around Flatten), with a
   float32 input for int8 conversion (the converter then gives a uint8 input taking raw
   pixels 0..255, scale 1, zero point 0) or the run's uint8 input for a float model.
3. Convert with `TFLiteConverter.from_keras_model` (the path that works with Keras 3 on
   TF 2.21); with `quantize`, full-integer post-training quantization calibrated on a
   stratified sample of the run's training images, builtin int8 ops only, uint8 in and out.
4. Inspect the flatbuffer: every operator must be a builtin and, for int8, no tensor may be
   float; otherwise fail naming the ops.
5. Embed the metadata (`sorter.grading.metadata`) in the flatbuffer and write a sidecar JSON.
6. Fidelity: the float Keras model and the exported model (run through `sorter.grading.classifier`,
   the device path) on the run's validation and test images: both accuracies, top-1
   agreement, mean absolute probability difference. Recorded in the metadata; an
   accuracy drop beyond the threshold is an error unless forced.
7. Robustness: the exported model under the camera-path corruption suite
   (`training.robustness`) on the validation (else test) images; the summary goes into the
   metadata (`robustness`). `source_run` is the run folder's name, not a machine path.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.python import schema_util
from tensorflow.lite.tools import flatbuffer_utils

from sorter.errors import ConfigError, DatasetError, ModelError, SorterError
from sorter.grading.classifier import Classifier
from sorter.grading.metadata import (
    DEFAULT_ATTRIBUTION,
    METADATA_NAME,
    CropRule,
    ModelMetadata,
    sidecar_path,
)
from sorter.native import native_notices_captured
from training import data as D
from training.model import FLIP_VIEWS, flip_average, inference_model

log = logging.getLogger(__name__)

_FLOAT_TYPES = {
    schema_fb.TensorType.FLOAT32: "float32",
    schema_fb.TensorType.FLOAT16: "float16",
    schema_fb.TensorType.FLOAT64: "float64",
}
_OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}


class FidelityError(SorterError):
    """The exported model grades noticeably worse than the Keras model it came from."""

    exit_code = 3


@dataclass
class ExportOptions:
    """What `sorter-export` should write and how strictly it checks it."""

    quantize: bool = True
    """Full-integer int8 (uint8 input/output); False writes a float32 model."""
    out: Path | None = None
    """Output .tflite; None -> <run>/model-int8.tflite or <run>/model-float.tflite."""
    calibration_images: int = 1000
    """Training images (stratified by grade) used to calibrate the int8 ranges."""
    threshold_points: float = 1.0
    """Largest allowed accuracy drop, in percentage points, exported vs float Keras."""
    force: bool = False
    """Write the model even when the drop exceeds the threshold."""
    seed: int = 0
    """Seeds the choice of calibration images."""
    attribution: str = DEFAULT_ATTRIBUTION
    """Licence/attribution of the training data, recorded in the metadata."""
    flip_views: tuple[str, ...] | None = None
    """Test-time flip averaging built into the exported graph (`training.model.FLIP_VIEWS`
    names, e.g. ("id", "h", "v", "hv")); empty for none; None: the run's own `test_views`
    (config.json; none for runs made before it existed). Costs one forward pass per view."""
    robustness: bool = True
    """Score the exported model under the camera-path corruption suite on the run's
    validation (else test) images and record the summary in the metadata; a run without
    either records its own robustness.json (e.g. from cross-validation) if it has one."""


@dataclass
class SplitFidelity:
    """Float Keras model vs exported model on one split of the run."""

    split: str
    """"val", "test" (or "train" when the run has neither)."""
    images: int
    """Images compared."""
    float_accuracy: float
    """Top-1 accuracy of the float Keras model (fraction)."""
    exported_accuracy: float
    """Top-1 accuracy of the exported model through the device classifier (fraction)."""
    agreement: float
    """Fraction of images where both models pick the same grade."""
    mean_abs_prob_diff: float
    """Mean absolute difference of the probabilities, over images and grades."""

    @property
    def drop_points(self) -> float:
        """Accuracy lost by exporting, in percentage points (negative: it gained)."""
        return 100.0 * (self.float_accuracy - self.exported_accuracy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "float_accuracy": round(self.float_accuracy, 6),
            "exported_accuracy": round(self.exported_accuracy, 6),
            "agreement": round(self.agreement, 6),
            "mean_abs_prob_diff": round(self.mean_abs_prob_diff, 6),
        }


@dataclass
class ExportResult:
    """What an export wrote and how faithful it is."""

    path: Path
    """The .tflite written (metadata embedded)."""
    sidecar: Path
    """The sidecar JSON copy of the metadata."""
    size_bytes: int
    """Size of the .tflite."""
    metadata: ModelMetadata
    """The metadata embedded in it."""
    fidelity: list[SplitFidelity] = field(default_factory=list)
    """One entry per compared split."""
    forced: bool = False
    """True when written despite failing the fidelity threshold."""


@dataclass
class Run:
    """A sorter-train run folder, loaded."""

    path: Path
    """The run folder."""
    model: keras.Model
    """The trained Keras model (model.keras)."""
    labels: list[str]
    """Grades in class-index order (labels.txt)."""
    config: dict[str, Any]
    """config.json."""
    metrics: dict[str, Any]
    """metrics.json (empty when missing)."""


Progress = Callable[[str], None]


def newest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently modified run folder (one with model.keras) under `runs_dir`."""
    root = Path(runs_dir)
    runs = [p.parent for p in root.glob("*/model.keras")] if root.is_dir() else []
    if not runs:
        raise DatasetError(
            f"{root}: no run folders with model.keras; train one with sorter-train or pass RUN_DIR"
        )
    return max(runs, key=lambda p: (p / "model.keras").stat().st_mtime)


def load_run(run_dir: str | Path) -> Run:
    """Load a run folder; DatasetError/ModelError naming the missing or bad file."""
    path = Path(run_dir)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such run folder; pass a folder written by sorter-train")
    model_file = path / "model.keras"
    if not model_file.is_file():
        raise ModelError(f"{model_file}: not found; is {path} a finished sorter-train run?")
    labels = D.read_labels(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{config_file}: not found; is {path} a sorter-train run?") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{config_file}: not valid JSON ({err}); re-run sorter-train") from err
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as err:  # Keras raises many types for a bad archive
        raise ModelError(
            f"{model_file}: cannot load the Keras model ({type(err).__name__}: {err}); "
            "re-run sorter-train"
        ) from err
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(labels):
        raise ModelError(
            f"{path}: model.keras outputs {n_out} grades but labels.txt lists {len(labels)}"
        )
    return Run(path, model, labels, config, metrics)


def stratified_sample(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of about `n` items drawn evenly from each class (all of a small class)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = max(1, math.ceil(n / max(1, len(classes))))
    picked: list[np.ndarray] = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        picked.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(picked))


def export_graph(model: keras.Model, input_dtype: str) -> keras.Model:
    """The model to convert: inference copy, batch 1, the given input dtype, softmax output.

    Layers are shared with `inference_model`'s copy and re-applied in order (the networks
    `build_model` makes are linear chains); the result is checked against that copy.
    """
    infer = inference_model(model, batch_size=1)
    src = infer.inputs[0]
    inp = keras.Input(tuple(src.shape[1:]), batch_size=1, dtype=input_dtype, name="image")
    x = inp
    for layer in infer.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        x = layer(x)
    graph = keras.Model(inp, x, name=infer.name)
    probe = np.random.default_rng(0).integers(0, 256, size=(1, *src.shape[1:]), dtype=np.uint8)
    ref = np.asarray(infer(probe, training=False))
    got = np.asarray(graph(probe.astype(input_dtype), training=False))
    if not np.allclose(ref, got, atol=1e-5):
        raise ModelError(
            f"model {model.name}: rebuilding it with a {input_dtype} input changed its output; "
            "only linear (Sequential-like) networks can be exported"
        )
    if ref.min() < -1e-6 or not np.allclose(ref.sum(axis=1), 1.0, atol=1e-3):
        log.info("model outputs logits; appending a softmax for export")
        graph = keras.Model(inp, keras.layers.Softmax(name="probabilities")(x), name=infer.name)
    return graph


def convert(graph: keras.Model, calibration: np.ndarray | None) -> bytes:
    """TFLite flatbuffer of `graph`: full-integer int8 when `calibration` images are given."""
    converter = tf.lite.TFLiteConverter.from_keras_model(graph)
    if calibration is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    # Keras prints "Saved artifact at ..." for its temporary SavedModel and the converter's
    # C++ side chats on stderr: keep both out of the user's terminal (debug log keeps them).
    with (
        native_notices_captured(stdout=True, keep_other=False),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        # TF1-era warning about quantized_input_stats; the representative set replaces them.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        try:
            return bytes(converter.convert())
        except Exception as err:  # the converter raises ConverterError and others
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(
                f"TFLite conversion failed ({first}); an op may have no int8 kernel: "
                "try another --arch, or export without --quantize"
            ) from err


def graph_report(tflite: bytes) -> tuple[list[str], list[str]]:
    """(operator names in the graph, problems): custom ops and ops touching float tensors."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    ops: list[str] = []
    float_ops: list[str] = []
    for sg in model.subgraphs:
        tensors = sg.tensors
        for op in sg.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = schema_util.get_builtin_code_from_operator_code(code)
            name = _OP_NAMES.get(builtin, f"op{builtin}")
            if builtin == schema_fb.BuiltinOperator.CUSTOM:
                custom = code.customCode.decode() if code.customCode else "?"
                float_ops.append(f"custom op {custom}")
                name = f"CUSTOM({custom})"
            ops.append(name)
            idx = [int(i) for i in (*op.inputs, *op.outputs) if int(i) >= 0]
            floats = sorted(
                {_FLOAT_TYPES[tensors[i].type] for i in idx if tensors[i].type in _FLOAT_TYPES}
            )
            if floats:
                float_ops.append(f"{name} ({'/'.join(floats)})")
    return ops, float_ops


def check_integer_only(tflite: bytes) -> list[str]:
    """Raise ModelError if any op is custom or touches a float tensor; return the op names."""
    ops, problems = graph_report(tflite)
    if problems:
        listed = ", ".join(sorted(set(problems)))
        raise ModelError(
            f"the int8 model is not integer-only: {listed}; a layer has no int8 kernel, "
            "try another --arch or export without --quantize"
        )
    return ops


def io_quantization(tflite: bytes) -> dict[str, Any]:
    """Input/output tensor types and (scale, zero point) of a flatbuffer's main graph."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    sg = model.subgraphs[0]
    names = {v: k.lower() for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_")}

    def describe(index: int) -> dict[str, Any]:
        t = sg.tensors[index]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
        zp = (
            int(q.zeroPoint[0])
            if q is not None and q.zeroPoint is not None and len(q.zeroPoint)
            else 0
        )
        return {"dtype": names[t.type], "scale": scale, "zero_point": zp}

    return {"input": describe(sg.inputs[0]), "output": describe(sg.outputs[0])}


def pin_raw_pixel_input(tflite: bytes) -> bytes:
    """Make a uint8 input take raw pixels exactly (scale 1, zero point 0).

    Calibration sets the input range from the images' darkest and brightest pixels; when
    those are not exactly 0 and 255 the input scale is slightly off 1. If the input feeds
    only QUANTIZE ops (the converter's uint8 -> int8 requantisation), declaring it scale 1 /
    zero point 0 is exact: QUANTIZE maps each pixel onto the int8 range the calibration chose.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    sg = model.subgraphs[0]
    index = sg.inputs[0]
    tensor = sg.tensors[index]
    q = tensor.quantization
    if tensor.type != schema_fb.TensorType.UINT8 or q is None or q.scale is None:
        return tflite
    if float(q.scale[0]) == 1.0 and int(q.zeroPoint[0]) == 0:
        return tflite
    consumers = [op for op in sg.operators if index in [int(i) for i in op.inputs]]
    quantize = schema_fb.BuiltinOperator.QUANTIZE
    if not consumers or any(
        schema_util.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        != quantize
        for op in consumers
    ):
        log.warning("uint8 input has scale %s; the classifier will quantise pixels", q.scale[0])
        return tflite
    q.scale = np.array([1.0], dtype=np.float32)
    q.zeroPoint = np.array([0], dtype=np.int64)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embed_metadata(tflite: bytes, meta_json: bytes) -> bytes:
    """The flatbuffer with our metadata entry added, or an older one of the name replaced
    in its own buffer (so no copy of the old JSON is left in the file)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    data = np.frombuffer(meta_json, dtype=np.uint8)
    ours = [m for m in (model.metadata or []) if _name(m.name) == METADATA_NAME]
    if ours:
        model.buffers[ours[0].buffer].data = data
        model.metadata = [m for m in model.metadata if m not in ours[1:]]
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    buffer = schema_fb.BufferT()
    buffer.data = data
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


def fidelity(
    split: str, reference: np.ndarray, exported: np.ndarray, y: np.ndarray
) -> SplitFidelity:
    """Compare float probabilities with the exported model's on the same labelled images."""
    ref_top, exp_top = reference.argmax(axis=1), exported.argmax(axis=1)
    return SplitFidelity(
        split=split,
        images=len(y),
        float_accuracy=float(np.mean(ref_top == y)),
        exported_accuracy=float(np.mean(exp_top == y)),
        agreement=float(np.mean(ref_top == exp_top)),
        mean_abs_prob_diff=float(np.mean(np.abs(reference - exported))),
    )


def build_metadata(
    run: Run, tflite: bytes, opts: ExportOptions, n_calibration: int
) -> ModelMetadata:
    """Metadata for the exported model (without fidelity figures yet)."""
    io_q = io_quantization(tflite)
    fov = run.config.get("field_of_view_mm", [250.0, 250.0])
    h, w = (int(v) for v in run.config["input_size"])
    quant: dict[str, Any] = {
        "mode": "int8" if opts.quantize else "float",
        "input": {k: io_q["input"][k] for k in ("scale", "zero_point")},
        "output": {k: io_q["output"][k] for k in ("scale", "zero_point")},
    }
    if opts.quantize:
        quant["calibration_images"] = n_calibration
        quant["calibration_split"] = "train (stratified by grade)"
    training_metrics = {
        k: run.metrics[k]["accuracy"]
        for k in ("val", "test")
        if isinstance(run.metrics.get(k), dict) and "accuracy" in run.metrics[k]
    }
    return ModelMetadata(
        labels=tuple(run.labels),
        input_size=(h, w),
        color_order="RGB",
        input_dtype=io_q["input"]["dtype"],
        output_dtype=io_q["output"]["dtype"],
        crop=CropRule("fixed-window", (float(fov[0]), float(fov[1]))),
        quantization=quant,
        metrics={},
        dataset_fingerprint=str(run.config.get("dataset_fingerprint", "")),
        source_run=run.path.resolve().name,  # the run folder's name, not a machine path
        attribution=opts.attribution,
        extra={
            "arch": run.config.get("arch", run.model.name),
            "test_time_flip_views": list(opts.flip_views or ()),
            "training_accuracy": training_metrics,
            **_cross_validation(run.path),
            **_background(run.path),
            "created": datetime.now().isoformat(timespec="seconds"),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    )


def _cross_validation(run_dir: Path) -> dict[str, Any]:
    """{"cross_validation": ...} from the run's cross_validation.json (training.cv.attach)."""
    path = run_dir / "cross_validation.json"
    if not path.is_file():
        return {}
    try:
        return {"cross_validation": json.loads(path.read_text())}
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); re-run training.cv attach") from err


def _background(run_dir: Path) -> dict[str, Any]:
    """{"background": ...}: the training pictures' background (training.background)."""
    from training import background as B

    doc = B.of_run(run_dir)
    return {} if doc is None else {"background": doc}


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=64, verbose=0), dtype=np.float32)


def _calibration(run: Run, opts: ExportOptions, progress: Progress) -> np.ndarray | None:
    """Stratified training images for the int8 ranges (None for a float export)."""
    if not opts.quantize:
        return None
    x_train, y_train = D.load_split_images(run.path, "train")
    if len(x_train) == 0:
        raise DatasetError(f"{run.path}/split.json: no training images to calibrate with")
    calibration = x_train[stratified_sample(y_train, opts.calibration_images, opts.seed)]
    progress(f"calibrating int8 ranges on {len(calibration)} training images (stratified)")
    return calibration


def _convert_checked(
    run: Run, opts: ExportOptions, calibration: np.ndarray | None, progress: Progress
) -> tuple[bytes, keras.Model]:
    """(flatbuffer, the float Keras reference it must match) for the run's model."""
    mode = "int8" if opts.quantize else "float"
    graph = export_graph(run.model, "float32" if opts.quantize else "uint8")
    reference = inference_model(run.model, batch_size=None)
    if opts.flip_views:
        progress(f"averaging over flip views {', '.join(opts.flip_views)} inside the model")
        graph = flip_average(graph, opts.flip_views)
        reference = flip_average(reference, opts.flip_views)
    progress(f"converting to TFLite ({mode})")
    tflite = convert(graph, calibration)
    if opts.quantize:
        tflite = pin_raw_pixel_input(tflite)
    ops, problems = graph_report(tflite)
    if opts.quantize:
        check_integer_only(tflite)
    elif any(p.startswith("custom") for p in problems):
        raise ModelError(f"the model needs custom ops ({', '.join(problems)}); not supported")
    progress(f"graph: {len(ops)} ops ({', '.join(sorted(set(ops)))})")
    return tflite, reference


def _check(
    run: Run, probe: bytes, reference: keras.Model, opts: ExportOptions, progress: Progress
) -> tuple[list[SplitFidelity], dict[str, Any] | None]:
    """Fidelity per split and the robustness summary of the exported model (device path)."""
    mode = "int8" if opts.quantize else "float"
    results: list[SplitFidelity] = []
    robust: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        probe_path = Path(tmp) / "probe.tflite"
        probe_path.write_bytes(probe)
        clf = Classifier(probe_path)
        splits = [s for s in ("val", "test") if _split_size(run.path, s)] or ["train"]
        for split in splits:
            x, y = D.load_split_images(run.path, split)
            if split == "train":
                progress("no val/test images in the run: checking fidelity on training images")
            result = fidelity(split, _predict(reference, x), clf.classify(x), y)
            results.append(result)
            progress(
                f"{split}: float {result.float_accuracy:.2%}, {mode} "
                f"{result.exported_accuracy:.2%}, agreement {result.agreement:.2%}, "
                f"mean |dp| {result.mean_abs_prob_diff:.4f} on {result.images} images"
            )
            if robust is None and opts.robustness and split != "train":
                robust = _robustness(clf, x, y, split, mode, progress)
    return results, robust if robust is not None else _run_robustness(run)


def _robustness(
    clf: Classifier, x: np.ndarray, y: np.ndarray, split: str, mode: str, progress: Progress
) -> dict[str, Any]:
    from training import robustness as R

    progress(f"robustness of the {mode} model on {split} (camera-path corruption suite)")
    doc = R.robustness(clf.classify, x, y, seed=0)
    doc["split"], doc["model"] = split, f"{mode} (LiteRT)"
    progress(
        f"{split}: clean {doc['clean']:.2%}, camera path {doc['camera_clean']:.2%}, "
        f"mean corruption {doc['mean_corruption']:.2%} (worst {doc['worst_kind']})"
    )
    return {**R.summary(doc), "model": doc["model"]}


def _run_robustness(run: Run) -> dict[str, Any] | None:
    """The run folder's own robustness report (e.g. from cross-validation), summarised."""
    from training import robustness as R

    doc = R.read_report(run.path)
    return None if doc is None else {**R.summary(doc), "model": doc.get("model", "")}


def export_run(
    run_dir: str | Path, opts: ExportOptions, progress: Progress = log.info
) -> ExportResult:
    """Export a run (see the module docstring); raises FidelityError past the threshold."""
    _check_views(opts.flip_views or ())
    run = load_run(run_dir)
    if opts.flip_views is None:  # the run's own test-time views
        opts = replace(opts, flip_views=tuple(run.config.get("test_views", ())))
        _check_views(opts.flip_views or ())
    mode = "int8" if opts.quantize else "float"
    out = opts.out or run.path / f"model-{mode}.tflite"
    progress(f"run {run.path}: {run.config.get('arch', run.model.name)}, {len(run.labels)} grades")
    calibration = _calibration(run, opts, progress)
    tflite, reference = _convert_checked(run, opts, calibration, progress)
    meta = build_metadata(run, tflite, opts, 0 if calibration is None else len(calibration))
    probe = embed_metadata(tflite, meta.to_json().encode())
    results, robust = _check(run, probe, reference, opts, progress)
    meta = _with_metrics(meta, results, opts.threshold_points, robust)
    worst = max(results, key=lambda r: r.drop_points)
    failed = worst.drop_points > opts.threshold_points
    if failed and not opts.force:
        raise FidelityError(
            f"{mode} accuracy on {worst.split} is {worst.exported_accuracy:.2%}, "
            f"{worst.drop_points:.1f} points below the float model's "
            f"{worst.float_accuracy:.2%} (threshold {opts.threshold_points:g}); nothing written. "
            "Try more calibration images (--calibration-images), a different --arch in "
            "sorter-train, or --force to write it anyway"
        )
    final = embed_metadata(tflite, meta.to_json().encode())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(final)
    sidecar = sidecar_path(out)
    sidecar.write_text(meta.to_json() + "\n")
    ModelMetadata.load(out)  # read back through the runtime's reader
    return ExportResult(out, sidecar, len(final), meta, results, forced=failed)


def _check_views(views: tuple[str, ...]) -> None:
    bad = [v for v in views if v not in FLIP_VIEWS]
    if bad:
        raise ConfigError(
            f"--flip-average {','.join(views)}: unknown view(s) {', '.join(bad)}; "
            f"choose from {', '.join(FLIP_VIEWS)}"
        )


def _split_size(run_dir: Path, split: str) -> int:
    _, sp = D.read_split(run_dir)
    return len(sp.get(split, []))


def _with_metrics(
    meta: ModelMetadata,
    results: list[SplitFidelity],
    threshold: float,
    robust: dict[str, Any] | None,
) -> ModelMetadata:
    metrics: dict[str, Any] = {r.split: r.as_dict() for r in results}
    metrics["threshold_points"] = threshold
    extra = dict(meta.extra)
    if robust is not None:
        extra["robustness"] = robust
    return ModelMetadata(**{**meta.__dict__, "metrics": metrics, "extra": extra})
