"""Learning from the belt, measured: a model on a belt whose look it has not seen, before and
after fine-tuning on about 200 reviewed crops of one such belt, scored on a second belt.

    python -m benchmarks.belt_learning --base-run runs/base-f0 [--data data/c9]
        [--crops 200] [--work DIR] [--out FILE.md]

The base run must not have trained on the demo's items: train it with
`sorter-train data/c9 --folds 5 --fold 0` (its test split is then exactly the belt suite's
hold-out, benchmarks/belt_holdout.txt, 495 images; checked here). The hold-out is split per
grade (seeded) into two halves of different items, A and B. Both are rendered by
`sorter simulate-belt` with the same look, one the base run's camera augmentation did not
cover (LOOK: blue trays whose rim reaches into the view, strong vignetting, white-balance
and lighting drift). Then:

1. the base model (int8, `sorter-export --quantize`) sorts belt A (`sorter run --fast
   --serial sim:// --truth --save-crops`): its correct bin;
2. up to `--crops` of belt A's saved crops are "reviewed": filed into a grade tree by the
   belt's truth file, as a perfect operator using the review page would (a stand-in for a
   person);
3. `sorter-train finetune BASE_RUN REVIEWED` (defaults, timed) and `sorter-export --quantize`;
4. both models sort belt B (other items, same look): correct bin, next to `sorter classify`
   on B's clean image files.

Prints a markdown table and writes it with the machine to
benchmarks/results/belt-learning-<machine>-<date>.md (or --out).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from benchmarks import belt_suite as S
from benchmarks import machine

LOOK: dict[str, Any] = {
    "subpixel": True,
    "carrier": "tray",
    "carrier-colours": "blue",
    "rim": 8.0,
    "rim-inside": 3.0,
    "vignetting": 0.35,
    "white-balance-drift": 0.08,
    "drift": 0.12,
}
"""The belt's look (simulate-belt options): not one the base model was trained for."""
RATE = 10.0
"""Items per second on both belts."""

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def halves(rels: list[str], seed: int = 7) -> tuple[list[str], list[str]]:
    """Per grade, a seeded half of the images for A and the rest for B."""
    rng = np.random.default_rng(seed)
    a: list[str] = []
    b: list[str] = []
    for grade in sorted({Path(r).parent.name for r in rels}):
        mine = sorted(r for r in rels if Path(r).parent.name == grade)
        order = rng.permutation(len(mine))
        k = len(mine) // 2
        a += sorted(mine[i] for i in order[:k])
        b += sorted(mine[i] for i in order[k:])
    return a, b


def render(data: Path, work: Path, name: str, rels: list[str]) -> Path:
    """`sorter simulate-belt` of these images with LOOK (cached)."""
    video = work / f"{name}.mp4"
    if video.is_file() and video.with_suffix(".json").is_file():
        return video
    listing = work / f"{name}.txt"
    listing.write_text("\n".join(rels) + "\n", encoding="utf-8")
    cmd = S._cli("simulate-belt", str(data), str(video), "--split-file", str(listing))
    cmd += ["--speed", f"{RATE * S.SPACING_PX:g}", "--spacing", f"{S.SPACING_PX:g}"]
    cmd += ["--seed", str(S.SEED), "--lead-in", "0.5", "-q"]
    for key, value in LOOK.items():
        if isinstance(value, bool):
            cmd.append(f"--{key}" if value else f"--no-{key}")
        else:
            cmd += [f"--{key}", str(value)]
    S._run(cmd, f"simulate-belt {name}")
    return video


