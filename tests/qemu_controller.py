"""The QEMU harness for tests: the real one lives in firmware_bridge.emulator."""

from firmware_bridge.emulator import (
    DEFAULT_ELF,
    FIRMWARE_DIR,
    QemuError,
    build_firmware,
    free_port,
    qemu_command,
    qemu_controller,
    tools_available,
)

__all__ = [
    "DEFAULT_ELF",
    "FIRMWARE_DIR",
    "QemuError",
    "build_firmware",
    "free_port",
    "qemu_command",
    "qemu_controller",
    "tools_available",
]
