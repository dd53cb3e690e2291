import re

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from npu.rtl.bus import BURST_INCR, RESP_OKAY, RESP_SLVERR, AXI4Signature
from npu.sim.amaranth_sim import run_simulation
from npu.sim.axi_mem import AXI4Memory, AXIProtocolError
from npu.sim.axi_monitor import AXI4Monitor
from npu.sim.streams import offer


class Port(wiring.Component):
    """An AXI4 manager port with no logic: the testbench drives its outputs."""

    def __init__(self, data_width=64):
        super().__init__({"axi": Out(AXI4Signature(addr_width=32, data_width=data_width,
                                                   id_width=4))})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()  # the clock the testbench and the memory model share
        return m


def full_size(bus):
    return (len(bus.wdata) // 8).bit_length() - 1


async def send_ar(ctx, bus, addr, beats, *, id=0, size=None, burst=BURST_INCR):
    await offer(ctx, bus.arvalid, bus.arready, [
        (bus.araddr, addr), (bus.arlen, beats - 1), (bus.arid, id), (bus.arburst, burst),
        (bus.arsize, full_size(bus) if size is None else size)])


async def send_aw(ctx, bus, addr, beats, *, id=0, size=None, burst=BURST_INCR):
    await offer(ctx, bus.awvalid, bus.awready, [
        (bus.awaddr, addr), (bus.awlen, beats - 1), (bus.awid, id), (bus.awburst, burst),
        (bus.awsize, full_size(bus) if size is None else size)])


async def send_w(ctx, bus, beats, strobes=None, *, last=None):
    """Send W beats; WLAST on the final beat unless ``last`` (a beat index) says otherwise."""
    full = (1 << len(bus.wstrb)) - 1
    last = len(beats) - 1 if last is None else last
    for i, data in enumerate(beats):
        await offer(ctx, bus.wvalid, bus.wready, [
            (bus.wdata, data), (bus.wstrb, full if strobes is None else strobes[i]),
            (bus.wlast, int(i == last))])


async def wait_for(ctx, condition):
    while not condition():
        await ctx.tick()


def simulate(port, mem, *testbenches, deadline=4000):
    """Run testbenches against ``mem`` with a monitor; fail if they do not finish."""
    mon = AXI4Monitor(port.axi)
    finished = []

    def wrap(tb):
        async def run(ctx):
            await tb(ctx, mon)
            finished.append(tb)
        return run

    run_simulation(port, *map(wrap, testbenches), processes=[mem.process, mon.process],
                   deadline_cycles=deadline)
    assert len(finished) == len(testbenches), "testbenches did not finish before the deadline"
    return mon


def beats_of(data, bus_bytes):
    return [int.from_bytes(data[i:i + bus_bytes].tobytes(), "little")
            for i in range(0, len(data), bus_bytes)]


# Functional behaviour.

@pytest.mark.parametrize("width", [32, 64, 128])
def test_burst_write_with_strobes_then_read_back_matches(width):
    bb = width // 8
    port = Port(width)
    bus = port.axi
    mem = AXI4Memory(bus, size=8192, latency=3)
    rng = np.random.default_rng(width)
    mem.mem[:] = 0xAA
    addr, n = 0x240, 8
    data = rng.integers(0, 256, size=n * bb, dtype=np.uint8)
    strobes = [int(s) for s in rng.integers(0, 1 << bb, size=n)]
    strobes[0] = (1 << bb) - 1
    strobes[1] = 0
    expected = np.full(n * bb, 0xAA, dtype=np.uint8)
    for i, s in enumerate(strobes):
        for j in range(bb):
            if s >> j & 1:
                expected[i * bb + j] = data[i * bb + j]

    async def tb(ctx, mon):
        ctx.set(bus.bready, 1)
        ctx.set(bus.rready, 1)
        await send_aw(ctx, bus, addr, n, id=5)
        await send_w(ctx, bus, beats_of(data, bb), strobes)
        await wait_for(ctx, lambda: mon.b)
        await send_ar(ctx, bus, addr, n, id=9)
        await wait_for(ctx, lambda: len(mon.r) == n)

    mon = simulate(port, mem, tb)
    assert [(bid, resp) for _, bid, resp in mon.b] == [(5, RESP_OKAY)]
    assert [r[2] for r in mon.r] == beats_of(expected, bb)
    assert [(r[1], r[3], r[4]) for r in mon.r] == [(9, RESP_OKAY, 0)] * (n - 1) + [(9, 0, 1)]
    assert np.array_equal(mem.mem[addr:addr + n * bb], expected)
    assert (mem.mem[:addr] == 0xAA).all() and (mem.mem[addr + n * bb:] == 0xAA).all()
    assert (mem.reads, mem.writes, mem.read_beats, mem.write_beats) == (1, 1, n, n)


def manager_bus(data_width=64):
    """A manager-side interface outside any design, for constructor checks."""
    return AXI4Signature(addr_width=32, data_width=data_width, id_width=4).create()


def test_image_is_loaded_at_address_zero():
    bus = manager_bus()
    assert list(AXI4Memory(bus, size=8, image=b"\x01\x02").mem) == [1, 2, 0, 0, 0, 0, 0, 0]
    image = np.arange(5, dtype=np.uint8)
    assert list(AXI4Memory(bus, size=5, image=image).mem) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("latency", [1, 2, 8])
def test_read_and_write_response_latency_is_exact(latency):
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=latency)

    async def tb(ctx, mon):
        ctx.set(bus.rready, 1)
        ctx.set(bus.bready, 1)
        for _ in range(3):
            await ctx.tick()
        await send_ar(ctx, bus, 0x40, 2)
        await send_aw(ctx, bus, 0x80, 2)
        await send_w(ctx, bus, [1, 2])
        await wait_for(ctx, lambda: len(mon.r) == 2 and mon.b)

    mon = simulate(port, mem, tb)
    (ar,) = mon.ar
    assert mon.rvalid == [ar + latency, ar + latency + 1]
    (aw,) = mon.aw
    assert mon.w == [aw + 1, aw + 2]   # W is taken from the edge after its AW
    assert mon.bvalid == [mon.w[-1] + latency]


