"""The CUCUMBER-9 importer: safe unpickling and exact pixel round-trip."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sorter.errors import DatasetError
from sorter.perception.preprocess import load_image
from training.cucumber9 import SafeUnpickler, UnsafePickleError, import_cucumber9, safe_load

MINI = Path(__file__).parent / "data" / "cucumber9_mini"
GRADES = ["2L", "BM", "BL", "M", "S", "L", "2S", "BS", "C"]


class _Evil:
    """Pickles into a call of os.system: what a hostile 'dataset' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def known_image(i: int) -> np.ndarray:
    """Image i of the synthetic batch: R = 8*row, G = 8*col, B = 40*i (all distinct planes)."""
    r, c = np.mgrid[0:32, 0:32]
    return np.stack([r * 8, c * 8, np.full((32, 32), 40 * i)], axis=-1).astype(np.uint8)


def write_synthetic_batches(src: Path, n: int = 3) -> None:
    """batches.meta + data_batch_1 in the CUCUMBER-9 layout (planar R, G, B rows per image)."""
    src.mkdir(parents=True)
    rows = []
    for i in range(n):
        img = known_image(i)
        rows += [img[..., ch].reshape(1024) for ch in range(3)]
    batch = {
        "data": np.stack(rows),
        "labels": [i % 2 for i in range(n)],
        "filenames": [f"img{i}.jpg" for i in range(n)],
        "batch_label": "synthetic",
    }
    (src / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": ["big", "small"]}, protocol=2))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle posix\.system|os\.system"):
        safe_load(evil)
    assert not marker.exists()
    # Through the importer too: a clear DatasetError naming the file, nothing run.
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"]}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_1: refusing"):
        import_cucumber9(tmp_path, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"), ("builtins", "getattr")],
)
def test_allow_list_refuses_other_globals(module: str, name: str) -> None:
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        SafeUnpickler(io.BytesIO(payload)).load()


def test_numpy_reconstruct_allowed_under_both_names() -> None:
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        fn = SafeUnpickler(io.BytesIO(b"")).find_class(module, "_reconstruct")
        assert fn is np._core.multiarray._reconstruct


def test_importer_round_trips_pixels_exactly(tmp_path: Path) -> None:
    write_synthetic_batches(tmp_path / "src")
    summary = import_cucumber9(tmp_path / "src", tmp_path / "dest")
    assert summary.counts == {"all": {"big": 2, "small": 1}}
    for i, grade in enumerate(["big", "small", "big"]):
        got = load_image(tmp_path / "dest" / grade / f"img{i}.png")
        assert got.shape == (32, 32, 3)
        np.testing.assert_array_equal(got, known_image(i))
    # red grows down the rows, green along the columns: not CIFAR-10's row-per-image layout
    img0 = load_image(tmp_path / "dest" / "big" / "img0.png")
    assert tuple(img0[3, 5]) == (24, 40, 0)


def test_importer_refuses_non_empty_destination(tmp_path: Path) -> None:
    write_synthetic_batches(tmp_path / "src")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        import_cucumber9(tmp_path / "src", tmp_path / "dest")
    import_cucumber9(tmp_path / "src", tmp_path / "dest", force=True)
    assert (tmp_path / "dest" / "big" / "img0.png").exists()


def test_importer_with_test_batch_writes_train_and_test(tmp_path: Path) -> None:
    write_synthetic_batches(tmp_path / "src")
    (tmp_path / "src" / "test_batch").write_bytes((tmp_path / "src" / "data_batch_1").read_bytes())
    summary = import_cucumber9(tmp_path / "src", tmp_path / "dest")
    assert set(summary.counts) == {"train", "test"}
    assert (tmp_path / "dest" / "train" / "small" / "img1.png").exists()
    assert (tmp_path / "dest" / "test" / "big" / "img2.png").exists()


def test_published_format_fixture_imports(tmp_path: Path) -> None:
    """The mini fixture keeps the published numpy-1 pickle names and planar layout."""
    raw = safe_load(MINI / "data_batch_1")
    summary = import_cucumber9(MINI, tmp_path / "c9")
    assert list(summary.counts["all"]) == GRADES
    assert all(n == 12 for n in summary.counts["all"].values())
    i = 5
    name = Path(raw["filenames"][i]).stem + ".png"
    grade = GRADES[raw["labels"][i]]
    got = load_image(tmp_path / "c9" / grade / name)
    planes = raw["data"][3 * i : 3 * i + 3].reshape(3, 32, 32)
    np.testing.assert_array_equal(got, planes.transpose(1, 2, 0))
    # A cucumber on a light tray: the centre is greener than it is red or blue.
    assert got[12:20, 8:24, 1].mean() > 0


def test_corrupt_batch_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="data_batch_1: not a readable CUCUMBER-9 batch"):
        safe_load(tmp_path / "data_batch_1")


def _with_labels(src: Path, names: list[str], filenames: list[str] | None = None) -> None:
    write_synthetic_batches(src)
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    if filenames is not None:
        batch = pickle.loads((src / "data_batch_1").read_bytes())
        batch["filenames"] = filenames
        (src / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


BAD_LABELS = ("..", "../../escaped", "a/../../escaped", "ABSOLUTE", "sub/dir")
BAD_LABELS += ("a\\b", "", ".", "x\x00y")


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_label_names_that_are_not_plain_folder_names_are_refused(tmp_path: Path, bad: str) -> None:
    """A pickle's label names become folder names: `..`, separators or an absolute path
    would write outside DEST. Refused with one line naming the file and the label, before
    anything is written."""
    from training.cli import run

    src, dest = tmp_path / "src", tmp_path / "work" / "dest"
    if bad == "ABSOLUTE":  # an absolute path, kept inside the test's folder
        bad = str(tmp_path / "escaped-abs")
    _with_labels(src, ["big", bad])
    before = _files(tmp_path)
    code = run(["import-cucumber9", str(src), str(dest)])
    assert code == 2
    with pytest.raises(DatasetError) as info:
        import_cucumber9(src, dest)
    msg = str(info.value)
    assert str(src / "batches.meta") in msg and repr(bad) in msg and "\n" not in msg
    assert _files(tmp_path) == before  # nothing written anywhere
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped-abs").exists()


def test_cli_error_for_a_bad_label_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import run

    src = tmp_path / "src"
    _with_labels(src, ["big", "../../escaped"])
    assert run(["import-cucumber9", str(src), str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "'../../escaped'" in err


def test_file_names_cannot_escape_either(tmp_path: Path) -> None:
    """Only a file name's stem is used: `../../x.jpg` or `/etc/x.jpg` land inside DEST."""
    src, dest = tmp_path / "src", tmp_path / "work" / "dest"
    _with_labels(src, ["big", "small"], ["../../../esc0.jpg", "/abs/esc1.jpg", "..\\esc2.jpg"])
    import_cucumber9(src, dest)
    written = _files(tmp_path / "work")
    assert written and all(dest in p.parents for p in written)
    assert len(written) == 3
