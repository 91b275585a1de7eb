"""ControllerLink against the simulator: handshake, fates, retries, QUERY, reconnect, errors.

Timing is asserted exactly only on a VirtualClock (deterministic); real-clock tests check
outcomes, never durations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from firmware_bridge import protocol as p
from firmware_bridge.clock import Clock, VirtualClock
from firmware_bridge.command import Command
from firmware_bridge.errors import LinkError
from firmware_bridge.framing import Deframer
from firmware_bridge.link import ControllerLink
from firmware_bridge.simulator import SimulatorPort, SimulatorServer


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `cond` until true or `timeout` (a bound on waiting, not an assertion of speed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class FilterPort:
    """A SimulatorPort with frames dropped on the way in (`drop_in`) or out (`drop_out`)."""

    def __init__(
        self,
        sim_port: SimulatorPort,
        drop_in: Callable[[p.Message, int], bool] = lambda m, seq: False,
        drop_out: Callable[[p.Message], bool] = lambda m: False,
    ) -> None:
        self.sim_port = sim_port
        self.drop_in = drop_in
        self.drop_out = drop_out
        self._in = Deframer()
        self._out = Deframer()
        self.dropped_in: list[p.Message] = []
        self.dropped_out: list[p.Message] = []
        self._inject = bytearray()
        self._inject_lock = threading.Lock()

    def inject(self, msg: p.Message, seq: int) -> None:
        """Deliver a controller message to the host with the next read (a late frame)."""
        with self._inject_lock:
            self._inject += p.encode(msg, seq)

    @property
    def clock(self) -> Clock:
        """The simulator's clock (the link heartbeats on it when it is virtual)."""
        return self.sim_port.clock

    @property
    def in_waiting(self) -> int:
        return self.sim_port.in_waiting

    def write(self, data: bytes) -> int:
        for frame in self._in.feed(data):
            msg = p.decode(frame)
            if self.drop_in(msg, frame.seq):
                self.dropped_in.append(msg)
                continue
            self.sim_port.write(p.encode(msg, frame.seq))
        return len(data)

    def read(self, size: int = 1) -> bytes:
        with self._inject_lock:
            out, self._inject = self._inject, bytearray()
        for frame in self._out.feed(self.sim_port.read(size)):
            msg = p.decode(frame)
            if self.drop_out(msg):
                self.dropped_out.append(msg)
                continue
            out += p.encode(msg, frame.seq)
        return bytes(out)

    def close(self) -> None:
        self.sim_port.close()


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock(1000.0)


@pytest.fixture
def vlink(vclock: VirtualClock) -> Iterator[ControllerLink]:
    with ControllerLink("sim://?gates=4", clock=vclock, heartbeat_s=0.2) as link:
        yield link


def sim_of(link: ControllerLink) -> Any:
    port = link._port
    return getattr(port, "sim_port", port).controller


def test_handshake_on_the_simulator(vlink: ControllerLink) -> None:
    assert vlink.state == "connected"
    assert vlink.info is not None and vlink.info.n_gates == 4 and vlink.info.proto == 1
    assert vlink.sync.synced and vlink.sync.best_delay == 0.0
    ctrl = sim_of(vlink)
    assert ctrl.state.configured and ctrl.state.heartbeat_ms == 200


def test_virtual_replay_fires_every_gate_at_its_exact_time(
    vlink: ControllerLink, vclock: VirtualClock
) -> None:
    base = vclock.now()
    cmds = [vlink.sort(i, i % 4, base + 0.3 + 0.037 * i, 0.002) for i in range(12)]
    vclock.advance(5.0)  # one jump far beyond every target and the heartbeat timeout
    for cmd in cmds:
        assert cmd.wait(5) == "fired"
        assert cmd.fired_at == pytest.approx(cmd.fire_at, abs=1e-6)
    fired = [r.time for r in sim_of(vlink).fire_log]
    assert fired == sorted(fired) and len(fired) == 12
    assert not vlink.in_safe_state  # heartbeats went out at their virtual times


def test_long_fast_replay_never_trips_the_heartbeat(
    vlink: ControllerLink, vclock: VirtualClock
) -> None:
    for step in range(200):
        vclock.advance(0.5 if step % 10 else 3.0)
    assert not sim_of(vlink).state.safe
    assert vlink.stats.frames_sent > 200 * 0.5 / 0.05


