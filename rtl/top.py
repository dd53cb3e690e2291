"""The NPU top: cores, the memory interconnect, the control registers and the barrier."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bus import AXI4LiteSignature, AXI4Signature
from .config import NPUConfig
from .control import COUNTERS
from .core import NPUCore
from .csr import ControlRegisters
from .interconnect import AXI4Arbiter
from .isa import CoreState

__all__ = ["NPU"]

#: ID bits of one core's memory port (fetch/store vs load).
CORE_ID_WIDTH = 1


class NPU(wiring.Component):
    """``config.cores`` cores sharing one AXI4 manager port, with an AXI4-Lite register file.

    Ports
    -----
    axi : Out(AXI4Signature)
        External memory. The upper ID bits name the core.
    csr : In(AXI4LiteSignature)
        Control and status registers (npu.rtl.control.RegisterMap).
    irq : Out(1)
        High while an enabled core has finished (IRQ_STATUS & IRQ_ENABLE).

    Attributes
    ----------
    cores : list of NPUCore
    """

    def __init__(self, config):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        self.cores = [NPUCore(config) for _ in range(config.cores)]
        self.id_width = CORE_ID_WIDTH + ceil_log2(config.cores)
        super().__init__({
            "axi": Out(AXI4Signature(addr_width=config.addr_width,
                                     data_width=config.bus_width, id_width=self.id_width)),
            "csr": In(AXI4LiteSignature(addr_width=ControlRegisters.ADDR_WIDTH)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.csr = csr = ControlRegisters(cfg)
        m.submodules.arbiter = arbiter = AXI4Arbiter(
            managers=cfg.cores, addr_width=cfg.addr_width, data_width=cfg.bus_width,
            id_width=CORE_ID_WIDTH)
        wiring.connect(m, wiring.flipped(self.csr), csr.bus)
        wiring.connect(m, arbiter.out, wiring.flipped(self.axi))
        m.d.comb += self.irq.eq(csr.irq)

        for i, core in enumerate(self.cores):
            m.submodules[f"core{i}"] = core
            wiring.connect(m, core.axi, arbiter.managers[i])
            regs = csr.cores[i]
            m.d.comb += [
                core.ctrl.start.eq(regs.start),
                core.ctrl.prog_addr.eq(regs.prog_addr),
                core.ctrl.win_base.eq(regs.win_base),
                core.ctrl.win_limit.eq(regs.win_limit),
                regs.state.eq(core.ctrl.state),
                regs.error.eq(core.ctrl.error),
                regs.pc.eq(core.ctrl.pc),
            ]
            for name in COUNTERS:
                m.d.comb += getattr(regs.counters, name).eq(getattr(core.ctrl.counters, name))

        # Barrier: released in the cycle every running core has arrived. Cores that are not
        # running (idle, done, halted on an error) do not hold the others back.
        arrived = [core.ctrl.barrier_arrived for core in self.cores]
        waiting_for = [~core.ctrl.barrier_arrived & (core.ctrl.state == CoreState.BUSY)
                       for core in self.cores]
        any_arrived = arrived[0]
        for a in arrived[1:]:
            any_arrived = any_arrived | a
        nobody_missing = ~waiting_for[0]
        for w in waiting_for[1:]:
            nobody_missing = nobody_missing & ~w
        for core in self.cores:
            m.d.comb += core.ctrl.barrier_release.eq(any_arrived & nobody_missing)
        return m
