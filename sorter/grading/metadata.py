"""What an exported model says about itself: labels, input, crop rule, fidelity, provenance.

`sorter-export` writes the metadata twice: embedded in the .tflite flatbuffer (a metadata
entry named `produce_sorter_metadata` whose buffer holds UTF-8 JSON) and as a sidecar JSON
next to it (`<model>.json`, for people and tools that do not parse flatbuffers). The embedded
copy is authoritative; the sidecar is read only when the model has none embedded.

This module is pure Python (no TensorFlow, no LiteRT): a small read-only flatbuffer walker
finds the metadata entry, so `sorter doctor` and the classifier can check a model cheaply.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorter.errors import ModelError

log = logging.getLogger(__name__)

METADATA_NAME = "produce_sorter_metadata"
"""Name of the flatbuffer metadata entry that holds our JSON."""

FORMAT = "produce-sorter-model"
"""Value of the JSON's "format" key, so a stray JSON file is not mistaken for metadata."""

FORMAT_VERSION = 1
"""Bumped when a field changes meaning; readers refuse newer versions."""

DEFAULT_ATTRIBUTION = "CUCUMBER-9 dataset (c) Workpiles, CC BY 4.0"
"""Attribution of the training data of the bundled model."""

_TFLITE_IDENTIFIER = b"TFL3"
# Field slots of the TFLite schema's `Model` table (schema.fbs order).
_MODEL_BUFFERS = 4
_MODEL_METADATA = 6
# `Metadata` table: name, buffer index. `Buffer` table: data, offset, size (large models).
_METADATA_NAME = 0
_METADATA_BUFFER = 1
_BUFFER_DATA = 0
_BUFFER_OFFSET = 1
_BUFFER_SIZE = 2


MAX_METADATA_ENTRIES = 1024
"""A model with more metadata entries is refused (TFLite writes 2-3; ours adds one): the
reader's work stays proportional to the file, whatever a crafted file claims."""


class _FlatbufferError(ValueError):
    """The bytes are not a well-formed flatbuffer (truncated or corrupt)."""


class _Reader:
    """Bounds-checked reads of the flatbuffer primitives we need (little-endian)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise _FlatbufferError(f"offset {pos} outside the {len(self.data)}-byte file")
        return int(struct.unpack_from(fmt, self.data, pos)[0])

    def bytes_at(self, start: int, length: int) -> bytes:
        """A copy of `length` bytes at `start` (bounds-checked)."""
        if start < 0 or length < 0 or start + length > len(self.data):
            raise _FlatbufferError("data runs past the end of the file")
        return self.data[start : start + length]

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def i32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def u64(self, pos: int) -> int:
        return self._unpack("<Q", pos)

    def field_pos(self, table: int, slot: int) -> int | None:
        """Absolute position of a table field's value, or None when the field is absent."""
        vtable = table - self.i32(table)
        vtable_size = self.u16(vtable)
        entry = 4 + 2 * slot
        if entry + 2 > vtable_size:
            return None
        offset = self.u16(vtable + entry)
        return table + offset if offset else None

    def indirect(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, table: int, slot: int) -> tuple[int, int] | None:
        """(start of elements, length) of a vector field, or None when absent."""
        pos = self.field_pos(table, slot)
        if pos is None:
            return None
        vec = self.indirect(pos)
        length = self.u32(vec)
        if length > len(self.data):
            raise _FlatbufferError(f"vector of {length} elements cannot fit in the file")
        return vec + 4, length

    def table_at(self, elements: int, index: int) -> int:
        """The table referenced by element `index` of a vector of tables."""
        return self.indirect(elements + 4 * index)

    def string_span(self, table: int, slot: int) -> tuple[int, int] | None:
        """(start, length) of a string field, or None when absent."""
        vec = self.vector(table, slot)
        if vec is not None and vec[0] + vec[1] > len(self.data):
            raise _FlatbufferError("string runs past the end of the file")
        return vec

    def scalar_u32(self, table: int, slot: int, default: int = 0) -> int:
        pos = self.field_pos(table, slot)
        return default if pos is None else self.u32(pos)

    def scalar_u64(self, table: int, slot: int, default: int = 0) -> int:
        pos = self.field_pos(table, slot)
        return default if pos is None else self.u64(pos)


def check_tflite_bytes(data: bytes, source: str) -> None:
    """Raise ModelError unless `data` starts like a TFLite flatbuffer."""
    if len(data) < 8:
        raise ModelError(f"{source}: file is empty or truncated ({len(data)} bytes); re-export it")
    if data[4:8] != _TFLITE_IDENTIFIER:
        raise ModelError(
            f"{source}: not a TFLite model (no 'TFL3' identifier); "
            "pass the .tflite written by sorter-export"
        )


