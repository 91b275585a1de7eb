"""The simulated controller's logic, driven with explicit controller times (no threads)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.clock import VirtualClock
from firmware_bridge.errors import LinkError
from firmware_bridge.framing import Deframer
from firmware_bridge.simulator import SimController, SimOptions, SimulatorPort, SimulatorServer


class Bench:
    """A SimController and a host-side decoder of what it says."""

    def __init__(self, options: SimOptions | None = None, now: int = 0) -> None:
        self.sim = SimController(options or SimOptions(gates=4), now)
        self.now = now
        self.seq = 0
        self._deframer = Deframer()

    def send(self, msg: p.Message, seq: int | None = None) -> list[p.Message]:
        if seq is None:
            seq = self.seq
            self.seq += 1
        self.sim.receive(p.encode(msg, seq), self.now)
        return self.out()

    def at(self, now: int) -> list[p.Message]:
        self.now = now & 0xFFFFFFFF
        self.sim.advance(self.now)
        return self.out()

    def out(self) -> list[p.Message]:
        frames = self._deframer.feed(self.sim.take_output())
        return [p.decode(f, sender="controller") for f in frames]

    def configure(self, n: int = 4, heartbeat_ms: int = 200) -> None:
        (ack,) = [m for m in self.send(p.Config(heartbeat_ms, 1000, (10,) * n)) if _reply(m)]
        assert isinstance(ack, p.Ack)


def _reply(m: p.Message) -> bool:
    return m.TYPE in p.REPLY_TYPES


def replies(msgs: list[p.Message]) -> list[p.Message]:
    return [m for m in msgs if _reply(m)]


def events(msgs: list[p.Message], kind: type[p.Message]) -> list[p.Message]:
    return [m for m in msgs if isinstance(m, kind)]


def test_status_at_boot_and_hello_info() -> None:
    bench = Bench(SimOptions(gates=6, encoder=True))
    assert events(bench.at(0), p.Status)
    out = bench.send(p.Hello())
    info = out[0]
    assert isinstance(info, p.HelloInfo)
    assert (info.proto, info.n_gates, info.queue_size, info.time_hz) == (1, 6, 16, 1_000_000)
    assert info.flags & p.FLAG_ENCODER and not info.flags & p.FLAG_CONFIGURED
    assert isinstance(out[1], p.Status)


def test_sort_fires_exactly_at_target_and_pulses_the_gate() -> None:
    bench = Bench()
    bench.configure()
    assert isinstance(bench.send(p.Sort(7, 2, p.SortMode.TIME, 5000, 100))[0], p.Ack)
    assert not events(bench.at(4999), p.Fired)
    (fired,) = events(bench.at(5000), p.Fired)
    assert fired == p.Fired(7, 2, 5000, 0)
    assert bench.sim.gate_is_high(2, 5000) and bench.sim.gate_is_high(2, 14_999)
    bench.at(15_000)
    assert not bench.sim.gate_is_high(2, 15_000)


def test_processing_late_still_fires_at_the_target_in_time_order() -> None:
    bench = Bench()
    bench.configure(heartbeat_ms=200)
    bench.send(p.Sort(1, 0, p.SortMode.TIME, 5000, 100))
    bench.send(p.Sort(2, 1, p.SortMode.TIME, 4000, 100))
    out = bench.at(150_000)  # the host thread woke up late: the controller was not
    assert [(m.item, m.time) for m in events(out, p.Fired)] == [(2, 4000), (1, 5000)]  # type: ignore[attr-defined]
    out = bench.at(400_000)  # heartbeat expired at 200_001, STATUS due at 1_000_000
    assert events(out, p.SafeState) == [p.SafeState(1, p.SafeReason.HEARTBEAT, 0)]


def test_next_event_points_at_the_target() -> None:
    bench = Bench()
    bench.configure()
    bench.send(p.Sort(1, 0, p.SortMode.TIME, 3000, 0))
    assert bench.sim.next_event(0) == 3000


def test_window_passed_means_late_and_never_fired() -> None:
    bench = Bench()
    bench.configure()
    bench.at(10_000)
    out = bench.send(p.Sort(9, 1, p.SortMode.TIME, 8000, 1000))
    assert isinstance(out[0], p.Ack)
    assert events(out, p.Late) == [p.Late(9, 1, 10_000, 8000)]
    assert not bench.sim.fire_log
    ok = bench.send(p.Sort(10, 1, p.SortMode.TIME, 9500, 1000))
    assert events(ok, p.Fired) and bench.sim.fire_log[0].item == 10


def test_wrap_around_targets_fire_in_order() -> None:
    start = 0xFFFFFFFF - 2000
    bench = Bench(now=start)
    bench.configure()
    bench.send(p.Sort(1, 0, p.SortMode.TIME, (start + 1000) & 0xFFFFFFFF, 0))
    bench.send(p.Sort(2, 1, p.SortMode.TIME, (start + 4000) & 0xFFFFFFFF, 0))
    assert [m.item for m in events(bench.at(start + 1000), p.Fired)] == [1]  # type: ignore[attr-defined]
    (second,) = events(bench.at(start + 4000), p.Fired)
    assert isinstance(second, p.Fired) and second.time == (start + 4000) & 0xFFFFFFFF < start


def test_naks_for_bad_sorts() -> None:
    bench = Bench()
    bench.at(0)
    assert bench.send(p.Sort(1, 0, 0, 10, 0)) == [p.Nak(0, 3, p.NakReason.NOT_CONFIGURED)]
    bench.configure(n=2)
    cases = [
        (p.Sort(2, 2, 0, 10, 0), p.NakReason.BAD_GATE),
        (p.Sort(3, 0, 7, 10, 0), p.NakReason.BAD_VALUE),
        (p.Sort(4, 0, p.SortMode.POSITION, 10, 0), p.NakReason.BAD_VALUE),
        (p.Sort(5, 0, 0, (1 << 30) + 1, 0), p.NakReason.BAD_TARGET),
        (p.Sort(6, 0, 0, p.DEFAULT_MAX_LEAD_MS * 1000 + 1, 0), p.NakReason.BAD_TARGET),
        (p.Sort(7, 0, 0, 10, 0, epoch=9), p.NakReason.STALE_EPOCH),
    ]
    for msg, reason in cases:
        (nak,) = bench.send(msg)
        assert isinstance(nak, p.Nak) and nak.reason == reason, msg
    # a refused item stays refused: a copy is answered with its fate, not run
    (again,) = bench.send(p.Sort(2, 0, 0, 10, 0))
    assert isinstance(again, p.FateReply) and again.fate == p.Fate.REFUSED
    assert not bench.sim.fire_log


def test_query_before_config_is_naked_not_configured() -> None:
    """A controller not configured since it started (reset, or new) remembers nothing from
    before: it NAKs QUERY rather than answer UNKNOWN for an item it may have fired."""
    bench = Bench()
    bench.at(0)
    assert bench.send(p.Query(3, epoch=5)) == [
        p.Nak(0, p.MsgType.QUERY, p.NakReason.NOT_CONFIGURED)
    ]
    bench.configure()
    (fate,) = replies(bench.send(p.Query(3, epoch=5)))
    assert isinstance(fate, p.FateReply) and fate.fate == p.Fate.UNKNOWN


def test_max_lead_comes_with_config() -> None:
    bench = Bench()
    bench.send(p.Config(500, 1000, (10,), max_lead_ms=2000))
    (nak,) = bench.send(p.Sort(1, 0, 0, 2_000_001, 0))
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.BAD_TARGET
    assert isinstance(bench.send(p.Sort(2, 0, 0, 2_000_000, 0))[0], p.Ack)
    (nak,) = replies(bench.send(p.Config(500, 1000, (10,), max_lead_ms=99)))
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.BAD_VALUE


def test_config_validation() -> None:
    bench = Bench(SimOptions(gates=4))
    for cfg, reason in [
        (p.Config(500, 1000, ()), p.NakReason.BAD_GATE),
        (p.Config(500, 1000, (5,) * 5), p.NakReason.BAD_GATE),
        (p.Config(49, 1000, (5,)), p.NakReason.BAD_VALUE),
        (p.Config(500, 99, (5,)), p.NakReason.BAD_VALUE),
        (p.Config(500, 1000, (5, 0)), p.NakReason.BAD_VALUE),
    ]:
        (nak,) = replies(bench.send(cfg))
        assert isinstance(nak, p.Nak) and nak.reason == reason, cfg


def test_queue_full_and_one_sort_per_item() -> None:
    bench = Bench()
    bench.configure()
    for item in range(p.QUEUE_SIZE):
        assert isinstance(bench.send(p.Sort(item, 0, 0, 100_000 + item, 0))[0], p.Ack)
    (nak,) = bench.send(p.Sort(99, 0, 0, 200_000, 0))
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.QUEUE_FULL
    bench.send(p.Cancel(0))
    (dup,) = bench.send(p.Sort(1, 0, 0, 200_000, 0))  # queued already: its fate, PENDING
    assert dup == p.FateReply(dup.acked_seq, 1, p.Fate.PENDING, 0, 0)  # type: ignore[attr-defined]
    assert len(bench.sim.state.queue) == p.QUEUE_SIZE - 1


def test_duplicate_seq_is_answered_again_not_executed_again() -> None:
    bench = Bench()
    bench.configure()
    first = bench.send(p.Sort(5, 0, p.SortMode.NOW, 0, 0), seq=40)
    again = bench.send(p.Sort(5, 0, p.SortMode.NOW, 0, 0), seq=40)
    other_seq = bench.send(p.Sort(5, 0, p.SortMode.NOW, 0, 0), seq=90)
    assert isinstance(first[0], p.Ack) and events(first, p.Fired)
    assert again == [p.FateReply(40, 5, p.Fate.FIRED, 0, 0)]  # a SORT: answered with its fate
    assert other_seq == [p.FateReply(90, 5, p.Fate.FIRED, 0, 0)]
    assert [r.item for r in bench.sim.fire_log] == [5]
    # a NAK is replayed too, and HELLO clears the window
    (nak,) = bench.send(p.Cancel(77), seq=41)
    assert bench.send(p.Cancel(77), seq=41) == [nak]
    bench.send(p.Hello(epoch=3))
    (stale,) = bench.send(p.Sort(5, 0, p.SortMode.NOW, 0, 0), seq=40)  # an older epoch's
    assert stale == p.Nak(40, p.MsgType.SORT, p.NakReason.STALE_EPOCH)
    out = bench.send(p.Sort(5, 0, p.SortMode.NOW, 0, 0, epoch=3), seq=40)  # a new item
    assert isinstance(out[0], p.Ack) and len(bench.sim.fire_log) == 2
    (old,) = bench.send(p.Query(5, epoch=0))  # an older epoch's fates are still known
    assert isinstance(old, p.FateReply) and old.fate == p.Fate.FIRED and old.epoch == 0


def test_window_entries_expire() -> None:
    bench = Bench()
    bench.configure(heartbeat_ms=60_000)
    (nak,) = bench.send(p.Cancel(77), seq=41)
    bench.at(p.DEDUP_TTL_MS * 1000)
    executed = len(bench.sim.executed)
    assert bench.send(p.Cancel(77), seq=41) == [nak]  # replayed, within the time to live
    assert len(bench.sim.executed) == executed
    bench.at(p.DEDUP_TTL_MS * 1000 + 1)
    bench.send(p.Cancel(77), seq=41)  # a wrapped seq after a quiet stretch: run afresh
    assert len(bench.sim.executed) == executed + 1


def test_window_holds_sixteen_commands() -> None:
    bench = Bench()
    bench.configure()
    for seq in range(100, 117):
        bench.send(p.Cancel(seq), seq=seq)
    executed = len(bench.sim.executed)
    bench.send(p.Cancel(116), seq=116)  # still in the window
    assert len(bench.sim.executed) == executed
    bench.send(p.Cancel(100), seq=100)  # pushed out: executed again
    assert len(bench.sim.executed) == executed + 1


def test_sync_and_query_are_never_cached() -> None:
    bench = Bench()
    bench.configure()
    (r1,) = bench.send(p.Sync(1), seq=60)
    bench.at(5000)
    (r2,) = bench.send(p.Sync(1), seq=60)
    assert isinstance(r1, p.SyncReply) and isinstance(r2, p.SyncReply)
    assert (r1.time, r2.time) == (0, 5000)


def test_heartbeat_loss_enters_safe_state_and_drops_the_queue() -> None:
    bench = Bench()
    bench.configure(heartbeat_ms=200)
    bench.send(p.Sort(1, 0, 0, 1_000_000, 0))
    bench.send(p.Sort(2, 1, 0, 1_000_000 + 1, 0))
    assert not events(bench.at(200_000), p.SafeState)
    (entered,) = events(bench.at(200_001), p.SafeState)
    assert entered == p.SafeState(1, p.SafeReason.HEARTBEAT, 2)
    assert bench.sim.belt_stop
    (nak,) = replies(out := bench.send(p.Sort(3, 0, 0, 2_000_000, 0)))
    assert isinstance(nak, p.Nak) and nak.reason == p.NakReason.SAFE_STATE
    assert events(out, p.SafeState) == [entered]  # re-sent once on the next host frame
    assert not events(bench.send(p.Heartbeat()), p.SafeState)
    (fate,) = bench.send(p.Query(1))
    assert isinstance(fate, p.FateReply) and fate.fate == p.Fate.DROPPED
    out = bench.send(p.Resume())
    assert out == [p.Ack(out[0].acked_seq, p.MsgType.RESUME), p.SafeState(0, 4, 0)]  # type: ignore[attr-defined]
    assert not bench.sim.belt_stop
    assert isinstance(bench.send(p.Sort(4, 0, 0, 2_000_000, 0))[0], p.Ack)


def test_belt_runs_only_while_permitted() -> None:
    bench = Bench()
    assert bench.sim.belt_stop  # boot: no permit until a host CONFIGs and RESUMEs
    bench.send(p.Resume())
    assert bench.sim.belt_stop  # not configured yet
    bench.configure(heartbeat_ms=60_000)
    assert bench.sim.belt_stop
    bench.send(p.Resume())
    assert not bench.sim.belt_stop
    status = events(bench.at(2_000_000), p.Status)[-1]
    assert isinstance(status, p.Status) and status.flags & p.FLAG_RUN
    bench.send(p.Safe())
    assert bench.sim.belt_stop


def test_heartbeats_keep_it_out_of_the_safe_state() -> None:
    bench = Bench()
    bench.configure(heartbeat_ms=200)
    for t in range(50_000, 2_000_000, 150_000):
        bench.at(t)
        assert not events(bench.send(p.Heartbeat()), p.SafeState)
    assert not bench.sim.state.safe


def test_safe_command_and_fates() -> None:
    bench = Bench()
    bench.configure()
    bench.send(p.Sort(1, 0, 0, 50_000, 0))
    bench.send(p.Sort(2, 0, 0, 60_000, 0))
    bench.send(p.Cancel(2))
    bench.at(50_000)
    out = bench.send(p.Safe())
    assert isinstance(out[0], p.Ack) and out[1] == p.SafeState(1, p.SafeReason.COMMAND, 0)
    fates = {item: bench.send(p.Query(item))[-1] for item in (1, 2, 3)}
    assert [f.fate for f in fates.values()] == [p.Fate.FIRED, p.Fate.CANCELLED, p.Fate.UNKNOWN]  # type: ignore[attr-defined]
    assert fates[1].time == 50_000  # type: ignore[attr-defined]


def test_safe_while_already_safe_is_only_acked() -> None:
    """Like the firmware: a second SAFE changes nothing and sends no second SAFE_STATE."""
    bench = Bench()
    bench.configure()
    out = bench.send(p.Safe())
    assert events(out, p.SafeState) == [p.SafeState(1, p.SafeReason.COMMAND, 0)]
    assert events(bench.send(p.Heartbeat()), p.SafeState)  # the one re-send, as always
    again = bench.send(p.Safe())
    assert [type(m) for m in again] == [p.Ack] and again[0].acked_type == p.MsgType.SAFE  # type: ignore[attr-defined]
    assert bench.sim.state.safe_reason == p.SafeReason.COMMAND


def test_position_mode_with_encoder() -> None:
    bench = Bench(SimOptions(gates=2, encoder=True, ticks_per_s=1000))
    bench.configure(n=2, heartbeat_ms=60_000)
    bench.send(p.Sort(1, 1, p.SortMode.POSITION, 50, 2))
    assert not events(bench.at(49_000), p.Fired)
    (fired,) = events(bench.at(50_000), p.Fired)
    assert isinstance(fired, p.Fired) and fired.position == 50


def test_malformed_frames_are_counted_or_nakked() -> None:
    bench = Bench()
    bench.sim.receive(b"\x05\x01\x02\x00" + b"\x7f" * 60 + b"\x00", 0)
    wire = bytearray(p.encode(p.Hello(), 1))
    wire[2] ^= 0xFF
    bench.sim.receive(bytes(wire), 0)
    bench.sim.receive(bytes.fromhex("0401421203A8E400"), 0)  # unknown type 0x42
    out = bench.out()
    assert replies(out) == [p.Nak(0x12, 0x42, p.NakReason.UNKNOWN_TYPE)]
    (status,) = events(bench.send(p.Hello()), p.Status)
    assert isinstance(status, p.Status)
    assert (status.crc_errors, status.frame_errors) == (1, 2)


def test_options_from_url() -> None:
    opts = SimOptions.from_url("sim://?gates=3&encoder=1&ticks_per_s=250&time0=4294967295")
    assert opts == SimOptions(gates=3, encoder=True, ticks_per_s=250.0, time0=0xFFFFFFFF)
    with pytest.raises(LinkError, match="unknown simulator option 'gate'"):
        SimOptions.from_url("sim://?gate=3")
    with pytest.raises(LinkError, match="gates=0"):
        SimOptions.from_url("sim://?gates=0")


def test_port_on_a_virtual_clock_fires_at_virtual_targets() -> None:
    clock = VirtualClock(100.0)
    port = SimulatorPort("sim://?gates=2", clock)
    try:
        deframer = Deframer()
        port.write(p.encode(p.Config(50, 1000, (5, 5)), 0))
        port.write(p.encode(p.Sort(1, 1, 0, 2_500_000, 0), 1))
        clock.advance(10.0)  # far past the heartbeat timeout too: both happen in order
        msgs = [p.decode(f) for f in deframer.feed(port.read(4096))]
        fired = events(msgs, p.Fired)
        safe = events(msgs, p.SafeState)
        assert fired == []  # heartbeat (50 ms) expired first: the SORT was dropped
        assert safe == [p.SafeState(1, p.SafeReason.HEARTBEAT, 1)]
        assert port.controller.state.safe
    finally:
        port.close()


def test_server_serves_the_simulator_over_tcp() -> None:
    import socket

    with SimulatorServer("sim://?gates=2") as server:
        with socket.create_connection((server.host, server.port), timeout=2) as conn:
            conn.sendall(p.encode(p.Hello(), 9))
            deframer = Deframer()
            got: list[p.Message] = []
            while not any(isinstance(m, p.HelloInfo) for m in got):
                got += [p.decode(f) for f in deframer.feed(conn.recv(4096))]
        assert any(isinstance(m, p.HelloInfo) and m.n_gates == 2 for m in got)


_host_msgs = st.one_of(
    st.builds(
        p.Sort,
        st.integers(0, 40),
        st.integers(0, 5),
        st.integers(0, 3),
        st.integers(0, 400_000),
        st.integers(0, 50_000),
    ),
    st.builds(p.Cancel, st.integers(0, 40)),
    st.builds(p.Query, st.integers(0, 40)),
    st.just(p.Hello()),
    st.just(p.Heartbeat()),
    st.just(p.Resume()),
    st.just(p.Safe()),
    st.builds(
        p.Config,
        st.integers(0, 600),
        st.integers(0, 2000),
        st.lists(st.integers(0, 50), max_size=6).map(tuple),
    ),
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("msg"), _host_msgs, st.integers(0, 40)),
        st.tuples(st.just("raw"), st.binary(max_size=50), st.just(0)),
        st.tuples(st.just("time"), st.integers(0, 300_000), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_any_host_traffic_keeps_the_controller_sane(steps: list[tuple]) -> None:
    bench = Bench(SimOptions(gates=4))
    now = 0
    for kind, value, seq in steps:
        if kind == "msg":
            bench.sim.receive(p.encode(value, seq), now)
        elif kind == "raw":
            bench.sim.receive(value, now)
        else:
            now = (now + value) & 0xFFFFFFFF
            bench.sim.advance(now)
        out = bench.out()  # everything it says decodes as controller messages
        assert all(m.TYPE >= 0x80 for m in out)
        st_ = bench.sim.state
        assert len(st_.queue) <= p.QUEUE_SIZE
        assert len({e.item for e in st_.queue}) == len(st_.queue)
        if st_.safe:
            assert not st_.queue and not st_.gate_high_until
    executed_sorts = [s for t, s in bench.sim.executed if t == p.MsgType.SORT]
    assert len(bench.sim.fire_log) <= len(executed_sorts)  # a replayed SORT never fires
