"""The AXI4-Lite control registers of the NPU (layout: :class:`~.control.RegisterMap`)."""

from amaranth import C, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .bus import RESP_OKAY, RESP_SLVERR, AXI4LiteSignature
from .config import NPUConfig
from .control import COUNTERS, NPU_ID, CoreControlSignature, RegisterMap
from .isa import CoreState

__all__ = ["ControlRegisters"]


def _merge_bytes(old, data, strb):
    """``old`` with the bytes selected by ``strb`` replaced by those of ``data``."""
    return Cat(Mux(strb[b], data.word_select(b, 8), old.word_select(b, 8))
               for b in range(len(strb)))


class ControlRegisters(wiring.Component):
    """AXI4-Lite subordinate holding the global and per-core registers of ``RegisterMap``.

    Decoding uses the word address (``addr[1:0]`` are ignored). Registers:

    * ``ID`` (R), ``CONFIG`` (R): constants of the build.
    * ``IRQ_STATUS`` (R, write 1 to clear): bit i is set when core i's ``state`` goes from
      BUSY to DONE or ERROR; the bit and ``irq`` rise the cycle after the state changes. An
      event in the same cycle as a clearing write wins. Bits above ``cores`` read 0.
    * ``IRQ_ENABLE`` (RW), reset 0. ``irq = |(IRQ_STATUS & IRQ_ENABLE)``.
    * Per core: ``CTRL`` (W; reads 0): writing bit 0 = 1 gives a one-cycle ``start`` pulse the
      cycle after the write takes effect, unless the core is BUSY then (the write is ignored,
      still OKAY). ``STATUS`` (R): state [1:0], error [7:4]. ``PROG_ADDR`` (RW, reset 0),
      ``WIN_BASE`` (RW, reset 0), ``WIN_LIMIT`` (RW, reset 0xFFFF_FFFF: the window is
      ``[WIN_BASE, WIN_LIMIT)``, so after reset everything but the last byte of a 32-bit
      space). ``PC`` (R) and the ``COUNTERS`` (R) mirror the core.

    Bus behaviour: AW and W are taken independently, in either order, one of each buffered;
    the write takes effect once both are present and the previous B has been accepted, and B
    follows a cycle later. RW registers honour ``wstrb`` byte by byte. Writes to a read-only
    or unmapped address answer SLVERR and change nothing; reads of an unmapped address answer
    SLVERR with data 0. A read answers R the cycle after its AR handshake. Every ``valid`` and
    ``ready`` the block drives comes from a register.

    The ``barrier_arrived`` / ``barrier_release`` members of ``core<i>`` are not used: the
    CSR leaves ``barrier_release`` undriven (0) and the NPU top drives the barrier.

    Parameters
    ----------
    config : NPUConfig

    Ports
    -----
    bus : In(AXI4LiteSignature(addr_width=12))
    core0, core1, ... : Out(CoreControlSignature()), one per ``config.cores``; also in
        ``cores``.
    irq : Out(1)
    """

    ADDR_WIDTH = 12
    WIN_LIMIT_RESET = 0xFFFF_FFFF

    def __init__(self, config):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=self.ADDR_WIDTH)),
            **{f"core{i}": Out(CoreControlSignature()) for i in range(config.cores)},
            "irq": Out(1),
        })
        self.cores = [getattr(self, f"core{i}") for i in range(config.cores)]

    @property
    def config_value(self):
        """Value of the CONFIG register."""
        c = self.config
        return c.rows | c.cols << 8 | c.cores << 16 | c.bus_bytes << 24

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        n = len(self.cores)

        def word(offset):
            return offset >> 2

        # Register file.
        irq_status = Signal(n)
        irq_enable = Signal(n)
        rw_names = ("prog_addr", "win_base", "win_limit")
        rw_offsets = (RegisterMap.PROG_ADDR, RegisterMap.WIN_BASE, RegisterMap.WIN_LIMIT)
        rw = [{name: Signal(32, name=f"{name}{i}",
                            init=self.WIN_LIMIT_RESET if name == "win_limit" else 0)
               for name in rw_names} for i in range(n)]
        start = [Signal(name=f"start{i}") for i in range(n)]
        for i, core in enumerate(self.cores):
            m.d.comb += core.start.eq(start[i])
            for name in rw_names:
                m.d.comb += getattr(core, name).eq(rw[i][name])
        m.d.comb += self.irq.eq((irq_status & irq_enable).any())

        # Interrupt events: a core leaving BUSY for DONE or ERROR.
        events = []
        for i, core in enumerate(self.cores):
            prev = Signal(CoreState, name=f"prev_state{i}")
            m.d.sync += prev.eq(core.state)
            events.append((prev == CoreState.BUSY)
                          & ((core.state == CoreState.DONE) | (core.state == CoreState.ERROR)))
        irq_clear = Signal(n)
        m.d.sync += irq_status.eq((irq_status & ~irq_clear) | Cat(events))

        # Write channel: one AW and one W buffered, in either order.
        aw_full = Signal()
        aw_addr = Signal(self.ADDR_WIDTH)
        w_full = Signal()
        w_data = Signal(32)
        w_strb = Signal(4)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        for s in start:
            m.d.sync += s.eq(0)
        with m.If(aw_full & w_full & ~bus.bvalid):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1),
                         bus.bresp.eq(RESP_OKAY)]
            with m.Switch(aw_addr[2:]):
                with m.Case(word(RegisterMap.IRQ_STATUS)):
                    m.d.comb += irq_clear.eq(Mux(w_strb[0], w_data[:n], 0))
                with m.Case(word(RegisterMap.IRQ_ENABLE)):
                    m.d.sync += irq_enable.eq(_merge_bytes(irq_enable, w_data, w_strb)[:n])
                for i, core in enumerate(self.cores):
                    busy = core.state == CoreState.BUSY
                    with (m.Case(word(RegisterMap.core(i, RegisterMap.CTRL))),
                          m.If(w_strb[0] & w_data[0] & ~busy)):
                        m.d.sync += start[i].eq(1)
                    for name, offset in zip(rw_names, rw_offsets):
                        reg = rw[i][name]
                        with m.Case(word(RegisterMap.core(i, offset))):
                            m.d.sync += reg.eq(_merge_bytes(reg, w_data, w_strb))
                # Read-only and unmapped addresses.
                with m.Default():
                    m.d.sync += bus.bresp.eq(RESP_SLVERR)

        # Read channel: R the cycle after AR; the next AR once R has been taken.
        read_map = {
            word(RegisterMap.ID): NPU_ID,
            word(RegisterMap.CONFIG): self.config_value,
            word(RegisterMap.IRQ_STATUS): irq_status,
            word(RegisterMap.IRQ_ENABLE): irq_enable,
        }
        for i, core in enumerate(self.cores):
            read_map.update({
                word(RegisterMap.core(i, RegisterMap.CTRL)): 0,
                word(RegisterMap.core(i, RegisterMap.STATUS)):
                    Cat(core.state.as_value(), C(0, 2), core.error.as_value()),
                word(RegisterMap.core(i, RegisterMap.PC)): core.pc,
            })
            for name, offset in zip(rw_names, rw_offsets):
                read_map[word(RegisterMap.core(i, offset))] = rw[i][name]
            for k, name in enumerate(COUNTERS):
                read_map[word(RegisterMap.core(i, RegisterMap.COUNTER_BASE + 4 * k))] = \
                    core.counters[name]

        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rresp.eq(RESP_OKAY)]
            with m.Switch(bus.araddr[2:]):
                for address, value in read_map.items():
                    with m.Case(address):
                        m.d.sync += bus.rdata.eq(value)
                with m.Default():
                    m.d.sync += [bus.rdata.eq(0), bus.rresp.eq(RESP_SLVERR)]
        return m