def read_embedded_metadata(data: bytes, source: str = "model") -> dict[str, bytes]:
    """All metadata entries of a TFLite flatbuffer: {name: buffer bytes}.

    Linear in the file's size and bounded on crafted files: at most MAX_METADATA_ENTRIES
    entries, and the names and buffers read may not add up to more bytes than the file
    holds (entries that all point at one big buffer would otherwise copy it once each).
    Raises ModelError when the bytes are not a TFLite model or are truncated or crafted.
    """
    check_tflite_bytes(data, source)
    reader = _Reader(data)
    entries: dict[str, bytes] = {}
    try:
        model = reader.indirect(0)
        metadata = reader.vector(model, _MODEL_METADATA)
        buffers = reader.vector(model, _MODEL_BUFFERS)
        if metadata is None:
            return entries
        if metadata[1] > MAX_METADATA_ENTRIES:
            raise ModelError(
                f"{source}: {metadata[1]} metadata entries, more than the "
                f"{MAX_METADATA_ENTRIES} a model can have; not a model sorter-export wrote "
                "(re-export it)"
            )
        budget = len(data)
        for i in range(metadata[1]):
            entry = reader.table_at(metadata[0], i)
            name_span = reader.string_span(entry, _METADATA_NAME) or (0, 0)
            index = reader.scalar_u32(entry, _METADATA_BUFFER)
            if buffers is None or index >= buffers[1]:
                raise _FlatbufferError(f"metadata entry {i} points at missing buffer {index}")
            start, length = _buffer_span(reader, reader.table_at(buffers[0], index))
            budget -= name_span[1] + length
            if budget < 0:
                raise _FlatbufferError("metadata entries overlap (more bytes than the file)")
            name = reader.bytes_at(*name_span).decode("utf-8", errors="replace")
            entries[name] = reader.bytes_at(start, length)
    except _FlatbufferError as err:
        raise ModelError(
            f"{source}: truncated or corrupt TFLite file ({err}); copy or re-export it"
        ) from err
    return entries


def _buffer_span(reader: _Reader, buffer: int) -> tuple[int, int]:
    """(start, length) of a Buffer table's bytes in the file."""
    offset = reader.scalar_u64(buffer, _BUFFER_OFFSET)
    if offset > 1:  # large models keep buffers after the flatbuffer, addressed from file start
        size = reader.scalar_u64(buffer, _BUFFER_SIZE)
        if offset + size > len(reader.data):
            raise _FlatbufferError("buffer runs past the end of the file")
        return offset, size
    vec = reader.vector(buffer, _BUFFER_DATA)
    if vec is None:
        return 0, 0
    if vec[0] + vec[1] > len(reader.data):
        raise _FlatbufferError("buffer runs past the end of the file")
    return vec


