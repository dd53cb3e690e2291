"""One NPU core: fetch, dispatch, the load / execute / store units, the memories and counters.

See docs/architecture.md for the block diagram and the cycle model.
"""

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .bus import BURST_INCR, AXI4Signature
from .config import NPUConfig
from .control import CoreControlSignature
from .ecp5 import DSP_SPAN, fits_dsp_input, registered_multiply
from .isa import (
    INSTR_BITS,
    INSTR_BYTES,
    CoreState,
    ErrorCode,
    Instruction,
    Opcode,
    param_slot_bytes,
)
from .stage import replica, stage_if, staged
from .units import ExecuteUnit, FetchUnit, LoadUnit, ParamWords, StoreUnit

__all__ = ["AXI_ID_FETCH", "AXI_ID_LOAD", "NPUCore"]

AXI_ID_FETCH = 0
AXI_ID_LOAD = 1

#: Token semaphores count to 255; a program must not have more tokens outstanding.
SEMAPHORE_BITS = 8


class NPUCore(wiring.Component):
    """A core that runs one command stream.

    Parameters
    ----------
    config : NPUConfig

    Ports
    -----
    ctrl : In(CoreControlSignature)
        Start, program address, DMA window; state, error, pc and counters back.
    axi : Out(AXI4Signature)
        The core's memory port (ID 0: instruction fetch and stores, ID 1: loads).

    Attributes
    ----------
    scratchpad, accumulator, params, zflags : Memory
        (``zflags`` is None without ``config.zero_skip``.)
        The memories, for tests to peek.
    fetch, load, execute, store : the units.
    """

    def __init__(self, config):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        L = config.line_bytes
        self.scratchpad = Memory(shape=data.ArrayLayout(8, L), depth=config.sp_lines,
                                 init=[])
        self.accumulator = Memory(shape=data.ArrayLayout(32, config.cols),
                                  depth=config.acc_rows, init=[])
        self.params = Memory(shape=ParamWords(config), depth=config.param_slots, init=[])
        # Without zero skipping there are no zero flags to keep.
        self.zflags = (Memory(shape=config.sparse_group, depth=config.sp_lines, init=[])
                       if config.zero_skip else None)
        # The units, for tests and monitors to peek at.
        self.fetch = FetchUnit(config)
        self.load = LoadUnit(config)
        self.execute = ExecuteUnit(config)
        self.store = StoreUnit(config)
        super().__init__({
            "ctrl": In(CoreControlSignature()),
            "axi": Out(AXI4Signature(addr_width=config.addr_width,
                                     data_width=config.bus_width, id_width=1)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        B = cfg.bus_bytes

        state = Signal(CoreState)
        error = Signal(ErrorCode)
        # `window_bits` wide: with a narrow bus, addresses past its 2**addr_width bytes are
        # clipped to 2**addr_width (keeping an address's alignment), so that the window never
        # reaches past the bus and a program there faults instead of wrapping around.
        pc = Signal(cfg.window_bits)
        win_base = Signal(cfg.window_bits)
        win_limit = Signal(cfg.window_bits)

        def clip(value, keep=0):
            if cfg.window_bits == 32:
                return value
            aw = cfg.addr_width
            return Mux(value[aw:] != 0, (1 << aw) | value[:keep], value[:aw])
        restart = Signal()
        m.d.comb += [
            restart.eq(self.ctrl.start & (state != CoreState.BUSY)),
            self.ctrl.state.eq(state),
            self.ctrl.error.eq(error),
            self.ctrl.pc.eq(pc),
        ]

        # Everything with run state is reset when a run starts; memories keep their contents.
        # Retimed, that reset (thousands of flip-flops) comes from a register, a cycle after
        # the restart (dispatch waits for it), one replica per unit and queue, each placed by
        # its own unit rather than one register reaching all of them across the die.
        unit_reset = Signal()
        stage_if(m, cfg.retime, unit_reset, restart)

        def run_reset(name):
            """The run-start reset; retimed, a replica of it (``{name}_reset``)."""
            if not cfg.retime:
                return unit_reset
            reset = replica(unit_reset, name=f"{name}_reset")
            m.d.sync += reset.eq(restart)
            return reset

        def fresh(unit, name):
            """``unit`` reset with the run start, through its own ``run_reset``."""
            return ResetInserter(run_reset(name))(unit)

        fetch, load, execute, store = self.fetch, self.load, self.execute, self.store
        queues = {name: SyncFIFOBuffered(width=INSTR_BITS, depth=cfg.unit_queue_depth)
                  for name in ("load", "execute", "store")}
        m.submodules.fetch = fresh(fetch, "fetch")
        m.submodules.load = fresh(load, "load")
        m.submodules.execute = fresh(execute, "execute")
        m.submodules.store = fresh(store, "store")
        for name, queue in queues.items():
            m.submodules[f"{name}_queue"] = fresh(queue, f"{name}_queue")
        for name, unit in (("load", load), ("execute", execute), ("store", store)):
            queue = queues[name]
            m.d.comb += [
                unit.cmd.payload.eq(queue.r_data),
                unit.cmd.valid.eq(queue.r_rdy),
                queue.r_en.eq(unit.cmd.ready),
            ]

        # Memories. The scratchpad has one write port (load) and two read ports (weights,
        # activations); the accumulator a transparent read-modify-write pair (execute) and a
        # read port (store); the parameter slots one write and one read port.
        m.submodules.scratchpad = self.scratchpad
        m.submodules.accumulator = self.accumulator
        m.submodules.params = self.params
        sp_wr = self.scratchpad.write_port(granularity=1)
        wiring.connect(m, load.sp, sp_wr)
        wiring.connect(m, execute.sp_w, self.scratchpad.read_port())
        wiring.connect(m, execute.sp_a, self.scratchpad.read_port())
        acc_wr = self.accumulator.write_port()
        wiring.connect(m, execute.acc_wr, acc_wr)
        wiring.connect(m, execute.acc_rd, self.accumulator.read_port(transparent_for=(acc_wr,)))
        wiring.connect(m, store.acc_rd, self.accumulator.read_port())
        wiring.connect(m, load.params, self.params.write_port(granularity=1))
        # One slot is a register: read it without a second copy (a STORE only reads a slot
        # that tokens have ordered after its LOADP, so the read latency is not seen).
        params_rd = self.params.read_port(domain="comb" if cfg.param_slots == 1 else "sync")
        m.d.comb += [params_rd.addr.eq(store.params_rd.addr),
                     store.params_rd.data.eq(params_rd.data)]
        # Zero flags: written with each loaded line, read ahead asynchronously (small: one bit
        # per sub-block per line, distributed RAM on an FPGA), or with the execute unit's
        # late_skip synchronously with the line (block RAM).
        if self.zflags is not None:
            m.submodules.zflags = self.zflags
            wiring.connect(m, load.zflags, self.zflags.write_port())
            for j in range(execute.lookahead):
                port = self.zflags.read_port(domain="sync" if execute.late_skip else "comb")
                m.d.comb += [port.addr.eq(execute.zf_addr[j]),
                             execute.zf_data[j].eq(port.data)]

        # Token semaphores: load -> execute -> store and back.
        sems = {name: Signal(SEMAPHORE_BITS, name=f"sem_{name}")
                for name in ("l2e", "e2l", "e2s", "s2e")}
        incs = {"l2e": load.tokens.push[1],
                "e2l": execute.tokens.push[0] + execute.late_push[0],
                "e2s": execute.tokens.push[1] + execute.late_push[1],
                "s2e": store.tokens.push[0]}
        decs = {"l2e": execute.tokens.pop[0], "e2l": load.tokens.pop[1],
                "e2s": store.tokens.pop[0], "s2e": execute.tokens.pop[1]}
        clear = restart
        if cfg.retime:
            # A push reaches its semaphore a cycle late, from a register (a load's push comes
            # from its last read beat, through the read channel's routing): the unit that
            # waits for it waits a cycle longer, which is always safe. Pops stay immediate,
            # so a token is never taken twice. The semaphores and those registers are
            # cleared a cycle after the restart, with the units (the units are in reset, so
            # no push or pop of the new run is lost; the CSR's start does not reach them).
            clear = run_reset("sem")
            incs = staged(m, True, "push", reset=tuple(incs),
                          **{name: Mux(clear, 0, inc) for name, inc in incs.items()})
        for name, sem in sems.items():
            with m.If(clear):
                m.d.sync += sem.eq(0)
            with m.Else():
                m.d.sync += sem.eq(sem + incs[name] - decs[name])
        m.d.comb += [
            load.tokens.avail.eq(Cat(0, sems["e2l"] != 0)),
            execute.tokens.avail.eq(Cat(sems["l2e"] != 0, sems["s2e"] != 0)),
            store.tokens.avail.eq(Cat(sems["e2s"] != 0, 0)),
        ]

        # Memory port: the read channel is shared by fetch and load, arbitrated per burst
        # (alternating when both ask, and held while a request waits for arready).
        axi = self.axi
        log2_bytes = exact_log2(B)
        ar_sel = Signal()          # 0 fetch, 1 load
        ar_held = Signal()
        ar_last = Signal()
        sel = Signal()
        with m.If(ar_held):
            m.d.comb += sel.eq(ar_sel)
        with m.Else():
            m.d.comb += sel.eq(load.bus.arvalid & (~fetch.bus.arvalid | ~ar_last))
        m.d.sync += [ar_sel.eq(sel), ar_held.eq(axi.arvalid & ~axi.arready)]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_last.eq(sel)
        m.d.comb += [
            axi.arid.eq(sel),
            axi.araddr.eq(Mux(sel, load.bus.araddr, fetch.bus.araddr)),
            axi.arlen.eq(Mux(sel, load.bus.arlen, fetch.bus.arlen)),
            axi.arvalid.eq(Mux(sel, load.bus.arvalid, fetch.bus.arvalid)),
            axi.arsize.eq(log2_bytes),
            axi.arburst.eq(BURST_INCR),
            fetch.bus.arready.eq(axi.arready & ~sel),
            load.bus.arready.eq(axi.arready & sel),
        ]
        for unit, ident in ((fetch, AXI_ID_FETCH), (load, AXI_ID_LOAD)):
            mine = axi.rid == ident
            m.d.comb += [
                unit.bus.rdata.eq(axi.rdata),
                unit.bus.rresp.eq(axi.rresp),
                unit.bus.rlast.eq(axi.rlast),
                unit.bus.rvalid.eq(axi.rvalid & mine),
            ]
        m.d.comb += axi.rready.eq(Mux(axi.rid == AXI_ID_LOAD, load.bus.rready,
                                      fetch.bus.rready))
        m.d.comb += [
            axi.awid.eq(0),
            axi.awaddr.eq(store.bus.awaddr),
            axi.awlen.eq(store.bus.awlen),
            axi.awsize.eq(log2_bytes),
            axi.awburst.eq(BURST_INCR),
            axi.awvalid.eq(store.bus.awvalid),
            store.bus.awready.eq(axi.awready),
            axi.wdata.eq(store.bus.wdata),
            axi.wstrb.eq(store.bus.wstrb),
            axi.wlast.eq(store.bus.wlast),
            axi.wvalid.eq(store.bus.wvalid),
            store.bus.wready.eq(axi.wready),
            store.bus.bresp.eq(axi.bresp),
            store.bus.bvalid.eq(axi.bvalid),
            axi.bready.eq(store.bus.bready),
        ]

        # Dispatch: take the next fetched instruction, check it, queue it for its unit.
        # The instruction being dispatched, and its fetch fault: data, loaded in FETCH before
        # anything reads them.
        ins = Signal(Instruction, reset_less=True)
        fault = Signal(fetch.o.payload.fault.shape(), reset_less=True)
        halting = Signal()
        bus_error = Signal()
        all_idle = Signal()
        idle_now = (load.idle & execute.idle & store.idle & ~fetch.inflight
                    & ~queues["load"].r_rdy & ~queues["execute"].r_rdy & ~queues["store"].r_rdy)
        # Retimed, registered: the drain states see it a cycle late (nothing is queued
        # meanwhile).
        stage_if(m, cfg.retime, all_idle, idle_now)
        for unit in (load, execute, store):
            m.d.comb += unit.abort.eq(halting)
        # The units are held in reset during the restart cycle, so fetch starts the cycle after.
        launch = Signal()
        launch_now = restart & (self.ctrl.prog_addr[:exact_log2(INSTR_BYTES)] == 0)
        if cfg.retime:
            launch_next = Signal()
            m.d.sync += [launch_next.eq(launch_now), launch.eq(launch_next)]
        else:
            m.d.sync += launch.eq(launch_now)
        m.d.comb += [
            fetch.start.eq(launch),
            fetch.pc0.eq(pc),
            fetch.win_base.eq(win_base),
            fetch.win_limit.eq(win_limit),
        ]
        with m.If(load.bus_error | store.bus_error):
            m.d.sync += bus_error.eq(1)

        check = _Checker(m, cfg, ins, win_base, win_limit)
        fetched = Signal()      # FETCH takes an instruction into `ins`
        check.fetch(m, data.View(Instruction, fetch.o.payload.instr), fetched,
                    dsp=cfg.retime and getattr(platform, DSP_SPAN, False))

        barrier_wait = Signal()
        m.d.comb += self.ctrl.barrier_arrived.eq(barrier_wait)

        # Fetch stops in END_DRAIN and HALT: a register of its own, set and cleared with the
        # moves into and out of those states, so that the fetch's read request, and the read
        # channel's arbitration behind it, do not start from a decode of the state.
        stopping = Signal()
        m.d.comb += fetch.stop.eq(stopping)

        def fail(code):
            m.d.sync += [error.eq(code), halting.eq(1), stopping.eq(1)]
            m.next = "HALT"

        with m.FSM(name="dispatch"):
            with m.State("STOPPED"):
                with m.If(restart):
                    m.d.sync += [
                        win_base.eq(clip(self.ctrl.win_base)),
                        win_limit.eq(clip(self.ctrl.win_limit)),
                        pc.eq(clip(self.ctrl.prog_addr, keep=exact_log2(INSTR_BYTES))),
                        error.eq(ErrorCode.NONE),
                        halting.eq(0), bus_error.eq(0),
                    ]
                    m.d.sync += state.eq(CoreState.BUSY)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += fetch.o.ready.eq(1)
                with m.If(pc[:exact_log2(INSTR_BYTES)] != 0):
                    # Only the start address can be misaligned; fetch was never started.
                    fail(ErrorCode.MISALIGNED)
                with m.Elif(bus_error):
                    fail(ErrorCode.BUS_ERROR)
                with m.Elif(fetch.o.valid & ~unit_reset):
                    m.d.comb += fetched.eq(1)
                    m.d.sync += [ins.eq(fetch.o.payload.instr), fault.eq(fetch.o.payload.fault)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                # The extents are registered here and compared in CHECK.
                m.d.sync += check.register()
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(fault.window):
                    fail(ErrorCode.DMA_WINDOW)
                with m.Elif(fault.bus | bus_error):
                    fail(ErrorCode.BUS_ERROR)
                with m.Elif(~check.opcode_ok):
                    fail(ErrorCode.ILLEGAL_OPCODE)
                with m.Elif(~check.fields_ok):
                    fail(ErrorCode.ILLEGAL_FIELD)
                with m.Elif(~check.aligned):
                    fail(ErrorCode.MISALIGNED)
                with m.Elif(~check.inside):
                    fail(ErrorCode.DMA_WINDOW)
                with m.Else():
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                target = {
                    Opcode.LOAD: "load", Opcode.LOADP: "load",
                    Opcode.NOP: "execute", Opcode.LOADW: "execute", Opcode.MATMUL: "execute",
                    Opcode.STORE: "store",
                }
                with m.Switch(ins.op):
                    for op, name in target.items():
                        with m.Case(op):
                            queue = queues[name]
                            m.d.comb += queue.w_data.eq(ins.as_value())
                            with m.If(queue.w_rdy):
                                m.d.comb += queue.w_en.eq(1)
                                m.d.sync += pc.eq(pc + INSTR_BYTES)
                                m.next = "FETCH"
                    with m.Case(Opcode.BARRIER):
                        m.next = "BARRIER_DRAIN"
                    with m.Case(Opcode.END):
                        m.d.sync += stopping.eq(1)
                        m.next = "END_DRAIN"
            with m.State("BARRIER_DRAIN"):
                with m.If(bus_error):
                    fail(ErrorCode.BUS_ERROR)
                with m.Elif(all_idle & ~fetch.inflight):
                    m.next = "BARRIER"
            with m.State("BARRIER"):
                m.d.comb += barrier_wait.eq(1)
                with m.If(self.ctrl.barrier_release):
                    m.d.sync += pc.eq(pc + INSTR_BYTES)
                    m.next = "FETCH"
            with m.State("END_DRAIN"):
                with m.If(bus_error):
                    fail(ErrorCode.BUS_ERROR)
                with m.Elif(all_idle):
                    m.d.sync += [state.eq(CoreState.DONE), stopping.eq(0)]
                    m.next = "STOPPED"
            with m.State("HALT"):
                # Accepted work finishes its bus transactions; queued work is dropped.
                with m.If(all_idle):
                    m.d.sync += [state.eq(CoreState.ERROR), halting.eq(0), stopping.eq(0)]
                    m.next = "STOPPED"

        # Performance counters (cleared at start, counting while busy).
        counters = self.ctrl.counters
        busy = state == CoreState.BUSY
        increments = {
            "cycles": 1,
            "array_busy": execute.vector,
            "macs": Mux(execute.vector, cfg.rows * cfg.cols, 0),
            "dma_read_bytes": Mux(load.beat, B, 0),
            "dma_write_bytes": Mux(store.beat, B, 0),
            "stall_memory": load.stall_memory | store.stall_memory,
            "stall_dependency": (load.stall_dependency | execute.stall_dependency
                                 | store.stall_dependency | barrier_wait),
            "macs_skipped": execute.gated + execute.skipped * (cfg.rows * cfg.cols),
            "passes_skipped": execute.skipped,
        }
        for name, inc in increments.items():
            # Event counters have `counter_width` bits, wrapping there (the register reads
            # zeros above); `cycles` keeps 32, so that a host can budget a run by it.
            width = 32 if name == "cycles" else cfg.counter_width
            counter = Signal(width, name=f"counter_{name}")
            m.d.comb += getattr(counters, name).eq(counter)
            if name != "cycles":
                # An event is registered before it is added, so that the units' logic and the
                # counter's carry chain are not one path; the counter lags its event by a
                # cycle (the last event of a run lands the cycle after the core stops).
                event = Signal(Value.cast(inc).shape(), name=f"event_{name}")
                m.d.sync += event.eq(Mux(busy & ~restart, inc, 0))
                inc, busy_or_last = event, 1
            else:
                busy_or_last = busy
            with m.If(restart):
                m.d.sync += counter.eq(0)
            with m.Elif(busy_or_last):
                m.d.sync += counter.eq(counter + inc)
        return m


class _Checker:
    """The dispatch-time checks of one instruction (see ErrorCode and isa.FIELD_LIMITS).

    The transfer is registered as the instruction is fetched (``fetch()``): its rows x
    stride product (on an ECP5, in a DSP), the rest of its end, first byte + row extent -
    stride, its first byte and whether it is a DMA and lies beyond the window's address
    bits. The end's sum and the field, opcode and alignment checks are registered in DECODE
    (``register()``); the window comparisons and the verdict in CHECK, from those registers.
    """

    def __init__(self, m, cfg, ins, win_base, win_limit):
        self._cfg = cfg
        B = cfg.bus_bytes
        low = exact_log2(B)
        op = ins.op.as_value()
        d = ins.deps
        ld, lp, lw, mm, st = (ins.body.load, ins.body.loadp, ins.body.loadw,
                              ins.body.matmul, ins.body.store)

        opcode_ok = Signal()
        m.d.comb += opcode_ok.eq(op <= max(o.value for o in Opcode))

        fields_ok = Signal()
        aligned = Signal()
        sp_lines, acc_rows = cfg.sp_lines, cfg.acc_rows

        # Field bounds on only the bits a value within the bound can have (the same results
        # as the full-width sums, in a fraction of the logic).
        def at_most(value, limit):
            if limit < 0:
                return Const(0, 1)
            n = limit.bit_length()
            high = value[n:].any() if len(value) > n else Const(0, 1)
            return ~high & (value[:n] <= limit)

        def sum_at_most(a, b, limit):
            n = limit.bit_length()
            high = Cat(a[n:], b[n:]).any() if max(len(a), len(b)) > n else Const(0, 1)
            return ~high & (a[:n] + b[:n] <= limit)

        # The end of the last row: first + row extent + (rows - 1) x stride for LOAD and
        # STORE, summed as (first + row extent - stride) + rows x stride (no subtraction
        # before the multiplier). Only used once the fields passed, when rows <= max(scratchpad
        # lines, accumulator rows): no wider factor.
        rows, stride = self._rows_stride(ins, cfg)
        aw = cfg.window_bits
        self._sw = sw = min(len(stride), aw)
        # Both terms are taken from the fetched instruction and registered with it (see
        # `fetch`), so that the multiplier and the fields' adds are not one path with the
        # end's: the span (from the DSP, placed where the DSPs are) passes one adder. The
        # first term may be negative (modulo 2**width, which holds any end).
        self._span = Signal(len(rows) + sw)
        self._base = Signal(max(aw, 16, len(self._span)) + 2)
        self._strided = Signal()

        with m.Switch(ins.op):
            with m.Case(Opcode.LOAD):
                m.d.comb += [
                    fields_ok.eq((ld.rows != 0) & sum_at_most(ld.sp_addr, ld.rows, sp_lines)
                                 & (ld.row_bytes != 0) & (ld.row_bytes <= cfg.line_bytes)
                                 & ~d.pop_prev & ~d.push_prev),
                    aligned.eq((ld.addr[:low] == 0) & (ld.stride[:low] == 0)),
                ]
            with m.Case(Opcode.LOADP):
                m.d.comb += [
                    fields_ok.eq((lp.slot < cfg.param_slots) & ~d.pop_prev & ~d.push_prev),
                    aligned.eq(lp.addr[:low] == 0),
                ]
            with m.Case(Opcode.LOADW):
                m.d.comb += [fields_ok.eq(at_most(lw.sp_addr, sp_lines - 1 - cfg.rows)),
                             aligned.eq(1)]
            with m.Case(Opcode.MATMUL):
                m.d.comb += [
                    fields_ok.eq((mm.rows != 0) & sum_at_most(mm.sp_addr, mm.rows, sp_lines)
                                 & sum_at_most(mm.acc_addr, mm.rows, acc_rows)
                                 & (~mm.load_weights
                                    | at_most(mm.w_sp_addr, sp_lines - 1 - cfg.rows))),
                    aligned.eq(1),
                ]
            with m.Case(Opcode.STORE):
                m.d.comb += [
                    fields_ok.eq((st.rows != 0) & sum_at_most(st.acc_addr, st.rows, acc_rows)
                                 & (st.cols != 0) & (st.cols <= cfg.cols)
                                 & (st.slot < cfg.param_slots) & ~d.pop_next & ~d.push_next),
                    aligned.eq((st.addr[:low] == 0) & (st.stride[:low] == 0)),
                ]
            with m.Case(Opcode.BARRIER, Opcode.END):
                # Tokens cannot be given or taken by the control unit.
                m.d.comb += [fields_ok.eq(d.as_value() == 0), aligned.eq(1)]
            with m.Default():
                m.d.comb += [fields_ok.eq(1), aligned.eq(1)]
        # What CHECK looks at is registered in DECODE.
        self._now = {"opcode_ok": opcode_ok, "fields_ok": fields_ok, "aligned": aligned}
        self.opcode_ok = Signal()
        self.fields_ok = Signal()
        self.aligned = Signal()

        self._end_next = (self._base + Mux(self._strided, self._span, 0))[:len(self._base)]
        self._end = Signal.like(self._end_next)
        self.inside = Signal()
        self._first_r = Signal(aw)
        self._far_r = Signal()
        self._dma_r = Signal()
        m.d.comb += self.inside.eq(~self._dma_r | (~self._far_r & (self._first_r >= win_base)
                                                   & (self._end <= win_limit)))

    def _transfer(self, m, ins):
        """The first byte, bytes per row (beat-rounded) and whether rows are a stride apart
        (LOAD, STORE) of a DMA instruction ``ins``, and whether it is one."""
        B = self._cfg.bus_bytes
        low = exact_log2(B)
        ld, lp, st = ins.body.load, ins.body.loadp, ins.body.store
        first = Signal(32, name="fetched_first")
        row_extent = Signal(16, name="fetched_row_extent")
        strided = Signal(name="fetched_strided")
        dma = Signal(name="fetched_dma")

        def beats_bytes(nbytes):
            return ((nbytes + (B - 1)) >> low) << low

        with m.Switch(ins.op):
            with m.Case(Opcode.LOAD):
                m.d.comb += [dma.eq(1), first.eq(ld.addr), strided.eq(1),
                             row_extent.eq(beats_bytes(ld.row_bytes))]
            with m.Case(Opcode.LOADP):
                m.d.comb += [dma.eq(1), first.eq(lp.addr),
                             row_extent.eq(-(-param_slot_bytes(self._cfg.cols) // B) * B)]
            with m.Case(Opcode.STORE):
                m.d.comb += [dma.eq(1), first.eq(st.addr), strided.eq(1),
                             row_extent.eq(beats_bytes(Mux(st.raw, st.cols << 2, st.cols)))]
        return first, row_extent, strided, dma

    @staticmethod
    def _rows_stride(ins, cfg):
        is_store = ins.op == Opcode.STORE
        rows = Mux(is_store, ins.body.store.rows, ins.body.load.rows)
        stride = Mux(is_store, ins.body.store.stride, ins.body.load.stride)
        return rows[:min(len(rows), max(cfg.sp_lines, cfg.acc_rows).bit_length())], stride

    def fetch(self, m, instr, take, *, dsp=False):
        """Register the transfer of ``instr`` (an :class:`Instruction` value) when ``take``,
        the cycle ``ins`` is loaded with it. With ``dsp``, and both factors fitting a DSP
        operand, the rows x stride register is a MULT18X18D's output register (see
        ``npu.rtl.ecp5.DSP_SPAN``), so that the multiplier's output is not routed to the
        fabric within the cycle."""
        aw = self._cfg.window_bits
        rows, stride = self._rows_stride(instr, self._cfg)
        first, row_extent, strided, dma = self._transfer(m, instr)
        # The window lies below 2**window_bits: an address bit, or a stride bit with a second
        # row, at or above `window_bits` puts the transfer outside it; the arithmetic needs
        # only the bits below (all of them with a 32-bit bus).
        sw = self._sw
        far = ((first[aw:] != 0 if aw < 32 else 0)
               | ((stride[sw:] != 0) & (rows[1:] != 0) & strided if sw < len(stride) else 0))
        stride = stride[:sw]
        if dsp and fits_dsp_input(rows) and fits_dsp_input(stride):
            m.submodules.span = registered_multiply(rows, stride, self._span, take)
        else:
            with m.If(take):
                m.d.sync += self._span.eq(rows * stride)
        with m.If(take):
            m.d.sync += [self._base.eq(first[:aw] + row_extent - Mux(strided, stride, 0)),
                         self._strided.eq(strided), self._first_r.eq(first[:aw]),
                         self._far_r.eq(far), self._dma_r.eq(dma)]

    def register(self):
        return [self._end.eq(self._end_next),
                *(getattr(self, name).eq(value) for name, value in self._now.items())]
