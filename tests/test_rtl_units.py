"""Pieces of the core's units checked against the rule they implement."""

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from npu.rtl.config import NPUConfig
from npu.rtl.units import _burst_len


@pytest.mark.parametrize("bus_bytes", [4, 8, 16])
def test_burst_length_is_what_is_left_cut_at_the_4k_boundary_and_at_256_beats(bus_bytes):
    # AXI: a burst may not cross a 4 KB boundary and has at most 256 beats.
    m = Module()
    addr, left = Signal(16), Signal(range(20001))
    beats = _burst_len(m, NPUConfig(bus_width=8 * bus_bytes), addr, left)
    edges = [(a, n) for a in (0, 1, 4095, 4096 - bus_bytes, 4097 - bus_bytes, 4095 - bus_bytes,
                              8191, 65535, 4000)
             for n in (0, 1, 2, 255, 256, 257, 511, 512, 513, 4096, 20000)]
    rng = np.random.default_rng(bus_bytes)
    cases = edges + list(zip(rng.integers(0, 1 << 16, 2000).tolist(),
                             rng.integers(0, 20001, 2000).tolist()))
    wrong = []

    async def tb(ctx):
        for a, n in cases:
            ctx.set(addr, a)
            ctx.set(left, n)
            expected = min(n, (4096 - a % 4096) // bus_bytes, 256)
            if ctx.get(beats) != expected:
                wrong.append((a, n, ctx.get(beats), expected))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    assert wrong == []
