"""`sim://` as a pyserial URL handler: `serial.serial_for_url` opens the simulator like any
other port, with its options, on the clock of the block it is opened in."""

from __future__ import annotations

import pytest
import serial

import firmware_bridge  # noqa: F401  (registers the URL handlers)
from firmware_bridge import protocol as p
from firmware_bridge.clock import MonotonicClock, VirtualClock, ports_follow
from firmware_bridge.framing import Deframer
from firmware_bridge.link import ControllerLink
from firmware_bridge.urlhandler import PACKAGE, protocol_sim


def _ask(port: serial.SerialBase, msg: p.Message, seq: int) -> list[p.Message]:
    port.write(p.encode(msg, seq))
    deframer = Deframer()
    got: list[p.Message] = []
    for _ in range(40):
        for frame in deframer.feed(port.read(256)):
            got.append(p.decode(frame, sender="controller"))
        if any(not isinstance(m, p.Status) for m in got):
            break
    return got


def test_serial_for_url_opens_the_simulator_with_its_options() -> None:
    assert PACKAGE in serial.protocol_handler_packages
    port = serial.serial_for_url("sim://?gates=5&encoder=1", baudrate=115200, timeout=0.05)
    try:
        assert isinstance(port, protocol_sim.Serial) and port.is_open
        info = [m for m in _ask(port, p.Hello(), 1) if isinstance(m, p.HelloInfo)]
        assert info and info[0].n_gates == 5 and info[0].flags & p.FLAG_ENCODER
        assert port.controller.options.gates == 5
    finally:
        port.close()
    assert not port.is_open
    with pytest.raises(serial.PortNotOpenError):
        port.write(b"\x00")


def test_a_bad_simulator_option_is_a_serial_error_naming_it() -> None:
    with pytest.raises(serial.SerialException, match="unknown simulator option 'gatez'"):
        serial.serial_for_url("sim://?gatez=3")
    with pytest.raises(serial.SerialException, match=r"gates=40 must be 1\.\.27"):
        serial.serial_for_url("sim://?gates=40")


def test_the_port_keeps_time_on_the_clock_it_was_opened_under() -> None:
    vclock = VirtualClock(50.0)
    with ports_follow(vclock):
        port = serial.serial_for_url("sim://?time0=1000", timeout=0)
    outside = serial.serial_for_url("sim://", timeout=0)
    try:
        assert port.clock is vclock
        assert isinstance(outside.clock, MonotonicClock)
        before = port.sim.now_us()
        vclock.advance(0.25)
        assert port.sim.now_us() - before == 250_000  # moves only with the virtual clock
    finally:
        port.close()
        outside.close()


def test_the_link_opens_sim_urls_through_pyserial(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = serial.serial_for_url

    def spy(url: str, *args: object, **kwargs: object) -> serial.SerialBase:
        opened.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(serial, "serial_for_url", spy)
    vclock = VirtualClock(10.0)
    with ControllerLink("sim://?gates=3", clock=vclock) as link:
        assert opened == ["sim://?gates=3"]
        assert link.info is not None and link.info.n_gates == 3
        target = vclock.now() + 0.5
        cmd = link.sort(1, 2, target)
        vclock.advance(1.0)
        assert cmd.wait(2) == "fired"
        assert cmd.fired_at == pytest.approx(target, abs=1e-5)  # on the link's virtual clock
        assert [r.gate for r in link._port.controller.fire_log] == [2]