@dataclass(frozen=True)
class CropRule:
    """How the device cuts an item out of a camera frame before resizing it to the input."""

    rule: str = "fixed-window"
    """"fixed-window": a fixed field of view of belt centred on the item (keeps size grades)."""
    window_mm: tuple[float, float] = (250.0, 250.0)
    """Width and height in millimetres of belt that one training image shows."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the runtime needs to know about an exported model, read from the model."""

    labels: tuple[str, ...]
    """Grade names in output-index order."""
    input_size: tuple[int, int]
    """Model input (height, width) in pixels."""
    color_order: str = "RGB"
    """Channel order the model expects; always RGB inside this project."""
    input_dtype: str = "uint8"
    """Input tensor type: "uint8" raw pixels 0..255 (normalisation is inside the model)."""
    output_dtype: str = "uint8"
    """Output tensor type before dequantisation ("uint8", "int8" or "float32")."""
    crop: CropRule = field(default_factory=CropRule)
    """Crop rule the device applies before `to_model_input`."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """{"mode": "int8"|"float", "input"/"output": {"scale", "zero_point"}, "calibration_images"}."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Fidelity per split: {"val": {"images", "float_accuracy", "exported_accuracy",
    "agreement", "mean_abs_prob_diff"}, "test": {...}}; accuracies are fractions 0..1."""
    dataset_fingerprint: str = ""
    """sha256 fingerprint of the training dataset (from the run's config.json)."""
    source_run: str = ""
    """Run folder the model was exported from."""
    attribution: str = DEFAULT_ATTRIBUTION
    """Licence/attribution of the training data."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other keys (arch, created, tensorflow version...), kept for round trips."""

    _KNOWN = (
        "labels",
        "input_size",
        "color_order",
        "input_dtype",
        "output_dtype",
        "crop",
        "quantization",
        "metrics",
        "dataset_fingerprint",
        "source_run",
        "attribution",
    )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "metadata") -> ModelMetadata:
        """Validate and convert the JSON form; ModelError names the bad key."""
        if raw.get("format") != FORMAT:
            raise ModelError(f"{source}: not produce-sorter model metadata (format key missing)")
        version = raw.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelError(
                f"{source}: metadata format_version {version!r} is newer than this sorter "
                f"understands ({FORMAT_VERSION}); upgrade produce-sorter"
            )
        labels = raw.get("labels")
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) and x for x in labels)
        ):
            raise ModelError(f"{source}: key 'labels' must list at least two grade names")
        if len(set(labels)) != len(labels):
            raise ModelError(f"{source}: key 'labels' has duplicate grade names")
        size = raw.get("input_size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(x, int) and x > 0 for x in size)
        ):
            raise ModelError(f"{source}: key 'input_size' must be [height, width] in pixels")
        color = raw.get("color_order", "RGB")
        if color != "RGB":
            raise ModelError(f"{source}: key 'color_order' is {color!r}; only 'RGB' is supported")
        crop_raw = raw.get("crop", {})
        try:
            window = crop_raw.get("window_mm", [250.0, 250.0])
            crop = CropRule(
                rule=str(crop_raw.get("rule", "fixed-window")),
                window_mm=(float(window[0]), float(window[1])),
            )
        except (AttributeError, TypeError, ValueError, IndexError) as err:
            raise ModelError(
                f"{source}: key 'crop' must be {{'rule': ..., 'window_mm': [w, h]}}"
            ) from err
        if crop.rule != "fixed-window":
            raise ModelError(f"{source}: crop rule {crop.rule!r} unknown; expected 'fixed-window'")
        return cls(
            labels=tuple(labels),
            input_size=(size[0], size[1]),
            color_order=color,
            input_dtype=str(raw.get("input_dtype", "uint8")),
            output_dtype=str(raw.get("output_dtype", "uint8")),
            crop=crop,
            quantization=dict(raw.get("quantization", {})),
            metrics=dict(raw.get("metrics", {})),
            dataset_fingerprint=str(raw.get("dataset_fingerprint", "")),
            source_run=str(raw.get("source_run", "")),
            attribution=str(raw.get("attribution", DEFAULT_ATTRIBUTION)),
            extra={
                k: v
                for k, v in raw.items()
                if k not in cls._KNOWN and k not in ("format", "format_version")
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by sorter-export."""
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update(
            labels=list(self.labels),
            input_size=list(self.input_size),
            color_order=self.color_order,
            input_dtype=self.input_dtype,
            output_dtype=self.output_dtype,
            crop={"rule": self.crop.rule, "window_mm": list(self.crop.window_mm)},
            quantization=self.quantization,
            metrics=self.metrics,
            dataset_fingerprint=self.dataset_fingerprint,
            source_run=self.source_run,
            attribution=self.attribution,
        )
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json_bytes(cls, data: bytes, source: str) -> ModelMetadata:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(f"{source}: metadata is not valid JSON ({err}); re-export") from err
        if not isinstance(raw, dict):
            raise ModelError(f"{source}: metadata must be a JSON object; re-export the model")
        return cls.from_dict(raw, source)

    @classmethod
    def load(cls, tflite_path: str | Path) -> ModelMetadata:
        """Read a model's metadata: embedded in the .tflite, else the sidecar `<model>.json`.

        Raises ModelError (naming the file) for a missing, wrong, truncated or metadata-less
        model.
        """
        path = Path(tflite_path)
        data = read_model_bytes(path)
        return cls.from_model_bytes(data, path)

    @classmethod
    def from_model_bytes(cls, data: bytes, path: Path) -> ModelMetadata:
        """Like `load` for bytes already read from `path` (sidecar looked up next to it)."""
        entries = read_embedded_metadata(data, str(path))
        if METADATA_NAME in entries:
            return cls.from_json_bytes(entries[METADATA_NAME], f"{path} (embedded metadata)")
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            log.info("%s has no embedded metadata; using %s", path, sidecar)
            return cls.from_json_bytes(sidecar.read_bytes(), str(sidecar))
        raise ModelError(
            f"{path}: model has no produce-sorter metadata (embedded or {sidecar.name}); "
            "export it with sorter-export, which records labels and input size"
        )


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar JSON next to a model: models/x.tflite -> models/x.json."""
    return Path(model_path).with_suffix(".json")


def read_model_bytes(path: Path) -> bytes:
    """Read a model file; ModelError naming it when missing or unreadable."""
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; pass the .tflite model file")
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ModelError(f"{path}: model file not found; check --model or SORTER_MODEL") from err
    except OSError as err:
        raise ModelError(f"{path}: cannot read model ({err.strerror})") from err
    check_tflite_bytes(data, str(path))
    return data
