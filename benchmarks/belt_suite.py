"""The belt suite: the loop's correct bin on differently rendered belts, next to the
classifier's accuracy on the same items' clean images.

    python -m benchmarks.belt_suite [--data data/c9] [--model M.tflite ...] [--rates 10,20]
        [--belts plain,trays,...] [--ablation] [--fold K] [--work DIR] [--out results.md]

Every belt is rendered by `sorter simulate-belt` from the FIXED hold-out list
benchmarks/belt_holdout.txt (fold 0 of the stratified 5-fold split with seed 0,
`training.folds.fold_of`: 495 CUCUMBER-9 images, 55 per grade), each image once, and
replayed by `sorter run --video V --fast --serial sim:// --truth V.json --json` with a
config written for that belt (camera scale, speed, decision line, gates far enough down
the belt for the speed, thresholds off so the bin is the top grade's, and for the bare
belt a smaller least blob area). The clean figure is `sorter classify` on the same image
files. These belts are a test: never train on them or choose a recipe with them.

The hold-out is not held out from every model: the shipped model (models/) was trained on
all 2475 images, these included; a model trained with `sorter-train --folds 5 --fold 0`
never saw them. The table says which.

`--fold K` holds out fold K of the same split instead (written into --work), for the
model of `sorter-train cv ... --fold K`: a second look at the gap, on other items.

`--ablation` renders the plain belt with one realism option changed at a time (at the
first rate), to see where a gap comes from.

The gap is paired: the same items on the belt and as clean pictures. The table also counts
the items that changed: *lost*, graded right as a picture but sent to a wrong bin (or
missed) on the belt, and *won*, the other way round; gap = (won - lost) / items. If the
camera only flipped boundary items at random, the gap's standard deviation would be
sqrt(lost + won) / items (McNemar's), the "±1 sd" column: a gap within about two of those
is not told apart from zero by these items.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from benchmarks import machine

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = Path(__file__).with_name("belt_holdout.txt")
SPACING_PX = 160.0
"""Centre-to-centre spacing: items/s x 160 px = belt speed (the item window is 120 px,
a tray with an 8 px rim 136 px; the simulator keeps at least 16 px of belt between)."""
SEED = 2026

BASE: dict[str, Any] = {"subpixel": True}
"""Every belt: items at fractional positions (a camera sees continuous motion)."""

BELTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "trays-mjpg": {
        "carrier": "tray",
        "rim": 6.0,
        "codec": "MJPG",
        "white-balance-drift": 0.04,
    },
    "cups-blur": {
        "carrier": "cup",
        "rim": 5.0,
        "exposure-ms": 1.0,
        "vignetting": 0.25,
    },
    "dark-rims": {
        "carrier": "tray",
        "carrier-colours": "black,dark",
        "rim": 8.0,
        "rim-inside": 2.0,
        "exposure-ms": 0.7,
        "vignetting": 0.15,
        "white-balance-drift": 0.03,
    },
    "bare": {"carrier": "bare"},
}
"""The suite: simulate-belt options per belt (on top of BASE and its defaults: orange
textured belt, mp4v, noise 3, lighting drift 6%, blur 0.7 px)."""

ABLATION: dict[str, dict[str, Any]] = {
    "clean camera (no noise, drift, blur)": {"noise": 0.0, "drift": 0.0, "blur": 0.0},
    "whole-pixel positions": {"subpixel": False},
    "plain (defaults)": {},
    "MJPG": {"codec": "MJPG"},
    "tray rim outside the view": {"carrier": "tray", "rim": 6.0},
    "dark tray rim 2 px inside": {
        "carrier": "tray",
        "carrier-colours": "black,dark",
        "rim": 8.0,
        "rim-inside": 2.0,
    },
    "cup": {"carrier": "cup", "rim": 5.0},
    "exposure 1 ms": {"exposure-ms": 1.0},
    "vignetting 25%": {"vignetting": 0.25},
    "white balance +-4%": {"white-balance-drift": 0.04},
}
"""One change at a time from the plain belt."""

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@dataclass
class Result:
    """One belt replayed with one model."""

    belt: str
    rate: float
    model: str
    items: int
    correct_bin: float
    correct_grade: float
    missed: int
    duplicated: int
    spurious: int
    clean: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    lost: int = 0
    """Items right as clean pictures, in a wrong bin (or missed) on the belt."""
    won: int = 0
    """Items wrong as clean pictures, in the right bin on the belt."""


def holdout(data: Path, split_file: Path = HOLDOUT) -> list[str]:
    """The hold-out relpaths (benchmarks/belt_holdout.txt), checked against `data`."""
    text = split_file.read_text(encoding="utf-8")
    rels = [r.strip() for r in text.splitlines() if r.strip()]
    missing = [r for r in rels if not (data / r).is_file()]
    if missing:
        raise SystemExit(
            f"error: {data}: {len(missing)} hold-out images missing (e.g. {missing[0]}); "
            "give --data the folder `sorter-train import-cucumber9` wrote"
        )
    return rels


def write_holdout(data: Path, fold: int = 0, path: Path = HOLDOUT) -> Path:
    """Write fold `fold` of 5 (seed 0) of a c9 tree as a hold-out list (by default
    regenerate benchmarks/belt_holdout.txt, fold 0); returns the path."""
    from sorter.replay.belt_sim import list_images
    from training.folds import fold_of

    where = fold_of(list_images(data), 5, 0)
    rels = sorted(r for r, f in where.items() if f == fold)
    path.write_text("\n".join(rels) + "\n", encoding="utf-8")
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sorter.cli", *args]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def render(
    data: Path, work: Path, name: str, options: dict[str, Any], rate: float,
    split_file: Path = HOLDOUT,
) -> Path:  # fmt: skip
    """`sorter simulate-belt` for one belt (cached in `work`); returns the video path."""
    opts = {**BASE, **options}
    suffix = ".avi" if opts.get("codec") == "MJPG" else ".mp4"
    held = "" if split_file == HOLDOUT else f"-{split_file.stem}"  # never another fold's cache
    video = work / f"{name}-{rate:g}{held}{suffix}"
    if video.is_file() and video.with_suffix(".json").is_file():
        return video
    cmd = _cli("simulate-belt", str(data), str(video), "--split-file", str(split_file))
    cmd += ["--speed", f"{rate * SPACING_PX:g}", "--spacing", f"{SPACING_PX:g}"]
    cmd += ["--seed", str(SEED), "--lead-in", "0.5", "-q"]
    for key, value in opts.items():
        if isinstance(value, bool):
            cmd.append(f"--{key}" if value else f"--no-{key}")
        else:
            cmd += [f"--{key}", str(value)]
    _run(cmd, f"simulate-belt {name}")
    return video


def config_for(
    truth: dict[str, Any],
    path: Path,
    *,
    bare: bool,
    refine: bool,
    rim_px: float = 0.0,
    surround: str = "keep",
) -> Path:
    """The config a user would write for this belt (see the module docstring); `rim_px`:
    the trays' or cups' rim width, which the user knows (their `[locate] rim_mm`);
    `surround`: `[locate] surround` (written only when not the default "keep")."""
    px_per_mm = float(truth["px_per_mm"])
    speed_mm_s = float(truth["speed_px_s"]) / px_per_mm
    line = float(truth["line_x"]) / float(truth["size"][0])
    grades = ["2L", "BM", "BL", "M", "S", "L", "2S", "BS", "C"]
    lines = [
        "[belt]",
        f"px_per_mm = {px_per_mm:.6g}",
        f"speed_mm_s = {speed_mm_s:.6g}",
        f"decision_line = {line:.6g}",
        "",
        "[thresholds]",
        "confidence = 0.0",
        "margin = 0.0",
        "",
        "[locate]",
        f"refine = {'true' if refine else 'false'}",
        f"rim_mm = {rim_px / px_per_mm:.6g}",
    ]
    if surround != "keep":
        lines.append(f'surround = "{surround}"')
    if bare:  # a cucumber alone is about 1000 px at this scale
        lines.append("min_area_px = 300.0")
    for i, g in enumerate(grades):  # gates 0.4 s and more down the belt at any speed
        lines += [
            "",
            f"[gates.{i}]",
            f'bin = "{g}"',
            f"distance_mm = {speed_mm_s * (0.4 + 0.05 * i):.1f}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def clean_grades(data: Path, rels: list[str], model: Path) -> dict[str, bool]:
    """`sorter classify` on the hold-out image files: {relpath: graded its true grade}."""
    out = _run(
        _cli("classify", *(str(data / r) for r in rels), "--model", str(model), "--json"),
        "classify",
    )
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(rows) != len(rels):
        raise RuntimeError(f"sorter classify gave {len(rows)} rows for {len(rels)} images")
    rel_of = {str(data / r): r for r in rels}
    return {rel_of[r["path"]]: Path(r["path"]).parent.name == r["label"] for r in rows}


def clean_accuracy(data: Path, rels: list[str], model: Path) -> float:
    """`sorter classify` on the hold-out image files: top-1 accuracy."""
    right = clean_grades(data, rels, model)
    return sum(right.values()) / len(right)


def paired_changes(
    decisions: list[dict[str, Any]], truth: Mapping[str, Any], clean: Mapping[str, bool]
) -> tuple[int, int]:
    """(lost, won) of a replay (module docstring): its decisions matched to the truth items
    the scorecard's way; an item is right on the belt when its decision's bin is its true
    grade (the suite's one bin per grade)."""
    from sorter.replay.scorecard import match_to_truth

    match = match_to_truth(decisions, truth)
    lost = won = 0
    for ti, item in enumerate(truth["items"]):
        d = match.get(ti)
        on_belt = d is not None and decisions[d]["bin"] == item["label"]
        as_picture = clean[item["source"]]
        lost += as_picture and not on_belt
        won += on_belt and not as_picture
    return lost, won


def replay(
    video: Path,
    model: Path,
    work: Path,
    *,
    bare: bool,
    refine: bool,
    rim_px: float,
    surround: str = "keep",
) -> tuple[dict[str, Any], Path]:
    """`sorter run --fast --serial sim:// --truth` on one belt: its scorecard and its
    decision log (the replay is the log's latest run)."""
    truth_path = video.with_suffix(".json")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    tag = f"{video.stem}-{model.stem}-{'refine' if refine else 'box'}"
    tag += "" if surround == "keep" else f"-surround-{surround}"
    config = config_for(
        truth, work / f"{tag}.toml", bare=bare, refine=refine, rim_px=rim_px, surround=surround
    )
    cmd = _cli("run", "--video", str(video), "--fast", "--serial", "sim://", "--truth")
    cmd += [str(truth_path), "--model", str(model), "--config", str(config), "--json"]
    cmd += ["--db", str(work / f"{tag}.db")]
    out = _run(cmd, f"sorter run {video.name}")
    start = out.find("{")
    summary = json.loads(out[start:])
    card: dict[str, Any] = summary["scorecard"]
    return card, work / f"{tag}.db"


def measure(
    data: Path,
    work: Path,
    name: str,
    options: dict[str, Any],
    rate: float,
    model: Path,
    clean: Mapping[str, bool],
    *,
    refine: bool = True,
    rim_fill: bool = True,
    surround: str = "keep",
    split_file: Path = HOLDOUT,
) -> Result:
    """Render (cached) and replay one belt with one model (`clean`: `clean_grades`)."""
    t0 = time.perf_counter()
    video = render(data, work, name, options, rate, split_file)
    carried = options.get("carrier") in ("tray", "cup")
    rim_px = float(options.get("rim", 6.0)) + float(options.get("rim-inside", 0.0))
    card, db = replay(
        video,
        model,
        work,
        bare=options.get("carrier") == "bare",
        refine=refine,
        rim_px=rim_px if carried and rim_fill else 0.0,
        surround=surround,
    )
    from sorter.monitor.audit import read_decisions

    truth = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
    lost, won = paired_changes(read_decisions(db), truth, clean)
    return Result(
        belt=name,
        rate=rate,
        model=model.name,
        items=int(card["items"]),
        correct_bin=float(card["correct_bin_pct"]) / 100,
        correct_grade=float(card["correct_grade_pct"]) / 100,
        missed=int(card["missed"]),
        duplicated=int(card["duplicated"]),
        spurious=int(card["spurious"]),
        clean=sum(clean.values()) / len(clean),
        seconds=time.perf_counter() - t0,
        extra={
            "refine": refine,
            "rim_fill": rim_fill and carried,
            "carried": carried,
            "surround": surround,
        },
        lost=lost,
        won=won,
    )


def table(results: list[Result], trained_on: dict[str, str]) -> str:
    """Markdown table of the results."""
    head = (
        "| belt | items/s | model (trained on the belt's items?) | items | clean images, "
        "`sorter classify` | correct bin, `sorter run` | gap | lost / won | ±1 sd | missed | "
        "duplicated | spurious |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in results:
        gap = 100 * (r.correct_bin - r.clean)
        sd = 100 * (r.lost + r.won) ** 0.5 / r.items if r.items else 0.0
        refine = "" if r.extra.get("refine", True) else " (refine off)"
        carried = r.extra.get("carried", True)
        if r.extra.get("refine", True) and carried and not r.extra.get("rim_fill", True):
            refine = " (rim fill off)"
        if r.extra.get("surround", "keep") != "keep":
            refine += f" (surround = {r.extra['surround']})"
        rows.append(
            f"| {r.belt}{refine} | {r.rate:g} | {r.model} ({trained_on.get(r.model, '?')}) | "
            f"{r.items} | {100 * r.clean:.1f}% | {100 * r.correct_bin:.1f}% | {gap:+.1f} | "
            f"{r.lost} / {r.won} | {sd:.1f} | {r.missed} | {r.duplicated} | {r.spurious} |"
        )
    return "\n".join(rows)


def _cache_name(options: dict[str, Any]) -> str:
    """A file name for a belt made with these options (the same options, the same video)."""
    if not options:
        return "plain"
    text = "-".join(f"{k}={v}" for k, v in sorted(options.items()))
    return "abl-" + "".join(c if c.isalnum() or c in "=.-" else "_" for c in text)


def _describe_belts(names: list[str], belts: dict[str, dict[str, Any]]) -> str:
    out = []
    for n in names:
        opts = {**BASE, **belts[n]}
        flags = " ".join(
            (f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k} {v}"
            for k, v in opts.items()
        )
        out.append(f"- **{n}**: `sorter simulate-belt ... {flags}`")
    return "\n".join(out)


@app.command()
def main(
    data: Path = typer.Option(Path("data/c9"), help="CUCUMBER-9 as a folder-per-grade tree."),
    model: list[Path] = typer.Option(
        [REPO / "models" / "cucumber9-int8.tflite"], help="Model(s) to replay with."
    ),
    held_out: list[str] = typer.Option(
        [], help="Model file names that never trained on the hold-out (say so in the table)."
    ),
    rates: str = typer.Option("10,20", help="Items per second, comma-separated."),
    belts: str = typer.Option(",".join(BELTS), help="Belts of the suite to run."),
    ablation: bool = typer.Option(False, help="Instead: one realism option at a time."),
    no_refine: bool = typer.Option(
        False, help="Also replay with refine = false (and, with carriers, rim_mm = 0)."
    ),
    surround: str = typer.Option(
        "keep", help="[locate] surround value(s) to replay with, comma-separated (keep,model)."
    ),
    work: Path = typer.Option(Path(tempfile.gettempdir()) / "belt-suite", help="Scratch."),
    out: Path | None = typer.Option(None, help="Write the table (markdown) here too."),
    make_holdout: bool = typer.Option(False, help="Rewrite belt_holdout.txt from --data."),
    fold: int = typer.Option(
        0, min=0, max=4, help="Hold out this fold of 5 instead (for that fold's model)."
    ),
) -> None:
    """Render the belts, replay them, print the table."""
    if make_holdout:
        write_holdout(data)
    work.mkdir(parents=True, exist_ok=True)
    split_file = HOLDOUT if fold == 0 else write_holdout(data, fold, work / f"holdout-f{fold}.txt")
    rels = holdout(data, split_file)
    rate_list = [float(r) for r in rates.split(",") if r.strip()]
    surrounds = [s.strip() for s in surround.split(",") if s.strip()] or ["keep"]
    suite = ABLATION if ablation else {n: BELTS[n] for n in belts.split(",") if n}
    if ablation:
        rate_list = rate_list[:1]
    trained_on = {
        m.name: ("no" if m.name in held_out else "yes: trained on all 2475") for m in model
    }
    results: list[Result] = []
    for m in model:
        clean = clean_grades(data, rels, m)
        for rate in rate_list:
            for name, opts in suite.items():
                belt = _cache_name(opts) if ablation else name
                variants = [(True, True)]
                if no_refine:
                    carried = opts.get("carrier") in ("tray", "cup")
                    variants += [(True, False)] if carried else []
                    variants += [(False, False)]
                variants = [(rf, fill, "keep") for rf, fill in variants if "keep" in surrounds]
                variants += [(True, True, s) for s in surrounds if s != "keep"]
                for refine, rim_fill, sur in variants:
                    r = measure(
                        data, work, belt, opts, rate, m, clean, refine=refine, rim_fill=rim_fill,
                        surround=sur, split_file=split_file,
                    )  # fmt: skip
                    r.belt = name
                    results.append(r)
                    how = "" if refine else " refine off"
                    how += "" if rim_fill or not refine else " rim fill off"
                    how += "" if sur == "keep" else f" surround {sur}"
                    print(
                        f"{name} {rate:g}/s {m.name}{how}: bin "
                        f"{100 * r.correct_bin:.1f}% vs clean {100 * r.clean:.1f}% (lost "
                        f"{r.lost}, won {r.won}, missed {r.missed}, dup {r.duplicated}) "
                        f"{r.seconds:.0f} s",
                        flush=True,
                    )
    text = table(results, trained_on)
    info = machine.describe()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc = (
        f"# Belt suite{' ablation' if ablation else ''} ({when})\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"Python {info['python']}.\n\nCommand: `python -m benchmarks.belt_suite "
        f"{' '.join(sys.argv[1:])}`\n\nBelts ({len(rels)} hold-out images each, "
        f"{SPACING_PX:g} px apart, 640x480 at 30 fps):\n\n"
        f"{_describe_belts(list(suite), suite)}\n\n{text}\n"
    )
    print(doc)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc, encoding="utf-8")
    (work / "results.json").write_text(
        json.dumps([r.__dict__ for r in results], indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    app()