def test_silent_host_trips_safe_state_drops_sorts_then_auto_resumes(
    vlink: ControllerLink, vclock: VirtualClock
) -> None:
    events: list[p.Message] = []
    vlink.on_event(events.append)
    cmd = vlink.sort(1, 0, vclock.now() + 1.0)
    assert wait_for(lambda: cmd.acked)
    with vlink.heartbeat_paused():
        vclock.advance(0.25)
    assert cmd.wait(5) == "cancelled" and "HEARTBEAT" in cmd.detail
    assert wait_for(lambda: any(isinstance(e, p.SafeState) and e.entered for e in events))
    assert wait_for(lambda: not sim_of(vlink).state.safe)  # the link RESUMEd by itself
    again = vlink.sort(2, 0, vclock.now() + 0.1)
    vclock.advance(0.2)
    assert again.wait(5) == "fired"


def test_safe_and_resume(vlink: ControllerLink, vclock: VirtualClock) -> None:
    pending = vlink.sort(1, 0, vclock.now() + 1.0)
    assert vlink.safe().wait(5) == "acked"
    assert pending.wait(5) == "cancelled"
    assert wait_for(lambda: vlink.in_safe_state)
    refused = vlink.sort(2, 0, vclock.now() + 1.0)
    assert refused.wait(5) == "nak" and refused.nak_reason == p.NakReason.SAFE_STATE
    vclock.advance(1.0)
    assert sim_of(vlink).state.safe  # no auto-resume after the host's own SAFE
    assert vlink.resume().wait(5) == "acked"
    assert wait_for(lambda: not vlink.in_safe_state)


def test_cancel_late_and_nak(vlink: ControllerLink, vclock: VirtualClock) -> None:
    keep = vlink.sort(1, 1, vclock.now() + 0.5)
    drop = vlink.sort(2, 1, vclock.now() + 0.5)
    assert vlink.cancel(2).wait(5) == "acked"
    assert drop.wait(5) == "cancelled"
    late = vlink.sort(3, 1, vclock.now() - 0.5, window_s=0.01)
    assert late.wait(5) == "late"
    bad = vlink.sort(4, 9, vclock.now() + 0.5)
    assert bad.wait(5) == "nak" and bad.nak_reason == p.NakReason.BAD_GATE
    assert vlink.cancel(42).wait(5) == "nak"
    vclock.advance(1.0)
    assert keep.wait(5) == "fired"
    assert [r.item for r in sim_of(vlink).fire_log] == [1]


def test_done_callbacks_and_events(vlink: ControllerLink, vclock: VirtualClock) -> None:
    seen: list[str] = []
    events: list[str] = []
    vlink.on_event(lambda m: events.append(m.TYPE.name))
    cmd = vlink.sort(5, 0, vclock.now() + 0.1)
    cmd.add_done_callback(lambda c: seen.append(c.status))
    vclock.advance(1.5)
    assert cmd.wait(5) == "fired"
    assert wait_for(lambda: seen == ["fired"] and "FIRED" in events and "STATUS" in events)
    late_seen: list[str] = []
    cmd.add_done_callback(lambda c: late_seen.append(c.status))  # already done: at once
    assert late_seen == ["fired"]


def test_lost_sort_frames_are_retried_with_the_same_seq_and_run_once(vclock: VirtualClock) -> None:
    counts: dict[int, int] = {}

    def drop_first_two(msg: p.Message, seq: int) -> bool:
        if not isinstance(msg, p.Sort):
            return False
        counts[seq] = counts.get(seq, 0) + 1
        return counts[seq] <= 2

    holder: dict[str, FilterPort] = {}

    def factory() -> FilterPort:
        holder["port"] = FilterPort(SimulatorPort("sim://?gates=2", vclock), drop_in=drop_first_two)
        return holder["port"]

    with ControllerLink("sim://", clock=vclock, ack_timeout_s=0.05, port_factory=factory) as link:
        cmd = link.sort(1, 0, vclock.now() + 1.0)
        assert wait_for(lambda: cmd.acked)
        assert cmd.attempts == 3 and link.stats.retries >= 2
        assert list(counts.values()) == [3]  # one seq, sent three times
        vclock.advance(2.0)
        assert cmd.wait(5) == "fired"
        assert [r.item for r in holder["port"].sim_port.controller.fire_log] == [1]


