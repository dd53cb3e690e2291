# amaranth: UnusedElaboratable=no
"""AXI4MemoryHDL against the Python AXI4Memory, in the Amaranth simulator: the same manager
traffic gets the same ready/valid trace, the same R and B beats in the same cycles and leaves
the same memory; and the real NPU counts the same cycles on either memory."""

import re

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npu.firmware.device import build_gemm_image
from npu.rtl.bus import BURST_INCR, RESP_OKAY, RESP_SLVERR, AXI4Signature
from npu.rtl.config import NPUConfig
from npu.rtl.control import COUNTERS, RegisterMap
from npu.rtl.isa import CoreState
from npu.sim.amaranth_backend import AmaranthBackend
from npu.sim.amaranth_sim import run_simulation
from npu.sim.axi_mem import AXI4Memory
from npu.sim.axi_mem_hdl import AXI4MemoryHDL
from npu.sim.axi_monitor import AXI4Monitor
from npu.sim.axil import axil_read, axil_write
from npu.sim.streams import offer
from npu.sim.verilator_backend import NPUHarness


def signature(data_width):
    return AXI4Signature(addr_width=32, data_width=data_width, id_width=4)


class PythonBench(wiring.Component):
    """A manager port with no logic; AXI4Memory answers on it."""

    def __init__(self, data_width):
        super().__init__({"axi": Out(signature(data_width))})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        return m


