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
        # the resend was answered with the item's fate (FATE PENDING), not run again
        assert executed == [cmd.seq] and dropped["n"] == 1 and cmd.attempts == 2


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
        if link.state != "connected":  # a SORT while away ends at once: nothing queued
            during = link.sort(2, 1, link.clock.now() + 0.8, window_s=0.05)
            assert during.done() and during.status == "timeout" and "not sent" in during.detail
        assert wait_for(lambda: link.state == "connected")
        after = link.sort(3, 1, link.clock.now() + 0.3, window_s=0.05)
        assert before.wait(5) == "fired" and after.wait(5) == "fired"
        assert link.stats.reconnects == 1 and server.connections == 2
        items = sorted(r.item for r in server.controller.fire_log)
        assert items == [1, 3]
        epochs = {r.item: r.epoch for r in server.controller.fire_log}
        assert epochs[1] != epochs[3]  # one epoch per handshake; item 1 kept its own


def test_controller_reset_while_away_retimes_what_is_still_in_time() -> None:
    """A reset controller lost its queue and its clock: a SORT still in time is sent again,
    re-timed on the new clock mapping in the new epoch (never its old bytes), and fires
    once, at its host time."""
    with (
        SimulatorServer("sim://?gates=3", reset_on_connect=True) as server,
        ControllerLink(server.url, ack_timeout_s=0.1) as link,
    ):
        cmd = link.sort(1, 0, link.clock.now() + 1.5, window_s=0.05)
        assert wait_for(lambda: cmd.acked)
        old = cmd.msg
        server.disconnect()
        assert wait_for(lambda: link.stats.reconnects == 1 and cmd.acked)
        assert cmd.wait(5) == "fired"
        assert isinstance(cmd.msg, p.Sort) and isinstance(old, p.Sort)
        assert cmd.msg.epoch != old.epoch and cmd.msg.target != old.target
        assert [(r.item, r.epoch) for r in server.controller.fire_log] == [(1, cmd.msg.epoch)]
        assert cmd.fired_at == pytest.approx(cmd.fire_at, abs=0.03)
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
        # under load the first STATUS (reader thread) can be printed before the banner
        assert wait_for(lambda: any(line.startswith("connected to sim://") for line in lines))
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


def test_a_resent_sort_is_answered_with_its_fate_after_many_newer_sorts(
    vclock: VirtualClock,
) -> None:
    """16 newer SORTs would have pushed a SORT's seq out of a seq window; SORTs are
    idempotent per (epoch, item), so its resend is answered with its fate (PENDING) and
    it runs once."""
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
        assert wait_for(lambda: lonely.acked, timeout=10)  # FATE PENDING
        assert isinstance(lonely.reply, p.FateReply) and lonely.reply.fate == p.Fate.PENDING
        vclock.advance(2.0)
        assert lonely.wait(5) == "fired"
        executed = [s for t, s in port.sim_port.controller.executed if t == p.MsgType.SORT]
        assert executed.count(lonely.seq) == 1


def test_a_controller_reset_on_the_same_port_is_noticed_and_resynced() -> None:
    from firmware_bridge.simulator import SimController, SimOptions

    with ControllerLink("sim://?gates=3", ack_timeout_s=0.1) as link:
        cmd = link.sort(1, 0, link.clock.now() + 1.5, window_s=0.05)
        late = link.sort(5, 0, link.clock.now() + 0.3, window_s=0.005)
        assert wait_for(lambda: cmd.acked and late.acked)
        port = link._port.sim
        with link.heartbeat_paused():  # the link notices only once item 5's time is past
            with port._lock:  # power glitch: a fresh controller, same port, not configured
                port.controller = SimController(SimOptions(gates=3), port.now_us() + 12345)
                port._tick(port.now_us())  # its boot STATUS: configured flag clear
            time.sleep(0.4)
        assert wait_for(lambda: link.state == "connected" and link.stats.reconnects == 1)
        assert port.controller.state.configured
        assert cmd.wait(5) == "fired"  # re-timed on the new controller's clock
        assert late.wait(5) == "late" and "reset" in late.detail  # too late: never resent
        assert [r.item for r in port.controller.fire_log] == [1]
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