def test_lost_acks_are_answered_again_not_executed_again(vclock: VirtualClock) -> None:
    dropped = {"n": 0}

    def drop_acks(msg: p.Message) -> bool:
        if isinstance(msg, p.Ack) and msg.acked_type == p.MsgType.SORT and dropped["n"] < 2:
            dropped["n"] += 1
            return True
        return False

    port = FilterPort(SimulatorPort("sim://?gates=2", vclock), drop_out=drop_acks)
    link = ControllerLink("sim://", clock=vclock, ack_timeout_s=0.05, port_factory=lambda: port)
    with link:
        cmd = link.sort(1, 0, vclock.now() + 1.0)
        assert wait_for(lambda: cmd.acked)
        vclock.advance(2.0)
        assert cmd.wait(5) == "fired"
        executed = [s for t, s in port.sim_port.controller.executed if t == p.MsgType.SORT]
        assert executed == [cmd.seq] and dropped["n"] == 2


def test_lost_fired_event_is_recovered_by_query(vclock: VirtualClock) -> None:
    port = FilterPort(
        SimulatorPort("sim://?gates=2", vclock), drop_out=lambda m: isinstance(m, p.Fired)
    )
    with ControllerLink(
        "sim://", clock=vclock, fate_margin_s=0.05, port_factory=lambda: port
    ) as link:
        cmd = link.sort(1, 1, vclock.now() + 0.2)
        vclock.advance(0.5)
        assert cmd.wait(5) == "fired"
        assert "QUERY" in cmd.detail and link.stats.queries >= 1
        assert cmd.fired_at == pytest.approx(cmd.fire_at, abs=1e-6)
        assert len(port.dropped_out) == 1


def test_sort_without_any_answer_times_out(vclock: VirtualClock) -> None:
    mute = {"on": False}
    port = FilterPort(SimulatorPort("sim://?gates=2", vclock), drop_in=lambda m, s: mute["on"])
    with ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.03, retries=2, port_factory=lambda: port
    ) as link:
        mute["on"] = True
        cmd = link.sort(1, 1, vclock.now() + 5.0)
        assert cmd.wait(10) == "timeout"  # no ACK, and QUERY unanswered twice
        assert "QUERY" in cmd.detail and cmd.attempts == 3
        vclock.advance(10.0)
        assert not port.sim_port.controller.fire_log


def test_real_clock_sorts_fire(tmp_path: Any) -> None:
    with ControllerLink("sim://?gates=3") as link:
        now = link.clock.now()
        cmds = [link.sort(i, i % 3, now + 0.05 + 0.01 * i, window_s=0.05) for i in range(5)]
        assert [c.wait(5) for c in cmds] == ["fired"] * 5
        assert all(c.fired_at is not None for c in cmds)


def test_reconnects_and_resolves_in_flight_commands() -> None:
    with (
        SimulatorServer("sim://?gates=3") as server,
        ControllerLink(server.url, ack_timeout_s=0.1) as link,
    ):
        now = link.clock.now()
        before = link.sort(1, 0, now + 0.6, window_s=0.05)
        assert wait_for(lambda: before.acked)
        server.disconnect()
        assert wait_for(lambda: link.state != "connected" or link.stats.reconnects == 1)
        during = link.sort(2, 1, link.clock.now() + 0.8, window_s=0.05)
        assert wait_for(lambda: link.state == "connected")
        assert before.wait(5) == "fired" and during.wait(5) == "fired"
        assert link.stats.reconnects == 1 and server.connections == 2
        items = sorted(r.item for r in server.controller.fire_log)
        assert items == [1, 2]


def test_controller_reset_while_away_means_timeout() -> None:
    with (
        SimulatorServer("sim://?gates=3", reset_on_connect=True) as server,
        ControllerLink(server.url, ack_timeout_s=0.1) as link,
    ):
        cmd = link.sort(1, 0, link.clock.now() + 0.5, window_s=0.05)
        assert wait_for(lambda: cmd.acked)
        server.disconnect()
        assert cmd.wait(5) == "timeout"
        assert "does not know" in cmd.detail
        assert link.state == "connected"


