"""`python -m sorter.replay.demo` (what `make demo` runs): the whole loop on the bundled belt.

Replays demo/belt.mp4 (with its truth demo/belt.json) through the sorting loop with the
bundled model, against the real controller firmware emulated by qemu-system-avr when the
AVR toolchain and QEMU are installed (real time, over QEMU's TCP serial), else against the
Python simulator (sim://, as fast as possible on the replay clock). Prints live status, the
run summary and the scorecard; the decision log, JSON lines and crops go to demo-out/.
Paths are relative to the repository, so it works from a fresh clone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler

from firmware_bridge import emulator
from sorter import native
from sorter.config import Config, apply_overrides
from sorter.errors import SorterError
from sorter.monitor.audit import DecisionLog
from sorter.monitor.status import Status, print_summary, render_status
from sorter.replay.truth import run_with_truth, scorecard_tables
from sorter.runtime.runner import RunOptions

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the demo's paths are relative to it)."""
DEMO_DIR = REPO / "demo"
"""Bundled belt video and truth."""
VIDEO = DEMO_DIR / "belt.mp4"
TRUTH = DEMO_DIR / "belt.json"

QEMU_SERIAL = {"serial.window_ms": 25.0, "serial.heartbeat_ms": 1000}
"""Link settings for the emulated controller: QEMU on a busy machine jitters by ms."""


@contextlib.contextmanager
def emulated_controller() -> Iterator[str | None]:
    """Yields `socket://...` of the firmware under QEMU, or None when it cannot run here."""
    if not emulator.tools_available():
        yield None
        return
    try:
        cm = emulator.qemu_controller()
        url = cm.__enter__()
    except emulator.QemuError as err:  # the demo still runs, on the simulator
        log.warning("emulated controller unavailable (%s); using the simulator", err)
        yield None
        return
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m sorter.replay.demo", description=__doc__)
    parser.add_argument("--simulator", action="store_true", help="Skip QEMU; use sim://.")
    parser.add_argument("--out", type=Path, default=REPO / "demo-out", help="Output folder.")
    parser.add_argument("--model", type=Path, default=None, help="Model (default: bundled).")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="Debug logging and LiteRT's own notices."
    )
    args = parser.parse_args(argv)
    native.set_verbose(args.verbose)
    console = Console(stderr=True)
    handler = RichHandler(console=console, show_path=False)  # cooperates with the live view
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler]
    )
    try:
        return _demo(args, console)
    except SorterError as err:
        console.print(f"error: {err}", markup=False, highlight=False)
        return 2
    except Exception as err:
        if type(err).__module__.startswith("firmware_bridge") and hasattr(err, "exit_code"):
            console.print(f"error: {err}", markup=False, highlight=False)
            return 2
        raise


def _demo(args: argparse.Namespace, console: Console) -> int:
    import json

    if not VIDEO.is_file() or not TRUTH.is_file():
        raise SorterError(
            f"{VIDEO}: the bundled belt video is missing; demo/README.md has the command "
            "that makes it"
        )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("decisions.db", "decisions.db-wal", "decisions.db-shm", "decisions.jsonl"):
        (out / stale).unlink(missing_ok=True)
    controller = contextlib.nullcontext(None) if args.simulator else emulated_controller()
    with controller as url:
        overrides: dict[str, object] = {"serial.url": url or "sim://?gates=9"}
        if url:
            overrides.update(QEMU_SERIAL)
            console.print(f"controller: firmware under qemu-system-avr at {url} (real time)")
        else:
            console.print("controller: Python simulator sim:// (replay as fast as possible)")
        config = apply_overrides(Config(), overrides)
        status = Status(url=config.serial.url)
        decisions = DecisionLog(
            out / "decisions.db",
            jsonl_path=out / "decisions.jsonl",
            crops_dir=out / "crops",
            review_below=config.thresholds.review_below,
        )
        live = Live(render_status(status.snapshot()), console=console, auto_refresh=False)
        last = [0.0]

        def progress(st: Status) -> None:
            now = time.monotonic()
            if now - last[0] > 0.25:
                last[0] = now
                live.update(render_status(st.snapshot()), refresh=True)

        with live:
            result = run_with_truth(
                config,
                RunOptions(video=VIDEO, model=args.model, progress=progress),
                decisions,
                status,
                TRUTH,
            )
            live.update(render_status(status.snapshot()), refresh=True)
    if args.json:
        print(json.dumps(result.summary, default=str))
    print_summary(console, result.summary, *scorecard_tables(result))
    console.print(f"decision log: {out / 'decisions.db'} and {out / 'decisions.jsonl'}")
    console.print(f"crops for review/retraining: {out / 'crops'}")
    return 1 if "error" in result.summary else 0


if __name__ == "__main__":
    sys.exit(main())
