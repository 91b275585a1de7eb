"""Shadow mode: a candidate grades every item beside the active model, which decides; both
verdicts go to the decision log, and `sorter shadow-report` compares them (agreement, where
they differ with the crops, and each model's accuracy on items whose grade is known)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

from sorter.cli import app
from sorter.config import Config, apply_overrides, parse_config
from sorter.errors import ConfigError, ModelError, SorterError
from sorter.grading.shadow import ShadowGrader
from sorter.monitor.audit import DecisionLog, read_decisions
from sorter.monitor.status import Status
from sorter.replay.shadow_report import shadow_report
from sorter.replay.truth import run_with_truth
from sorter.runtime.runner import RunOptions
from tests.model_files import BUNDLED, renamed_model, swapped_model
from tests.test_pipeline_standins import GRADES, ColourClassifier, make_belt

SWAP = {"BM": "2L", "2L": "BM"}


class SwappedColour(ColourClassifier):
    """The colour stand-in with grades 2L and BM swapped: wrong on exactly those two."""

    labels = tuple(SWAP.get(g, g) for g in GRADES)
    model_path = "swapped stand-in"


class SlowColour(ColourClassifier):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def classify(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(10)
        return super().classify(batch)


@pytest.fixture(scope="module")
def belt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_belt(tmp_path_factory.mktemp("shadowbelt"), per_grade=2)


def _batch(grade: int, n: int = 1) -> np.ndarray:
    from tests.test_pipeline_standins import PALETTE

    img = np.full((n, 32, 32, 3), 215, np.uint8)
    img[:, 11:21, 5:27] = PALETTE[grade].astype(np.uint8)
    return img


def test_grader_waits_for_an_items_views_and_uses_the_policy() -> None:
    with ShadowGrader(SwappedColour(), Config(), block=True) as sh:
        sh.submit([7], _batch(0))  # 2L's colour: the swapped candidate says BM
        sh.submit([7, 8], _batch(0, 2))
        v = sh.verdict(7, "2L")
        assert v["shadow_label"] == "BM" and v["shadow_views"] == 2
        assert v["shadow_bin"] == "BM" and v["shadow_reason"] == "graded"
        assert v["shadow_model"] == "swapped stand-in"
        assert len(v["shadow_scores"]) == 9 and abs(sum(v["shadow_scores"]) - 1.0) < 1e-4
        sh.forget(8)
        stats = sh.stats()
    assert (stats["items"], stats["agree"], stats["views"], stats["dropped"]) == (1, 0, 3, 0)
    assert stats["ms_per_view"] is not None and stats["ms_per_view"] >= 0.0


def test_a_full_queue_drops_views_and_counts_them_without_waiting() -> None:
    gate = threading.Event()
    sh = ShadowGrader(SlowColour(gate), Config(), block=False, queue_views=1, wait_s=0.05)
    with sh:
        sh.submit([1], _batch(3))
        deadline = time.monotonic() + 10
        while not sh._q.empty() and time.monotonic() < deadline:  # the worker took it
            time.sleep(0.01)
        for _ in range(3):  # the queue holds one, the rest are dropped
            sh.submit([1], _batch(3))
        t0 = time.monotonic()
        v = sh.verdict(1, "M")
        assert time.monotonic() - t0 < 1.0  # bounded: the loop never waits long
        gate.set()
    assert sh.dropped == 2 and sh.late == 1
    assert v["shadow_views"] == 0 and v["shadow_reason"] == "too-few-views"


def test_a_candidate_whose_labels_do_not_match_the_bins_is_refused(tmp_path: Path) -> None:
    bad = renamed_model(tmp_path / "bad.tflite")
    from sorter.grading.shadow import load_shadow

    with pytest.raises(ModelError, match="labels do not match the config's bins") as err:
        load_shadow(str(bad), Config(), block=True)
    assert "X" in str(err.value) and "\n" not in str(err.value)


def test_model_shadow_in_the_config_is_checked() -> None:
    assert parse_config('[model]\nshadow = "cand.tflite"\n').model.shadow == "cand.tflite"
    with pytest.raises(ConfigError, match=r"model.shadow: must name a .tflite"):
        parse_config('[model]\nshadow = "cand.png"\n')
    with pytest.raises(ConfigError, match="the active model itself"):
        parse_config('[model]\npath = "a.tflite"\nshadow = "a.tflite"\n')


def test_replay_logs_both_verdicts_and_the_report_scores_each_model(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    video, truth = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    opts = RunOptions(
        video=video,
        classifier=ColourClassifier(),
        shadow_classifier=SwappedColour(),
        handle_signals=False,
    )
    db = tmp_path / "d.db"
    status = Status()
    result = run_with_truth(config, opts, DecisionLog(db), status, truth)
    card = result.scorecard
    assert (card.items, card.missed, card.duplicated) == (18, 0, 0)
    rows = read_decisions(db)
    assert len(rows) == 18 and all(r["shadow_label"] is not None for r in rows)
    for r in rows:  # the active model decided: its grade, its bin; the shadow's beside it
        assert r["shadow_label"] == SWAP.get(r["label"], r["label"])
        assert json.loads(r["shadow_scores"]) == pytest.approx(r["scores"], abs=1e-5)
        assert r["shadow_model"] == "swapped stand-in" and r["shadow_views"] == r["views"]
    assert result.summary["shadow"]["items"] == 18 and result.summary["shadow"]["agree"] == 14
    assert status.snapshot()["shadow"] == {"items": 18, "agree": 14, "dropped": 0}
    metrics = generate_latest(status.registry).decode()
    assert 'sorter_shadow_items_total{agree="yes"} 14.0' in metrics
    assert 'sorter_shadow_items_total{agree="no"} 4.0' in metrics

    rep = shadow_report(db, truth=truth)
    d = rep.as_dict()
    assert (rep.items, rep.shadowed, rep.same_grade, len(rep.disagreements)) == (18, 18, 14, 4)
    assert {(x["label"], x["shadow_label"]) for x in rep.disagreements} == {
        ("2L", "BM"),
        ("BM", "2L"),
    }
    assert rep.known == 18 and rep.active.correct == card.correct_grade == 18
    assert rep.shadow.correct == 14 and rep.only_active_right == 4 and rep.only_shadow_right == 0
    assert d["active"]["accuracy_pct"] == 100.0 and d["agreement"] == pytest.approx(14 / 18)


def test_report_refuses_a_log_without_shadow_verdicts(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    video, _ = belt
    db = tmp_path / "plain.db"
    from sorter.runtime.runner import run

    opts = RunOptions(
        video=video, classifier=ColourClassifier(), dry_run=True, handle_signals=False
    )
    run(Config(), opts, DecisionLog(db), Status())
    with pytest.raises(SorterError, match="no shadow verdicts"):
        shadow_report(db)
    res = CliRunner().invoke(app, ["shadow-report", str(tmp_path / "nope.db")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_cli_replay_with_a_real_candidate_and_reviewed_crops(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    """`sorter run --shadow` with LiteRT models (the bundled one, and the same network with
    C and S swapped), then `sorter shadow-report` from the truth file and from crops a person
    moved."""
    video, truth = belt
    cand = swapped_model(tmp_path / "cand.tflite")
    db, crops = tmp_path / "d.db", tmp_path / "crops"
    res = CliRunner().invoke(
        app,
        ["run", "--video", str(video), "--truth", str(truth), "--serial", "sim://",
         "--model", str(BUNDLED), "--shadow", str(cand), "--db", str(db),
         "--save-crops", str(crops), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["shadow"]["views"] > 0 and summary["shadow"]["dropped"] == 0
    rows = read_decisions(db)
    swap = {"C": "S", "S": "C"}
    assert rows and all(r["shadow_label"] == swap.get(r["label"], r["label"]) for r in rows)

    out = CliRunner().invoke(app, ["shadow-report", str(db), "--truth", str(truth), "--json"])
    assert out.exit_code == 0, out.stderr
    rep = json.loads(out.stdout)
    flipped = [r for r in rows if r["label"] in swap]
    assert flipped, "the bundled model should grade some of these items C or S"
    assert len(rep["disagreements"]) == len(flipped) and rep["known"] == len(rows)
    assert all(Path(x["crop"]).is_file() for x in rep["disagreements"])
    assert rep["active"]["correct"] == summary["scorecard"]["correct_grade"]

    # a person reviews one crop: it moves from where the sorter put it to its true grade
    r0 = rows[0]
    saved = Path(r0["crop"])
    true = next(g for g in GRADES if g not in (r0["label"], r0["shadow_label"]))
    (crops / true).mkdir(exist_ok=True)
    shutil.move(saved, crops / true / saved.name)
    out = CliRunner().invoke(app, ["shadow-report", str(db), "--crops", str(crops), "--json"])
    assert out.exit_code == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["known"] == 1 and rep["active"]["correct"] == 0 and rep["shadow"]["correct"] == 0
    text = CliRunner().invoke(app, ["shadow-report", str(db)])
    assert text.exit_code == 0 and "true grade known" in text.stdout


def test_cli_refuses_a_candidate_with_other_labels_in_one_line(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    video, _ = belt
    bad = renamed_model(tmp_path / "bad.tflite")
    res = CliRunner().invoke(
        app, ["run", "--video", str(video), "--dry-run", "--model", str(BUNDLED),
              "--shadow", str(bad), "--db", str(tmp_path / "d.db")],
    )  # fmt: skip
    assert res.exit_code == 2
    lines = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "labels do not match" in lines[0] and "Traceback" not in res.stderr


def test_report_reads_the_review_pages_log(tmp_path: Path, belt: tuple[Path, Path]) -> None:
    """The review page's DIR/_review_log.jsonl: a confirmed grade counts (even for a crop that
    did not move), "_not_produce" is counted apart, "_skip" and torn lines tell nothing; the
    last answer for an item wins."""
    video, truth = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    opts = RunOptions(
        video=video,
        classifier=ColourClassifier(),
        shadow_classifier=SwappedColour(),
        handle_signals=False,
    )
    db, crops = tmp_path / "d.db", tmp_path / "crops"
    run_with_truth(config, opts, DecisionLog(db, crops_dir=crops), Status(), truth)
    rows = {r["item"]: r for r in read_decisions(db)}
    two_l = next(r for r in rows.values() if r["label"] == "2L")  # the shadow says BM
    m = next(r for r in rows.values() if r["label"] == "M")
    others = [r for r in rows.values() if r["item"] not in (two_l["item"], m["item"])]

    def entry(r: dict[str, object], answer: str) -> str:
        name = Path(str(r["crop"])).name
        return json.dumps({"crop": name, "run": r["run"], "item": r["item"], "answer": answer})

    (crops / "_review_log.jsonl").write_text(
        "\n".join([
            entry(two_l, "BM"),  # changed their mind: the last answer wins
            entry(two_l, "2L"),
            entry(m, "M"),
            entry(others[0], "_not_produce"),
            entry(others[1], "_skip"),
            '{"crop": "torn',
        ]) + "\n"
    )  # fmt: skip
    rep = shadow_report(db)
    assert rep.known == 2 and rep.not_produce == 1
    assert rep.active.correct == 2 and rep.shadow.correct == 1 and rep.only_active_right == 1
    assert "review log" in rep.truth_source


def test_realtime_replay_grades_off_the_loops_path_and_logs_every_item(
    tmp_path: Path, belt: tuple[Path, Path]
) -> None:
    """Paced at the video's fps: the shadow does not block (drops would be counted); every
    decided item still carries a verdict from at most its own views."""
    video, truth = belt
    config = apply_overrides(Config(), {"serial.url": "sim://?gates=9"})
    opts = RunOptions(
        video=video,
        mode="realtime",
        classifier=ColourClassifier(),
        shadow_classifier=SwappedColour(),
        handle_signals=False,
    )
    db = tmp_path / "rt.db"
    result = run_with_truth(config, opts, DecisionLog(db), Status(), truth)
    sh = result.summary["shadow"]
    rows = read_decisions(db)
    assert len(rows) == result.summary["items"] == sh["items"] > 0
    assert all(r["shadow_label"] is not None and r["shadow_views"] <= r["views"] for r in rows)
    assert sh["views"] + sh["dropped"] >= sum(r["shadow_views"] for r in rows)
    assert sh["errors"] == 0 and sh["wait_ms_per_item"] is not None


def test_still_images_are_graded_by_both(tmp_path: Path) -> None:
    from sorter.runtime.runner import run
    from tests.test_pipeline_standins import make_dataset

    data = make_dataset(tmp_path / "imgs", per_grade=1)
    images = tmp_path / "flat"
    images.mkdir()
    for p in sorted(data.rglob("*.png")):
        shutil.copyfile(p, images / p.name)
    opts = RunOptions(
        images=images,
        dry_run=True,
        classifier=ColourClassifier(),
        shadow_classifier=SwappedColour(),
        handle_signals=False,
    )
    db = tmp_path / "s.db"
    run(Config(), opts, DecisionLog(db), Status())
    rows = read_decisions(db)
    assert len(rows) == 9
    assert all(r["shadow_label"] == SWAP.get(r["label"], r["label"]) for r in rows)


def test_doctor_checks_the_shadow_model(tmp_path: Path) -> None:
    from sorter.ops import diagnostics as d

    good = d.check_shadow(str(swapped_model(tmp_path / "cand.tflite")), Config())
    assert good.state == d.OK and "9 grades" in good.detail
    bad = d.check_shadow(str(renamed_model(tmp_path / "bad.tflite")), Config())
    assert bad.state == d.FAIL and "labels do not match" in bad.detail and bad.blocking
    gone = d.check_shadow(str(tmp_path / "absent.tflite"), Config())
    assert gone.state == d.FAIL


class SmallColour(ColourClassifier):
    """A candidate with another input size (16x16): it gets the crops, resized for it."""

    input_size = (16, 16)

    def classify(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1:] == (16, 16, 3), batch.shape
        import cv2

        return super().classify(np.stack([cv2.resize(b, (32, 32)) for b in batch]))


class BrokenColour(ColourClassifier):
    def classify(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("tensor arena too small")


def test_a_candidate_of_another_input_size_gets_the_crops_resized() -> None:
    import cv2

    crop = cv2.resize(_batch(4)[0], (64, 64), interpolation=cv2.INTER_NEAREST)  # S's colour
    with ShadowGrader(SmallColour(), Config(), block=True) as sh:
        active = _batch(4)  # the active model's 32x32 batch of the same crop
        work = sh.batch_for([crop], active)
        assert isinstance(work, list)  # resized on the worker, not here
        sh.submit([3], work)
        assert sh.verdict(3, "S")["shadow_label"] == "S"


def test_a_failing_candidate_is_counted_and_never_raises() -> None:
    with ShadowGrader(BrokenColour(), Config(), block=True) as sh:
        sh.submit([1, 2], _batch(0, 2))
        v = sh.verdict(1, "2L")
    assert sh.errors == 1 and v["shadow_views"] == 0 and v["shadow_reason"] == "too-few-views"
