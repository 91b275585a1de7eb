"""`sorter collect SRC... --out DIR`: the lanes' reviewed crops and decision logs in one
training tree (docs/fleet.md).

Each SRC is one lane's state folder as it comes back from the lane (rsync of
/var/lib/produce-sorter/LANE/, or a shared folder): its crops under SRC/crops/ (or SRC
itself when it is the crops folder) and its decision log SRC/decisions.db. A crop is
*reviewed* when it sits in a grade folder (SRC/crops/<grade>/); crops still in the lane's
_review/ go to DIR/_review/ (not a grade, so not trained on) to be reviewed there. The
output:

    DIR/<grade>/<lane>_<run>_<item>.png     every reviewed crop, the folder-per-grade tree
                                            `sorter-train` reads (folders starting with _
                                            are not grades)
    DIR/_review/<grade>/<lane>_<run>_...    crops the lane has not reviewed yet: review them
                                            here (move each to DIR/<grade>/) or on the lane
    DIR/_lanes/<lane>/decisions.db          each lane's decision log (SQLite backup: a
                                            consistent copy even while the lane writes)
    DIR/_lanes/crops.csv                    one row per crop: file, lane, run, item, the
                                            reviewed grade, the grade the lane decided and
                                            its confidence (from the decision log)
    DIR/_lanes/collected.json               what each collection did, per lane

Names keep lane and run apart: a crop named RUN_ITEM.png (a lane without [lane] id) gets its
lane prefixed. The lane is the crops' own name prefix, else the decision log's `lane`
column, else the SRC folder's name. Collecting again is safe: a crop already in DIR with
the same bytes is left alone; one the lane's reviewer has since moved to another grade
folder is moved in DIR too (and leaves DIR/_review/); one still waiting on the lane that
someone reviewed in DIR keeps the grade it was given in DIR.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sorter.config import LANE_ID
from sorter.errors import SorterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
META = "_lanes"
"""The output's folder for logs and the manifest (not a grade: it starts with _)."""


@dataclass
class LaneReport:
    """What the collection took from one SRC."""

    source: str
    """The SRC folder."""
    lane: str
    """The lane id used for its crops."""
    copied: int = 0
    """Reviewed crops copied into the tree."""
    unchanged: int = 0
    """Crops already in the tree with the same grade and bytes."""
    regraded: int = 0
    """Crops already in the tree under another grade, moved to the reviewed one."""
    unreviewed: int = 0
    """Crops still in the lane's _review/: put in DIR/_review/ (not a grade: left out of
    training) unless already reviewed in DIR."""
    decisions: int = 0
    """Rows in its decision log (0 without one)."""
    runs: list[str] = field(default_factory=list)
    """The runs its crops come from."""


@dataclass(frozen=True)
class Crop:
    """A crop file and what its name and folder say."""

    path: Path
    grade: str
    lane: str
    run: str
    item: int


def _crops_root(src: Path) -> Path:
    return src / "crops" if (src / "crops").is_dir() else src


def _parse_name(stem: str) -> tuple[str, str, int] | None:
    """(lane, run, item) from LANE_RUN_ITEM or RUN_ITEM (lane ""), None if neither."""
    parts = stem.rsplit("_", 2)
    if len(parts) < 2 or not parts[-1].isdigit():
        return None
    if len(parts) == 2:
        return "", parts[0], int(parts[1])
    return parts[0], parts[1], int(parts[2])