def test_a_query_answered_by_a_controller_reset_since_is_not_its_word(
    vclock: VirtualClock,
) -> None:
    """The SORT fired, its FIRED was lost, and the controller was reset before the link
    asked (its boot STATUS lost too): the fresh controller knows nothing and NAKs the
    QUERY NOT_CONFIGURED, so the link shakes hands again and reports the SORT "timeout"
    because it may have fired before the reset, never "the controller does not know the
    item" (a fresh controller's UNKNOWN, taken for the old one's word: did not fire)."""
    from firmware_bridge.simulator import SimController, SimOptions

    boot_status = {"drop": 0}
    sim = SimulatorPort("sim://?gates=2", vclock)

    def drop_out(m: p.Message) -> bool:
        if isinstance(m, p.Status) and boot_status["drop"]:
            boot_status["drop"] -= 1
            return True
        return isinstance(m, p.Fired)

    port = FilterPort(sim, drop_out=drop_out)
    link = ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.03, retries=1, port_factory=lambda: port
    )
    with link:
        cmd = link.sort(1, 1, vclock.now() + 0.2, window_s=0.05)
        assert wait_for(lambda: cmd.acked)
        old = sim.controller
        vclock.advance(0.22)
        assert [r.item for r in old.fire_log] == [1]
        with sim._lock:  # power glitch: a fresh controller, same port, not configured
            boot_status["drop"] = 1
            sim.controller = SimController(SimOptions(gates=2), sim.now_us() + 777)
            sim._tick(sim.now_us())
        with pytest.raises(LinkError, match="item 1 NAKed NOT_CONFIGURED") as err:
            link.query(1)  # asked directly: a one-line error, not a bare assertion
        assert "\n" not in str(err.value)
        vclock.advance(0.5)  # past the fate's due time: the link asks
        assert wait_for(lambda: cmd.done() and link.stats.reconnects == 1, timeout=10)
        assert cmd.status == "timeout", cmd.detail
        assert "reset" in cmd.detail and "may have fired" in cmd.detail, cmd.detail
        assert link.stats.queries >= 1 and sim.controller.state.configured
        assert sim.controller.fire_log == []  # never sent again to the new controller
        after = link.sort(2, 0)
        vclock.advance(0.05)
        assert after.wait(5) == "fired"


class ClosedUnderWritePort(FilterPort):
    """A port that another thread closes in the middle of a write, once: pyserial's
    socket:// port then fails with TypeError (its socket is already None)."""

    def __init__(self, sim_port: SimulatorPort) -> None:
        super().__init__(sim_port)
        self.link: ControllerLink | None = None
        self.armed = False

    def write(self, data: bytes) -> int:
        if self.armed and self.link is not None:
            self.armed = False
            self.link._lost(OSError("socket disconnected"))  # what the reader does
            raise TypeError("argument must be an int, or have a fileno() method.")
        return super().write(data)


def test_a_port_closed_under_a_write_is_a_lost_link_not_an_exception() -> None:
    ports: list[ClosedUnderWritePort] = []

    def factory() -> ClosedUnderWritePort:
        ports.append(ClosedUnderWritePort(SimulatorPort("sim://?gates=2")))
        return ports[-1]

    link = ControllerLink("sim://", ack_timeout_s=0.05, port_factory=factory)
    with link:
        ports[-1].link = link
        ports[-1].armed = True
        cmd = link.sort(1, 0, link.clock.now() + 0.3, window_s=0.05)  # must not raise
        assert cmd.wait(5) in {"timeout", "late", "fired"}
        assert wait_for(lambda: link.state == "connected" and link.stats.reconnects == 1)
        assert link.sort(2, 1).wait(5) == "fired"


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
        link.fates.query(cmd)
        link.fates.query(cmd)
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


# ---- epochs, stale targets, fail-safe stops (each a finding of the link review) ----------


def test_an_item_id_is_used_once_per_epoch_and_the_epoch_changes_at_each_handshake(
    vlink: ControllerLink, vclock: VirtualClock
) -> None:
    first = vlink.epoch
    assert first != 0
    assert vlink.sort(1, 0).wait(5) == "fired"
    with pytest.raises(LinkError, match="item 1 was already sent"):
        vlink.sort(1, 0)
    assert vlink.wait_hello() is not None and vlink.epoch not in (0, first)
    assert vlink.sort(1, 0).wait(5) == "fired"  # a new epoch: a new item
    assert [(r.item, r.epoch) for r in sim_of(vlink).fire_log] == [(1, first), (1, vlink.epoch)]


