# amaranth: UnusedElaboratable=no
"""The board's on-chip AXI4 memory, plain and pipelined, against a bytearray."""

import numpy as np
import pytest
from amaranth import Shape

from npu.rtl.bus import RESP_OKAY, RESP_SLVERR, AXI4Signature
from npu.sim.amaranth_sim import run_simulation
from npu.synth.memory import AXI4OnChipMemory

SIZE = 16384                                  # eight 2K x 8 slices when pipelined
SIG = AXI4Signature(addr_width=16, data_width=64, id_width=2)
#: Two banks (128 KB of 32-bit words: twice a slice's 16K bits deep), 32 slices of 1 bit each.
TWO_BANKS = AXI4Signature(addr_width=17, data_width=32, id_width=2)


async def read_burst(ctx, bus, addr, beats, ident, rng):
    """One INCR read burst with a random rready; returns (words, resps, cycles from the AR
    handshake to the first rvalid)."""
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arlen, beats - 1)
    ctx.set(bus.arid, ident)
    ctx.set(bus.arvalid, 1)
    while not (await ctx.tick().sample(bus.arready))[-1]:
        pass
    ctx.set(bus.arvalid, 0)
    words, resps, cycles, seen = [], [], 0, False
    while len(words) < beats:
        ready = int(rng.random() < 0.6)
        ctx.set(bus.rready, ready)
        *_, valid, data, resp, last, rid = await ctx.tick().sample(
            bus.rvalid, bus.rdata, bus.rresp, bus.rlast, bus.rid)
        seen = seen or valid
        cycles += not seen
        if valid and ready:
            assert rid == ident and bool(last) == (len(words) == beats - 1)
            words.append(data)
            resps.append(resp)
    ctx.set(bus.rready, 0)
    return words, resps, cycles


async def write_burst(ctx, bus, addr, words, strobes):
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.awlen, len(words) - 1)
    ctx.set(bus.awvalid, 1)
    while not (await ctx.tick().sample(bus.awready))[-1]:
        pass
    ctx.set(bus.awvalid, 0)
    for i, (word, strobe) in enumerate(zip(words, strobes)):
        ctx.set(bus.wdata, word)
        ctx.set(bus.wstrb, strobe)
        ctx.set(bus.wlast, i == len(words) - 1)
        ctx.set(bus.wvalid, 1)
        while not (await ctx.tick().sample(bus.wready))[-1]:
            pass
    ctx.set(bus.wvalid, 0)
    ctx.set(bus.bready, 1)
    while not (await ctx.tick().sample(bus.bvalid))[-1]:
        pass
    ctx.set(bus.bready, 0)


def words_of(mem, addr, beats, size=8):
    return [int.from_bytes(mem[addr + size * i:addr + size * (i + 1)], "little")
            for i in range(beats)]


@pytest.mark.parametrize(("sig", "size", "pipelined", "slices"), [
    (SIG, SIZE, False, 1), (SIG, SIZE, True, 8), (TWO_BANKS, 1 << 17, True, 64)],
    ids=["plain", "pipelined", "pipelined-two-banks"])
def test_reads_and_writes_match_a_bytearray_across_banks_with_backpressure(
        sig, size, pipelined, slices):
    rng = np.random.default_rng(5)
    mem = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    dut = AXI4OnChipMemory(sig, size=size, init=mem, pipelined=pipelined)
    assert len(dut.data) == slices
    if pipelined:           # each slice one block RAM, all of it
        assert {d.depth * Shape.cast(d.shape).width for d in dut.data} == {dut.SLICE_BITS}
    word = sig.data_width // 8
    half = size // 2                        # the bank boundary of two banks
    firsts = []

    async def tb(ctx):
        bus = dut.bus
        # Across the middle, and a second burst right after.
        for addr, beats, ident in [(half - 8 * word, 20, 1), (half + word, 3, 2), (0, 1, 3)]:
            words, resps, first = await read_burst(ctx, bus, addr, beats, ident, rng)
            assert words == words_of(mem, addr, beats, word)
            assert resps == [RESP_OKAY] * beats
            firsts.append(first)
        if size < 1 << sig.addr_width:
            # Past the end: zeros and SLVERR.
            words, resps, _ = await read_burst(ctx, bus, size - 2 * word, 4, 0, rng)
            assert words == words_of(mem, size - 2 * word, 2, word) + [0, 0]
            assert resps == [RESP_OKAY] * 2 + [RESP_SLVERR] * 2
        # A write with byte strobes across the middle, read back.
        new = [int(v) for v in rng.integers(0, 1 << (8 * word - 1), 4)]
        strobes = [(1 << word) - 1, 0x0F, 0x0A, 0x81 & ((1 << word) - 1) | 1]
        await write_burst(ctx, bus, half - 2 * word, new, strobes)
        for i, (value, strobe) in enumerate(zip(new, strobes)):
            for b in range(word):
                if strobe >> b & 1:
                    mem[half - 2 * word + word * i + b] = value >> (8 * b) & 0xFF
        words, _, _ = await read_burst(ctx, bus, half - 3 * word, 6, 1, rng)
        assert words == words_of(mem, half - 3 * word, 6, word)

    run_simulation(dut, tb, name="axi_memory")
    # The first beat of a burst to an idle memory: the cycle after AR plain, four cycles
    # later pipelined (the READ state, the RAM, the bank register, the queue).
    assert firsts[0] == (3 if pipelined else 0)


def test_a_pipelined_memory_is_not_spram():
    with pytest.raises(ValueError, match="A pipelined memory is block RAM, not SPRAM"):
        AXI4OnChipMemory(SIG, size=SIZE, spram=True, pipelined=True)