def test_close_ends_every_thread_and_pending_command() -> None:
    before = set(threading.enumerate())
    link = ControllerLink("sim://?gates=2").start()
    cmd = link.sort(1, 0, link.clock.now() + 60)
    link.close()
    assert cmd.status == "timeout" and link.state == "closed"
    assert wait_for(lambda: set(threading.enumerate()) <= before)
    with pytest.raises(LinkError, match="closed"):
        link.sort(2, 0, link.clock.now() + 1)


def test_missing_device_is_a_one_line_error_naming_it() -> None:
    with pytest.raises(LinkError) as err:
        ControllerLink("/dev/ttyDOES-NOT-EXIST").start()
    text = str(err.value)
    assert "/dev/ttyDOES-NOT-EXIST" in text and "check" in text and "\n" not in text


def test_nobody_listening_on_socket_is_an_error() -> None:
    with SimulatorServer() as server:
        url = server.url
    with pytest.raises(LinkError, match=url.replace("socket://", "")):
        ControllerLink(url).start()


def test_silent_port_gives_a_hello_timeout() -> None:
    link = ControllerLink("loop://", open_timeout_s=0.3)
    with pytest.raises(LinkError, match=r"no answer to HELLO within 0\.3 s"):
        link.start()
    assert link.state == "closed"


def test_loop_without_handshake_ignores_its_own_echo() -> None:
    with ControllerLink("loop://", handshake=False, reconnect=False) as link:
        link.send(p.Heartbeat())
        link.send_raw(b"\x01\x02\x00")
        assert wait_for(lambda: link.stats.bad_messages >= 1)
        assert link._deframer.frame_errors >= 1


def test_bad_simulator_option_is_reported() -> None:
    with pytest.raises(LinkError, match="unknown simulator option"):
        ControllerLink("sim://?gatez=3").start()


def test_virtual_clock_wakes_in_order_and_never_goes_back() -> None:
    clock = VirtualClock(0.0)
    seen: list[float] = []
    wakes = [0.5, 0.2, 0.9]
    unsubscribe = clock.subscribe(
        seen.append, lambda: min((w for w in wakes if w > clock.now()), default=None)
    )
    clock.advance(1.0)
    assert seen == [0.2, 0.5, 0.9, 1.0]
    with pytest.raises(ValueError):
        clock.set(0.5)
    unsubscribe()
    clock.advance(1.0)
    assert seen[-1] == 1.0


# ------------------------------------------------------------------ bench tools and CLIs
def test_bench_ping_fire_and_monitor_on_the_simulator() -> None:
    from firmware_bridge import bench

    result = bench.ping("sim://?gates=5&encoder=1", count=3)
    assert result.info.n_gates == 5 and result.samples == 3
    text = "\n".join(result.lines())
    assert "gates 5" in text and "encoder" in text
    fired = bench.fire("sim://?gates=5", 4, pulse_ms=20)
    assert (fired.status, fired.gate) == ("fired", 4)
    with pytest.raises(LinkError, match=r"gate 5 does not exist; .* gates 0\.\.4"):
        bench.fire("sim://?gates=5", 5)
    lines: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=bench.monitor, args=("sim://", lines.append, stop))
    worker.start()
    try:
        assert wait_for(lambda: any("STATUS" in line for line in lines))
        assert any(line.startswith("connected to sim://") for line in lines)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive()


def test_sorter_controller_commands() -> None:
    from typer.testing import CliRunner

    from sorter.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["controller", "ping", "sim://?gates=3", "--count", "2"])
    assert ok.exit_code == 0 and "gates 3" in ok.output
    fire = runner.invoke(app, ["controller", "fire", "sim://", "2"])
    assert fire.exit_code == 0 and "gate 2: fired" in fire.output
    bad = runner.invoke(app, ["controller", "ping", "/dev/ttyNO-SUCH-PORT"])
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: /dev/ttyNO-SUCH-PORT: cannot open")


