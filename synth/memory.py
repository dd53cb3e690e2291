"""On-chip memory behind an AXI4 subordinate port: the board's stand-in for external DRAM.

An ``amaranth.lib.memory.Memory`` (block RAM), or on the iCE40UP5K the single-port SPRAM
blocks, instantiated directly (Yosys does not infer them for a zero-initialised memory). Reads
and writes share one RAM address, so either kind works; bursts are served one at a time, reads
and writes taking turns, each at one beat per cycle. Pipelined, the RAM is cut along the bus
into slices a few bits wide and a block RAM deep, so no read selects between banks; each
slice's output is registered, and reads go through a short queue.
"""

from amaranth import Cat, ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory, MemoryData
from amaranth.lib.wiring import In
from amaranth.utils import exact_log2

from npu.rtl.bus import RESP_OKAY, RESP_SLVERR, AXI4Signature

__all__ = ["AXI4OnChipMemory"]


class AXI4OnChipMemory(wiring.Component):
    """``size`` bytes of on-chip RAM answering INCR bursts.

    Reads: the AR handshake reads the first beat, which is valid the next cycle; each beat
    taken reads the next. Writes: after the AW handshake, one beat per cycle, then B. A beat
    outside ``[0, size)`` answers ``RESP_SLVERR`` (reads return zeros, writes are dropped).

    Parameters
    ----------
    signature : AXI4Signature
        Of the manager that connects (widths and ID width).
    size : int
        Bytes; a power of two, at least one bus beat.
    init : bytes-like, optional
        Initial contents from address 0.
    spram : bool
        Build the RAM from iCE40UP5K ``SB_SPRAM256KA`` blocks (16K x 16 bits each, at most
        four) when elaborated for a platform; the simulator always uses the ``Memory``.
    pipelined : bool
        For FPGA clock rates: the RAM is slices of the bus, each ``SLICE_BITS`` bits of RAM
        (an ECP5 DP16KD: a 64 KB memory of 64-bit words is 32 slices of 8K x 2 bits), so every
        slice holds its bits of every word and a read selects no bank; each slice is one
        read/write port (reads and writes share the address), its read registered, and the
        address comes straight from a register. Memories deeper than a slice are banks of
        slices, selected after the registers. A read burst's first beat is valid four cycles
        after its AR handshake (not one); beats queue in ``READ_QUEUE`` entries, so ``rready``
        low never loses one. Not with ``spram``.

    Ports
    -----
    bus : In(signature)

    Attributes
    ----------
    data : list of MemoryData
        The contents (for tests to peek): one bus beat per row, or pipelined, the slices, by
        bank in address order and within a bank from the bus's low bits up.
    """

    #: SPRAM geometry: depth and width of one SB_SPRAM256KA, and how many a UP5K has.
    SPRAM_DEPTH, SPRAM_WIDTH, SPRAM_COUNT = 16384, 16, 4
    #: Pipelined: bits of RAM per slice (one DP16KD), the widest slice (the widest true
    #: dual-port block RAM shape, 1K x 18, with its byte lanes), and read beats queued.
    SLICE_BITS, SLICE_WIDTH, READ_QUEUE = 16384, 16, 4

    def __init__(self, signature, *, size, init=(), spram=False, pipelined=False):
        if not isinstance(signature, AXI4Signature):
            raise TypeError(f"signature must be an AXI4Signature, not {signature!r}")
        bus_bytes = signature.data_width // 8
        if isinstance(size, bool) or not isinstance(size, int) or size < bus_bytes \
                or size & (size - 1):
            raise ValueError(
                f"Memory size must be a power of two of at least {bus_bytes} bytes, "
                f"not {size!r}")
        if (1 << signature.addr_width) < size:
            raise ValueError(f"Memory size {size} does not fit a {signature.addr_width}-bit "
                             "address")
        self.size = size
        self.bus_bytes = bus_bytes
        init = bytes(init)
        words = [int.from_bytes(init[i:i + bus_bytes], "little")
                 for i in range(0, len(init), bus_bytes)]
        if spram and pipelined:
            raise ValueError("A pipelined memory is block RAM, not SPRAM")
        self.pipelined = bool(pipelined)
        depth = size // bus_bytes
        if pipelined:
            self._bank_depth = min(depth, self.SLICE_BITS)
            self._slice_width = min(self.SLICE_WIDTH, signature.data_width,
                                   self.SLICE_BITS // self._bank_depth)
        else:
            self._bank_depth, self._slice_width = depth, signature.data_width
        mask = (1 << self._slice_width) - 1
        self.data = [MemoryData(shape=self._slice_width, depth=self._bank_depth,
                                init=[w >> low & mask for w in words[b:b + self._bank_depth]])
                     for b in range(0, depth, self._bank_depth)
                     for low in range(0, signature.data_width, self._slice_width)]
        self.spram = bool(spram)
        if self.spram:
            blocks = (signature.data_width // self.SPRAM_WIDTH) \
                * -(-(size // bus_bytes) // self.SPRAM_DEPTH)
            if blocks > self.SPRAM_COUNT or init:
                raise ValueError(f"{size} bytes at {signature.data_width} bits need {blocks} "
                                 f"SPRAM blocks; there are {self.SPRAM_COUNT} and they cannot "
                                 "be initialised")
        super().__init__({"bus": In(signature)})

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        shift = exact_log2(self.bus_bytes)
        depth_bits = exact_log2(self.size // self.bus_bytes)
        addr_bits = bus.signature.addr_width - shift

        # The RAM, seen through one address (``ram_addr``), write data / byte enables, and the
        # data read at the address of the previous cycle (``ram_rdata``).
        ram_addr = Signal(addr_bits)
        ram_we = Signal(self.bus_bytes)
        ram_rdata = Signal(bus.signature.data_width)
        if self.spram and platform is not None:
            self._elaborate_spram(m, ram_addr, bus.wdata, ram_we, ram_rdata)
        elif self.pipelined:
            ram_rdata = self._elaborate_banks(m, ram_addr, bus.wdata, ram_we)
        else:
            m.submodules.memory = mem = Memory(data=self.data[0])
            rd = mem.read_port()
            wr = mem.write_port(granularity=8)
            m.d.comb += [rd.addr.eq(ram_addr), wr.addr.eq(ram_addr), wr.data.eq(bus.wdata),
                         wr.en.eq(ram_we), ram_rdata.eq(rd.data)]

        def inside(word):
            return (word[depth_bits:] == 0) if addr_bits > depth_bits else 1

        word = Signal(addr_bits)        # address of the beat being read / written
        beats = Signal(8)               # beats left after the current one
        ident = Signal.like(bus.arid)
        r_ok = Signal()
        m.d.comb += bus.bid.eq(ident)
        if self.pipelined:
            read = self._read_pipeline(m, ram_rdata, ident)
        else:
            m.d.comb += [
                bus.rid.eq(ident),
                bus.rlast.eq(beats == 0),
                bus.rresp.eq(Mux(r_ok, RESP_OKAY, RESP_SLVERR)),
                bus.rdata.eq(Mux(r_ok, ram_rdata, 0)),
            ]

        b_err = Signal()
        prefer_write = Signal()
        with m.FSM(name="axi_mem"):
            with m.State("IDLE"):
                if not self.pipelined:
                    m.d.comb += ram_addr.eq(bus.araddr[shift:])
                # Alternate when both are waiting, so neither direction starves the other.
                take_write = bus.awvalid & (prefer_write | ~bus.arvalid)
                with m.If(take_write):
                    m.d.comb += bus.awready.eq(1)
                    m.d.sync += [word.eq(bus.awaddr[shift:]), beats.eq(bus.awlen),
                                 ident.eq(bus.awid), b_err.eq(0), prefer_write.eq(0)]
                    m.next = "WRITE"
                with m.Elif(bus.arvalid):
                    m.d.comb += bus.arready.eq(1)
                    m.d.sync += [word.eq(bus.araddr[shift:]), beats.eq(bus.arlen),
                                 ident.eq(bus.arid), r_ok.eq(inside(bus.araddr[shift:])),
                                 prefer_write.eq(1)]
                    m.next = "READ"
            with m.State("READ"):
                if self.pipelined:
                    # Read a beat whenever the queue has room for it; it arrives two cycles
                    # later.
                    m.d.comb += [ram_addr.eq(word), read["issue"].eq(read["room"]),
                                 read["ok"].eq(inside(word)), read["last"].eq(beats == 0)]
                    taken = read["room"]
                else:
                    m.d.comb += bus.rvalid.eq(1)
                    # Read the next beat once this one is taken, else this one again (so the
                    # RAM needs no read enable).
                    m.d.comb += ram_addr.eq(Mux(bus.rready, word + 1, word))
                    taken = bus.rready
                with m.If(taken):
                    m.d.sync += [word.eq(word + 1), beats.eq(beats - 1),
                                 r_ok.eq(inside(word + 1))]
                    with m.If(beats == 0):
                        m.next = "IDLE"
            with m.State("WRITE"):
                m.d.comb += [ram_addr.eq(word), bus.wready.eq(1)]
                with m.If(bus.wvalid):
                    with m.If(inside(word)):
                        m.d.comb += ram_we.eq(bus.wstrb)
                    with m.Else():
                        m.d.sync += b_err.eq(1)
                    m.d.sync += word.eq(word + 1)
                    with m.If(bus.wlast):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += [bus.bvalid.eq(1), bus.bresp.eq(Mux(b_err, RESP_SLVERR, RESP_OKAY))]
                with m.If(bus.bready):
                    m.next = "IDLE"
        return m

    def _elaborate_banks(self, m, addr, wdata, we):
        """The pipelined RAM: each slice read and written at ``addr``, its output registered;
        with more than one bank, the bank selected after the registers. Returns the data read
        at the address of two cycles before."""
        low = exact_log2(self._bank_depth)
        slices = len(wdata) // self._slice_width
        banks = len(self.data) // slices
        bank = addr[low:low + exact_log2(banks)]
        bank_r, bank_rr = Signal.like(bank), Signal.like(bank)
        m.d.sync += [bank_r.eq(bank), bank_rr.eq(bank_r)]
        outs = []
        for b in range(banks):
            selected = (bank == b) if banks > 1 else 1
            out = Signal(len(wdata), name=f"bank{b}_out", reset_less=True)   # data
            for j in range(slices):
                m.submodules[f"bank{b}_slice{j}"] = mem = Memory(data=self.data[b * slices + j])
                bits = slice(j * self._slice_width, (j + 1) * self._slice_width)
                # A slice's byte lanes: its own, or the one byte it is part of.
                lanes = we[bits.start // 8:-(-bits.stop // 8)]
                rd = mem.read_port()
                wr = mem.write_port(granularity=8 if self._slice_width > 8 else None)
                m.d.comb += [rd.addr.eq(addr[:low]), wr.addr.eq(addr[:low]),
                             wr.data.eq(wdata[bits]), wr.en.eq(Mux(selected, lanes, 0))]
                m.d.sync += out[bits].eq(rd.data)
            outs.append(out)
        rdata = Signal(len(wdata))
        m.d.comb += rdata.eq(Cat(*outs).word_select(bank_rr, len(wdata)) if banks > 1
                             else outs[0])
        return rdata

    def _read_pipeline(self, m, rdata, ident):
        """Read beats in flight (two cycles) and queued for the R channel. Returns the signals
        the READ state drives: ``issue`` a read of the RAM address this cycle, its ``ok`` and
        ``last``; and ``room``, set while the queue can take another beat."""
        bus = self.bus
        entry = data.StructLayout({"data": len(rdata), "id": len(ident), "ok": 1, "last": 1})
        m.submodules.read_queue = queue = SyncFIFO(width=entry.size, depth=self.READ_QUEUE)
        read = {"issue": Signal(), "ok": Signal(), "last": Signal(), "room": Signal()}
        # Two stages: the RAM read, the bank registers.
        stages = [Signal(data.StructLayout({"valid": 1, "id": len(ident), "ok": 1, "last": 1}),
                         name=f"read_stage{i}") for i in range(2)]
        m.d.sync += [
            stages[0].valid.eq(read["issue"]), stages[0].id.eq(ident),
            stages[0].ok.eq(read["ok"]), stages[0].last.eq(read["last"]),
            stages[1].eq(stages[0]),
        ]
        head = data.View(entry, queue.r_data)
        m.d.comb += [
            read["room"].eq(stages[0].valid + stages[1].valid + queue.level < self.READ_QUEUE),
            queue.w_en.eq(stages[1].valid),
            queue.w_data.eq(Cat(Mux(stages[1].ok, rdata, 0), stages[1].id, stages[1].ok,
                                stages[1].last)),
            bus.rvalid.eq(queue.r_rdy),
            bus.rdata.eq(head.data), bus.rid.eq(head.id), bus.rlast.eq(head.last),
            bus.rresp.eq(Mux(head.ok, RESP_OKAY, RESP_SLVERR)),
            queue.r_en.eq(bus.rready),
        ]
        return read

    def _elaborate_spram(self, m, addr, wdata, we, rdata):
        per_bank = len(wdata) // self.SPRAM_WIDTH
        banks = -(-(self.size // self.bus_bytes) // self.SPRAM_DEPTH)
        bank = addr[14:14 + max(1, (banks - 1).bit_length())] if banks > 1 else 0
        bank_r = Signal(range(max(banks, 2)))
        m.d.sync += bank_r.eq(bank)
        outs = []
        for b in range(banks):
            selected = (bank == b) if banks > 1 else 1
            lanes = []
            for j in range(per_bank):
                dout = Signal(16, name=f"spram{b}_{j}_dout")
                lo, hi = we[2 * j], we[2 * j + 1]
                m.submodules[f"spram{b}_{j}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=wdata[16 * j:16 * j + 16],
                    # One mask bit per nibble: two per byte lane.
                    i_MASKWREN=Cat(lo, lo, hi, hi),
                    i_WREN=(lo | hi) & selected, i_CHIPSELECT=selected, i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=dout)
                lanes.append(dout)
            outs.append(Cat(*lanes))
        m.d.comb += rdata.eq(Cat(*outs).word_select(bank_r, len(rdata)))