@pytest.mark.parametrize("aw_delay", [0, 3])
def test_w_offered_with_or_before_aw_waits_for_the_aw(aw_delay):
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=2)

    async def data(ctx, mon):
        ctx.set(bus.bready, 1)
        await send_w(ctx, bus, [0x1111, 0x2222])

    async def address(ctx, mon):
        for _ in range(aw_delay):
            await ctx.tick()
        await send_aw(ctx, bus, 0x10, 2, id=6)
        await wait_for(ctx, lambda: mon.b)

    mon = simulate(port, mem, data, address)
    (aw,) = mon.aw
    assert aw == aw_delay
    assert mon.w == [aw + 1, aw + 2]
    assert [b[1:] for b in mon.b] == [(6, RESP_OKAY)]
    assert mem.mem[0x10:0x20].view("<u8").tolist() == [0x1111, 0x2222]


@pytest.mark.parametrize("bytes_per_cycle, gap", [(8, 1), (16, 1), (4, 2), (1, 8), (3, None)])
def test_read_and_write_beat_rate_follows_bytes_per_cycle(bytes_per_cycle, gap):
    port = Port(64)
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=4, bytes_per_cycle=bytes_per_cycle)
    n = 6

    async def tb(ctx, mon):
        ctx.set(bus.rready, 1)
        ctx.set(bus.bready, 1)
        await send_ar(ctx, bus, 0, n)
        await send_aw(ctx, bus, 0x100, n)
        await send_w(ctx, bus, list(range(n)))
        await wait_for(ctx, lambda: len(mon.r) == n and mon.b)

    mon = simulate(port, mem, tb)
    r_cycles = [r[0] for r in mon.r]
    (ar,), (aw,) = mon.ar, mon.aw
    if gap is None:
        # 3 bytes per cycle on 8-byte beats: credit 10, 5, 8, 3, 6, 9, 4, 7, 10, ... -> a beat
        # when it reaches 8, from an idle start (7 carried + 3).
        offsets = [0, 2, 5, 8, 10, 13]
    else:
        offsets = [i * gap for i in range(n)]
    assert r_cycles == [ar + 4 + o for o in offsets]
    assert mon.w == [aw + 1 + o for o in offsets]
    assert mem.mem[0x100:0x100 + 8 * n].view("<u8").tolist() == list(range(n))