def test_sort_on_a_link_that_is_not_connected_ends_at_once_and_sends_nothing() -> None:
    with (
        SimulatorServer("sim://?gates=3") as server,
        ControllerLink(server.url, ack_timeout_s=0.1, reconnect=False) as link,
    ):
        server.disconnect()
        assert wait_for(lambda: link.state == "lost")
        sent = link.stats.frames_sent
        cmd = link.sort(1, 0, link.clock.now() + 0.5)
        assert cmd.done() and cmd.status == "timeout" and "not sent" in cmd.detail
        assert link.stats.frames_sent == sent and not link.pending()


def test_a_resend_leaves_one_seq_in_flight_per_item(vclock: VirtualClock) -> None:
    """QUERY answers UNKNOWN for a SORT whose ACK never came: it is resent under a new
    seq, and its old seq is no longer outstanding (a reply to it goes nowhere)."""
    dropped: list[int] = []

    def drop_first_sort(m: p.Message, seq: int) -> bool:
        if isinstance(m, p.Sort) and not dropped:
            dropped.append(seq)
            return True
        return False

    port = FilterPort(SimulatorPort("sim://?gates=2", vclock), drop_in=drop_first_sort)
    with ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.05, retries=0, port_factory=lambda: port
    ) as link:
        cmd = link.sort(1, 0, vclock.now() + 1.0)
        assert wait_for(lambda: cmd.acked)
        assert cmd.seq != dropped[0]
        with link._lock:
            assert [o.cmd.seq for o in link._outstanding.values() if o.cmd is cmd] == []
            assert dropped[0] not in link._outstanding
        vclock.advance(1.5)
        assert cmd.wait(5) == "fired"
        assert [r.item for r in port.sim_port.controller.fire_log] == [1]


def test_a_safe_state_with_nothing_dropped_leaves_in_flight_sorts_alone(
    vclock: VirtualClock,
) -> None:
    """SAFE_STATE(dropped=0) used to mark every acked SORT "dropped", though it had fired
    (its FIRED lost): the link now asks the controller."""
    port = FilterPort(
        SimulatorPort("sim://?gates=2", vclock), drop_out=lambda m: isinstance(m, p.Fired)
    )
    with ControllerLink(
        "sim://", clock=vclock, fate_margin_s=5.0, port_factory=lambda: port
    ) as link:
        cmd = link.sort(1, 0, vclock.now() + 0.1)
        vclock.advance(0.2)  # fired; its FIRED is lost, the QUERY is not due yet
        assert wait_for(lambda: bool(port.dropped_out))
        assert link.safe().wait(5) == "acked"
        time.sleep(0.2)
        assert not cmd.done()  # SAFE_STATE said dropped=0: not "dropped"
        vclock.advance(6.0)  # its fate is due: QUERY
        assert cmd.wait(5) == "fired"
        queued = link.resume()
        assert queued.wait(5) == "acked"
        pending = link.sort(2, 0, vclock.now() + 1.0)
        assert wait_for(lambda: pending.acked)
        assert link.safe().wait(5) == "acked"  # this one really is dropped
        assert pending.wait(5) == "cancelled" and "dropped" in pending.detail


def test_safe_is_sent_again_after_a_handshake_while_a_stop_is_wanted() -> None:
    from firmware_bridge.simulator import SimController, SimOptions

    with ControllerLink("sim://?gates=3", ack_timeout_s=0.1) as link:
        assert link.safe().wait(5) == "acked"
        port = link._port.sim
        with port._lock:  # a reset: the new controller knows nothing of the stop
            port.controller = SimController(SimOptions(gates=3), port.now_us())
            port._tick(port.now_us())
        assert wait_for(lambda: link.stats.reconnects == 1 and port.controller.state.configured)
        assert wait_for(lambda: port.controller.state.safe)
        time.sleep(1.2)  # long enough for an automatic RESUME, were one to go out
        assert port.controller.state.safe and port.controller.belt_stop
        assert link.resume().wait(5) == "acked" and not port.controller.belt_stop