def replay(video: Path, model: Path, work: Path, crops: Path | None = None) -> dict[str, Any]:
    """`sorter run --fast --serial sim:// --truth` (and --save-crops): the scorecard."""
    truth_path = video.with_suffix(".json")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    tag = f"{video.stem}-{model.stem}"
    config = S.config_for(truth, work / f"{tag}.toml", bare=False, refine=True)
    db = work / f"{tag}.db"
    db.unlink(missing_ok=True)
    cmd = S._cli("run", "--video", str(video), "--fast", "--serial", "sim://", "--truth")
    cmd += [str(truth_path), "--model", str(model), "--config", str(config), "--json"]
    cmd += ["--db", str(db)]
    if crops is not None:
        shutil.rmtree(crops, ignore_errors=True)
        cmd += ["--save-crops", str(crops)]
    out = S._run(cmd, f"sorter run {video.name}")
    card: dict[str, Any] = json.loads(out[out.find("{") :])["scorecard"]
    card["db"] = str(db)
    return card


def review_by_truth(video: Path, db: Path, dest: Path, limit: int) -> dict[str, int]:
    """File up to `limit` saved crops (in item order) into dest/<true grade>/, the grade
    coming from the belt's truth file (a perfect operator). Returns the count per grade."""
    from sorter.monitor.audit import read_decisions
    from sorter.replay.scorecard import match_to_truth

    truth = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
    rows = read_decisions(db)
    matched = match_to_truth(rows, truth)
    by_decision = {di: truth["items"][ti]["label"] for ti, di in matched.items()}
    shutil.rmtree(dest, ignore_errors=True)
    counts: dict[str, int] = {}
    taken = 0
    for di, row in enumerate(rows):
        if taken >= limit:
            break
        crop = row.get("crop")
        if di not in by_decision or not crop or not Path(crop).is_file():
            continue
        grade = str(by_decision[di])
        (dest / grade).mkdir(parents=True, exist_ok=True)
        shutil.copy2(crop, dest / grade / Path(crop).name)
        counts[grade] = counts.get(grade, 0) + 1
        taken += 1
    return dict(sorted(counts.items()))


def export(run: Path, out: Path) -> Path:
    if not out.is_file():
        S._run(
            [sys.executable, "-m", "training.export_cli", str(run), "--quantize", "-o", str(out)],
            f"sorter-export {run}",
        )
    return out


def check_base(base_run: Path, rels: list[str]) -> None:
    split = json.loads((base_run / "split.json").read_text(encoding="utf-8"))
    seen = {Path(p).as_posix() for p, _ in split["train"] + split["val"]}
    overlap = [r for r in rels if r in seen]
    if overlap:
        raise SystemExit(
            f"error: {base_run} trained on {len(overlap)} of the demo's images (e.g. "
            f"{overlap[0]}); train it with `sorter-train data/c9 --folds 5 --fold 0`"
        )


