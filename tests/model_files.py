"""Model files for the shadow and promote tests, made from the bundled model without
TensorFlow: its embedded metadata JSON is patched in place with labels of the same byte
length (the network is unchanged, so a candidate with two labels swapped names the other
grade wherever the bundled model picks one of them; a label renamed no longer matches the
config's bins)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "cucumber9-int8.tflite"
"""The bundled model: labels 2L 2S BL BM BS C L M S."""
TINY = ROOT / "tests" / "data" / "classifier" / "tiny-int8.tflite"
"""The tiny fixture model: labels long round bent (not the config's nine grades)."""


def _labels_block(labels: list[str]) -> bytes:
    body = ",\n".join(f'    "{x}"' for x in labels)
    return f'"labels": [\n{body}\n  ]'.encode()


LABELS = ["2L", "2S", "BL", "BM", "BS", "C", "L", "M", "S"]


def patched_model(out: Path, labels: list[str], src: Path = BUNDLED) -> Path:
    """A copy of `src` whose metadata lists `labels` (same byte length as the original's)."""
    data = src.read_bytes()
    old = _labels_block(LABELS)
    new = _labels_block(labels)
    assert data.count(old) == 1, "the bundled model's metadata changed: update this helper"
    assert len(new) == len(old), "patched labels must keep the metadata's byte length"
    out.write_bytes(data.replace(old, new))
    return out


def swapped_model(out: Path, a: str = "C", b: str = "S") -> Path:
    """The bundled network with labels `a` and `b` swapped."""
    labels = [b if x == a else a if x == b else x for x in LABELS]
    return patched_model(out, labels)


def renamed_model(out: Path) -> Path:
    """The bundled network with grade C called X: its labels do not match the bins."""
    return patched_model(out, ["X" if x == "C" else x for x in LABELS])
