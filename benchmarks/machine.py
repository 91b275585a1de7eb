"""Which machine the figures came from: CPU, cores, memory, OS, Python and package versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from importlib import metadata

PACKAGES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "ai-edge-litert",
    "tflite-runtime",
    "numpy",
    "opencv-python-headless",
    "pyserial",
    "produce-sorter",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.machine()


def memory_gib() -> float:
    """Total RAM in GiB from /proc/meminfo (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 0.0


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release, else platform.platform()."""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def tool_version(cmd: list[str]) -> str:
    """First line of `cmd`'s output, or "absent"."""
    if shutil.which(cmd[0]) is None:
        return "absent"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the figures."""
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_slug() -> str:
    """A file-name-safe machine name for results files: hostname + CPU family."""
    host = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-").lower() or "host"
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu_model()).strip("-").lower()
    return f"{host}-{cpu}"[:60].rstrip("-")


def describe() -> dict[str, str]:
    """Everything the results file states about the machine."""
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "memory": f"{memory_gib():.1f} GiB",
        "os": os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "qemu-system-avr": tool_version(["qemu-system-avr", "--version"]),
        "avr-gcc": tool_version(["avr-gcc", "--version"]),
    }
    for name, version in package_versions().items():
        info[name] = version
    return info