def _db_lanes(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = {str(r[1]) for r in con.execute("PRAGMA table_info(decisions)")}
        if "lane" not in cols:
            return set()
        return {str(r[0]) for r in con.execute("SELECT DISTINCT lane FROM decisions") if r[0]}
    finally:
        con.close()


def lane_of(src: Path) -> str:
    """The lane of a SRC folder: its decision log's lane, else the folder's name."""
    db = src / "decisions.db"
    lanes = _db_lanes(db) if db.is_file() else set()
    if len(lanes) > 1:
        raise SorterError(
            f"{db}: decisions of several lanes ({', '.join(sorted(lanes))}); give each "
            "lane's folder as its own SRC"
        )
    lane = lanes.pop() if lanes else src.resolve().name
    if not LANE_ID.fullmatch(lane):
        raise SorterError(
            f"{src}: cannot tell its lane (folder name {lane!r} is not a lane id); name the "
            "folder after its lane, e.g. lanes/2/"
        )
    return lane


def find_crops(src: Path, lane: str) -> tuple[list[Crop], list[Crop]]:
    """The reviewed crops of one SRC (in grade folders) and those still in _review/."""
    root = _crops_root(src)
    reviewed: list[Crop] = []
    waiting: list[Crop] = []
    for grade_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if grade_dir.name == "_review":
            for sub in sorted(p for p in grade_dir.iterdir() if p.is_dir()):
                waiting += _crops_in(sub, lane)
        elif not grade_dir.name.startswith(("_", ".")):
            reviewed += _crops_in(grade_dir, lane)
    return reviewed, waiting


def _crops_in(grade_dir: Path, lane: str) -> list[Crop]:
    crops = []
    for path in sorted(grade_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parsed = _parse_name(path.stem)
        if parsed is None:
            raise SorterError(
                f"{path}: not a sorter crop name (RUN_ITEM or LANE_RUN_ITEM); move it out "
                "of the crops folder"
            )
        own_lane, run, item = parsed
        crops.append(Crop(path, grade_dir.name, own_lane or lane, run, item))
    return crops


def _out_name(crop: Crop) -> str:
    return f"{crop.lane}_{crop.run}_{crop.item}{crop.path.suffix.lower()}"


def _wait_for_review(crop: Crop, out: Path, have: dict[str, Path]) -> bool:
    """Put a crop the lane has not reviewed in DIR/_review/<grade>/, unless someone already
    reviewed it in DIR (it sits in a grade folder there): that word stands. True if placed."""
    name = _out_name(crop)
    if name in have:
        return False
    dest = out / "_review" / crop.grade / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crop.path, dest)
    return True


def _decided(db: Path) -> dict[tuple[str, int], tuple[str, float]]:
    """(run, item) -> (label, confidence) from a decision log."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT run, item, label, confidence FROM decisions").fetchall()
    finally:
        con.close()
    return {(str(r[0]), int(r[1])): (str(r[2]), float(r[3])) for r in rows}


def _backup(db: Path, dest: Path) -> int:
    """A consistent copy of a (possibly live, WAL) decision log; its row count."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
        return int(out.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    finally:
        out.close()
        src.close()


def _existing(out: Path) -> dict[str, Path]:
    """File name -> path of every crop already in the output tree."""
    found: dict[str, Path] = {}
    for grade_dir in out.iterdir() if out.is_dir() else []:
        if grade_dir.is_dir() and not grade_dir.name.startswith(("_", ".")):
            for p in grade_dir.iterdir():
                found[p.name] = p
    return found


def _place(crop: Crop, out: Path, have: dict[str, Path], report: LaneReport) -> Path:
    """Copy (or move, when regraded) one crop into the tree; its path there."""
    name = _out_name(crop)
    dest = out / crop.grade / name
    for stale in (out / "_review").glob(f"*/{name}"):  # the lane has reviewed it since
        stale.unlink()
    old = have.get(name)
    if old is not None and old != dest:
        dest.parent.mkdir(parents=True, exist_ok=True)
        old.replace(dest)
        report.regraded += 1
    elif old is not None and old.read_bytes() == crop.path.read_bytes():
        report.unchanged += 1
        return dest
    else:
        report.copied += int(old is None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(crop.path, dest)
    have[name] = dest
    return dest


def _collect_one(src: Path, out: Path, have: dict[str, Path]) -> tuple[LaneReport, list[Any]]:
    if not src.is_dir():
        raise SorterError(f"{src}: not a folder; give each lane's state folder (rsync'd here)")
    lane = lane_of(src)
    report = LaneReport(source=str(src), lane=lane)
    db = src / "decisions.db"
    decided: dict[tuple[str, int], tuple[str, float]] = {}
    if db.is_file():
        try:
            report.decisions = _backup(db, out / META / lane / "decisions.db")
            decided = _decided(db)
        except sqlite3.Error as err:
            raise SorterError(f"{db}: cannot read the decision log ({err})") from err
    crops, waiting = find_crops(src, lane)
    report.unreviewed = sum(_wait_for_review(c, out, have) for c in waiting)
    rows = []
    for crop in crops:
        dest = _place(crop, out, have, report)
        label, confidence = decided.get((crop.run, crop.item), ("", float("nan")))
        rows.append(
            [dest.relative_to(out).as_posix(), crop.lane, crop.run, crop.item, crop.grade,
             label, "" if confidence != confidence else f"{confidence:.4f}"]
        )  # fmt: skip
    report.runs = sorted({c.run for c in crops})
    return report, rows


def collect(sources: list[Path], out: Path) -> list[LaneReport]:
    """Gather every SRC's reviewed crops and decision log into `out` (see the module doc)."""
    if not sources:
        raise SorterError("no SRC folders given; name each lane's state folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SorterError(f"{out}: cannot create the output folder ({err.strerror})") from err
    have = _existing(out)
    reports, rows = [], []
    lanes_seen: dict[str, Path] = {}
    for src in sources:
        report, lane_rows = _collect_one(src, out, have)
        if report.lane in lanes_seen and lanes_seen[report.lane] != src:
            raise SorterError(
                f"{src}: lane {report.lane!r} again (also {lanes_seen[report.lane]}); each "
                "SRC is one lane"
            )
        lanes_seen[report.lane] = src
        reports.append(report)
        rows += lane_rows
    _write_manifest(out, reports, rows)
    return reports


def _write_manifest(out: Path, reports: list[LaneReport], rows: list[Any]) -> None:
    """crops.csv: earlier collections' rows (files still in the tree) updated by this one's."""
    meta = out / META
    meta.mkdir(parents=True, exist_ok=True)
    table = meta / "crops.csv"
    by_key: dict[tuple[str, str, str], list[Any]] = {}
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as f:
            for row in list(csv.reader(f))[1:]:
                if len(row) == 7 and (out / row[0]).is_file():
                    by_key[(row[1], row[2], str(row[3]))] = row
    for row in rows:
        by_key[(row[1], row[2], str(row[3]))] = row
    with table.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "lane", "run", "item", "grade", "decided", "confidence"])
        ordered: list[list[Any]] = sorted(by_key.values(), key=lambda r: (r[1], r[2], int(r[3])))
        w.writerows(ordered)
    history_path = meta / "collected.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    history.append(
        {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lanes": [asdict(r) for r in reports]}
    )
    history_path.write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