def finetune(base_run: Path, reviewed: Path, out: Path) -> tuple[float, dict[str, Any]]:
    """`sorter-train finetune` with its defaults: (wall seconds, its config's finetune)."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "training.cli", "finetune", str(base_run), str(reviewed)]
    S._run([*cmd, "--out", str(out), "--quiet"], "sorter-train finetune")
    wall = time.perf_counter() - t0
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return wall, {**cfg["finetune"], "metrics": metrics}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def document(r: dict[str, Any], argv: list[str]) -> str:
    info = machine.describe()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ft = r["finetune"]
    m = ft["metrics"]
    look = " ".join(
        (f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k} {v}"
        for k, v in LOOK.items()
    )
    rows = [
        "| model | belt A: correct bin | belt B: correct bin | belt B items, clean images "
        "(`sorter classify`) | belt B: missed / duplicated |",
        "|---|---|---|---|---|",
    ]
    for name in ("base", "finetuned"):
        a = r["A"].get(name)
        b = r["B"][name]
        a_text = "-" if a is None else f"{a['correct_bin_pct']:.1f}%"
        rows.append(
            f"| {r['names'][name]} | {a_text} | "
            f"{b['correct_bin_pct']:.1f}% | {_pct(r['clean_B'][name])} | "
            f"{b['missed']} / {b['duplicated']} |"
        )
    reviewed = ", ".join(f"{g} {n}" for g, n in r["reviewed"].items())
    return (
        f"# Learning from the belt ({when})\n\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"Python {info['python']} (shared with other jobs: timings are loaded).\n\n"
        f"Command: `python -m benchmarks.belt_learning {' '.join(argv)}`\n\n"
        f"Base run `{r['base_run']}` (its test split is the 495-image hold-out; it never "
        f"trained on belts A or B). Belts: `sorter simulate-belt ... {look}` at "
        f"{RATE:g} items/s; A = {r['n_A']} images, B = {r['n_B']} other images of the "
        f"hold-out.\n\n"
        f"Reviewed: {sum(r['reviewed'].values())} crops of belt A, filed by the belt's truth "
        f"(a stand-in for a person): {reviewed}.\n\n"
        f"Fine-tuning (`sorter-train finetune`, defaults): {ft['belt_train']} crops trained "
        f"on + {ft['belt_held_out']} held out, {ft['old_sample']} original images mixed in, "
        f"{ft['epochs_run']} epochs, {ft['fit_seconds']:.0f} s training, "
        f"{r['finetune_wall_s']:.0f} s for the whole command. Its own report: original "
        f"validation split {_pct(m['val']['accuracy'])} (base "
        f"{_pct(m['finetune']['before']['val'])}), held-out belt-A crops "
        f"{_pct(m['test']['accuracy'])} (base {_pct(m['finetune']['before']['test'])}).\n\n"
        + "\n".join(rows)
        + "\n"
    )


@app.command()
def main(
    base_run: Path = typer.Option(..., help="Run folder trained with --folds 5 --fold 0."),
    data: Path = typer.Option(Path("data/c9"), help="CUCUMBER-9 as a folder-per-grade tree."),
    crops: int = typer.Option(200, help="Crops of belt A to review."),
    work: Path = typer.Option(Path(tempfile.gettempdir()) / "belt-learning", help="Scratch."),
    out: Path | None = typer.Option(None, help="Markdown output (default benchmarks/results)."),
) -> None:
    """Run the demonstration and print its table."""
    work.mkdir(parents=True, exist_ok=True)
    base_run = base_run.resolve()
    rels = S.holdout(data)
    check_base(base_run, rels)
    rels_a, rels_b = halves(rels)
    base = export(base_run, work / "base-int8.tflite")
    belt_a, belt_b = render(data, work, "belt-A", rels_a), render(data, work, "belt-B", rels_b)
    r: dict[str, Any] = {"base_run": base_run.name, "n_A": len(rels_a), "n_B": len(rels_b)}
    r["A"] = {"base": replay(belt_a, base, work, crops=work / "crops-A")}
    print(f"belt A, base model: correct bin {r['A']['base']['correct_bin_pct']:.1f}%", flush=True)
    r["reviewed"] = review_by_truth(belt_a, Path(r["A"]["base"]["db"]), work / "reviewed", crops)
    r["finetune_wall_s"], r["finetune"] = finetune(base_run, work / "reviewed", work / "ft")
    (work / "finetuned-int8.tflite").unlink(missing_ok=True)
    tuned = export(work / "ft", work / "finetuned-int8.tflite")
    r["names"] = {"base": f"base ({base_run.name}, int8)", "finetuned": "fine-tuned (int8)"}
    r["B"] = {name: replay(belt_b, m, work) for name, m in (("base", base), ("finetuned", tuned))}
    r["clean_B"] = {
        name: S.clean_accuracy(data, rels_b, m)
        for name, m in (("base", base), ("finetuned", tuned))
    }
    doc = document(r, sys.argv[1:])
    print(doc)
    dest = out or (
        S.REPO
        / "benchmarks"
        / "results"
        / f"belt-learning-{machine.machine_slug()}-{time.strftime('%Y-%m-%d')}.md"
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(doc, encoding="utf-8")
    (work / "results.json").write_text(json.dumps(r, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    app()
