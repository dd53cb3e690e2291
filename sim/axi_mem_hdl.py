"""An AXI4 subordinate memory in gateware that keeps :class:`~npu.sim.axi_mem.AXI4Memory`'s timing.

:class:`AXI4MemoryHDL` answers the same bursts, with the same handshakes in the same cycles and
the same data, as the Python model: the timing rules of ``axi_mem.py``'s docstring (latency,
in-order bursts, 16-deep read and write queues, a byte-credit budget per direction, W only after
its AW, B latency, SLVERR outside ``[0, size)``) hold here word for word. It exists so that a
Verilator run keeps Python out of the per-cycle loop; it lives in ``sim/`` because no board
needs it.

Every output is a register (there is no combinational path from the manager's signals to the
model's), just as the Python process drives its outputs after each edge. The rules map onto
registers like this, for the edge numbered ``now``:

* A burst accepted at that edge is due at ``now + latency - 1``; the read and write-response
  paths keep their oldest entry in a register next to a :class:`~amaranth.lib.fifo.SyncFIFO`
  so that the entry is visible in the very cycle it is pushed or uncovered (with ``latency=1``
  an AR taken at edge N has its first beat driven at edge N, valid at N + 1).
* The read credit is ``min(bus_bytes - 1, credit) + bytes_per_cycle`` before a beat is
  spent; the write credit is spent first, then refilled the same way (the Python model's order).

Beyond the Python model it has a **backdoor** to load and read the memory image one bus word per
cycle while the bus is idle (before the manager starts, after it has finished), and it reports
the range of words the bus has written (``written``, ``written_lo``, ``written_hi``) so that a
host reads back only what may have changed.

Of the Python model's protocol checks it keeps the ones that need no history: INCR bursts,
full-width beats, aligned addresses, no 4 KB crossing, WLAST on exactly the last beat. A
violation sets the sticky ``protocol_error`` output instead of raising. (Payload stability
while VALID waits is not checked.)
"""

from amaranth import Module, Mux, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from npu.rtl.bus import BURST_INCR, RESP_OKAY, RESP_SLVERR, AXI4Signature

from .axi_mem import AXI4Memory

__all__ = ["AXI4MemoryHDL"]

_BOUNDARY = 4096
#: Width of the cycle stamp that orders responses. Due times are compared modulo 2**32, which
#: is exact while no burst waits 2**31 cycles for a ready.
_STAMP_WIDTH = 32


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value}")


