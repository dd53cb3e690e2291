"""Running gateware in the Amaranth simulator.

One place decides the clock period and whether a waveform is written: set ``NPU_VCD=1`` (or
``WAVES=1``) and each run writes ``build/waves/<name>.vcd``.
"""

import os
import re
from pathlib import Path

from amaranth.sim import Simulator

__all__ = ["run_simulation", "waves_requested"]

CLOCK_PERIOD = 1e-8  # 100 MHz; only the cycle count matters, the period just labels waveforms


def waves_requested():
    return any(os.environ.get(v, "") not in ("", "0") for v in ("NPU_VCD", "WAVES"))


def run_simulation(dut, *testbenches, processes=(), name="sim", deadline_cycles=None):
    """Simulate ``dut`` with one clock domain ``sync`` and the given async testbenches.

    Parameters
    ----------
    dut : Elaboratable
    testbenches : async callables ``f(ctx)``; the simulation ends when all of them return.
    processes : async callables run as background processes (``add_process``).
    name : str
        Waveform file name when waves are requested.
    deadline_cycles : int or None
        Stop after this many cycles even if the testbenches have not finished (they then fail
        with whatever they assert).
    """
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD)
    for tb in testbenches:
        sim.add_testbench(tb)
    for proc in processes:
        sim.add_process(proc)

    def _run():
        if deadline_cycles is None:
            sim.run()
        else:
            sim.run_until(deadline_cycles * CLOCK_PERIOD)

    if waves_requested():
        out = Path("build/waves")
        out.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        with sim.write_vcd(str(out / f"{safe}.vcd")):
            _run()
    else:
        _run()
