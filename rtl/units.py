"""The units of a core: instruction fetch, load, execute and store.

Each unit is a ``wiring.Component``; ``core.py`` joins them to the memories, the token
semaphores and the memory bus. See docs/architecture.md for the timing of each unit.
"""

import operator
from contextlib import contextmanager
from functools import reduce

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .config import NPUConfig
from .isa import INSTR_BITS, INSTR_BYTES, Instruction, Opcode, param_slot_bytes
from .requant import Requantiser, SequentialRequantiser, SerialRequantiser
from .stage import replica, stage_if, staged
from .systolic import SystolicArray

__all__ = ["AccTag", "ExecuteUnit", "FetchFault", "FetchUnit", "LoadUnit", "ParamLayout",
           "ParamWords", "ReadManagerSignature", "StoreUnit", "TokenSignature",
           "WriteManagerSignature"]


class FetchFault(data.Struct):
    """Why a fetched entry carries no instruction."""
    window: 1     # the instruction lies (partly) outside the DMA window
    bus: 1        # the memory answered with an error


def ParamLayout(cols):
    """One requantisation parameter slot. Its bit layout is exactly the little-endian byte
    layout LOADP reads from memory, so a slot is the first bits of the received beats."""
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(32), cols),
        "multiplier": data.ArrayLayout(signed(32), cols),
        "shift": data.ArrayLayout(signed(8), cols),
        "zero_point": signed(8),
        "act_min": signed(8),
        "act_max": signed(8),
    })