@pytest.mark.parametrize("bytes_per_cycle, gap", [(4, 1), (2, 2)])
def test_32_bit_bus_beat_rate(bytes_per_cycle, gap):
    port = Port(32)
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=2, bytes_per_cycle=bytes_per_cycle)
    mem.mem[:16] = np.arange(16)

    async def tb(ctx, mon):
        ctx.set(bus.rready, 1)
        await send_ar(ctx, bus, 0, 4)
        await wait_for(ctx, lambda: len(mon.r) == 4)

    mon = simulate(port, mem, tb)
    assert [r[0] for r in mon.r] == [mon.ar[0] + 2 + i * gap for i in range(4)]
    assert [r[2] for r in mon.r] == [0x03020100, 0x07060504, 0x0B0A0908, 0x0F0E0D0C]


def test_outstanding_reads_are_served_in_order_with_their_ids():
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=8)
    mem.mem[:] = np.arange(4096) % 251
    bursts = [(0x000, 2, 3), (0x400, 1, 7), (0x208, 3, 1), (0x010, 1, 15), (0x800, 2, 0)]

    async def tb(ctx, mon):
        ctx.set(bus.rready, 1)
        for addr, n, rid in bursts:
            await send_ar(ctx, bus, addr, n, id=rid)
        await wait_for(ctx, lambda: len(mon.r) == 9)

    mon = simulate(port, mem, tb)
    assert mon.ar == [0, 1, 2, 3, 4]
    expected = []
    for addr, n, rid in bursts:
        for i, data in enumerate(beats_of(mem.mem[addr:addr + 8 * n], 8)):
            expected.append((rid, data, RESP_OKAY, int(i == n - 1)))
    assert [r[1:] for r in mon.r] == expected
    # Back to back: one beat per cycle from the first burst's latency on.
    assert [r[0] for r in mon.r] == list(range(8, 17))
    assert mem.max_outstanding_reads == 5


def test_read_queue_takes_16_bursts_then_holds_arready_low():
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=2)

    async def issue(ctx, mon):
        for i in range(20):
            await send_ar(ctx, bus, 8 * i, 1, id=i % 16)

    async def drain(ctx, mon):
        await wait_for(ctx, lambda: len(mon.ar) == 16)
        for _ in range(10):
            await ctx.tick()
        assert len(mon.ar) == 16 and ctx.get(bus.arvalid) and not ctx.get(bus.arready)
        ctx.set(bus.rready, 1)
        await wait_for(ctx, lambda: len(mon.r) == 20)

    mon = simulate(port, mem, issue, drain)
    assert mem.max_outstanding_reads == 16
    assert [r[1] for r in mon.r] == [i % 16 for i in range(20)]


def test_rvalid_and_data_stay_until_rready():
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=4096, latency=1)
    mem.mem[:32] = np.arange(32)
    pattern = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1] + [1] * 8

    async def tb(ctx, mon):
        await send_ar(ctx, bus, 0, 4)
        for ready in pattern:
            ctx.set(bus.rready, ready)
            await ctx.tick()

    mon = simulate(port, mem, tb)
    assert [r[2] for r in mon.r] == beats_of(mem.mem[:32], 8)
    # RVALID never drops between the first beat and the last handshake.
    assert mon.rvalid == list(range(mon.rvalid[0], mon.r[-1][0] + 1))


