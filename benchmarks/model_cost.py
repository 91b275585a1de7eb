"""Figure 3: model cost: parameters, multiply-accumulates per inference, file size.

Parameters and multiply-accumulates (MACs) are counted on the inference model (no
augmentation or dropout) layer by layer: convolutions and dense layers (batch norm folds
into them on export; pooling, activations and the rescale are not MACs). File sizes are
the .tflite files sorter-export writes, float and int8, of the seed-0 runs of figure 1.
The literal Deep-MNIST is the baseline for the default architecture; float is the baseline
for int8.
"""

from __future__ import annotations

from typing import Any

from benchmarks import models
from benchmarks.core import Context, NotAvailable, Row, fmt_bytes, fmt_count, ratio

NUMBER = 3
TITLE = "Model cost"


def missing() -> str | None:
    return models.training_missing()


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (batch 1) of a Keras functional model."""
    from training.budget import count_macs as macs

    return macs(model)


def cost_of(ctx: Context, arch: str) -> dict[str, Any]:
    """params and MACs of `arch`'s inference model; float/int8 sizes of its seed-0 export."""
    from sorter.perception.preprocess import load_image
    from training.defaults import DEFAULTS
    from training.model import build_model, inference_model

    tree = models.split_tree(ctx)
    sample = next(iter(sorted(tree.glob("train/*/*"))))
    size = load_image(sample).shape[:2]
    n_classes = len([p for p in (tree / "train").iterdir() if p.is_dir()])
    model = build_model(arch, (int(size[0]), int(size[1])), n_classes, augment=False)
    infer = inference_model(model, batch_size=1)
    # The default arch's runs average two views (training.defaults test_views): both passes.
    views = len(DEFAULTS.test_views) if arch == models.archs()[0] else 1
    info: dict[str, Any] = {"params": int(infer.count_params()), "macs": views * count_macs(infer)}
    for kind, quantize in (("float", False), ("int8", True)):
        if ctx.smoke and arch != models.archs()[0]:
            info[kind], info["why"] = None, "smoke run: exported for the default arch only"
            continue
        try:
            info[kind] = models.exported(ctx, arch, 0, quantize=quantize).stat().st_size
        except NotAvailable as err:
            info[kind] = None
            info["why"] = str(err)
    return info


def run(ctx: Context) -> list[Row]:
    arch_list = models.archs()
    default = arch_list[0]
    costs = {arch: cost_of(ctx, arch) for arch in arch_list}
    ctx.cache["model_cost"] = costs
    base = costs["deep-mnist"]
    rows = []
    for arch in arch_list:
        c = costs[arch]
        tag = f"{arch}{' (default)' if arch == default else ''}"
        rows.append(
            Row(
                measure=f"{tag} parameters",
                value=fmt_count(c["params"]),
                baseline="deep-mnist (literal)",
                baseline_value=fmt_count(base["params"]),
                ratio=ratio(c["params"], base["params"]),
            )
        )
        rows.append(
            Row(
                measure=f"{tag} MACs per inference",
                value=fmt_count(c["macs"]),
                baseline="deep-mnist (literal)",
                baseline_value=fmt_count(base["macs"]),
                ratio=ratio(c["macs"], base["macs"]),
                note="conv + dense, batch 1",
            )
        )
        if c.get("int8") is None or c.get("float") is None:
            rows.append(Row(f"{tag} .tflite size", f"not available: {c.get('why', '')}"))
            continue
        rows.append(
            Row(
                measure=f"{tag} .tflite int8",
                value=fmt_bytes(c["int8"]),
                baseline="same model, float .tflite",
                baseline_value=fmt_bytes(c["float"]),
                ratio=ratio(c["int8"], c["float"]),
                note="with metadata",
            )
        )
    return rows
