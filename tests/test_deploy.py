"""deploy/: install.sh (dry run, shellcheck), the unit (systemd-analyze verify), the udev rule."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"
UNIT = DEPLOY / "produce-sorter.service"
RULES = DEPLOY / "99-sorter-controller.rules"

# A stand-in for helper E2's generated example config, used only when the checkout does not
# have deploy/sorter.example.toml yet.
_EXAMPLE_STAND_IN = '[dashboard]\nenabled = false\nhost = "127.0.0.1"\nport = 8080\ntoken = ""\n'


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A copy of deploy/ (plus a model) laid out like a checkout, so --source can point at it."""
    src = tmp_path / "src"
    shutil.copytree(DEPLOY, src / "deploy")
    example = src / "deploy" / "sorter.example.toml"
    if not example.exists():
        example.write_text(_EXAMPLE_STAND_IN)
    (src / "models").mkdir()
    (src / "models" / "cucumber9.tflite").write_bytes(b"TFL3 stand-in model")
    return src


def _dry_run(
    source: Path, prefix: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(source / "deploy" / "install.sh"),
            "--dry-run",
            "--source",
            str(source),
            "--prefix",
            str(prefix),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(INSTALL)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_script_is_strict_bash() -> None:
    text = INSTALL.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(INSTALL, os.X_OK)


def test_dry_run_prints_the_whole_plan_and_changes_nothing(
    source_tree: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "opt" / "produce-sorter"
    before = _snapshot(tmp_path)
    result = _dry_run(source_tree, prefix)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # venv visible to Raspberry Pi OS's picamera2, project installed without TensorFlow
    assert f"python3 -m venv --system-site-packages {prefix}/venv" in out
    assert f"{prefix}/venv/bin/pip install --quiet --upgrade {source_tree}\n" in out
    assert "[train]" not in out and "tensorflow" not in out.lower()
    # system user in the camera and serial groups
    assert "usermod -a -G video\\,dialout sorter" in out
    # the model copied into place, the config generated from the example with a token
    assert f"install -m 0644 {source_tree}/models/cucumber9.tflite {prefix}/models/" in out
    config_lines = [ln for ln in out.splitlines() if ln.startswith("  | ")]
    token_lines = [ln for ln in config_lines if re.search(r'token\s*=\s*"[0-9a-f]{48}"', ln)]
    assert len(token_lines) == 1, config_lines
    # unit and udev rule installed, enabled
    assert "/etc/systemd/system/produce-sorter.service" in out
    assert "/etc/udev/rules.d/99-sorter-controller.rules" in out
    assert "+ systemctl enable produce-sorter.service" in out
    assert "+ udevadm control --reload-rules" in out
    assert "dry run complete: nothing was changed" in out
    # nothing was created or modified
    assert not prefix.exists()
    assert _snapshot(tmp_path) == before


def test_dry_run_is_stable_when_run_twice(source_tree: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    first = _dry_run(source_tree, prefix)
    second = _dry_run(source_tree, prefix)
    strip_token = re.compile(r'token\s*=\s*"[0-9a-f]+"')
    assert strip_token.sub("token", first.stdout) == strip_token.sub("token", second.stdout)


@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
def test_refuses_a_32_bit_os_with_a_clear_message(
    source_tree: Path, tmp_path: Path, machine: str
) -> None:
    result = _dry_run(source_tree, tmp_path / "p", env={"SORTER_INSTALL_MACHINE": machine})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: 32-bit OS detected ({machine})")
    assert "64-bit" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_options_and_missing_model_are_one_line_errors(
    source_tree: Path, tmp_path: Path
) -> None:
    bad = _dry_run(source_tree, tmp_path / "p", "--frobnicate")
    assert bad.returncode == 2
    assert "unknown option '--frobnicate'" in bad.stderr
    missing = _dry_run(source_tree, tmp_path / "p", "--model", str(tmp_path / "nope.tflite"))
    assert missing.returncode == 2
    assert "nope.tflite: no such file" in missing.stderr


def test_real_install_refuses_without_root() -> None:
    cmd = ["bash", str(INSTALL), "--no-apt"]
    if os.geteuid() == 0:  # drop to nobody to see what a non-root user gets
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "must run as root" in result.stderr
    assert "--dry-run" in result.stderr


def test_systemd_unit_verifies_without_warnings(tmp_path: Path) -> None:
    # verify needs ExecStart's binary to exist: a copy pointing at /bin/true.
    text = UNIT.read_text()
    assert "ExecStart=/opt/produce-sorter/venv/bin/sorter run" in text
    unit = tmp_path / "produce-sorter.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "produce-sorter.service" not in result.stderr, result.stderr


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_watchdog_restart_journald_and_hardening_that_allows_camera_and_serial() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["StandardOutput"] == ["journal"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert "/var/lib/produce-sorter" in s["ReadWritePaths"][0]
    assert s["SupplementaryGroups"] == ["video dialout"]
    assert s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert {"char-video4linux", "char-media", "char-dma_heap", "char-ttyACM", "char-ttyUSB"} <= (
        allowed
    )
    assert "PrivateDevices" not in s  # it would hide the camera and the serial port


_RULE_TOKEN = re.compile(r'^\s*([A-Z_]+(?:\{[A-Za-z_]+\})?)\s*(==|!=|\+=|=|:=)\s*"([^"]*)"\s*$')


def test_udev_rule_names_the_controller_by_vendor_and_product() -> None:
    rules = [ln for ln in RULES.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    ids = set()
    for rule in rules:
        fields = {}
        for token in rule.split(","):
            match = _RULE_TOKEN.match(token)
            assert match, f"bad udev token {token!r} in {rule!r}"
            fields[match.group(1)] = (match.group(2), match.group(3))
        assert fields["SUBSYSTEM"] == ("==", "tty")
        assert fields["SYMLINK"] == ("+=", "sorter-controller")
        assert fields["GROUP"] == ("=", "dialout")
        ids.add((fields["ATTRS{idVendor}"][1], fields["ATTRS{idProduct}"][1]))
    assert ids == {("2341", "0043"), ("1a86", "7523")}
    doc = RULES.read_text()
    assert "udevadm info -a -n /dev/ttyACM0" in doc and "lsusb" in doc