def test_accesses_outside_memory_get_slverr():
    port = Port()
    bus = port.axi
    mem = AXI4Memory(bus, size=256, latency=2)
    mem.mem[:] = 0x55

    async def tb(ctx, mon):
        ctx.set(bus.rready, 1)
        ctx.set(bus.bready, 1)
        await send_ar(ctx, bus, 240, 4, id=2)
        await send_aw(ctx, bus, 248, 2, id=3)
        await send_w(ctx, bus, [0x1111111111111111, 0x2222222222222222])
        await send_aw(ctx, bus, 0x1000, 1, id=4)
        await send_w(ctx, bus, [0x3333333333333333])
        await wait_for(ctx, lambda: len(mon.r) == 4 and len(mon.b) == 2)

    mon = simulate(port, mem, tb)
    fives = 0x5555555555555555
    assert [r[1:] for r in mon.r] == [
        (2, fives, RESP_OKAY, 0), (2, fives, RESP_OKAY, 0),
        (2, 0, RESP_SLVERR, 0), (2, 0, RESP_SLVERR, 1)]
    assert [b[1:] for b in mon.b] == [(3, RESP_SLVERR), (4, RESP_SLVERR)]
    assert mem.mem.size == 256
    assert (mem.mem[248:] == 0x11).all() and (mem.mem[:248] == 0x55).all()


# Protocol checks.

async def ar_crossing_4k(ctx, bus):
    await send_ar(ctx, bus, 0xFF8, 2)


async def ar_wrong_size(ctx, bus):
    await send_ar(ctx, bus, 0, 1, size=2)


async def aw_fixed_burst(ctx, bus):
    await send_aw(ctx, bus, 0, 1, burst=0b00)


async def aw_unaligned(ctx, bus):
    await send_aw(ctx, bus, 0x104, 1)


async def wlast_early(ctx, bus):
    await send_aw(ctx, bus, 0, 4)
    await send_w(ctx, bus, [1, 2, 3, 4], last=1)


async def wlast_missing(ctx, bus):
    await send_aw(ctx, bus, 0x20, 2)
    await send_w(ctx, bus, [1, 2], last=5)


async def wvalid_dropped(ctx, bus):
    # No AW yet, so WREADY is low: the offered beat must stay.
    ctx.set(bus.wvalid, 1)
    await ctx.tick()
    ctx.set(bus.wvalid, 0)
    await ctx.tick()


async def wdata_changed(ctx, bus):
    ctx.set(bus.wvalid, 1)
    ctx.set(bus.wdata, 1)
    await ctx.tick()
    ctx.set(bus.wdata, 2)
    await ctx.tick()


async def arvalid_dropped(ctx, bus):
    for _ in range(16):   # fill the read queue (RREADY stays low)
        await send_ar(ctx, bus, 0, 1)
    ctx.set(bus.arvalid, 1)
    await ctx.tick()
    ctx.set(bus.arvalid, 0)
    await ctx.tick()


async def awaddr_changed(ctx, bus):
    for _ in range(16):   # fill the write queue (no W data)
        await send_aw(ctx, bus, 0, 1)
    ctx.set(bus.awvalid, 1)
    await ctx.tick()
    ctx.set(bus.awaddr, 0x40)
    await ctx.tick()