class HDLBench(wiring.Component):
    """The manager side as inputs (the testbench drives them) into an AXI4MemoryHDL."""

    def __init__(self, data_width, *, size, capacity, latency, bytes_per_cycle):
        self.size = size
        self.mem = AXI4MemoryHDL(addr_width=32, data_width=data_width, id_width=4,
                                 capacity=capacity, latency=latency,
                                 bytes_per_cycle=bytes_per_cycle)
        super().__init__({"axi": In(signature(data_width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = self.mem
        wiring.connect(m, wiring.flipped(self.axi), self.mem.axi)
        m.d.comb += self.mem.size.eq(self.size)
        return m


def make_traffic(seed, bus_bytes, size, span):
    """Random bursts: reads and writes anywhere in ``[0, span)`` (past ``size`` they get
    SLVERR), never across 4 KB, with random gaps, strobes and ready patterns."""
    rng = np.random.default_rng(seed)

    def burst():
        beats = int(rng.integers(1, 17))
        page = int(rng.integers(0, span // 4096))
        offset = int(rng.integers(0, (4096 - beats * bus_bytes) // bus_bytes + 1)) * bus_bytes
        return page * 4096 + offset, beats

    reads = []
    for _ in range(40):
        addr, beats = burst()
        reads.append((addr, beats, int(rng.integers(0, 16)), int(rng.choice([0, 0, 0, 1, 3]))))
    writes = []
    full = (1 << bus_bytes) - 1
    for _ in range(30):
        addr, beats = burst()
        data = [int.from_bytes(rng.bytes(bus_bytes), "little") for _ in range(beats)]
        strb = [full if rng.random() < 0.7 else int(rng.integers(0, full + 1))
                for _ in range(beats)]
        writes.append((addr, beats, int(rng.integers(0, 16)), int(rng.choice([0, 0, 2, 5])),
                       data, strb))
    # Ready patterns: mostly high, with runs low long enough to fill the 16-deep queues.
    rready = (rng.random(6000) < 0.8).astype(int)
    rready[100:180] = 0
    bready = (rng.random(6000) < 0.7).astype(int)
    bready[300:400] = 0
    w_gaps = rng.choice([0, 0, 0, 1, 2], size=1000)
    return reads, writes, rready.tolist(), bready.tolist(), w_gaps.tolist()


async def idle(ctx, cycles):
    for _ in range(cycles):
        await ctx.tick()


def run_traffic(bench, bus, processes, traffic, size_log2, after=None):
    """Drive ``traffic`` into ``bus``; returns the AXI4Monitor once every response has arrived.
    ``after(ctx)``, if given, runs in the testbench right then."""
    reads, writes, rready, bready, w_gaps = traffic
    trace = AXI4Monitor(bus)
    n_beats = sum(r[1] for r in reads)
    done = []

    async def ar(ctx):
        for addr, beats, rid, gap in reads:
            await idle(ctx, gap)
            await offer(ctx, bus.arvalid, bus.arready, [
                (bus.araddr, addr), (bus.arlen, beats - 1), (bus.arid, rid),
                (bus.arburst, BURST_INCR), (bus.arsize, size_log2)])

    async def aw(ctx):
        for addr, beats, wid, gap, _, _ in writes:
            await idle(ctx, gap)
            await offer(ctx, bus.awvalid, bus.awready, [
                (bus.awaddr, addr), (bus.awlen, beats - 1), (bus.awid, wid),
                (bus.awburst, BURST_INCR), (bus.awsize, size_log2)])

    async def w(ctx):
        # W runs ahead of AW whenever it can: the memory must hold WREADY low until the AW.
        k = 0
        for _, beats, _, _, data, strb in writes:
            for i in range(beats):
                await idle(ctx, w_gaps[k % len(w_gaps)])
                k += 1
                await offer(ctx, bus.wvalid, bus.wready, [
                    (bus.wdata, data[i]), (bus.wstrb, strb[i]), (bus.wlast, int(i == beats - 1))])

    async def readies(ctx):
        cycle = 0
        while len(trace.r) < n_beats or len(trace.b) < len(writes):
            ctx.set(bus.rready, rready[cycle % len(rready)])
            ctx.set(bus.bready, bready[cycle % len(bready)])
            await ctx.tick()
            cycle += 1
        if after is not None:
            await after(ctx)
        done.append(cycle)

    run_simulation(bench, ar, aw, w, readies, processes=[*processes, trace.process],
                   deadline_cycles=20000)
    assert done, "the traffic did not complete before the deadline"
    return trace


def to_words(image, capacity, bb):
    padded = np.zeros(capacity, np.uint8)
    padded[:len(image)] = image
    return [int.from_bytes(padded[i:i + bb].tobytes(), "little") for i in range(0, capacity, bb)]


@pytest.mark.parametrize(("data_width", "latency", "bytes_per_cycle"), [
    (64, 8, 8), (64, 1, 8), (64, 2, 4), (64, 3, 3), (32, 5, 1), (128, 4, 16), (128, 1, 20),
])
def test_random_traffic_is_cycle_identical_to_the_python_model(data_width, latency,
                                                               bytes_per_cycle):
    bb = data_width // 8
    size = 3 * 4096 + 1000 + bb // 2  # the last word straddles the end: SLVERR
    capacity = 4 * 4096
    traffic = make_traffic(data_width * 100 + latency * 10 + bytes_per_cycle, bb, size,
                           span=6 * 4096)  # also past the capacity
    image = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    size_log2 = bb.bit_length() - 1

    py = PythonBench(data_width)
    model = AXI4Memory(py.axi, size=size, latency=latency, bytes_per_cycle=bytes_per_cycle,
                       image=image)
    expected = run_traffic(py, py.axi, [model.process], traffic, size_log2)

    hdl = HDLBench(data_width, size=size, capacity=capacity, latency=latency,
                   bytes_per_cycle=bytes_per_cycle)
    hdl.mem.storage.init = to_words(image, capacity, bb)
    final = {}

    async def after(ctx):
        final["words"] = [ctx.get(hdl.mem.storage[i]) for i in range(capacity // bb)]
        final["written"] = tuple(ctx.get(s) for s in (hdl.mem.written, hdl.mem.written_lo,
                                                      hdl.mem.written_hi))
        final["protocol_error"] = ctx.get(hdl.mem.protocol_error)

    got = run_traffic(hdl, hdl.axi, [], traffic, size_log2, after=after)

    assert got.r == expected.r
    assert got.b == expected.b
    assert got.edges == expected.edges
    memory = np.frombuffer(b"".join(w.to_bytes(bb, "little") for w in final["words"]), np.uint8)
    np.testing.assert_array_equal(memory[:size], model.mem)
    # The traffic reached the corners it is meant to.
    assert any(r[3] == RESP_SLVERR for r in expected.r)
    assert any(r[3] == RESP_OKAY for r in expected.r)
    assert any(b[2] == RESP_SLVERR for b in expected.b)
    assert any(not e[3] for e in expected.edges), "the read queue never filled"
    _, writes, *_ = traffic
    written = [beat for addr, beats, *_ in writes
               for beat in range(addr // bb, addr // bb + beats) if (beat + 1) * bb <= size]
    assert final["written"] == (1, min(written), max(written))
    assert final["protocol_error"] == 0


def test_backdoor_loads_and_reads_one_word_per_cycle_and_is_not_counted_as_written():
    bench = HDLBench(64, size=4096, capacity=4096, latency=8, bytes_per_cycle=8)
    mem = bench.mem
    values = [0x0123456789ABCDEF * (i + 1) % (1 << 64) for i in range(10)]
    got = []

    async def tb(ctx):
        for i, value in enumerate(values):
            ctx.set(mem.bd_addr, 100 + i)
            ctx.set(mem.bd_wdata, value)
            ctx.set(mem.bd_we, 1)
            await ctx.tick()
        ctx.set(mem.bd_we, 0)
        # The word of the address presented at an edge is on bd_rdata after it.
        for i in range(len(values)):
            ctx.set(mem.bd_addr, 100 + i)
            await ctx.tick()
            got.append(ctx.get(mem.bd_rdata))
        assert ctx.get(mem.written) == 0

    run_simulation(bench, tb)
    assert got == values


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"capacity": 100}, ValueError, "Capacity must be a multiple of 8 bytes, not 100"),
    ({"capacity": 0}, ValueError, "Capacity must be a positive integer, not 0"),
    ({"latency": 0}, ValueError, "Latency must be a positive integer, not 0"),
    ({"bytes_per_cycle": 1.5}, TypeError, "Bytes per cycle must be a positive integer, not 1.5"),
    ({"addr_width": 16, "capacity": 1 << 17}, ValueError,
     "Capacity must be at most 65536 bytes, not 131072"),
])
def test_bad_constructor_arguments_are_rejected(kwargs, error, message):
    args = {"addr_width": 32, "data_width": 64, "id_width": 2, "capacity": 4096, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        AXI4MemoryHDL(**args)


def two_core_gemm(cfg, m=12, k=10, n=6):
    """A raw GEMM from the firmware's compiler split over two cores, each of which ends with a
    BARRIER (the first to finish waits for the other)."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    image = build_gemm_image(cfg, a, b, raw=True, cores=2, barrier_after=True)
    return image, a, b


def test_npu_counts_the_same_cycles_on_the_hdl_memory_as_on_the_python_model():
    cfg = NPUConfig(rows=4, cols=4, cores=2)
    image, a, b = two_core_gemm(cfg)
    memory, programs = image.memory, image.starts
    expected = AmaranthBackend(cfg).run(memory, programs)

    harness = NPUHarness(cfg, capacity=len(memory), latency=8, bytes_per_cycle=8)
    harness.mem.storage.init = to_words(memory, len(memory), cfg.bus_bytes)
    cores = []

    async def host(ctx):
        # AmaranthBackend's host, register write for register write.
        bus = harness.csr
        ctx.set(harness.mem_size, len(memory))
        await axil_write(ctx, bus, RegisterMap.IRQ_ENABLE, 3)
        for i, prog in enumerate(programs):
            await axil_write(ctx, bus, RegisterMap.core(i, RegisterMap.PROG_ADDR), prog)
            await axil_write(ctx, bus, RegisterMap.core(i, RegisterMap.WIN_BASE), 0)
            await axil_write(ctx, bus, RegisterMap.core(i, RegisterMap.WIN_LIMIT), len(memory))
        for i in range(2):
            await axil_write(ctx, bus, RegisterMap.core(i, RegisterMap.CTRL), 1)
        finished = 0
        while finished != 3:
            await ctx.tick().until(harness.irq)
            status, _ = await axil_read(ctx, bus, RegisterMap.IRQ_STATUS)
            finished |= status
            await axil_write(ctx, bus, RegisterMap.IRQ_STATUS, status)
        for i in range(2):
            status, _ = await axil_read(ctx, bus, RegisterMap.core(i, RegisterMap.STATUS))
            counters = {}
            for name in COUNTERS:
                counters[name], _ = await axil_read(ctx, bus, RegisterMap.counter(i, name))
            cores.append((CoreState(status & 3), counters))
        words = [ctx.get(harness.mem.storage[i]) for i in range(len(memory) // cfg.bus_bytes)]
        cores.append(b"".join(x.to_bytes(cfg.bus_bytes, "little") for x in words))

    run_simulation(harness, host)
    *got, final_image = cores
    assert [(c.state, c.counters) for c in expected.cores] == got
    assert got[0][1]["cycles"] > 0 and got[0][0] is CoreState.DONE
    np.testing.assert_array_equal(np.frombuffer(final_image, np.uint8), expected.memory)
    np.testing.assert_array_equal(image.read_output(expected.memory),
                                  a.astype(np.int32) @ b)