def ParamWords(config):
    """One parameter slot as stored: the bus words LOADP receives, written one per beat as it
    arrives. Its first bits are a :func:`ParamLayout` of ``config.cols``."""
    return data.ArrayLayout(config.bus_width, -(-param_slot_bytes(config.cols)
                                                // config.bus_bytes))


def AccTag(config):
    """Travels with each vector through the array: where its result goes, and whether writing
    it completes a MATMUL that pushes a token to the store unit."""
    return data.StructLayout({
        "addr": unsigned(ceil_log2(config.acc_rows)),
        "accumulate": unsigned(1),
        "push_next": unsigned(1),
    })


class TokenSignature(wiring.Signature):
    """From a unit to the semaphores: ``avail`` (bit 0 previous, bit 1 next neighbour) says a
    token can be popped; ``pop`` / ``push`` are one-cycle pulses."""

    def __init__(self):
        super().__init__({"avail": In(2), "pop": Out(2), "push": Out(2)})


class ReadManagerSignature(wiring.Signature):
    """The read half of an AXI4 manager (AR and R channels), without an ID."""

    def __init__(self, config):
        super().__init__({
            "araddr": Out(config.addr_width), "arlen": Out(8), "arvalid": Out(1),
            "arready": In(1),
            "rdata": In(config.bus_width), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
            "rready": Out(1),
        })


class WriteManagerSignature(wiring.Signature):
    """The write half of an AXI4 manager (AW, W and B channels), without an ID."""

    def __init__(self, config):
        super().__init__({
            "awaddr": Out(config.addr_width), "awlen": Out(8), "awvalid": Out(1),
            "awready": In(1),
            "wdata": Out(config.bus_width), "wstrb": Out(config.bus_bytes), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        })


def _check_config(config):
    if not isinstance(config, NPUConfig):
        raise TypeError(f"config must be an NPUConfig, not {config!r}")


def _tree_sum(values):
    """The sum of ``values`` as a balanced tree of adds (log2(n) adders deep, not n)."""
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _sums_of_four(values):
    """Sums of ``values`` four at a time (the last group may be smaller): two adds deep, one
    level of a sum tree that is registered between levels."""
    return [_tree_sum(values[i:i + 4]) for i in range(0, len(values), 4)]


def _sub_blocks_used(indices, groups, rows, lane=False):
    """Bit g: some gather index lies in sub-block g (bytes ``g * rows`` to ``(g + 1) * rows``);
    0xFF, an empty row, lies in none. With ``lane`` (the lane gather), an index counts only
    where it reads: index ``i`` naming byte ``i`` of the sub-block."""
    if lane:
        return reduce(operator.or_, (_lane_select(idx, i, groups, rows)
                                     for i, idx in enumerate(indices)))
    return Cat(Cat(((idx >= g * rows) if g else 1) & (idx < (g + 1) * rows)
                   for idx in indices).any() for g in range(groups))


def _lane_select(index, lane, groups, rows):
    """The lane gather's select of row ``lane``: bit g when ``index`` is ``g * rows + lane``
    (byte ``lane`` of sub-block g); no bit for any other index (the row reads 0)."""
    return Cat(index == g * rows + lane for g in range(groups))


def _burst_len(m, config, addr, beats_left):
    """Beats of the next burst: what is left of the row, cut at the 4 KB boundary AXI forbids
    a burst to cross, and at 256 beats."""
    # min(beats_left, to_boundary, 256) with the comparisons side by side, not in series:
    # with the address q beats and r bytes into its 4 KB page, to_boundary is n - q - (r != 0)
    # (n beats a page), so beats_left < to_boundary is beats_left + q + (r != 0) < n.
    shift = exact_log2(config.bus_bytes)
    n = 4096 >> shift
    q, r = addr[shift:12], addr[:shift]
    to_boundary = Signal(range(n + 1))
    left_first = Signal()
    m.d.comb += [
        to_boundary.eq(n - q - (r != 0)),
        left_first.eq(beats_left + q + (r != 0) < n),
    ]
    beats = Signal(range(257))
    with m.If(left_first):
        m.d.comb += beats.eq(Mux(beats_left > 256, 256, beats_left))
    with m.Else():
        m.d.comb += beats.eq(Mux(to_boundary > 256, 256, to_boundary))
    return beats


class _BurstGenerator(wiring.Component):
    """Walks a 2-D transfer (rows of ``beats_per_row`` beats, ``stride`` bytes apart) and
    issues one address handshake per burst.

    ``start`` loads the transfer; ``valid`` / ``ready`` / ``addr`` / ``len`` (AXI encoding,
    beats - 1) form the address channel; ``busy`` stays high until the last burst is taken.
    ``max_rows`` and ``max_beats`` bound ``rows`` and ``beats_per_row`` (the dispatch checks
    guarantee them), so the counters are no wider than the configuration needs; addresses
    are ``config.addr_width`` bits, the width of the bus.

    With ``config.retime`` the start is registered (the transfer begins a cycle later) and
    so is each burst's length (a burst is offered two cycles after the one before it was
    taken, at the earliest).
    """

    def __init__(self, config, *, max_rows, max_beats):
        self._config = config
        self._max_total = max_rows * max_beats
        super().__init__({
            "start": In(1), "addr0": In(config.addr_width), "stride": In(24),
            "rows": In(range(max_rows + 1)), "beats_per_row": In(range(max_beats + 1)),
            "valid": Out(1), "ready": In(1), "addr": Out(config.addr_width), "len": Out(8),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        aw = self._config.addr_width
        rows_left = Signal.like(self.rows)
        beats_left = Signal(range(self._max_total + 1))
        row_addr = Signal(aw)
        addr = Signal(aw)
        beats_per_row = Signal(range(self._max_total + 1))
        # Only the low `aw` bits of a row address reach the bus.
        stride = Signal(min(24, aw))
        start = {name: getattr(self, name)
                 for name in ("start", "addr0", "stride", "rows", "beats_per_row")}
        if self._config.retime:
            # The transfer is taken a cycle after `start` (busy meanwhile), so that the
            # instruction decode and the set-up below are not one path.
            for name, port in start.items():
                start[name] = Signal.like(port, name=f"{name}_r")
                m.d.sync += start[name].eq(port)
        # The beats of a contiguous transfer (used only then). A shift-and-add: the row's beat
        # count is a few bits, and a DSP's multiplier would be slower than these adds.
        # Retimed, from the registered transfer.
        start["total"] = Signal(range(self._max_total + 1))
        m.d.comb += start["total"].eq(_tree_sum(
            [Mux(start["beats_per_row"][k], start["rows"] << k, 0)
             for k in range(len(start["beats_per_row"]))]))
        beats = _burst_len(m, self._config, addr, beats_left)
        offer = Signal()
        if self._config.retime:
            # The burst length is registered: computed the cycle after the address and count
            # change, offered the cycle after that.
            beats_now, beats = beats, Signal.like(beats)
            stale = Signal()
            m.d.sync += [beats.eq(beats_now),
                         stale.eq(start["start"] | (self.valid & self.ready))]
            m.d.comb += offer.eq(~stale)
        else:
            m.d.comb += offer.eq(1)
        # Rows that follow each other without a gap are one transfer: long bursts keep the
        # memory busy with fewer requests in flight.
        log2_bytes = exact_log2(self._config.bus_bytes)
        contiguous = Signal()
        m.d.comb += contiguous.eq(start["stride"] == (start["beats_per_row"] << log2_bytes))
        m.d.comb += [
            self.busy.eq((rows_left != 0) | (start["start"] if self._config.retime else 0)),
            self.valid.eq((rows_left != 0) & offer),
            self.addr.eq(addr),
            self.len.eq(beats - 1),
        ]
        with m.If(start["start"] & contiguous & (start["rows"] != 0)):
            total = start["total"]
            m.d.sync += [
                rows_left.eq(1), beats_left.eq(total),
                row_addr.eq(start["addr0"]), addr.eq(start["addr0"]),
                beats_per_row.eq(total), stride.eq(0),
            ]
        with m.Elif(start["start"]):
            m.d.sync += [
                rows_left.eq(start["rows"]), beats_left.eq(start["beats_per_row"]),
                row_addr.eq(start["addr0"]), addr.eq(start["addr0"]),
                beats_per_row.eq(start["beats_per_row"]), stride.eq(start["stride"]),
            ]
        with m.Elif(self.valid & self.ready):
            with m.If(beats_left == beats):
                m.d.sync += [
                    rows_left.eq(rows_left - 1),
                    beats_left.eq(beats_per_row),
                    row_addr.eq(row_addr + stride),
                    addr.eq(row_addr + stride),
                ]
            with m.Else():
                m.d.sync += [
                    beats_left.eq(beats_left - beats),
                    addr.eq(addr + (beats << exact_log2(self._config.bus_bytes))),
                ]
        return m


class FetchUnit(wiring.Component):
    """Prefetches instructions into a small queue, one burst per instruction.

    It never reads outside the DMA window: at the first instruction that does not lie inside
    it, it queues an entry marked ``fault.window`` and stops. ``stop`` ends prefetching (the
    core is halting); ``inflight`` stays high until every read issued has returned. At most
    ``config.fetch_depth`` instructions are queued or being read. With a depth of 1 the
    instruction is offered from the register its beats are shifted into (no read is issued
    while it waits), with the timing of a one-entry queue.
    """

    def __init__(self, config):
        _check_config(config)
        self._config = config
        super().__init__({
            "start": In(1), "stop": In(1), "pc0": In(config.window_bits),
            "win_base": In(config.window_bits), "win_limit": In(config.window_bits),
            "bus": Out(ReadManagerSignature(config)),
            "o": Out(stream.Signature(data.StructLayout({
                "instr": INSTR_BITS, "fault": FetchFault}))),
            "inflight": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        beats = max(1, INSTR_BYTES // cfg.bus_bytes)
        depth = cfg.fetch_depth
        # Beats arrive lowest address first: shift each in at the top.
        buf = Signal(INSTR_BITS, reset_less=True)   # data: offered only with `level`
        got = Signal(INSTR_BITS)
        if depth == 1:
            level = Signal()
            fault = Signal(FetchFault)
            m.d.comb += [
                self.o.payload.instr.eq(buf),
                self.o.payload.fault.eq(fault),
                self.o.valid.eq(level),
            ]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += level.eq(0)
        else:
            m.submodules.queue = queue = SyncFIFOBuffered(
                width=len(self.o.payload.as_value()), depth=depth)
            level = queue.level
            m.d.comb += [
                self.o.payload.eq(queue.r_data),
                self.o.valid.eq(queue.r_rdy),
                queue.r_en.eq(self.o.ready),
            ]

        def enqueue(instr, fault_value):
            if depth == 1:
                m.d.sync += [level.eq(1), fault.eq(fault_value), buf.eq(instr)]
            else:
                m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(Cat(instr, fault_value))]

        addr = Signal(cfg.window_bits)
        active = Signal()
        outstanding = Signal(range(depth + 1))
        m.d.comb += self.inflight.eq(outstanding != 0)

        inside = Signal()
        inside_now = ((addr >= self.win_base)
                      & (addr + INSTR_BYTES <= self.win_limit)
                      & (addr <= (1 << cfg.window_bits) - 1 - INSTR_BYTES))
        # `inside` is true for the current `addr` unless `stale`.
        stale = Signal()
        issue = Signal()
        # Retimed, the window check is registered: it is valid the cycle after `addr` changes.
        stage_if(m, cfg.retime, inside, inside_now)
        if cfg.retime:
            m.d.sync += stale.eq(issue | self.start)
        # Room for one more instruction. Retimed, registered (the queue's level and its add
        # are then not one path with the read-address handshake): a cycle late, which is
        # safe, since an issue is never followed by another the next cycle (`stale`) and
        # otherwise level + outstanding only falls.
        room = Signal()
        stage_if(m, cfg.retime, room, level + outstanding < depth)

        # An offered address stays offered until taken (AXI), even if the core stops
        # meanwhile; its instruction is then read and dropped.
        offered = Signal()
        m.d.comb += [
            self.bus.araddr.eq(addr),
            self.bus.arlen.eq(beats - 1),
            self.bus.arvalid.eq(offered | (active & ~self.stop & ~stale & inside & room)),
            issue.eq(self.bus.arvalid & self.bus.arready),
            self.bus.rready.eq(1),
        ]
        m.d.sync += offered.eq(self.bus.arvalid & ~self.bus.arready)

        m.d.comb += got.eq(Cat(buf, self.bus.rdata)[-INSTR_BITS:])
        bus_err = Signal()
        retire = Signal()
        m.d.comb += retire.eq(self.bus.rvalid & self.bus.rlast)
        with m.If(self.bus.rvalid):
            m.d.sync += buf.eq(got)
            with m.If(self.bus.rresp != 0):
                m.d.sync += bus_err.eq(1)
            with m.If(self.bus.rlast):
                m.d.sync += bus_err.eq(0)

        fault_entry = Signal()
        m.d.comb += fault_entry.eq(active & ~self.stop & ~stale & ~inside & (outstanding == 0)
                                   & room)

        with m.If(retire):
            enqueue(got, Cat(Const(0, 1), bus_err | (self.bus.rresp != 0)))
        with m.Elif(fault_entry):
            enqueue(Const(0, INSTR_BITS), Cat(Const(1, 1), Const(0, 1)))
            m.d.sync += active.eq(0)

        m.d.sync += outstanding.eq(outstanding + issue - retire)
        with m.If(issue):
            m.d.sync += addr.eq(addr + INSTR_BYTES)
        with m.If(self.start):
            m.d.sync += [addr.eq(self.pc0), active.eq(1)]
        return m


class _TokenWait:
    """Shared by the units: wait for the tokens an instruction pops, then pop them."""

    @staticmethod
    @contextmanager
    def take(m, unit, ins, *, idle, ready=1):
        """The IDLE and WAIT states of a unit's FSM (opened inside ``m.FSM()``): take the next
        instruction into ``ins``, wait for its tokens (and ``ready``), pop them. The body of
        the ``with`` runs in the cycle the instruction starts and names the next state."""
        with m.State("IDLE"):
            m.d.comb += [unit.idle.eq(~unit.cmd.valid & idle), unit.cmd.ready.eq(1)]
            with m.If(unit.cmd.valid & ~unit.abort):
                m.d.sync += ins.eq(unit.cmd.payload)
                m.next = "WAIT"
        with m.State("WAIT"):
            with m.If(unit.abort):
                m.next = "IDLE"
            with m.Elif(_TokenWait.ready(ins.deps, unit.tokens)):
                with m.If(ready):
                    _TokenWait.pop(m, ins.deps, unit.tokens)
                    yield
            with m.Else():
                m.d.comb += unit.stall_dependency.eq(1)

    @staticmethod
    def ready(deps, tokens):
        need_prev = deps.pop_prev
        need_next = deps.pop_next
        return (~need_prev | tokens.avail[0]) & (~need_next | tokens.avail[1])

    @staticmethod
    def pop(m, deps, tokens):
        m.d.comb += tokens.pop.eq(Cat(deps.pop_prev, deps.pop_next))

    @staticmethod
    def push(m, deps, tokens):
        m.d.comb += tokens.push.eq(Cat(deps.push_prev, deps.push_next))


class LoadUnit(wiring.Component):
    """LOAD and LOADP: 2-D strided reads from memory into scratchpad lines or a parameter slot.

    Address bursts are issued back to back while data returns (reads are pipelined), also
    across instructions: the next instruction issues its addresses while the data of up to
    ``descriptors`` (``config.load_queue_depth``) earlier ones is still arriving, so the
    memory's latency is paid once per
    stream, not once per instruction. Each returned beat is written the cycle it arrives
    (``config.retime``: a cycle later, from registers).
    """

    def __init__(self, config):
        _check_config(config)
        self._config = config
        self.descriptors = config.load_queue_depth
        L = config.line_bytes
        super().__init__({
            "cmd": In(stream.Signature(Instruction)),
            "abort": In(1),
            "tokens": Out(TokenSignature()),
            "bus": Out(ReadManagerSignature(config)),
            "sp": In(WritePort.Signature(addr_width=ceil_log2(config.sp_lines),
                                         shape=data.ArrayLayout(8, L), granularity=1)),
            "params": In(WritePort.Signature(addr_width=ceil_log2(config.param_slots),
                                             shape=ParamWords(config), granularity=1)),
            # Per line, one bit per sub-block of `rows` bytes: set when it is all zero.
            "zflags": In(WritePort.Signature(addr_width=ceil_log2(config.sp_lines),
                                             shape=config.sparse_group)),
            "idle": Out(1),
            "beat": Out(1),          # a data beat arrived (for the byte counter)
            "stall_memory": Out(1),
            "stall_dependency": Out(1),
            "bus_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B = cfg.bus_bytes
        L = cfg.line_bytes
        param_beats = -(-param_slot_bytes(cfg.cols) // B)
        beats = max(-(-L // B), param_beats)        # the most beats a row of a transfer has
        m.submodules.bursts = bursts = _BurstGenerator(cfg, max_rows=cfg.sp_lines,
                                                        max_beats=beats)

        # Issue side: one instruction at a time takes its tokens and issues its address
        # bursts; then the next may start while the data of the first is still arriving.
        # Receive side: a queue of descriptors says where the arriving beats go; the tokens an
        # instruction pushes are given when its last beat has been written.
        ins = Signal(Instruction, reset_less=True)   # data: read only once taken
        # Fields as wide as the dispatch checks allow them to be.
        max_beats = len(bursts.beats_per_row)
        desc_layout = data.StructLayout({
            "is_param": 1, "rows": unsigned(ceil_log2(cfg.sp_lines + 1)),
            "beats_per_row": unsigned(max_beats), "row_bytes": unsigned(ceil_log2(L + 1)),
            "sp_addr": unsigned(ceil_log2(cfg.sp_lines)),
            "slot": unsigned(ceil_log2(cfg.param_slots)), "push_prev": 1, "push_next": 1,
        })
        m.submodules.descs = descs = SyncFIFOBuffered(width=desc_layout.size,
                                                      depth=self.descriptors)
        d = data.View(desc_layout, descs.r_data)
        r_row = Signal(range(cfg.sp_lines))
        r_beat = Signal(max_beats)
        # One-hot r_beat (bit k while r_beat == k): the beat's byte and word enables and its
        # zero flags come from a register each, not from a compare of r_beat shared by all.
        r_beat_at = Signal(beats, init=1)

        m.d.comb += [
            self.bus.araddr.eq(bursts.addr),
            self.bus.arlen.eq(bursts.len),
            self.bus.arvalid.eq(bursts.valid),
            bursts.ready.eq(self.bus.arready),
            self.bus.rready.eq(1),
            self.beat.eq(self.bus.rvalid),
            self.bus_error.eq(self.bus.rvalid & (self.bus.rresp != 0)),
        ]

        # The writes of a beat, to the scratchpad, its zero flags or a parameter slot.
        # Retimed, they are registered first and land a cycle later: the write enables then
        # come from registers by the memories rather than from the descriptor and the beat
        # (a LUTRAM's write enable, a block RAM's address). A LOAD's token push also reaches
        # its semaphore a cycle late (registered in the core), so a line is written before
        # a unit that waits for the token can read it.
        sp = {"addr": Signal.like(self.sp.addr), "data": Signal.like(self.sp.data),
              "en": Signal.like(self.sp.en)}
        zf = {"addr": Signal.like(self.zflags.addr), "en": Signal()}
        params = {"addr": Signal.like(self.params.addr), "en": Signal.like(self.params.en)}

        # Scratchpad write of a beat: beat 0 of a row writes the whole line (zeros past
        # row_bytes), later beats their own bytes.
        sp_write = Signal()
        for k in range(L):
            mine = r_beat_at[k // B]
            m.d.comb += [
                sp["data"][k].eq(Mux(mine & (k < d.row_bytes),
                                     self.bus.rdata.word_select(k % B, 8), 0)),
                sp["en"][k].eq(sp_write & (r_beat_at[0] | mine)),
            ]
        m.d.comb += sp["addr"].eq(d.sp_addr + r_row)

        m.d.comb += zf["addr"].eq(sp["addr"])

        # A parameter beat goes straight to its word of the slot.
        m.d.comb += params["addr"].eq(d.slot)

        # Receive side.
        m.d.comb += self.stall_memory.eq(descs.r_rdy & ~self.bus.rvalid)
        with m.If(self.bus.rvalid):
            last_beat = r_beat == d.beats_per_row - 1
            m.d.sync += [r_beat.eq(Mux(last_beat, 0, r_beat + 1)),
                         r_beat_at.eq(Mux(last_beat, 1, r_beat_at << 1))]
            with m.If(d.is_param):
                m.d.comb += params["en"].eq(r_beat_at)
            with m.Else():
                m.d.comb += [sp_write.eq(1), zf["en"].eq(last_beat)]
            with m.If(last_beat):
                m.d.sync += r_row.eq(r_row + 1)
                with m.If(r_row == d.rows - 1):
                    m.d.sync += r_row.eq(0)
                    m.d.comb += [
                        descs.r_en.eq(1),
                        self.tokens.push.eq(Cat(d.push_prev, d.push_next)),
                    ]

        writes = staged(m, cfg.retime, "wr", reset=("sp_en", "zf_en", "params_en", "sp_write"),
                        **{f"sp_{k}": v for k, v in sp.items()},
                        **{f"zf_{k}": v for k, v in zf.items()},
                        **{f"params_{k}": v for k, v in params.items()},
                        params_word=self.bus.rdata, sp_write=sp_write, first=r_beat_at[0])
        # Zero flags of the line being written, from the scratchpad write data (zero outside
        # the beat's bytes of the row): which sub-blocks saw a non-zero byte so far (`seen`,
        # up to the beat before), and the flags, set where a sub-block is all zero. Retimed,
        # the flag memory's write data thus comes from the write's registers, not from the
        # descriptor's byte count and the bus word.
        G, R = cfg.sparse_group, cfg.rows
        seen = Signal(G)
        row_nz = Signal(G)
        for g in range(G):
            m.d.comb += row_nz[g].eq(Cat(writes["sp_data"][k] != 0
                                         for k in range(g * R, min((g + 1) * R, L))).any()
                                     | (seen[g] & ~writes["first"]))
        with m.If(writes["sp_write"]):
            m.d.sync += seen.eq(row_nz)
        m.d.comb += [
            self.sp.addr.eq(writes["sp_addr"]), self.sp.data.eq(writes["sp_data"]),
            self.sp.en.eq(writes["sp_en"]),
            self.zflags.addr.eq(writes["zf_addr"]), self.zflags.data.eq(~row_nz),
            self.zflags.en.eq(writes["zf_en"]),
            self.params.addr.eq(writes["params_addr"]), self.params.en.eq(writes["params_en"]),
        ]
        for k in range(param_beats):
            m.d.comb += self.params.data[k].eq(writes["params_word"])
        writing = (writes["sp_en"] != 0) | writes["zf_en"] | (writes["params_en"] != 0)

        # Issue side.
        new = data.View(desc_layout, descs.w_data)
        load = ins.body.load
        loadp = ins.body.loadp
        m.d.comb += [
            new.row_bytes.eq(load.row_bytes), new.sp_addr.eq(load.sp_addr),
            new.slot.eq(loadp.slot), new.push_prev.eq(ins.deps.push_prev),
            new.push_next.eq(ins.deps.push_next),
        ]
        with m.If(ins.op == Opcode.LOADP):
            m.d.comb += [
                bursts.addr0.eq(loadp.addr), bursts.stride.eq(0),
                bursts.rows.eq(1), bursts.beats_per_row.eq(param_beats),
                new.is_param.eq(1), new.rows.eq(1), new.beats_per_row.eq(param_beats),
            ]
        with m.Else():
            bpr = (load.row_bytes + (B - 1)) >> exact_log2(B)
            m.d.comb += [
                bursts.addr0.eq(load.addr), bursts.stride.eq(load.stride),
                bursts.rows.eq(load.rows), bursts.beats_per_row.eq(bpr),
                new.is_param.eq(0), new.rows.eq(load.rows), new.beats_per_row.eq(bpr),
            ]

        with m.FSM():
            with _TokenWait.take(m, self, ins, idle=~bursts.busy & ~descs.r_rdy & ~writing,
                                 ready=~bursts.busy & descs.w_rdy):
                m.d.comb += [bursts.start.eq(1), descs.w_en.eq(1)]
                m.next = "IDLE"

        return m


class ExecuteUnit(wiring.Component):
    """LOADW, MATMUL and NOP: feeds the systolic array from the scratchpad and writes its
    results into the accumulator, skipping zeros.

    Two engines run side by side: the weight engine loads the idle bank (one row per cycle,
    then the gather indices) while the activation engine streams the current bank, so the next
    tile's weights load during the current tile. A MATMUL waits only for the LOADW before it
    and for the previous MATMUL's last read; its tokens are pushed by the data itself (push_prev
    when its last vector enters the array, push_next when that vector's result is written), so
    the unit moves on at once.

    Sparse unit: lane i of a vector is byte ``gather[i]`` of its scratchpad line, so a packed
    tile draws each row's activation from the K-row its weights belong to (with the lane
    gather, ``config.gather == "lane"``, only byte i of one sub-block: a
    ``sparse_group``:1 select per lane instead of a crossbar). When accumulating,
    a line whose gathered sub-blocks are all zero (per-line flags written by LOAD) is not issued;
    the engine looks ``lookahead`` lines ahead, so it can pass over that many zero lines per
    cycle. Zero operands of the vectors it does issue are counted as gated MACs.
    ``lookahead`` is ``config.zero_lookahead``.

    Retimed with a lookahead of one line (``late_skip``), the issue stage reads every line
    and the line's flags with it (``zf_data`` then comes the cycle after ``zf_addr``, from a
    synchronous read: block RAM on an FPGA); the stage after the read drops a skipped line
    instead of passing it on. A line costs a cycle either way, as with the lookahead of one.
    """

    def __init__(self, config):
        _check_config(config)
        self._config = config
        self.lookahead = config.zero_lookahead
        self.late_skip = config.retime and config.zero_lookahead == 1
        L = config.line_bytes
        G = config.sparse_group
        W = self.lookahead
        sp_bits = ceil_log2(config.sp_lines)
        sp_sig = dict(addr_width=sp_bits, shape=data.ArrayLayout(8, L))
        acc_sig = dict(addr_width=ceil_log2(config.acc_rows),
                       shape=data.ArrayLayout(signed(32), config.cols))
        super().__init__({
            "cmd": In(stream.Signature(Instruction)),
            "abort": In(1),
            "tokens": Out(TokenSignature()),
            "late_push": Out(2),     # MATMUL pushes, when their data has moved
            "sp_w": In(ReadPort.Signature(**sp_sig)),
            "sp_a": In(ReadPort.Signature(**sp_sig)),
            # Reads of the zero flags of the next `lookahead` lines: asynchronous, or with
            # `late_skip` synchronous.
            "zf_addr": Out(data.ArrayLayout(sp_bits, W)),
            "zf_data": In(data.ArrayLayout(G, W)),
            "acc_rd": In(ReadPort.Signature(**acc_sig)),
            "acc_wr": In(WritePort.Signature(**acc_sig)),
            "idle": Out(1),
            "vector": Out(1),        # a vector entered the array this cycle
            "skipped": Out(range(W + 1)),                        # vectors skipped this cycle
            "gated": Out(range(config.rows * config.cols + 1)),  # zero-operand MACs issued
            "stall_dependency": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C, G, L = cfg.rows, cfg.cols, cfg.sparse_group, cfg.line_bytes
        GR = cfg.gather_bytes
        W = self.lookahead
        lane = cfg.gather == "lane"
        m.submodules.array = array = SystolicArray(cfg, tag_shape=AccTag(cfg))
        m.d.comb += array.o.ready.eq(1)

        ins = Signal(Instruction, reset_less=True)   # data: read only once taken
        cur_bank = Signal()

        # Per bank: gather indices, the sub-blocks they use, zero weights per row.
        gather = [[Signal(8, name=f"gather{b}_{i}", reset_less=True) for i in range(R)]
                  for b in range(2)]
        used = [Signal(G, name=f"used{b}") for b in range(2)]
        # (Data: a bank's counts are written with its weights, which a program loads before
        # it uses them.)
        wzero = [[Signal(range(C + 1), name=f"wzero{b}_{i}", reset_less=True) for i in range(R)]
                 for b in range(2)]

        # Weight engine: R weight lines -> array.w, then the metadata line -> gather indices.
        w_left = Signal(range(R + 2))
        w_addr = Signal(len(self.sp_w.addr))
        w_row = Signal(range(R + 1))
        w_bank = Signal()
        w_s1 = Signal()
        w_s1_row = Signal(range(R + 1))
        w_taken = Signal()
        w_adv = Signal()
        bank_free = Signal()
        # Banks that vectors in the read stage (retimed: and in the line stage) use before the
        # array sees them.
        pre_array = Signal(2)
        busy = Signal(2)
        if cfg.retime:
            # The array's busy bits (an OR over its whole length) a cycle late, with what
            # the read stage holds now: a superset of the banks in use now, since every vector
            # in the array or offered to it now was in the array, offered or in the read stage
            # a cycle ago. A bank is free a cycle later than it could be.
            busy_before = Signal(2)
            m.d.sync += busy_before.eq(array.bank_busy | pre_array)
            m.d.comb += busy.eq(busy_before | pre_array)
        else:
            m.d.comb += busy.eq(array.bank_busy | pre_array)
        m.d.comb += [
            bank_free.eq(~busy.bit_select(w_bank, 1)),
            w_taken.eq(w_s1 & bank_free),
            w_adv.eq(~w_s1 | w_taken),
            self.sp_w.en.eq(w_adv),
            self.sp_w.addr.eq(w_addr),
            array.w.valid.eq(w_s1 & (w_s1_row < R) & bank_free),
            array.w.p.row.eq(w_s1_row),
            array.w.p.bank.eq(w_bank),
        ]
        for j in range(C):
            m.d.comb += array.w.p.data[j].eq(self.sp_w.data[j])
        with m.If(w_adv):
            m.d.sync += [w_s1.eq(w_left != 0), w_s1_row.eq(w_row)]
            with m.If(w_left != 0):
                m.d.sync += [w_left.eq(w_left - 1), w_addr.eq(w_addr + 1), w_row.eq(w_row + 1)]
        # Zero weights per row, for the gated-MAC count. Retimed, counted from the row as
        # registered a cycle after it is taken (not from the RAM's output), four columns at
        # a time, registered again, then summed: a row's count is written three cycles after
        # the row is taken, before the first vector that uses the bank can enter the array
        # (that waits for the metadata line after the last row, the gather indices it writes,
        # the sub-blocks they use, then the issue, line and gather stages).
        zw = staged(m, cfg.retime, "zw", reset=("taken",), line=self.sp_w.data, taken=w_taken,
                    bank=w_bank, row=w_s1_row)
        zw = staged(m, cfg.retime and C > 4, "zc", reset=("taken",),
                    counts=_sums_of_four([zw["line"][j] == 0 for j in range(C)]),
                    taken=zw["taken"], bank=zw["bank"], row=zw["row"])
        zeros_in_row = Signal(range(C + 1))
        m.d.comb += zeros_in_row.eq(_tree_sum(zw["counts"]))
        for b in range(2):
            with m.If(zw["taken"] & (zw["bank"] == b) & (zw["row"] < R)):
                with m.Switch(zw["row"]):
                    for i in range(R):
                        with m.Case(i):
                            m.d.sync += wzero[b][i].eq(zeros_in_row)
        # The metadata line (after the R weight rows): the tile's gather indices.
        for b in range(2):
            with m.If(w_taken & (w_bank == b) & (w_s1_row == R)):
                if not cfg.retime:
                    m.d.sync += used[b].eq(_sub_blocks_used(
                        [self.sp_w.data[i] for i in range(R)], G, R, lane))
                for i in range(R):
                    m.d.sync += gather[b][i].eq(self.sp_w.data[i])
        if cfg.retime:
            # The sub-blocks a tile uses, from its registered gather indices a cycle after they
            # are written (not from the RAM's output): a MATMUL's first skip decision comes
            # two cycles after its tile's metadata is written at the earliest.
            for b in range(2):
                m.d.sync += used[b].eq(_sub_blocks_used(gather[b], G, R, lane))
        if lane:
            # The lane gather: per bank and row, the sub-block the row reads (one bit each);
            # retimed, registered from the gather indices like `used` (so ready as early).
            lane_sel = [[Signal(G, name=f"lane_sel{b}_{i}", reset_less=True)
                         for i in range(R)] for b in range(2)]
            for b in range(2):
                for i in range(R):
                    stage_if(m, cfg.retime, lane_sel[b][i],
                             _lane_select(gather[b][i], i, G, R))
        # What the read stage selects each row's byte by: the indices, or the lane selects.
        reads = lane_sel if lane else gather
        w_busy = Signal()
        m.d.comb += w_busy.eq((w_left != 0) | w_s1)

        # Activation engine, issue stage: pick the first of the next `lookahead` lines that is
        # not skipped, read it; step over the skipped ones.
        # Rows left; the dispatch checks bound a MATMUL's rows by both memories.
        a_left = Signal(range(min(cfg.sp_lines, cfg.acc_rows) + 1))
        a_addr = Signal(len(self.sp_a.addr))
        a_acc = Signal(ceil_log2(cfg.acc_rows))
        a_accumulate = Signal()
        a_bank = Signal()         # latched per MATMUL: a later LOADW flips cur_bank
        a_push_prev = Signal()
        a_push_next = Signal()
        a_used = Signal(G)
        m.d.comb += a_used.eq(Mux(a_bank, used[1], used[0]))

        s1 = Signal()
        s1_bank = Signal()
        s1_tag = Signal(AccTag(cfg))
        s1_push_prev = Signal()
        s1_taken = Signal()
        a_adv = Signal()
        to_array = Signal()       # the vector offered to the array is taken
        m.d.comb += [
            s1_taken.eq(s1 & (1 if cfg.retime else array.a.ready)),
            a_adv.eq(~s1 | s1_taken),
            to_array.eq(array.a.valid & array.a.ready),
        ]

        keep = Signal(W)          # candidate j must be issued
        for j in range(W):
            last = a_left == j + 1
            skip = (Const(cfg.zero_skip and not self.late_skip, 1) & a_accumulate
                    & ((self.zf_data[j] & a_used) == a_used)
                    & ~(last & (a_push_prev | a_push_next)))
            m.d.comb += [
                self.zf_addr[j].eq(a_addr + j),
                keep[j].eq((a_left > j) & ~skip),
            ]
        pick = Signal(range(W))
        for j in reversed(range(W)):
            with m.If(keep[j]):
                m.d.comb += pick.eq(j)
        found = keep.any()
        step = Signal(range(W + 1))
        m.d.comb += step.eq(Mux(found, pick + 1, Mux(a_left < W, a_left, W)))
        active = Signal()
        m.d.comb += [
            active.eq(a_adv & (a_left != 0)),
            self.sp_a.en.eq(a_adv),
            self.sp_a.addr.eq(a_addr + pick),
        ]
        late = {}                 # with late_skip: what the line stage's skip decision reads
        if self.late_skip:
            s1_used = Signal(G)   # the sub-blocks the line's tile uses
            late = {"used": s1_used, "flags": self.zf_data[0]}
            with m.If(active):
                m.d.sync += s1_used.eq(a_used)
        else:
            stage_if(m, cfg.retime, self.skipped, Mux(active, step - found, 0))
        with m.If(a_adv):
            m.d.sync += s1.eq(active & found)
        # The read stage's gather indices: retimed, registered with the line's read (so the
        # bank select is not on the gather's path), otherwise selected there.
        s1_gather = [Signal(len(reads[0][i]), name=f"s1_gather{i}", reset_less=True)
                     for i in range(R)]
        if not cfg.retime:
            m.d.comb += [s1_gather[i].eq(Mux(s1_bank, reads[1][i], reads[0][i]))
                         for i in range(R)]
        with m.If(active):
            issued_last = found & (a_left == pick + 1)
            if cfg.retime:
                m.d.sync += [s1_gather[i].eq(Mux(a_bank, reads[1][i], reads[0][i]))
                             for i in range(R)]
            m.d.sync += [
                a_left.eq(a_left - step), a_addr.eq(a_addr + step), a_acc.eq(a_acc + step),
                s1_bank.eq(a_bank),
                s1_tag.addr.eq(a_acc + pick),
                s1_tag.accumulate.eq(a_accumulate),
                s1_tag.push_next.eq(issued_last & a_push_next),
                s1_push_prev.eq(issued_last & a_push_prev),
            ]

        # Read stage: gather the lanes from the line, offer the vector to the array.
        # Retimed, the line as read and the read stage's context are registered first (stage
        # rd): the block RAM's clock-to-output is not on the gather's path.
        rd = staged(m, cfg.retime, "rd", reset=("valid",), valid=s1, bank=s1_bank,
                    tag=s1_tag, push_prev=s1_push_prev, gather=s1_gather, line=self.sp_a.data,
                    **late)
        # Retimed, a gather from more than 16 bytes is two stages (g1): each lane first picks
        # one byte from every group of `span` bytes by its index's low bits, registered, then
        # one of those groups by the high bits (a 64-byte gather: two 8:1 selects, not one
        # 64:1 select, 6 levels of logic with 512 data inputs per lane).
        n = min(GR, L)
        split = cfg.retime and n > 16 and not lane
        span = 1 << (ceil_log2(n) // 2) if split else n
        # With late_skip, the line stage drops a line whose gathered sub-blocks its flags
        # (read with it) show all zero, unless it is the last of a MATMUL that pushes.
        rd_skip = Const(0, 1)
        if self.late_skip:
            rd_skip = Signal()
            m.d.comb += rd_skip.eq(Const(cfg.zero_skip, 1) & rd["valid"] & rd["tag"].accumulate
                                   & ((rd["flags"] & rd["used"]) == rd["used"])
                                   & ~rd["tag"].push_next & ~rd["push_prev"])
            m.d.sync += self.skipped.eq(rd_skip)

        def select(index, byte, count, name):
            # Byte `byte(b)` of `count` by `index`; 0 for an index past them (0xFF, the
            # index of an empty row).
            out = Signal(signed(8), name=name)
            with m.Switch(index):
                for b in range(count):
                    with m.Case(b):
                        m.d.comb += out.eq(byte(b))
            return out

        g1 = {"valid": rd["valid"] & ~rd_skip, "bank": rd["bank"], "tag": rd["tag"],
              "push_prev": rd["valid"] & rd["push_prev"]}
        if split:
            groups, low = -(-n // span), ceil_log2(span)
            picks = [select(rd["gather"][i][:low], lambda b, h=h: rd["line"][h * span + b],
                            min(span, n - h * span), f"pick{i}_{h}")
                     for i in range(R) for h in range(groups)]
            g1 = staged(m, True, "g1", reset=("valid", "push_prev"), **g1, picks=picks,
                        high=[rd["gather"][i][low:] for i in range(R)])
            lanes = [select(g1["high"][i], lambda h, i=i: g1["picks"][i * groups + h], groups,
                            f"lane{i}") for i in range(R)]
        elif lane:
            # Row i: byte i of the sub-block its select bit names (at most one is set), an
            # AND-OR over the sparse group's bytes; none set (an empty row) reads 0.
            lanes = []
            for i in range(R):
                out = Signal(signed(8), name=f"lane{i}")
                m.d.comb += out.eq(reduce(operator.or_, (
                    Mux(rd["gather"][i][g], rd["line"][g * R + i], 0) for g in range(G))))
                lanes.append(out)
        else:
            lanes = [select(rd["gather"][i], lambda b: rd["line"][b], n, f"lane{i}")
                     for i in range(R)]
        if cfg.retime:
            # Banks the read and line stages (and the gather's first) use before the array
            # sees them.
            m.d.comb += pre_array.eq(Mux(s1, 1 << s1_bank, 0)
                                     | Mux(rd["valid"], 1 << rd["bank"], 0)
                                     | (Mux(g1["valid"], 1 << g1["bank"], 0) if split else 0))
        # Retimed, the gathered vector is registered (stage s2) before the array; the array
        # never stalls its input (its output is always taken), so s2 always advances.
        offered = staged(m, cfg.retime, "s2", reset=("valid", "push_prev"),
                         valid=g1["valid"], bank=g1["bank"], tag=g1["tag"],
                         push_prev=g1["push_prev"], lanes=lanes)
        m.d.comb += [
            array.a.valid.eq(offered["valid"]),
            array.a.p.bank.eq(offered["bank"]),
            array.a.p.tag.eq(offered["tag"]),
            self.vector.eq(to_array),
        ]
        m.d.comb += [array.a.p.data[i].eq(offered["lanes"][i]) for i in range(R)]
        terms = [Mux(offered["lanes"][i] == 0, C, Mux(offered["bank"], wzero[1][i], wzero[0][i]))
                 for i in range(R)]
        if cfg.retime:
            # Counted late (the counters only need the totals): the per-lane counts are
            # registered, then (more than four lanes) their sums four lanes at a time, then
            # the total: two or three cycles. Only the valid bit beside them is reset, and it
            # selects the total at the end: the counts' registers have no reset or clear
            # input, so each can sit by its lane.
            lane = staged(m, True, "gated_lane", reset=("valid",), valid=to_array, counts=terms)
            four = staged(m, R > 4, "gated_four", reset=("valid",), valid=lane["valid"],
                          counts=_sums_of_four(lane["counts"]))
            m.d.sync += self.gated.eq(Mux(four["valid"], _tree_sum(four["counts"]), 0))
        else:
            m.d.comb += self.gated.eq(Mux(to_array, _tree_sum(terms), 0))
        a_busy = Signal()
        m.d.comb += a_busy.eq((a_left != 0) | s1 | rd["valid"] | (g1["valid"] if split else 0)
                              | offered["valid"])

        # Write-back: read the row at the array's output, add, write one cycle later.
        # Retimed, the row read is registered twice and the add made a cycle after that: the
        # first register can sit by the block RAM (its clock-to-output and the route to the
        # adder are not one path). The two rows written meanwhile, which the read could not
        # see yet, are forwarded: the older one into the second register, the newer one at
        # the add (each compared a cycle ahead, so a forward costs one multiplexer).
        m.d.comb += [
            self.acc_rd.addr.eq(array.o.p.tag.addr),
            self.acc_rd.en.eq(array.o.valid),
        ]
        wb = staged(m, True, "wb", reset=("valid", "push_next"), valid=array.o.valid,
                    addr=array.o.p.tag.addr, accumulate=array.o.p.tag.accumulate,
                    push_next=array.o.valid & array.o.p.tag.push_next, data=array.o.p.data)
        read = staged(m, cfg.retime, "rr", reset=("valid", "push_next"), **wb,
                      row=self.acc_rd.data)
        if cfg.retime:
            # The row written the cycle before (acc_wr.data registered), and whether it is
            # the row a stage reads: the write-back registers' addresses, compared a cycle
            # before the forward is used. The selects (and the accumulate bit) are replicas,
            # one per column: each drives its column's 32 multiplexers, not all C x 32.
            last_row = Signal.like(wb["data"], reset_less=True)
            older = [replica(1, name=f"older{j}") for j in range(C)]
            newer = [replica(1, name=f"newer{j}") for j in range(C)]
            m.d.sync += last_row.eq(self.acc_wr.data)
        read_row = [read["row"][j] for j in range(C)]
        if cfg.retime:
            read_row = [Mux(older[j], last_row[j], read_row[j]) for j in range(C)]
        write = staged(m, cfg.retime, "wr", reset=("valid", "push_next"),
                       replicas=("accumulate",) if cfg.retime else (),
                       **{k: v for k, v in read.items() if k not in ("row", "accumulate")},
                       accumulate=[read["accumulate"]] * C, row=read_row)
        row = [write["row"][j] for j in range(C)]
        if cfg.retime:
            for j in range(C):
                m.d.sync += [older[j].eq(write["valid"] & (write["addr"] == wb["addr"])),
                             newer[j].eq(write["valid"] & (write["addr"] == read["addr"]))]
            row = [Mux(newer[j], last_row[j], row[j]) for j in range(C)]
        m.d.comb += [
            self.acc_wr.addr.eq(write["addr"]),
            self.acc_wr.en.eq(write["valid"]),
        ]
        for j in range(C):
            m.d.comb += self.acc_wr.data[j].eq(
                Mux(write["accumulate"][j], row[j], 0) + write["data"][j])
        m.d.comb += self.late_push.eq(Cat(to_array & offered["push_prev"], write["push_next"]))
        drained = Signal()
        m.d.comb += drained.eq(~a_busy & (array.bank_busy == 0) & ~wb["valid"]
                               & ~read["valid"] & ~write["valid"])

        with m.FSM():
            with _TokenWait.take(m, self, ins, idle=~w_busy & drained):
                m.next = "EXEC"
            with m.State("EXEC"):
                with m.Switch(ins.op):
                    with m.Case(Opcode.LOADW):
                        with m.If(~w_busy):
                            m.d.sync += [
                                w_left.eq(R + 1), w_addr.eq(ins.body.loadw.sp_addr),
                                w_row.eq(0), w_bank.eq(~cur_bank), cur_bank.eq(~cur_bank),
                            ]
                            m.next = "LOADW_WAIT"
                    with m.Case(Opcode.MATMUL):
                        # With load_weights, first the LOADW part (as soon as the weight
                        # engine is free); then, the weights in and the previous MATMUL's
                        # reads issued (or issuing their last this cycle: streams follow back
                        # to back), the stream starts.
                        with m.If(ins.body.matmul.load_weights):
                            with m.If(~w_busy):
                                m.d.sync += [
                                    w_left.eq(R + 1), w_addr.eq(ins.body.matmul.w_sp_addr),
                                    w_row.eq(0), w_bank.eq(~cur_bank), cur_bank.eq(~cur_bank),
                                    ins.body.matmul.load_weights.eq(0),
                                ]
                        with m.Elif(~w_busy & ((a_left == 0) | (active & (a_left == step)))):
                            mm = ins.body.matmul
                            m.d.sync += [
                                a_left.eq(mm.rows), a_addr.eq(mm.sp_addr),
                                a_acc.eq(mm.acc_addr), a_accumulate.eq(mm.accumulate),
                                a_bank.eq(cur_bank), a_push_prev.eq(ins.deps.push_prev),
                                a_push_next.eq(ins.deps.push_next),
                            ]
                            m.next = "IDLE"   # its pushes travel with its last vector
                    with m.Default():
                        m.next = "FINISH"
            with m.State("LOADW_WAIT"):
                # Without pushes the next instruction may start while the rows load.
                has_push = ins.deps.push_prev | ins.deps.push_next
                with m.If(~has_push | ~w_busy):
                    m.next = "FINISH"
            with m.State("FINISH"):
                _TokenWait.push(m, ins.deps, self.tokens)
                m.next = "IDLE"
        return m


class StoreUnit(wiring.Component):
    """STORE: accumulator rows -> requantiser (or raw int32) -> memory.

    Rows are read one per cycle while a credit is free in the row queue, requantised in a
    fixed-latency pipeline, and written as one burst per row (cut at 4 KB boundaries) with byte
    strobes for the ``cols`` lanes. Write data never precedes its address. ``row_queue`` is
    ``config.store_queue_depth``.
    """

    def __init__(self, config):
        _check_config(config)
        self._config = config
        self.row_queue = config.store_queue_depth
        super().__init__({
            "cmd": In(stream.Signature(Instruction)),
            "abort": In(1),
            "tokens": Out(TokenSignature()),
            "acc_rd": In(ReadPort.Signature(addr_width=ceil_log2(config.acc_rows),
                                            shape=data.ArrayLayout(signed(32), config.cols))),
            "params_rd": In(ReadPort.Signature(addr_width=ceil_log2(config.param_slots),
                                               shape=ParamWords(config))),
            "bus": Out(WriteManagerSignature(config)),
            "idle": Out(1),
            "beat": Out(1),
            "stall_memory": Out(1),
            "stall_dependency": Out(1),
            "bus_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        B, C = cfg.bus_bytes, cfg.cols
        row_beats_max = -(-4 * C // B)
        row_bits = row_beats_max * B * 8

        if cfg.requant_sequential:
            m.submodules.requant = rq = SequentialRequantiser(cfg)
        elif cfg.requant_groups == 1:
            # The row credits keep room in the row queue for every row in the requantiser:
            # its pipeline never has to stall.
            m.submodules.requant = rq = Requantiser(cfg, lanes=C, stall=False)
        else:
            m.submodules.requant = rq = SerialRequantiser(cfg, stall=False)
        m.submodules.rows = rowq = SyncFIFOBuffered(width=row_bits, depth=self.row_queue)
        m.submodules.lens = lenq = SyncFIFOBuffered(width=8, depth=2 * self.row_queue)
        m.submodules.bursts = bursts = _BurstGenerator(cfg, max_rows=cfg.acc_rows,
                                                        max_beats=row_beats_max)

        ins = Signal(Instruction, reset_less=True)   # data: read only once taken
        st = ins.body.store
        # As wide as the dispatch checks (cols <= config.cols, rows <= acc_rows) allow; taken
        # from the instruction as it is taken into `ins` (they stay until the next one).
        nbytes = Signal(range(4 * C + 1))
        beats_per_row = Signal(range(row_beats_max + 1))
        last_beat = Signal.like(beats_per_row)
        with m.If(self.cmd.valid & self.cmd.ready):
            cmd = data.View(Instruction, self.cmd.payload).body.store
            cmd_nbytes = Mux(cmd.raw, cmd.cols << 2, cmd.cols)
            cmd_beats = (cmd_nbytes + (B - 1)) >> exact_log2(B)
            m.d.sync += [nbytes.eq(cmd_nbytes), beats_per_row.eq(cmd_beats),
                         last_beat.eq(cmd_beats - 1)]

        running = Signal()
        rows_issued = Signal(range(cfg.acc_rows + 1))
        rows_done = Signal(range(cfg.acc_rows + 1))
        in_flight = Signal(range(self.row_queue + 1))
        outstanding_b = Signal(16)

        # Accumulator read stage. Retimed (with a requantiser that never stalls), the row
        # read is registered twice before the requantiser or the row queue: the block RAM's
        # clock-to-output and the bias add are not one path, and neither are the
        # clock-to-output and a route across the part (the first register can sit by the
        # RAM). The row credits leave room for both, so no stage stalls.
        registered = cfg.retime and not cfg.requant_sequential
        s1 = Signal()
        s1_taken = Signal()
        if registered:
            m.d.comb += s1_taken.eq(s1)
        else:
            m.d.comb += s1_taken.eq(s1 & Mux(st.raw, rowq.w_rdy, rq.i.ready))
        # The row offered to the requantiser or (raw) the row queue.
        read = staged(m, registered, "read", reset=("valid",), valid=s1,
                      row=self.acc_rd.data)
        offered = staged(m, registered, "offer", reset=("valid",), **read)
        offer, row = offered["valid"], offered["row"]
        adv = Signal()
        m.d.comb += adv.eq(~s1 | s1_taken)
        issue = Signal()
        m.d.comb += [
            issue.eq(running & (rows_issued != st.rows)
                     & (in_flight + rowq.level < self.row_queue) & adv),
            self.acc_rd.addr.eq(st.acc_addr + rows_issued),
            self.acc_rd.en.eq(adv),
            self.params_rd.addr.eq(st.slot),
        ]
        with m.If(adv):
            m.d.sync += s1.eq(issue)
        with m.If(issue):
            m.d.sync += rows_issued.eq(rows_issued + 1)

        layout = ParamLayout(C)
        prm = data.View(layout, self.params_rd.data.as_value()[:layout.size])
        m.d.comb += [
            rq.i.valid.eq(offer & ~st.raw),
            rq.i.p.zero_point.eq(prm.zero_point),
            rq.i.p.act_min.eq(prm.act_min),
            rq.i.p.act_max.eq(prm.act_max),
            rq.o.ready.eq(rowq.w_rdy),
        ]
        for j in range(C):
            m.d.comb += [
                rq.i.p.acc[j].eq(row[j]),
                rq.i.p.bias[j].eq(prm.bias[j]),
                rq.i.p.multiplier[j].eq(prm.multiplier[j]),
                rq.i.p.shift[j].eq(prm.shift[j]),
            ]
        with m.If(st.raw):
            m.d.comb += [rowq.w_en.eq(offer), rowq.w_data.eq(row.as_value())]
        with m.Else():
            m.d.comb += [rowq.w_en.eq(rq.o.valid), rowq.w_data.eq(rq.o.p.as_value())]
        m.d.sync += in_flight.eq(in_flight + issue - (rowq.w_en & rowq.w_rdy))

        # Address channel: one burst per row (or per 4 KB piece of it).
        m.d.comb += [
            self.bus.awaddr.eq(bursts.addr),
            self.bus.awlen.eq(bursts.len),
            self.bus.awvalid.eq(bursts.valid & lenq.w_rdy),
            bursts.ready.eq(self.bus.awready & lenq.w_rdy),
            lenq.w_en.eq(self.bus.awvalid & self.bus.awready),
            lenq.w_data.eq(bursts.len),
        ]

        # Data channel.
        w_beat = Signal(range(row_beats_max + 1))
        w_in_burst = Signal(8)
        for j in range(B):
            m.d.comb += self.bus.wstrb[j].eq((w_beat << exact_log2(B)) + j < nbytes)
        m.d.comb += [
            self.bus.wdata.eq(rowq.r_data.word_select(w_beat[:max(1, ceil_log2(row_beats_max))],
                                                      B * 8)),
            self.bus.wvalid.eq(rowq.r_rdy & lenq.r_rdy),
            self.bus.wlast.eq(w_in_burst == lenq.r_data),
            self.beat.eq(self.bus.wvalid & self.bus.wready),
        ]
        with m.If(self.bus.wvalid & self.bus.wready):
            with m.If(self.bus.wlast):
                m.d.comb += lenq.r_en.eq(1)
                m.d.sync += w_in_burst.eq(0)
            with m.Else():
                m.d.sync += w_in_burst.eq(w_in_burst + 1)
            with m.If(w_beat == last_beat):
                m.d.comb += rowq.r_en.eq(1)
                m.d.sync += [w_beat.eq(0), rows_done.eq(rows_done + 1)]
            with m.Else():
                m.d.sync += w_beat.eq(w_beat + 1)

        m.d.comb += [
            self.bus.bready.eq(1),
            self.bus_error.eq(self.bus.bvalid & (self.bus.bresp != 0)),
            self.stall_memory.eq((self.bus.awvalid & ~self.bus.awready)
                                 | (self.bus.wvalid & ~self.bus.wready)),
        ]
        m.d.sync += outstanding_b.eq(outstanding_b + (self.bus.awvalid & self.bus.awready)
                                     - self.bus.bvalid)

        with m.FSM():
            with _TokenWait.take(m, self, ins, idle=outstanding_b == 0):
                m.d.comb += [
                    bursts.start.eq(1), bursts.addr0.eq(st.addr),
                    bursts.stride.eq(st.stride), bursts.rows.eq(st.rows),
                    bursts.beats_per_row.eq(beats_per_row),
                ]
                m.d.sync += [running.eq(1), rows_issued.eq(0), rows_done.eq(0),
                             w_beat.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(rows_done == st.rows):
                    m.d.sync += running.eq(0)
                    m.next = "FINISH"
            with m.State("FINISH"):
                _TokenWait.push(m, ins.deps, self.tokens)
                m.next = "IDLE"
        return m
