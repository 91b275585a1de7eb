"""Run the real gate-controller firmware under qemu-system-avr (tests, `make demo`, benchmarks).

`qemu_controller()` builds `firmware_bridge/firmware/build/firmware.elf` if needed (its
Makefile, avr-gcc), or runs the .elf it is given (`build_test_firmware(profile)`: a TEST
build whose encoder runs a built-in speed profile, for POSITION-mode tests), starts QEMU's
Arduino Uno machine with the firmware's USART on a TCP socket, waits until the socket
accepts, yields the pyserial URL `socket://127.0.0.1:PORT` and always ends QEMU afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
"""The firmware sources and Makefile."""
DEFAULT_ELF = FIRMWARE_DIR / "build" / "firmware.elf"
"""What `make` in FIRMWARE_DIR produces."""
START_TIMEOUT_S = 10.0
"""How long QEMU may take to open its serial socket."""


class QemuError(RuntimeError):
    """QEMU or the firmware build could not be started."""


def tools_available() -> bool:
    """True when avr-gcc, make and qemu-system-avr are on PATH."""
    return all(shutil.which(t) for t in ("avr-gcc", "make", "qemu-system-avr"))


def build_firmware() -> Path:
    """Runs `make` in the firmware directory (incremental) and returns the .elf path."""
    _make()
    return DEFAULT_ELF


def build_test_firmware(profile: int) -> Path:
    """`make TEST_ENCODER=profile` (incremental): the firmware for the emulator whose belt
    encoder follows built-in speed profile 1 (constant 2000 ticks/s) or 2 (slowing by 20%
    and back every 10 s) on its own clock (firmware/test_encoder.h): qemu-system-avr
    cannot drive the encoder pins. Never flashed; returns its .elf path."""
    if profile not in (1, 2):
        raise QemuError(f"TEST_ENCODER profile {profile} does not exist; use 1 or 2")
    _make(f"TEST_ENCODER={profile}")
    return FIRMWARE_DIR / "build" / f"test-encoder{profile}" / "firmware.elf"


def _make(*args: str) -> None:
    proc = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise QemuError(f"firmware build failed in {FIRMWARE_DIR}:\n{proc.stdout}{proc.stderr}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_command(elf: Path, port: int) -> list[str]:
    """The qemu-system-avr command line: Uno machine, USART0 on a TCP server socket."""
    return [
        "qemu-system-avr",
        "-machine",
        "uno",
        "-bios",
        str(elf),
        "-serial",
        f"tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on",
        "-nographic",
        "-monitor",
        "none",
    ]


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise QemuError(f"qemu-system-avr exited with {proc.returncode}: {err.strip()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                time.sleep(0.05)
                continue
            return
    raise QemuError(f"qemu-system-avr did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def qemu_controller(elf: Path | None = None, port: int | None = None) -> Iterator[str]:
    """Runs the firmware under QEMU; yields `socket://127.0.0.1:PORT`; always ends QEMU."""
    elf_path = build_firmware() if elf is None else Path(elf)
    if not elf_path.is_file():
        raise QemuError(f"firmware {elf_path} does not exist; run make -C {FIRMWARE_DIR}")
    tcp_port = free_port() if port is None else port
    cmd = qemu_command(elf_path, tcp_port)
    log.debug("starting %s", " ".join(cmd))
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_listening(proc, tcp_port)
        yield f"socket://127.0.0.1:{tcp_port}"
    finally:
        _stop(proc)


class QemuController:
    """The firmware under QEMU as an object that can be restarted on the same port (a
    controller reset or power cut, for fault-injection runs): `start()`, `restart()`,
    `stop()`; `url` is `socket://127.0.0.1:PORT`."""

    def __init__(self, elf: Path | None = None, port: int | None = None) -> None:
        self.elf = build_firmware() if elf is None else Path(elf)
        if not self.elf.is_file():
            raise QemuError(f"firmware {self.elf} does not exist; run make -C {FIRMWARE_DIR}")
        self.port = free_port() if port is None else port
        self.restarts = 0
        """Restarts so far."""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The pyserial URL of the emulated controller's serial port."""
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> QemuController:
        """Start QEMU and wait until its serial socket listens."""
        cmd = qemu_command(self.elf, self.port)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait_listening(self._proc, self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """End QEMU and start it again: the controller boots with nothing remembered."""
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """End QEMU (if running)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    def __enter__(self) -> QemuController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
