"""Render a run's figures as the markdown table that is printed and written to results/."""

from __future__ import annotations

from benchmarks.core import FigureResult

HEADER = (
    "| # | figure | measured | value | baseline (same run) | baseline value | ratio | notes |",
    "|---|---|---|---|---|---|---|---|",
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: list[FigureResult]) -> str:
    """One markdown table with every figure's rows (n/a and errors get one row each)."""
    lines = list(HEADER)
    for res in results:
        if res.status != "ok":
            label = "not available" if res.status == "n/a" else "ERROR"
            lines.append(
                f"| {res.number} | {_cell(res.title)} | {label}: {_cell(res.reason)} | | | | | |"
            )
            continue
        for i, row in enumerate(res.rows):
            num, title = (str(res.number), res.title) if i == 0 else ("", "")
            cells = [
                num,
                title,
                row.measure,
                row.value,
                row.baseline,
                row.baseline_value,
                row.ratio,
                row.note,
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def document(
    results: list[FigureResult],
    machine: dict[str, str],
    *,
    title: str,
    started: str,
    total_s: float,
    mode: str,
    notes: list[str],
    command: str,
    extra: list[str] | None = None,
) -> str:
    """The full results file: header, machine, the table, run notes and per-figure times."""
    out = [f"# {title}", ""]
    out.append(f"- started: {started} (UTC); total wall time {total_s / 60:.1f} min; mode: {mode}")
    out.append(f"- command: `{command}`")
    out.append("")
    out.append("## Machine")
    out.append("")
    for key, value in machine.items():
        out.append(f"- {key}: {value}")
    out.append("")
    out.append("## Figures")
    out.append("")
    out.append(table(results))
    out.append("")
    if notes:
        out.append("## Notes")
        out.append("")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    for section in extra or []:
        out.append(section)
        out.append("")
    out.append("## Time per figure")
    out.append("")
    out.append(", ".join(f"{r.number}. {r.title}: {r.seconds:.0f} s ({r.status})" for r in results))
    out.append("")
    return "\n".join(out)
