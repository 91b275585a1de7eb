"""The shape of the repository: one-way imports, short functions, no machine paths.

- `training -> sorter -> firmware_bridge`, never back; inside `sorter` the subpackages are
  layered along the data flow (docs/ARCHITECTURE.md) and a lower layer never imports a
  higher one. Every import counts, also the lazy ones inside functions.
- No function body over 80 lines in sorter/, training/ and firmware_bridge/ (the developers'
  guide).
- No machine paths (absolute paths under /work, /root or /home/<user>) and no work-item
  tags in any tracked file, binaries included (a model's metadata, a truth JSON).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "__init__": 0,
    "errors": 0,
    "fields": 1,
    "native": 1,
    "perception": 2,
    "config": 3,
    "grading": 4,
    "monitor": 4,
    "actuation": 5,
    "runtime": 6,
    "ops": 7,
    "replay": 7,
    "commands": 8,
    "cli": 9,
}
"""sorter's parts, lowest first: a part imports only parts of a lower layer (or itself)."""


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            # `from sorter import notify` imports the submodule sorter.notify
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return found


def _part(module: str) -> str:
    """The sorter part a module belongs to: sorter.grading.policy -> grading."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_go_one_way_between_the_packages() -> None:
    bad = []
    for package, forbidden in (
        ("firmware_bridge", ("sorter", "training")),
        ("sorter", ("training",)),
    ):
        for path in _modules(package):
            for line, name in _imports(path):
                if name.split(".")[0] in forbidden:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "imports against training -> sorter -> firmware_bridge:\n" + "\n".join(bad)


def test_sorter_layers_import_downwards_only() -> None:
    parts = {p.stem if p.parent == ROOT / "sorter" else p.parent.name for p in _modules("sorter")}
    parts = {p for p in parts if not p.startswith("_") or p == "__init__"}
    assert parts <= set(LAYERS), f"new sorter part(s) without a layer: {parts - set(LAYERS)}"
    bad = []
    for path in _modules("sorter"):
        mine = _part(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, name in _imports(path):
            if name.split(".")[0] != "sorter" or name == "sorter":
                continue
            theirs = _part(name)
            if theirs not in LAYERS:  # `from sorter import notify` style names a module
                continue
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {name} ({theirs})")
    assert not bad, "upward imports inside sorter:\n" + "\n".join(bad)


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = body[0]
    docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    start = body[1].lineno if docstring and len(body) > 1 else first.lineno
    return (fn.end_lineno or start) - start + 1


@pytest.mark.parametrize("package", ["sorter", "training", "firmware_bridge"])
def test_no_function_body_over_80_lines(package: str) -> None:
    long = []
    for path in _modules(package):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _body_lines(node)
                if n > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "functions over 80 lines (split them):\n" + "\n".join(long)


# Built from pieces so this file does not match itself.
MACHINE_PATHS = re.compile(
    rb"(?<![A-Za-z0-9_.~-])/(?:" + b"wo" + rb"rk|ro" + rb"ot|ho" + rb"me/[a-z_][a-z0-9_-]*)/"
)
WORK_TAGS = re.compile(r"\((?:E\d+|F|G)\)|\b" + "hel" + r"per [A-Z]\b|\bE\d+'s\b", flags=re.ASCII)


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the tree
        skip = {".git", ".venv", "runs", "build", "demo-out", "__pycache__"}
        return [
            p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_no_machine_paths_or_work_item_tags_in_tracked_files() -> None:
    files = _tracked_files()
    assert len(files) > 50  # the repository, not an empty listing
    paths, tags = [], []
    for path in files:
        data = path.read_bytes()
        rel = path.relative_to(ROOT)
        for m in MACHINE_PATHS.finditer(data):
            paths.append(f"{rel}: {data[m.start() : m.start() + 60]!r}")
        if b"\0" not in data[:8192]:  # text
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if WORK_TAGS.search(line):
                    tags.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not paths, "machine paths in tracked files:\n" + "\n".join(paths)
    assert not tags, "work-item tags in tracked files:\n" + "\n".join(tags)
