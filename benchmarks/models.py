"""Shared by the model figures (1-4): the fixed split, trained runs and their exports.

Training goes through `training.train.train` (what `sorter-train` runs) on a tree that is
already split into train/ val/ test/ with a fixed seed, so the three training seeds vary the
weights, shuffle and augmentation but never the images. Exports go through
`training.export` (what `sorter-export` runs). Everything is cached in the run context, so
figure 1's models are reused by figures 2-4.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from benchmarks.core import Context, NotAvailable, need_modules

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1
"""Validation split (early stopping, LR schedule) per grade."""
TEST_FRACTION = 0.1
"""Held-out split per grade on which accuracy is reported (never seen while training)."""
SMOKE_PER_GRADE = 14
"""Images per grade in smoke runs."""


def training_missing() -> str | None:
    return need_modules("training.train", "training.model", "training.data", "training.cucumber9")


def export_missing() -> str | None:
    return need_modules("training.export", "sorter.grading.classifier")


def archs() -> list[str]:
    """The default architecture, the literal Deep-MNIST and the softmax baseline."""
    from training.model import DEFAULT_ARCH

    out = [DEFAULT_ARCH]
    for arch in ("deep-mnist", "softmax"):
        if arch not in out:
            out.append(arch)
    return out


def split_tree(ctx: Context) -> Path:
    """CUCUMBER-9 as train/ val/ test/ subtrees (symlinks), split once with ctx.seed."""
    if "split_tree" in ctx.cache:
        cached: Path = ctx.cache["split_tree"]
        return cached
    from benchmarks.loop import c9_tree
    from training.data import stratified_split

    src = c9_tree(ctx)
    items = sorted(
        (str(p.relative_to(src)), p.parent.name)
        for p in src.glob("*/*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"}
    )
    if ctx.smoke:
        keep: dict[str, int] = {}
        small = []
        for rel, lab in items:
            if keep.get(lab, 0) < SMOKE_PER_GRADE:
                keep[lab] = keep.get(lab, 0) + 1
                small.append((rel, lab))
        items = small
    split = stratified_split(items, {"val": VAL_FRACTION, "test": TEST_FRACTION}, ctx.seed)
    dest = ctx.workdir / "c9-split"
    for name, members in split.items():
        for rel, lab in members:
            link = dest / name / lab / Path(rel).name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src / rel, link)
    counts = {k: len(v) for k, v in split.items()}
    ctx.note(
        f"Split (fixed seed {ctx.seed}, stratified per grade): {counts['train']} train / "
        f"{counts['val']} val (early stopping) / {counts['test']} held-out test images."
    )
    ctx.cache["split_tree"] = dest
    return dest


def epochs(ctx: Context) -> int:
    """The epoch budget per training run (early stopping may end sooner)."""
    return 1 if ctx.smoke else ctx.epochs


def trained(ctx: Context, arch: str, seed: int) -> Any:
    """training.train.RunResult for (arch, seed), training it on first use."""
    key = f"run:{arch}:{seed}"
    if key not in ctx.cache:
        from training.model import AugmentConfig
        from training.train import TrainConfig, train

        plain = arch == "softmax" or ctx.smoke
        cfg = TrainConfig(
            data_dir=split_tree(ctx),
            out=ctx.workdir / "runs" / f"{arch}-s{seed}",
            arch=arch,
            epochs=epochs(ctx),
            seed=seed,
            # The default recipe (camera-path renders, fixed cosine budget); the softmax
            # baseline and smoke runs (where tracing costs more than the tiny fit) plain.
            **({"augment": AugmentConfig.off(), "camera": None} if plain else {}),
            # The default network averages its 180-degree turn; the baselines run once.
            **({} if arch == archs()[0] else {"test_views": ()}),
            reports=False,
            robustness=False,
            verbose=0,
        )
        log.info("training %s seed %d for up to %d epochs", arch, seed, cfg.epochs)
        ctx.cache[key] = train(cfg)
    return ctx.cache[key]


def exported(ctx: Context, arch: str, seed: int, *, quantize: bool) -> Path:
    """The run for (arch, seed) exported to .tflite (int8 when `quantize`), on first use."""
    key = f"export:{arch}:{seed}:{'int8' if quantize else 'float'}"
    if key not in ctx.cache:
        missing = export_missing()
        if missing:
            raise NotAvailable(missing)
        run = trained(ctx, arch, seed)
        out = ctx.workdir / "models" / f"{arch}-s{seed}-{'int8' if quantize else 'float'}.tflite"
        out.parent.mkdir(parents=True, exist_ok=True)
        export_run(Path(run.run_dir), out, quantize=quantize, smoke=ctx.smoke)
        ctx.cache[key] = out
        if quantize and seed == 0:
            ctx.cache.setdefault("exported", {}).setdefault(
                "default" if arch == archs()[0] else arch, {}
            )["int8"] = out
    path: Path = ctx.cache[key]
    return path


def export_run(run_dir: Path, out: Path, *, quantize: bool, smoke: bool = False) -> Path:
    """Export a run as `sorter-export RUN [--quantize] -o OUT --force` does (in process)."""
    from training.export import ExportOptions
    from training.export import export_run as do_export

    opts = ExportOptions(quantize=quantize, out=out, force=True, robustness=False)
    if smoke:
        opts.calibration_images = 40
    do_export(run_dir, opts, progress=lambda _msg: None)
    return out


def test_arrays(ctx: Context, run: Any) -> tuple[Any, Any]:
    """(images uint8 NxHxWx3, int labels) of a run's held-out test split."""
    key = f"test_arrays:{run.run_dir}"
    if key not in ctx.cache:
        from training.data import load_split_images

        ctx.cache[key] = load_split_images(Path(run.run_dir), "test")
    value: tuple[Any, Any] = ctx.cache[key]
    return value