def test_python_m_firmware_bridge(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_bridge.__main__ import main

    assert main(["ping", "sim://?gates=2", "--count", "1"]) == 0
    assert "gates 2" in capsys.readouterr().out
    assert main(["fire", "sim://", "1"]) == 0
    assert main(["ping", "socket://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: socket://127.0.0.1:1: cannot open the port")


def _pty_controller(master: int, stop: threading.Event) -> None:
    """Bridge a pty master to a SimulatorPort: a 'device' at the slave's path."""
    import os
    import select

    sim = SimulatorPort("sim://?gates=2")
    try:
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.01)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    return
                sim.write(data)
            out = sim.read(4096) if sim.in_waiting else b""
            if out:
                os.write(master, out)
    finally:
        sim.close()


def test_a_device_path_works_like_any_other_port() -> None:
    import os
    import tty

    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    stop = threading.Event()
    worker = threading.Thread(target=_pty_controller, args=(master, stop))
    worker.start()
    try:
        with ControllerLink(path, reconnect=False) as link:
            assert link.info is not None and link.info.n_gates == 2
            assert link.sort(1, 1).wait(5) == "fired"
    finally:
        stop.set()
        worker.join(timeout=5)
        os.close(master)
        os.close(slave)


def test_a_device_nobody_reads_does_not_hang_the_link() -> None:
    import os

    master, slave = os.openpty()
    try:
        link = ControllerLink(os.ttyname(slave), open_timeout_s=0.5, reconnect=False)
        with pytest.raises(LinkError, match="no answer to HELLO"):
            link.start()
        assert link.state == "closed"
    finally:
        os.close(master)
        os.close(slave)


def test_a_sort_is_not_resent_once_the_duplicate_window_has_moved_on(
    vclock: VirtualClock,
) -> None:
    """16 newer SORTs push a SORT's seq out of the controller's window: resending it
    would run it twice, so the link asks with QUERY instead."""
    first_sort_ack: list[int] = []

    def drop_first_sort_ack(m: p.Message) -> bool:
        if not (isinstance(m, p.Ack) and m.acked_type == p.MsgType.SORT):
            return False
        if not first_sort_ack:
            first_sort_ack.append(m.acked_seq)
        return m.acked_seq == first_sort_ack[0]

    port = FilterPort(SimulatorPort("sim://?gates=4", vclock), drop_out=drop_first_sort_ack)
    with ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.5, port_factory=lambda: port
    ) as link:
        start = vclock.now()
        lonely = link.sort(1, 0, start + 1.0)
        others = [link.sort(100 + k, k % 4, start + 1.0 + 0.01 * (k + 1)) for k in range(16)]
        assert wait_for(lambda: all(o.acked for o in others))
        assert wait_for(lambda: lonely.acked, timeout=10)  # learnt from QUERY: PENDING
        assert lonely.attempts == 1 and link.stats.queries >= 1
        vclock.advance(2.0)
        assert lonely.wait(5) == "fired"
        executed = [s for t, s in port.sim_port.controller.executed if t == p.MsgType.SORT]
        assert executed.count(lonely.seq) == 1


def test_a_controller_reset_on_the_same_port_is_noticed_and_resynced() -> None:
    from firmware_bridge.simulator import SimController, SimOptions

    with ControllerLink("sim://?gates=3", ack_timeout_s=0.1) as link:
        cmd = link.sort(1, 0, link.clock.now() + 30.0)
        assert wait_for(lambda: cmd.acked)
        port = link._port.sim
        with port._lock:  # power glitch: a fresh controller, same port, nothing configured
            port.controller = SimController(SimOptions(gates=3), port.now_us())
            port._tick(port.now_us())  # its boot STATUS: configured flag clear
        assert cmd.wait(5) == "timeout" and "does not know" in cmd.detail
        assert wait_for(lambda: link.state == "connected" and link.stats.reconnects == 1)
        assert port.controller.state.configured
        assert link.sort(2, 1).wait(5) == "fired"


def test_position_mode_through_the_link() -> None:
    with ControllerLink("sim://?gates=2&encoder=1&ticks_per_s=2000") as link:
        assert link.info is not None and link.info.flags & p.FLAG_ENCODER
        fired: list[p.Fired] = []
        link.on_event(lambda m: fired.append(m) if isinstance(m, p.Fired) else None)
        cmd = link.sort(1, 1, position=200, window_ticks=50)
        assert cmd.wait(5) == "fired"
        assert wait_for(lambda: len(fired) == 1)
        assert 200 <= fired[0].position <= 250 and fired[0].item == 1
        assert link.query(1).fate == p.Fate.FIRED