@pytest.mark.parametrize("manager, message", [
    (ar_crossing_4k, "cycle 0: AR burst of 2 beats at 0xff8 crosses a 4 KB boundary"),
    (ar_wrong_size, "cycle 0: ARSIZE must be 3 (8-byte beats, the bus width), not 2"),
    (aw_fixed_burst, "cycle 0: AWBURST must be INCR, not FIXED (0b00)"),
    (aw_unaligned, "cycle 0: AWADDR 0x104 is not aligned to the 8-byte bus width"),
    (wlast_early, "WLAST set on beat 2 of a 4-beat write burst at 0x0"),
    (wlast_missing, "WLAST not set on beat 2, the last of a write burst at 0x20"),
    (wvalid_dropped, "cycle 1: WVALID dropped before WREADY"),
    (wdata_changed, "cycle 1: WDATA changed from 0x1 to 0x2 while WVALID was high and WREADY low"),
    (arvalid_dropped, "cycle 17: ARVALID dropped before ARREADY"),
    (awaddr_changed,
     "cycle 17: AWADDR changed from 0x0 to 0x40 while AWVALID was high and AWREADY low"),
], ids=lambda v: v.__name__ if callable(v) else "")
def test_protocol_violation_raises(manager, message):
    port = Port()
    mem = AXI4Memory(port.axi, size=8192)

    async def tb(ctx, mon):
        await manager(ctx, port.axi)
        for _ in range(4):
            await ctx.tick()

    with pytest.raises(AXIProtocolError, match=re.escape(message)):
        simulate(port, mem, tb, deadline=100)


@pytest.mark.parametrize("width, size", [(32, 2), (128, 4)])
def test_32_and_128_bit_buses_check_size_against_their_width(width, size):
    port = Port(width)
    bus = port.axi
    mem = AXI4Memory(bus, size=4096)

    async def ok(ctx, mon):
        ctx.set(bus.rready, 1)
        await send_ar(ctx, bus, 0, 2, size=size)
        await wait_for(ctx, lambda: len(mon.r) == 2)

    simulate(port, mem, ok)

    port = Port(width)
    mem = AXI4Memory(port.axi, size=4096)

    async def bad(ctx, mon):
        await send_ar(ctx, port.axi, 0, 2, size=3)

    with pytest.raises(AXIProtocolError, match=re.escape(
            f"ARSIZE must be {size} ({width // 8}-byte beats, the bus width), not 3")):
        simulate(port, mem, bad)


# Constructor checks.

@pytest.mark.parametrize("kwargs, error, message", [
    ({"size": 0}, ValueError, "Memory size must be a positive integer, not 0"),
    ({"size": 4.0}, TypeError, "Memory size must be a positive integer, not 4.0"),
    ({"size": 64, "latency": 0}, ValueError, "Latency must be a positive integer, not 0"),
    ({"size": 64, "latency": True}, TypeError, "Latency must be a positive integer, not True"),
    ({"size": 64, "bytes_per_cycle": -1}, ValueError,
     "Bytes per cycle must be a positive integer, not -1"),
    ({"size": 64, "bytes_per_cycle": "8"}, TypeError,
     "Bytes per cycle must be a positive integer, not '8'"),
    ({"size": 4, "image": b"12345"}, ValueError,
     "Image of 5 bytes does not fit in a memory of 4 bytes"),
    ({"size": 64, "image": [1, 2]}, TypeError,
     "Image must be a uint8 numpy array or bytes, not list"),
    ({"size": 64, "image": np.zeros(4, dtype=np.int8)}, TypeError,
     "Image must be a uint8 numpy array, not an array of int8"),
    ({"size": 64, "image": np.zeros((2, 2), dtype=np.uint8)}, ValueError,
     "Image must be a 1-D array, not 2-D"),
])
def test_constructor_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        AXI4Memory(manager_bus(), **kwargs)


def test_constructor_rejects_subordinate_side_bus():
    sig = AXI4Signature(addr_width=32, data_width=64, id_width=4)
    with pytest.raises(TypeError, match=r"^Bus must be the manager side of an AXI4Signature "):
        AXI4Memory(sig.flip().create(), size=64)
    with pytest.raises(TypeError, match=r"^Bus must be the manager side of an AXI4Signature "):
        AXI4Memory(object(), size=64)
