"""The packhouse view: the shipped Prometheus config and alert rules pass promtool (check
config, check rules, the rules' unit tests), the Alertmanager config passes amtool, and the
Grafana dashboard and the rules only use metrics the sorter serves or docs/fleet.md lists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from sorter.monitor.status import Status

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "rules" / "produce-sorter.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "produce-sorter.json"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
FLEET_DOC = REPO / "docs" / "fleet.md"


def _tool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        raise AssertionError(f"{args[0]} not found: run `make sysdeps-test` (apt: prometheus)")
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_promtool_check_config(tmp_path: Path) -> None:
    etc = tmp_path / "prometheus"
    shutil.copytree(PROM, etc)
    (etc / "sorter-token").write_text("a-token\n")  # installed by hand (docs/fleet.md)
    result = _tool("promtool", "check", "config", str(etc / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "14 rules found" in result.stdout


def test_promtool_check_config_refuses_a_broken_config(tmp_path: Path) -> None:
    etc = tmp_path / "prometheus"
    shutil.copytree(PROM, etc)
    (etc / "sorter-token").write_text("a-token\n")
    text = (etc / "prometheus.yml").read_text()
    (etc / "prometheus.yml").write_text(text.replace("honor_labels:", "honour_labels:"))
    result = _tool("promtool", "check", "config", str(etc / "prometheus.yml"))
    assert result.returncode != 0 and "honour_labels" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = _tool("promtool", "test", "rules", "tests/produce-sorter.test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_catches_a_wrong_lane(tmp_path: Path) -> None:
    """The unit tests are not vacuous: expecting the wrong lane fails."""
    shutil.copytree(PROM, tmp_path / "prometheus")
    test = tmp_path / "prometheus" / "tests" / "produce-sorter.test.yml"
    test.write_text(test.read_text().replace('{severity: critical, lane: "2"}', '{lane: "1"}', 1))
    result = _tool(
        "promtool", "test", "rules", "tests/produce-sorter.test.yml", cwd=test.parents[1]
    )
    assert result.returncode != 0 and "SorterControllerLost" in result.stdout + result.stderr


def test_amtool_check_config() -> None:
    result = _tool("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout


# --------------------------------------------------------------------------------------
# Metric names


def served_metrics() -> set[str]:
    """Every series name a sorter's /metrics serves (with a lane set)."""
    st = Status(url="sim://", lane="1")
    st.frame_in()
    st.decided({"item": 1, "bin": "M", "label": "M"}, 0.01)
    st.fate(1, "fired")
    text = generate_latest(st.registry).decode()
    names = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and ln[0] != "#"}
    return {n for n in names if not n.endswith("_created")}


def documented_metrics() -> set[str]:
    """The sorter_* names in docs/fleet.md's metric table (the shared list)."""
    rows = [ln for ln in FLEET_DOC.read_text().splitlines() if ln.startswith("| `sorter_")]
    return {m for ln in rows for m in re.findall(r"`(sorter_[a-z0-9_]+)`", ln.split("|")[1])}


def recorded_names() -> set[str]:
    return set(re.findall(r"(?m)^\s*- record: (\S+)$", RULES.read_text()))


def _names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers and strings removed)."""
    bare = re.sub(r'"[^"]*"', "", re.sub(r"\{[^}]*\}", "", expr))
    return set(re.findall(r"\b(sorter_[a-z0-9_]+|lane:[a-z0-9_:]+|up)\b", bare))


def _known() -> set[str]:
    documented = documented_metrics()
    families = set()
    for name in documented:  # a histogram's table row names the family
        families |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return served_metrics() | families | recorded_names() | {"up"}


def test_every_served_metric_is_in_the_shared_list() -> None:
    documented = documented_metrics()
    served = {re.sub(r"_(bucket|sum|count)$", "", n) for n in served_metrics()}
    assert served <= documented, f"add to docs/fleet.md's metric table: {served - documented}"


def rule_exprs(text: str) -> list[str]:
    """The `expr:` of every rule in a rule file (inline or a `|` block)."""
    exprs: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if not m:
            continue
        if m.group(2).strip() != "|":
            exprs.append(m.group(2))
            continue
        indent, block = len(m.group(1)), []
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt.strip())
        exprs.append(" ".join(block))
    return exprs


def test_rules_use_only_known_metrics() -> None:
    exprs = rule_exprs(RULES.read_text())
    assert len(exprs) == 14
    used = set().union(*(_names_in(e) for e in exprs))
    assert "sorter_link_up" in used and "sorter_decision_log_errors_total" in used
    assert used <= _known(), f"unknown metrics in the rules: {used - _known()}"


def test_grafana_dashboard_is_json_and_uses_known_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10 and all(exprs)
    used = set().union(*(_names_in(e) for e in exprs))
    assert used <= _known(), f"unknown metrics in the dashboard: {used - _known()}"
    assert {"sorter_link_up", "sorter_items_total", "lane:sorter_reject_ratio:rate10m"} <= used
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "lane"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