def test_a_resume_is_not_resent_once_safe_has_gone_out(vclock: VirtualClock) -> None:
    written: list[str] = []
    mute = {"resume": True}

    def watch(m: p.Message, seq: int) -> bool:
        written.append(m.TYPE.name)
        return isinstance(m, p.Resume) and mute["resume"]

    port = FilterPort(SimulatorPort("sim://?gates=2", vclock), drop_in=watch)
    mute["resume"] = False
    with ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=0.05, retries=5, port_factory=lambda: port
    ) as link:
        mute["resume"] = True
        resume = link.resume()  # lost: the link would resend it
        safe = link.safe()
        assert safe.wait(5) == "acked"
        assert resume.wait(5) == "timeout" and "superseded" in resume.detail
        n = len(written)
        time.sleep(0.5)
        assert "RESUME" not in written[n:] and written[written.index("SAFE") :].count("RESUME") == 0
        assert port.sim_port.controller.state.safe


def test_a_safe_state_seen_only_in_status_is_answered_with_resume(vclock: VirtualClock) -> None:
    """Both SAFE_STATE frames lost: the safe flag in STATUS (and NAK SAFE_STATE) still
    gets a RESUME while the host wants the line to run."""
    port = FilterPort(
        SimulatorPort("sim://?gates=2", vclock), drop_out=lambda m: isinstance(m, p.SafeState)
    )
    with ControllerLink(
        "sim://", clock=vclock, heartbeat_s=0.2, status_s=0.5, port_factory=lambda: port
    ) as link:
        with link.heartbeat_paused():
            vclock.advance(0.3)
        assert port.sim_port.controller.state.safe

        def resumed() -> bool:
            vclock.advance(0.05)  # STATUS frames come on the controller's clock
            return not port.sim_port.controller.state.safe

        assert wait_for(resumed, timeout=10)
        assert any(isinstance(m, p.SafeState) for m in port.dropped_out)
        assert link.sort(1, 0).wait(5) == "fired"


def test_a_port_that_vanishes_during_a_handshake_never_leaves_a_silent_connected_link() -> None:
    with ControllerLink("sim://?gates=3", ack_timeout_s=0.1) as link:
        link._close_port()  # as if lost between the handshake and "connected"
        link._state = "connected"
        assert wait_for(lambda: link.state == "connected" and link._port is not None)
        assert wait_for(lambda: link.stats.reconnects >= 1)
        assert link.sort(1, 0).wait(5) == "fired"


def test_the_duplicate_window_counts_older_commands_still_unanswered(
    vclock: VirtualClock,
) -> None:
    """Commands unanswered when X went out may reach the controller after X and push it
    out of the 16-entry window: counted, so X is not resent once they could have."""
    port = FilterPort(
        SimulatorPort("sim://?gates=2", vclock), drop_in=lambda m, s: isinstance(m, p.Cancel)
    )
    with ControllerLink(
        "sim://", clock=vclock, ack_timeout_s=60.0, port_factory=lambda: port
    ) as link:
        cancels = [link.cancel(100 + k) for k in range(p.DEDUP_WINDOW)]
        with link._lock:
            outs = {o.cmd.seq: o for o in link._outstanding.values()}
        first, last = outs[cancels[0].seq], outs[cancels[-1].seq]
        assert last.older_open == p.DEDUP_WINDOW - 1
        assert not link._may_retry(last)  # 15 older ones may still land after it
        assert not link._may_retry(first)  # 15 newer ones went out after it
        assert link._may_retry(outs[cancels[0].seq + 0]) is False
        mid = outs[cancels[7].seq]
        assert mid.older_open == 7 and not link._may_retry(mid)


def test_more_gates_than_config_carries_is_a_link_error(vlink: ControllerLink) -> None:
    """26 pulse lengths do not fit CONFIG's payload: a LinkError naming the limit, not a
    ValueError from the framing; 25 are framed and sent (and this 4-gate board refuses
    them); the link keeps its earlier configuration for reconnects."""
    with pytest.raises(LinkError, match=r"26 gates configured; CONFIG carries at most 25"):
        vlink.configure(p.MAX_CONFIG_GATES + 1, 40)
    assert vlink._config_msg().pulse_ms == (40,) * 4
    with pytest.raises(LinkError, match="controller refused CONFIG"):
        vlink.configure(p.MAX_CONFIG_GATES, 40)
