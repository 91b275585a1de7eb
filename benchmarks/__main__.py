"""`python -m benchmarks` (what `make bench` runs): all nine figures in one run.

python -m benchmarks                 full run (~15 min on 2 cores), writes results/
python -m benchmarks --smoke         tiny sizes, checks only that every figure is produced
python -m benchmarks --only 3,4      a subset (still one table)
"""

from __future__ import annotations

import os

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import typer

from benchmarks import machine, pi_estimate
from benchmarks.core import REPO, Context
from benchmarks.report import document, table
from benchmarks.runner import FIGURES, run_figures

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cucumber-9" / "prototype_1"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _parse_only(only: str | None) -> set[int] | None:
    if not only:
        return None
    try:
        wanted = {int(x) for x in only.split(",") if x.strip()}
    except ValueError as err:
        raise typer.BadParameter(f"--only {only!r}: give figure numbers like 3,4") from err
    bad = wanted - {f.NUMBER for f in FIGURES}
    if bad:
        raise typer.BadParameter(f"--only: no figure {sorted(bad)}; figures are 1..9")
    return wanted


@app.command()
def main(
    smoke: bool = typer.Option(False, help="Tiny sizes (<= 60 s); checks figures are produced."),
    only: str | None = typer.Option(None, help="Comma-separated figure numbers to run."),
    out: Path | None = typer.Option(
        None,
        help="Markdown results file. Default: benchmarks/results/<machine>-<date>.md "
        "for a full run, none for --smoke.",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write results as JSON."),
    data: Path = typer.Option(
        Path(os.environ.get("C9", str(DEFAULT_DATA))),
        help="CUCUMBER-9 prototype_1 batches (env C9).",
    ),
    seed: int = typer.Option(0, help="Seed of the validation split and the generated belts."),
    epochs: int = typer.Option(
        12, min=1, help="Epoch budget per training run of figure 1 (sizes the full run)."
    ),
    keep: bool = typer.Option(False, help="Keep the scratch directory (models, videos, logs)."),
    controller: str | None = typer.Option(
        None,
        help="Gate timing (figure 8) against this controller URL, e.g. /dev/ttyACM0 "
        "(a real Uno), instead of the firmware under QEMU.",
    ),
) -> None:
    """Measure accuracy and speed, each figure against its baseline in the same run."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wanted = _parse_only(only)
    if not data.exists():
        typer.echo(
            f"error: CUCUMBER-9 data not found at {data}; pass --data DIR or set C9=DIR", err=True
        )
        raise typer.Exit(2)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="sorter-bench-"))
    ctx = Context(
        smoke=smoke,
        workdir=workdir,
        data_dir=data,
        seed=seed,
        epochs=epochs,
        controller=controller,
        python=sys.executable,
    )
    try:
        results = run_figures(ctx, wanted)
    finally:
        if keep:
            typer.echo(f"scratch kept in {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - t0
    mode = "smoke (tiny sizes; figures not meaningful)" if smoke else "full"
    if not smoke:
        load1 = os.getloadavg()[0]
        ctx.note(
            f"Load average (1 min) was {load0:.2f} at the start and {load1:.2f} at the end, "
            f"on {os.cpu_count()} cores: anything well above 1 means other work shared the "
            "machine, so treat absolute times as noisy; ratios against the same-run baseline "
            "are the figures to compare."
        )
    info = machine.describe()
    extra = []
    if "model_cost" in ctx.cache:
        extra.append(
            "## Raspberry Pi: ESTIMATE, not measured\n\n"
            "Expected int8 latency per crop, scaled from figure 3's multiply-accumulates and "
            "published TensorFlow Lite figures for the Pi 4 and Pi 5 (sources and assumptions "
            "in benchmarks/pi_estimate.py). Replace with a measured run on a Pi.\n\n"
            + pi_estimate.table(ctx.cache["model_cost"])
        )
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    doc = document(
        results,
        info,
        title=f"Benchmarks {started:%Y-%m-%d} on {info['cpu']}",
        started=f"{started:%Y-%m-%d %H:%M}",
        total_s=total,
        mode=mode,
        notes=ctx.notes,
        command=command.strip(),
        extra=extra,
    )
    typer.echo(table(results))
    for n in ctx.notes:
        typer.echo(f"- {n}")
    typer.echo(f"total {total / 60:.1f} min")
    if out is None and not smoke and wanted is None:
        out = REPO / "benchmarks" / "results" / f"{machine.machine_slug()}-{started:%Y-%m-%d}.md"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(doc, encoding="utf-8")
        typer.echo(f"written {out}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "mode": "smoke" if smoke else "full",
            "machine": info,
            "total_s": total,
            "notes": ctx.notes,
            "figures": [r.as_dict() for r in results],
        }
        json_out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if any(r.status == "error" for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
