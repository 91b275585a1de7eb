"""The documentation holds together: every relative link and #anchor resolves.

README.md is the front door (at most 250 lines, the two commands in it); the rest lives in
docs/ by reader. A link to a file must name a file or folder of the repository; a link
with `#anchor` must match a heading of the target file by GitHub's slug rule (lower case,
punctuation dropped, spaces to hyphens, `-1`, `-2`... for repeated headings).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DOCS = sorted(
    {
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        ROOT / "benchmarks" / "README.md",
        ROOT / "deploy" / "README.md",
        *ROOT.glob("models/*.md"),
        ROOT / "demo" / "README.md",
        *ROOT.glob("firmware_bridge/*.md"),
        *ROOT.glob("firmware_bridge/firmware/*.md"),
    }
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), the target up to a space (an optional "title" follows)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("*", "")  # emphasis markers
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w: letters, digits and _ (unicode aware)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link in the file's prose, inline code left out."""
    out = []
    for n, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            out.append((n, target))
    return out


def test_slug_follows_githubs_rule() -> None:
    assert slug("Training: `sorter-train`") == "training-sorter-train"
    assert slug("The dashboard and /metrics") == "the-dashboard-and-metrics"
    assert slug("Choosing the network (measured)") == "choosing-the-network-measured"
    assert slug("firmware_bridge") == "firmware_bridge"
    assert slug("1. The operating system") == "1-the-operating-system"
    assert slug("Classifying: `sorter classify`, `sorter bench`") == (
        "classifying-sorter-classify-sorter-bench"
    )


def test_the_checked_files_exist() -> None:
    missing = [str(p.relative_to(ROOT)) for p in DOCS if not p.is_file()]
    assert not missing, f"documentation files missing: {missing}"
    assert len(DOCS) >= 10


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    bad = []
    for line, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, file:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            bad.append(f"{where}: points outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix != ".md":
            bad.append(f"{where}: an anchor into a file that is not markdown")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= 250, f"README.md has {n} lines; move detail into docs/ (limit 250)"
    assert "make demo" in text
    assert "make test" in text
    assert "CC BY 4.0" in text and "Workpiles" in text, "the CUCUMBER-9 attribution"
    targets = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    by_reader = {
        "docs/training.md",
        "docs/sorting.md",
        "docs/controller.md",
        "docs/farm.md",
        "docs/fleet.md",
        "benchmarks/README.md",
    }
    assert by_reader <= targets, f"the front door links every reader's doc: {by_reader - targets}"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Sub `x`\n\n[ok](#sub-x) [bad](#nope) [gone](b.md)\n"
        "```\n[in code](missing.md)\n```\n`[inline](missing.md)`\n",
        encoding="utf-8",
    )
    found = links(tmp_path / "a.md")
    assert [t for _, t in found] == ["#sub-x", "#nope", "b.md"]
    assert anchors(tmp_path / "a.md") == {"title", "sub-x"}
