"""Targeted edits of the config file: set keys of one table, every other byte kept.

`set_keys(text, "lens", {"fx": 812.3, ...})` replaces the value on each key's existing line
(keeping its trailing comment), inserts missing keys after the table's last key, and adds
the table at the end when the file has none. `write_keys` does that to a file: the edited
text is checked with the config loader (and every value read back) before it atomically
replaces the file, mode kept. `sorter calibrate-camera` writes its calibration this way.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sorter.config import Config, parse_config, toml_value
from sorter.errors import ConfigError

_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def table_key(header: str) -> tuple[str, ...]:
    """A table header's dotted name as parts (`gates."2"` -> ("gates", "2"))."""
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', header)
    return tuple(p.strip("\"'") for p in parts)


def table_span(lines: list[str], table: str) -> tuple[int | None, int]:
    """(index of the [table] header or None, index of the next table's header or EOF)."""
    want = table_key(table)
    start: int | None = None
    for i, line in enumerate(lines):
        m = _TABLE.match(line)
        if not m or line.lstrip().startswith("[["):
            continue
        if start is None and table_key(m.group(1)) == want:
            start = i
        elif start is not None:
            return start, i
    return start, len(lines)


def set_keys(text: str, table: str, values: dict[str, Any]) -> str:
    """`text` with `values` set in `[table]` (see the module docstring)."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.count("\r\n") > text.count("\n") / 2 > 0 else "\n"
    start, end = table_span(lines, table)
    if start is None:
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += newline
        lines += [newline, f"[{table}]{newline}"]
        start, end = len(lines) - 1, len(lines)
    todo = dict(values)
    last_key = start
    for i in range(start + 1, end):
        body = lines[i].rstrip("\r\n")
        stripped = body.strip()
        if not stripped or stripped.startswith("#"):
            continue
        last_key = i
        for key in list(todo):
            m = re.match(
                rf"^(\s*{re.escape(key)}\s*=\s*)(\[[^\]]*\]|\"[^\"]*\"|[^#\s]+)(.*)$", body
            )
            if m:
                ending = lines[i][len(body) :]
                lines[i] = f"{m.group(1)}{toml_value(todo.pop(key))}{m.group(3)}{ending}"
                break
    if todo:
        if not lines[last_key].endswith(("\n", "\r")):
            lines[last_key] += newline
        added = [f"{key} = {toml_value(v)}{newline}" for key, v in todo.items()]
        lines[last_key + 1 : last_key + 1] = added
    return "".join(lines)


def write_keys(path: Path, edits: dict[str, dict[str, Any]]) -> Config:
    """Set `edits` ({table: {key: value}}) in the config file at `path`; returns the config
    read back. ConfigError (one line, what to do) when it cannot be read, checked or written."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot read config ({err.strerror or err}); create one with "
            f"`sorter config init {path}`"
        ) from err
    for table, values in edits.items():
        text = set_keys(text, table, values)
    config = parse_config(text, str(path))
    for table, values in edits.items():
        section = getattr(config, table)
        for key, value in values.items():
            got = getattr(section, key)
            if (list(got) if isinstance(got, tuple) else got) != (
                list(value) if isinstance(value, tuple | list) else value
            ):
                raise ConfigError(f"{path}: {table}.{key} is set twice; keep one line")
    replace_file(path, text, "copy the values printed above into the file by hand")
    return config


def replace_file(path: Path, text: str, by_hand: str) -> None:
    """Atomically replace `path` with `text` (same folder temp file, mode kept).

    `by_hand` ends the one-line error when the file cannot be written: what to set by hand.
    """
    mode = path.stat().st_mode & 0o7777
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sorter-edit-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigError(
            f"{path}: cannot write ({err.strerror or err}); run with sudo, or {by_hand}"
        ) from err
