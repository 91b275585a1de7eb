"""`sorter model promote FILE` and `sorter model rollback`: switch the farm's model safely.

The model the sorter runs is the file `[model] path` names (MODEL). Promoting FILE:

1. checks it (`sorter.grading.model_check.check_model`: metadata readable and embedded in
   the file, labels exactly the config's `[bins.grades]` grades, one inference on a dummy
   input with LiteRT); a model that fails is refused with one line and nothing changes;
2. keeps the model being replaced as MODEL.previous (written to a temporary file, fsync'ed
   and renamed over the old MODEL.previous, so it is always a whole file);
3. installs FILE the same way: copied to a temporary file next to MODEL, fsync'ed,
   `os.replace`d onto MODEL, the folder fsync'ed. A sorter reading MODEL sees the old file
   or the new one, never a half-written one, also across a power cut.

Rolling back checks MODEL.previous the same way and swaps the two (MODEL.previous becomes
MODEL, MODEL becomes MODEL.previous: a second rollback undoes the first).

A running sorter keeps the model it loaded until it is told to reload (SIGHUP: `systemctl
reload produce-sorter`, or `--pid PID` here): `sorter.runtime.reload`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sorter.config import Config
from sorter.errors import ModelError, SorterError
from sorter.grading.metadata import METADATA_NAME, read_embedded_metadata, read_model_bytes
from sorter.grading.model_check import check_model, model_id

PREVIOUS_SUFFIX = ".previous"
"""MODEL.previous: the model a promotion replaced (what `rollback` goes back to)."""


@dataclass(frozen=True)
class Installed:
    """What a promotion or a rollback did."""

    model: str
    """The configured model path (now holding the new model)."""
    model_id: str
    """Content id of the model now installed."""
    previous: str | None
    """Where the model it replaced is kept (None when there was none)."""
    previous_id: str | None
    """Content id of that model."""
    labels: tuple[str, ...]
    """The installed model's labels."""


def target_path(config: Config) -> Path:
    """The configured model file (`[model] path`); ModelError when the config has none."""
    if not config.model.path:
        raise ModelError(
            "[model] path is empty (the bundled model, which is never overwritten): set "
            "[model] path in the config to the farm's model file, e.g. "
            "/var/lib/produce-sorter/model.tflite, then promote into it"
        )
    return Path(config.model.path)


def previous_path(target: Path) -> Path:
    return target.with_name(target.name + PREVIOUS_SUFFIX)


def check_for_install(path: Path, config: Config) -> tuple[str, ...]:
    """check_model plus: the metadata must be embedded (a sidecar would not move with the
    file atomically). Returns the labels."""
    data = read_model_bytes(path)
    if METADATA_NAME not in read_embedded_metadata(data, str(path)):
        raise ModelError(
            f"{path}: its metadata is only in a sidecar JSON, which cannot be installed "
            "atomically with it; re-export it with sorter-export (which embeds the metadata)"
        )
    return tuple(check_model(path, config).labels)


def promote(path: str | Path, config: Config) -> Installed:
    """Check the model at `path` and install it as the configured model (see module doc)."""
    src = Path(path)
    labels = check_for_install(src, config)
    target = target_path(config)
    folder = target.parent
    if not folder.is_dir():
        raise ModelError(f"{folder}: the folder of [model] path does not exist; create it")
    if target.exists() and src.resolve() == target.resolve():
        raise ModelError(f"{src}: is already the installed model ({target}); nothing to do")
    prev: Path | None = None
    prev_id: str | None = None
    if target.is_file():
        prev = previous_path(target)
        _atomic_copy(target, prev)
        prev_id = model_id(prev)
    _atomic_copy(src, target)
    return Installed(str(target), model_id(target), str(prev) if prev else None, prev_id, labels)


def rollback(config: Config) -> Installed:
    """Swap the configured model with the one it replaced (checked first)."""
    target = target_path(config)
    prev = previous_path(target)
    if not prev.is_file():
        raise ModelError(
            f"{prev}: no previous model to roll back to (a promotion keeps one); "
            "promote the model you want instead"
        )
    labels = check_for_install(prev, config)
    spare = target.with_name(f".{target.name}.rollback.tmp")
    if target.is_file():
        _atomic_copy(target, spare)
    os.replace(prev, target)  # the previous model is the model now
    if spare.is_file():
        os.replace(spare, prev)  # and the one rolled back is kept for a second rollback
    _fsync_dir(target.parent)
    return Installed(
        str(target),
        model_id(target),
        str(prev) if prev.is_file() else None,
        model_id(prev) if prev.is_file() else None,
        labels,
    )


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` so that `dst` is always a whole file (temp + fsync + replace)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SorterError(f"{dst}: cannot install the model ({err.strerror or err})") from err
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tell_sorter(pid: int | None = None, service: str | None = None) -> str:
    """Ask a running sorter to reload its model: SIGHUP to `pid`, or `systemctl reload
    SERVICE`. Returns what was done; SorterError (one line) when it could not be done."""
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as err:
            raise SorterError(f"--pid {pid}: no such process; is the sorter running?") from err
        except PermissionError as err:
            raise SorterError(f"--pid {pid}: not allowed to signal it; run as its user") from err
        return f"sent SIGHUP to {pid}"
    if service is not None:
        try:
            done = subprocess.run(
                ["systemctl", "reload", service], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SorterError(f"systemctl reload {service}: {err}") from err
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise SorterError(
                f"systemctl reload {service} failed ({why[-1] if why else done.returncode})"
            )
        return f"systemctl reload {service}"
    return ""