def test_a_timeout_can_be_corrected_once_to_fired_or_late() -> None:
    cmd = Command(p.Sort(1, 0, p.SortMode.NOW, 0, 0), seq=1)
    seen: list[tuple[str, bool]] = []
    cmd.add_done_callback(lambda c: seen.append((c.status, c.corrected)))
    assert not cmd._correct("fired", 1.0, "too early")  # not ended yet
    assert cmd._finish("timeout", 1.0, "no answer")
    assert cmd._correct("fired", 2.0, "FIRED event")
    assert not cmd._correct("late", 3.0, "again")  # only once
    assert (cmd.status, cmd.corrected, cmd.done_at) == ("fired", True, 2.0)
    assert "corrected from timeout" in cmd.detail
    assert seen == [("timeout", False), ("fired", True)]
    nak = Command(p.Sort(2, 0, p.SortMode.NOW, 0, 0), seq=2)
    nak._finish("nak", 1.0)
    assert not nak._correct("fired", 2.0, "never") and nak.status == "nak"


def _muted_fates_link(
    vclock: VirtualClock, hold: list[tuple[p.Message, int]]
) -> tuple[ControllerLink, FilterPort, dict[str, bool]]:
    """A link whose FIRED events are held back (in `hold`) and whose QUERYs go unanswered
    while `mute["on"]` (their FATE answers are held back too)."""
    mute = {"on": True}
    sim = SimulatorPort("sim://?gates=2", vclock)

    def drop_out(m: p.Message) -> bool:
        if isinstance(m, p.Fired):
            hold.append((m, 0x7F00 + len(hold)))
            return True
        if mute["on"] and isinstance(m, p.FateReply):
            hold.append((m, 0x7E00 + len(hold)))
            return True
        return False

    port = FilterPort(sim, drop_out=drop_out)
    link = ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.03, retries=1, port_factory=lambda: port
    )
    return link, port, mute


def test_a_sort_reported_timeout_is_corrected_by_a_later_fate_answer(
    vclock: VirtualClock,
) -> None:
    """No FIRED and no answer to QUERY: "timeout"; the link asks again afterwards and the
    FATE answer corrects it to "fired", calling the callbacks again."""
    hold: list[tuple[p.Message, int]] = []
    link, port, mute = _muted_fates_link(vclock, hold)
    with link:
        cmd = link.sort(1, 1, vclock.now() + 0.2)
        seen: list[str] = []
        cmd.add_done_callback(lambda c: seen.append(c.status))
        vclock.advance(0.5)
        assert cmd.wait(10) == "timeout" and "QUERY" in cmd.detail
        assert not cmd.corrected and link.stats.queries >= 3
        mute["on"] = False
        assert wait_for(lambda: cmd.status == "fired", timeout=10)
        assert cmd.corrected and link.stats.corrections == 1
        assert cmd.fired_at == pytest.approx(cmd.fire_at, abs=1e-6)
        assert wait_for(lambda: seen == ["timeout", "fired"])
        assert [r.item for r in port.sim_port.controller.fire_log] == [1]


def test_a_late_fired_event_corrects_a_timeout(vclock: VirtualClock) -> None:
    hold: list[tuple[p.Message, int]] = []
    link, port, _mute = _muted_fates_link(vclock, hold)
    with link:
        cmd = link.sort(1, 0, vclock.now() + 0.2)
        vclock.advance(0.5)
        assert cmd.wait(10) == "timeout"
        with link.heartbeat_paused():  # no re-check QUERY: only the late event can tell
            ((fired, seq),) = [(m, s) for m, s in hold if isinstance(m, p.Fired)]
            port.inject(fired, seq)
            assert wait_for(lambda: cmd.status == "fired")
        assert cmd.corrected and "corrected" in cmd.detail and link.stats.corrections == 1
        assert isinstance(fired, p.Fired) and cmd.ctrl_time == fired.time


class BootingPort(FilterPort):
    """A controller that ignores the host until it has booted, then says STATUS (an Uno
    whose bootloader runs for `boot_s` after the port opened)."""

    def __init__(self, sim_port: SimulatorPort, boot_s: float) -> None:
        super().__init__(sim_port)
        self.booted_at = time.monotonic() + boot_s

    def write(self, data: bytes) -> int:
        if time.monotonic() < self.booted_at:
            return len(data)  # swallowed by the bootloader
        return super().write(data)

    def read(self, size: int = 1) -> bytes:
        if time.monotonic() < self.booted_at:
            time.sleep(0.005)
            return b""
        return super().read(size)


