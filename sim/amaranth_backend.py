"""Run programs on the NPU gateware in the Amaranth simulator.

The host side behaves like the real driver: it writes the control registers over AXI4-Lite,
starts the cores, waits for the interrupt and reads status and counters back. External memory
is the AXI4 model of ``axi_mem.py``.
"""


from npu.rtl.control import COUNTERS, RegisterMap
from npu.rtl.isa import CoreState, ErrorCode
from npu.rtl.top import NPU

from .amaranth_sim import CLOCK_PERIOD, run_simulation
from .axi_mem import AXI4Memory
from .axil import axil_read, axil_write
from .backend import CoreResult, NPUTimeout, RunResult, TimedMemoryBackend, check_run_arguments
from .ecp5 import OnPlatform

__all__ = ["AmaranthBackend", "configure_core", "read_core"]

#: How often (in simulated cycles) a progress callback is told how far the run is.
PROGRESS_CYCLES = 2000


class AmaranthBackend(TimedMemoryBackend):
    """Cycle-exact runs of ``NPU(config)`` in the Amaranth simulator
    (``AmaranthBackend(config, latency=8, bytes_per_cycle=8)``, see
    :class:`~npu.sim.backend.TimedMemoryBackend`). ``platform``, if given, is what the design
    is elaborated for (an object with the attributes of ``npu.rtl.ecp5``, with the DSP
    instances it asks for modelled: :func:`~npu.sim.ecp5.use_mult18x18d_model`)."""

    name = "amaranth"

    def __init__(self, config, *, platform=None, **timing):
        super().__init__(config, **timing)
        self.platform = platform

    def run(self, memory, programs, windows=None, *, max_cycles=1_000_000, progress=None):
        """Run and return a RunResult; ``progress(cycles)`` is called every PROGRESS_CYCLES
        simulated cycles if given; past ``max_cycles`` raise NPUTimeout."""
        programs, windows = check_run_arguments(self.config, memory, programs, windows)
        dut = NPU(self.config)
        mem = AXI4Memory(dut.axi, size=len(memory), latency=self.latency,
                         bytes_per_cycle=self.bytes_per_cycle, image=memory)
        n = len(programs)
        out = {}

        async def host(ctx):
            bus = dut.csr
            all_bits = (1 << n) - 1
            await axil_write(ctx, bus, RegisterMap.IRQ_ENABLE, all_bits)
            for i, (prog, window) in enumerate(zip(programs, windows)):
                await configure_core(ctx, bus, i, prog, window)
            for i in range(n):
                await axil_write(ctx, bus, RegisterMap.core(i, RegisterMap.CTRL), 1)
            finished = 0
            while finished != all_bits:
                # `changed` rather than `tick().until()`: a testbench left waiting when the
                # budget stops the simulation must not hold an open async generator.
                while not ctx.get(dut.irq):
                    await ctx.changed(dut.irq)
                await ctx.tick()
                status, _ = await axil_read(ctx, bus, RegisterMap.IRQ_STATUS)
                finished |= status
                await axil_write(ctx, bus, RegisterMap.IRQ_STATUS, status)
            out["cores"] = [await read_core(ctx, bus, i) for i in range(n)]

        async def watchdog(ctx):
            # A background process: it does not keep the simulation alive, but if the budget
            # runs out first it records the cores' state and stops the simulation.
            await ctx.delay((max_cycles - 0.5) * CLOCK_PERIOD)
            ctrls = [dut.cores[i].ctrl for i in range(n)]
            _, _, *values = await ctx.tick().sample(
                *(v for c in ctrls for v in (c.state, c.error, c.pc, c.counters)))
            raise _BudgetExhausted([_snapshot(*values[4 * i:4 * i + 4]) for i in range(n)])

        async def reporter(ctx):
            # Progress every PROGRESS_CYCLES simulated cycles (a background process).
            cycles = 0
            while True:
                await ctx.delay(PROGRESS_CYCLES * CLOCK_PERIOD)
                cycles += PROGRESS_CYCLES
                progress(cycles)

        processes = [mem.process, watchdog] + ([reporter] if progress is not None else [])
        try:
            top = dut if self.platform is None else OnPlatform(dut, self.platform)
            run_simulation(top, host, processes=processes, name="npu")
        except _BudgetExhausted as exc:
            raise NPUTimeout(max_cycles, exc.cores) from None
        cores = [CoreResult(state=c["state"], error=c["error"], pc=c["pc"],
                            counters=c["counters"]) for c in out["cores"]]
        return RunResult(memory=mem.mem.copy(), cores=cores,
                         cycles=max(c.counters["cycles"] for c in cores))



class _BudgetExhausted(Exception):
    def __init__(self, cores):
        super().__init__("cycle budget exhausted")
        self.cores = cores


def _snapshot(state, error, pc, counters):
    return dict(state=state, error=error, pc=pc,
                counters={name: int(getattr(counters, name)) for name in COUNTERS})


async def configure_core(ctx, bus, i, prog, window):
    """Write core ``i``'s program address and its ``(base, limit)`` window over AXI4-Lite."""
    for reg, value in ((RegisterMap.PROG_ADDR, prog), (RegisterMap.WIN_BASE, window[0]),
                       (RegisterMap.WIN_LIMIT, window[1])):
        await axil_write(ctx, bus, RegisterMap.core(i, reg), value)


async def read_core(ctx, bus, i):
    """Core ``i``'s state, error, pc and counters, read over AXI4-Lite."""
    status, _ = await axil_read(ctx, bus, RegisterMap.core(i, RegisterMap.STATUS))
    pc, _ = await axil_read(ctx, bus, RegisterMap.core(i, RegisterMap.PC))
    counters = {}
    for name in COUNTERS:
        counters[name], _ = await axil_read(ctx, bus, RegisterMap.counter(i, name))
    return dict(state=CoreState(status & 3), error=ErrorCode((status >> 4) & 0xF), pc=pc,
                counters=counters)