class _LookaheadQueue(wiring.Component):
    """An in-order queue that shows its oldest entry as it will be *after* this cycle's pop and
    push, so a consumer registering its outputs can act on an entry in the cycle it arrives.

    The oldest entry lives in a register, the others in a :class:`SyncFIFO`; a FIFO alone shows
    an entry only from the cycle after its write.

    Ports
    -----
    push, push_data : In
        Append an entry at this edge.
    pop : In
        Remove the oldest entry at this edge (it must exist).
    head_valid, head : Out
        The oldest entry after this edge's pop and push (combinational).
    """

    def __init__(self, layout, depth):
        self._layout = layout
        self._depth = depth
        super().__init__({
            "push": In(1), "push_data": In(layout), "pop": In(1),
            "head_valid": Out(1), "head": Out(layout),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rest = rest = SyncFIFO(width=Shape.cast(self._layout).width,
                                            depth=self._depth)
        held_valid = Signal()
        held = Signal(self._layout)
        after_valid = Signal()
        after = Signal(self._layout)
        with m.If(self.pop):
            m.d.comb += [after_valid.eq(rest.r_rdy), after.eq(rest.r_data), rest.r_en.eq(1)]
        with m.Else():
            m.d.comb += [after_valid.eq(held_valid), after.eq(held)]
        with m.If(after_valid):
            m.d.comb += [
                self.head_valid.eq(1), self.head.eq(after),
                rest.w_en.eq(self.push), rest.w_data.eq(self.push_data),
            ]
        with m.Else():
            m.d.comb += [self.head_valid.eq(self.push), self.head.eq(self.push_data)]
        m.d.sync += [held_valid.eq(self.head_valid), held.eq(self.head)]
        return m


class AXI4MemoryHDL(wiring.Component):
    """AXI4 subordinate memory with :class:`~npu.sim.axi_mem.AXI4Memory`'s cycle timing.

    Parameters
    ----------
    addr_width, data_width, id_width : int
        Of the :class:`~npu.rtl.bus.AXI4Signature` it serves.
    capacity : int
        Bytes of storage, a multiple of the bus width in bytes. The ``size`` port says how many
        of them the bus may use.
    latency : int
        Cycles from an AR handshake to the first R beat, and from the WLAST handshake to BVALID.
    bytes_per_cycle : int
        Bandwidth of the read channel and, separately, of the write channel.

    Ports
    -----
    axi : In(AXI4Signature)
        The subordinate side of the memory bus.
    size : In(addr_width + 1)
        Bytes served: a beat not wholly inside ``[0, size)`` gets SLVERR. Hold it constant while
        the bus is in use; it must not exceed ``capacity``.
    bd_addr, bd_wdata, bd_we : In
        Backdoor write: word ``bd_addr`` (byte address / bus bytes) <- ``bd_wdata`` at an edge
        with ``bd_we``. Use it only while the bus is idle; it takes the write port.
    bd_rdata : Out
        Backdoor read: word ``bd_addr`` as presented at the previous edge.
    written, written_lo, written_hi : Out
        Whether the bus has written any word since reset, and the lowest and highest word it
        wrote (backdoor writes do not count).
    protocol_error : Out(1)
        Sticky: the manager broke one of the checked rules (see the module docstring).

    Attributes
    ----------
    storage : MemoryData
        The memory array, one bus word per row (for simulator peeks).
    """

    QUEUE_DEPTH = AXI4Memory.QUEUE_DEPTH

    def __init__(self, *, addr_width, data_width, id_width, capacity, latency=8,
                 bytes_per_cycle=8):
        _check_positive_int("Capacity", capacity)
        _check_positive_int("Latency", latency)
        _check_positive_int("Bytes per cycle", bytes_per_cycle)
        self.bus_signature = AXI4Signature(addr_width=addr_width, data_width=data_width,
                                           id_width=id_width)
        self.bus_bytes = data_width // 8
        if capacity % self.bus_bytes:
            raise ValueError(f"Capacity must be a multiple of {self.bus_bytes} bytes, "
                             f"not {capacity}")
        if capacity > 1 << addr_width:
            raise ValueError(f"Capacity must be at most {1 << addr_width} bytes, not {capacity}")
        self.capacity = capacity
        self.latency = latency
        self.bytes_per_cycle = bytes_per_cycle
        self.words = capacity // self.bus_bytes
        word_bits = max(1, ceil_log2(self.words))
        self.storage = MemoryData(shape=data_width, depth=self.words, init=[])
        super().__init__({
            "axi": In(self.bus_signature),
            "size": In(addr_width + 1),
            "bd_addr": In(word_bits), "bd_wdata": In(data_width), "bd_we": In(1),
            "bd_rdata": Out(data_width),
            "written": Out(1), "written_lo": Out(word_bits), "written_hi": Out(word_bits),
            "protocol_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.axi
        sig = self.bus_signature
        bb = self.bus_bytes
        beat_shift = exact_log2(bb)
        carry = bb - 1
        bpc = self.bytes_per_cycle
        wait = self.latency - 1
        depth = self.QUEUE_DEPTH
        credit_shape = range(carry + bpc + 1)
        count_shape = range(2 * depth + 1)

        now = Signal(_STAMP_WIDTH)
        m.d.sync += now.eq(now + 1)

        def due(entry):
            # Python's `entry.due <= cycle`, modulo 2**32.
            return ~(now - entry.due)[_STAMP_WIDTH - 1]

        def in_range(addr):
            return addr + bb <= self.size

        def bad_burst(addr, length, size, burst):
            last_byte = addr[:12] + ((length + 1) << beat_shift)
            return ((burst != BURST_INCR) | (size != beat_shift) | (addr[:beat_shift] != 0)
                    | (last_byte > _BOUNDARY))

        m.submodules.mem = mem = Memory(data=self.storage)
        rd = mem.read_port(transparent_for=())  # R sees the word before this edge's W
        bd_rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        m.d.comb += [bd_rd.addr.eq(self.bd_addr), self.bd_rdata.eq(bd_rd.data)]

        protocol_error = Signal()
        m.d.comb += self.protocol_error.eq(protocol_error)

        # -- AR and R.
        r_layout = data.StructLayout({"addr": sig.addr_width, "len": 8,
                                      "id": sig.id_width, "due": _STAMP_WIDTH})
        m.submodules.rq = rq = _LookaheadQueue(r_layout, depth)
        arready = Signal(init=1)
        rvalid = Signal()
        rlast = Signal()
        r_oor = Signal()
        r_beat = Signal(8)                    # beats of the oldest burst already driven
        r_credit = Signal(credit_shape, init=carry)
        r_count = Signal(count_shape)          # bursts accepted, last beat not yet taken
        m.d.comb += [
            bus.arready.eq(arready), bus.rvalid.eq(rvalid), bus.rlast.eq(rlast),
            bus.rdata.eq(Mux(r_oor, 0, rd.data)),
        ]

        ar_fire = bus.arvalid & arready
        r_fire = rvalid & bus.rready
        r_retire = r_fire & rlast
        m.d.comb += [
            rq.push.eq(ar_fire),
            rq.push_data.addr.eq(bus.araddr), rq.push_data.len.eq(bus.arlen),
            rq.push_data.id.eq(bus.arid), rq.push_data.due.eq(now + wait),
            rq.pop.eq(r_retire),
        ]
        with m.If(ar_fire & bad_burst(bus.araddr, bus.arlen, bus.arsize, bus.arburst)):
            m.d.sync += protocol_error.eq(1)

        beat = Mux(r_retire, 0, r_beat)
        r_addr = Signal(sig.addr_width + 1)
        m.d.comb += r_addr.eq(rq.head.addr + (beat << beat_shift))
        r_credit_now = Signal(credit_shape)
        m.d.comb += r_credit_now.eq(Mux(r_credit > carry, carry, r_credit) + bpc)
        r_free = r_fire | ~rvalid
        r_drive = Signal()
        m.d.comb += r_drive.eq(r_free & rq.head_valid & due(rq.head) & (r_credit_now >= bb))
        m.d.sync += r_credit.eq(r_credit_now - Mux(r_drive, bb, 0))
        m.d.comb += [rd.addr.eq(r_addr >> beat_shift), rd.en.eq(r_drive)]
        with m.If(r_drive):
            m.d.sync += [
                rvalid.eq(1), r_beat.eq(beat + 1), rlast.eq(beat == rq.head.len),
                bus.rid.eq(rq.head.id), r_oor.eq(~in_range(r_addr)),
                bus.rresp.eq(Mux(in_range(r_addr), RESP_OKAY, RESP_SLVERR)),
            ]
        with m.Elif(r_free):
            m.d.sync += [rvalid.eq(0), r_beat.eq(beat)]
        r_count_next = Signal(count_shape)
        m.d.comb += r_count_next.eq(r_count + ar_fire - r_retire)
        m.d.sync += [r_count.eq(r_count_next), arready.eq(r_count_next < depth)]

        # -- AW and W.
        aw_layout = data.StructLayout({"addr": sig.addr_width, "len": 8, "id": sig.id_width})
        m.submodules.wq = wq = SyncFIFO(width=Shape.cast(aw_layout).width, depth=depth)
        awready = Signal(init=1)
        wready = Signal()
        w_beat = Signal(8)
        w_err = Signal()
        w_credit = Signal(credit_shape, init=carry)
        w_bursts = Signal(count_shape)         # bursts accepted, WLAST not yet taken
        m.d.comb += [bus.awready.eq(awready), bus.wready.eq(wready)]

        aw_fire = bus.awvalid & awready
        aw_entry = data.View(aw_layout, wq.w_data)
        m.d.comb += [
            wq.w_en.eq(aw_fire), aw_entry.addr.eq(bus.awaddr), aw_entry.len.eq(bus.awlen),
            aw_entry.id.eq(bus.awid),
        ]
        with m.If(aw_fire & bad_burst(bus.awaddr, bus.awlen, bus.awsize, bus.awburst)):
            m.d.sync += protocol_error.eq(1)

        w_fire = bus.wvalid & wready
        w_head = data.View(aw_layout, wq.r_data)
        w_addr = Signal(sig.addr_width + 1)
        m.d.comb += w_addr.eq(w_head.addr + (w_beat << beat_shift))
        w_ok = in_range(w_addr)
        w_done = w_fire & bus.wlast
        with m.If(w_fire & (bus.wlast != (w_beat == w_head.len))):
            m.d.sync += protocol_error.eq(1)
        with m.If(w_fire):
            with m.If(bus.wlast):
                m.d.sync += [w_beat.eq(0), w_err.eq(0)]
            with m.Else():
                m.d.sync += [w_beat.eq(w_beat + 1), w_err.eq(w_err | ~w_ok)]
        m.d.comb += wq.r_en.eq(w_done)

        word = w_addr >> beat_shift
        written_lo = Signal.like(self.written_lo)
        written_hi = Signal.like(self.written_hi)
        written = Signal()
        m.d.comb += [self.written.eq(written), self.written_lo.eq(written_lo),
                     self.written_hi.eq(written_hi)]
        with m.If(self.bd_we):
            m.d.comb += [wr.addr.eq(self.bd_addr), wr.data.eq(self.bd_wdata),
                         wr.en.eq(-1)]
        with m.Else():
            m.d.comb += [wr.addr.eq(word), wr.data.eq(bus.wdata),
                         wr.en.eq(Mux(w_fire & w_ok, bus.wstrb, 0))]
            with m.If(w_fire & w_ok):
                m.d.sync += written.eq(1)
                with m.If(~written | (word < written_lo)):
                    m.d.sync += written_lo.eq(word)
                with m.If(~written | (word > written_hi)):
                    m.d.sync += written_hi.eq(word)

        w_spent = Signal(credit_shape)
        m.d.comb += w_spent.eq(w_credit - Mux(w_fire, bb, 0))
        w_credit_next = Signal(credit_shape)
        m.d.comb += w_credit_next.eq(Mux(w_spent > carry, carry, w_spent) + bpc)
        w_bursts_next = Signal(count_shape)
        m.d.comb += w_bursts_next.eq(w_bursts + aw_fire - w_done)
        m.d.sync += [
            w_credit.eq(w_credit_next), w_bursts.eq(w_bursts_next),
            wready.eq((w_bursts_next != 0) & (w_credit_next >= bb)),
        ]

        # -- B.
        b_layout = data.StructLayout({"id": sig.id_width, "resp": 2, "due": _STAMP_WIDTH})
        m.submodules.bq = bq = _LookaheadQueue(b_layout, depth)
        bvalid = Signal()
        b_count = Signal(count_shape)
        m.d.comb += bus.bvalid.eq(bvalid)
        b_fire = bvalid & bus.bready
        m.d.comb += [
            bq.push.eq(w_done), bq.push_data.id.eq(w_head.id),
            bq.push_data.resp.eq(Mux(w_err | ~w_ok, RESP_SLVERR, RESP_OKAY)),
            bq.push_data.due.eq(now + wait),
            bq.pop.eq(b_fire),
        ]
        b_free = b_fire | ~bvalid
        with m.If(b_free & bq.head_valid & due(bq.head)):
            m.d.sync += [bvalid.eq(1), bus.bid.eq(bq.head.id), bus.bresp.eq(bq.head.resp)]
        with m.Elif(b_free):
            m.d.sync += bvalid.eq(0)
        b_count_next = Signal(count_shape)
        m.d.comb += b_count_next.eq(b_count + w_done - b_fire)
        m.d.sync += [b_count.eq(b_count_next),
                     awready.eq(w_bursts_next + b_count_next < depth)]
        return m