def test_the_first_status_is_answered_with_hello_at_once() -> None:
    """The HELLO sent at open is lost in the bootloader; the controller's boot STATUS
    gets a HELLO right away, not at the next resend (here later than open_timeout_s)."""
    port = BootingPort(SimulatorPort("sim://?gates=2"), boot_s=0.05)
    link = ControllerLink("sim://", open_timeout_s=3.0, port_factory=lambda: port)
    link.hello_resend_s = 10.0
    with link:
        assert link.state == "connected" and link.info is not None
        assert link.sort(1, 0).wait(5) == "fired"


def test_a_fate_answer_arriving_after_its_query_gave_up_corrects_a_timeout(
    vclock: VirtualClock,
) -> None:
    """On a slow line a FATE answer can come after the link stopped waiting for it: it
    is still the controller's word on the item."""
    hold: list[tuple[p.Message, int]] = []
    link, port, _mute = _muted_fates_link(vclock, hold)
    with link:
        cmd = link.sort(1, 0, vclock.now() + 0.2)
        vclock.advance(0.5)
        assert cmd.wait(10) == "timeout"
        with link.heartbeat_paused():
            fates = [(m, s) for m, s in hold if isinstance(m, p.FateReply)]
            assert fates and all(m.fate == p.Fate.FIRED for m, _ in fates)
            port.inject(*fates[0])
            assert wait_for(lambda: cmd.status == "fired")
        assert cmd.corrected and "QUERY" in cmd.detail and link.stats.corrections == 1


def test_ack_timeout_follows_slow_round_trips_within_bounds() -> None:
    from firmware_bridge.rtt import AckTimeout

    timer = AckTimeout(0.2, 1.0)
    assert timer.current() == 0.2  # nothing measured yet
    for _ in range(20):
        timer.sample(0.005)
    assert timer.current() == 0.2  # a fast line: the configured floor
    for _ in range(5):
        timer.sample(0.4)
    assert 0.4 < timer.current() <= 1.0  # a slow line: resend later, not into the backlog
    for _ in range(50):
        timer.sample(3.0)
    assert timer.current() == 1.0  # never beyond the ceiling
    for _ in range(100):
        timer.sample(0.005)
    assert timer.current() == 0.2  # and back when the line recovers


def test_a_stale_unknown_does_not_resend_a_sort_twice(vclock: VirtualClock) -> None:
    """Two QUERYs asked about a SORT that never arrived; the first UNKNOWN resends it. The
    second UNKNOWN was asked before that resend, so it must not resend again (a second
    copy could fire the item twice)."""
    lost = {"on": True}
    port = FilterPort(
        SimulatorPort("sim://?gates=2", vclock),
        drop_in=lambda m, s: lost["on"] and isinstance(m, p.Sort),
    )
    link = ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=1.0, retries=0, port_factory=lambda: port
    )
    with link:
        queries: list[tuple[Command, Any]] = []
        send = link._send_command

        def capture(cmd: Command, on_reply: Any = None) -> None:
            if isinstance(cmd.msg, p.Query):
                queries.append((cmd, on_reply))  # answered by hand below
                return
            send(cmd, on_reply)

        link._send_command = capture  # type: ignore[method-assign]
        cmd = link.sort(7, 1, vclock.now() + 5.0)
        link._query(cmd)
        link._query(cmd)
        (q1, answer1), (q2, answer2) = queries[:2]
        lost["on"] = False
        answer1(p.FateReply(q1.seq, 7, p.Fate.UNKNOWN, 0))  # never arrived: resend
        assert wait_for(lambda: cmd.acked)
        answer2(p.FateReply(q2.seq, 7, p.Fate.UNKNOWN, 0))  # stale: ignored
        link._send_command = send  # type: ignore[method-assign]
        vclock.advance(6.0)
        assert cmd.wait(5) == "fired"
        sorts = [s for t, s in port.sim_port.controller.executed if t == p.MsgType.SORT]
        assert len(sorts) == 1 and [r.item for r in port.sim_port.controller.fire_log] == [7]
