"""Native libraries' start-up notices, silenced unless asked for (`--verbose`).

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ straight
to file descriptor 2 when an interpreter allocates its tensors, and TensorFlow prints its
oneDNN and absl notices the same way when it is imported; no environment variable or
LiteRT option turns the LiteRT line off without also turning XNNPACK off (which would
change speed). `native_notices_captured()` points fd 2 (and optionally fd 1) at a
temporary file for the block; afterwards the known notices are dropped (logged at debug)
and anything else (a warning, an error) is written back to the real stderr, so nothing
that matters is lost. With `set_verbose(True)` (`--verbose`), or SORTER_VERBOSE=1 in the
environment, nothing is captured at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

NOTICES = (
    re.compile(r"^INFO: "),  # TFLite / LiteRT minimal logging, e.g. the XNNPACK delegate line
    re.compile(r"^I\d{4} "),  # absl C++ INFO lines (TensorFlow's oneDNN notice)
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
)
"""Lines that are start-up chatter, not news."""

VERBOSE_ENV = "SORTER_VERBOSE"
"""Set to 1 to see native libraries' notices (what `--verbose` does)."""

_verbose: bool | None = None


def set_verbose(verbose: bool) -> None:
    """Show native notices from now on (True) or silence them (False); the CLIs' --verbose."""
    global _verbose
    _verbose = verbose


def verbose() -> bool:
    """True when native notices are shown (`set_verbose`, else SORTER_VERBOSE=1)."""
    if _verbose is not None:
        return _verbose
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def is_notice(line: str) -> bool:
    """True for a known start-up notice line."""
    return any(p.match(line) for p in NOTICES)


@contextlib.contextmanager
def native_notices_captured(*, stdout: bool = False, keep_other: bool = True) -> Iterator[None]:
    """Capture fd 2 (and fd 1 with `stdout`) for the block; notices are dropped (debug log),
    every other line goes back to stderr (with `keep_other`; else it is logged at debug too:
    the TFLite converter's chatter). A no-op when `verbose()`."""
    if verbose():
        yield
        return
    fds = (1, 2) if stdout else (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            _replay(sink.read().decode(errors="replace"), keep_other)


def _replay(text: str, keep_other: bool) -> None:
    kept = []
    for line in text.splitlines():
        if is_notice(line) or not keep_other:
            log.debug("native: %s", line)
        elif line.strip():
            kept.append(line)
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()
