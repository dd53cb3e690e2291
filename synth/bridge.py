"""The host bridge: a framed byte protocol that reaches the NPU's registers and memory.

The host (``npu.sim.board_backend``) and this gateware read the same :class:`Command` enum and
:data:`ARG_BYTES`, so the frame layout is written down once. All multi-byte fields are little
endian. A frame is a command byte and its arguments; every frame is answered by the command
byte echoed, the payload and a status byte:

============  ==================================  =================================
command       host sends after the command byte   board answers after the echo
============  ==================================  =================================
INFO          --                                  memory bytes (u32), status
CSR_WRITE     address (u32), value (u32)          status
CSR_READ      address (u32)                       value (u32), status
MEM_WRITE     address (u32), n (u16), n x u32     status
MEM_READ      address (u32), n (u16)              n x u32, status
============  ==================================  =================================

Memory addresses are byte addresses of 32-bit words (the low two bits are ignored). The
status byte ORs the AXI responses of the frame's transactions into bits [1:0]
(``RESP_SLVERR`` / ``RESP_DECERR``); an unknown command is answered by its echo and
:data:`STATUS_BAD_COMMAND`. A frame left incomplete for ``timeout`` cycles is dropped without
an answer, so a host that gave up half-way can start over.
"""

from amaranth import C, Cat, Module, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from npu.rtl.bus import BURST_INCR, AXI4LiteSignature, AXI4Signature

__all__ = ["ARG_BYTES", "MAX_WORDS", "STATUS_BAD_COMMAND", "Command", "HostBridge"]


class Command(enum.Enum, shape=8):
    INFO = 0x49        # "I"
    CSR_WRITE = 0x57   # "W"
    CSR_READ = 0x52    # "R"
    MEM_WRITE = 0x4D   # "M"
    MEM_READ = 0x6D    # "m"


#: Argument bytes after the command byte (MEM_WRITE's data words follow its arguments).
ARG_BYTES = {
    Command.INFO: 0,
    Command.CSR_WRITE: 8,
    Command.CSR_READ: 4,
    Command.MEM_WRITE: 6,
    Command.MEM_READ: 6,
}

#: Status of a frame whose command byte is not a :class:`Command`.
STATUS_BAD_COMMAND = 0x80

#: Most words one MEM_WRITE / MEM_READ frame moves (the count is a u16).
MAX_WORDS = 0xFFFF


class HostBridge(wiring.Component):
    """Byte-stream side: ``rx`` / ``tx``; bus side: an AXI4-Lite manager for the registers and
    an AXI4 manager (single-beat bursts) for the memory.

    Parameters
    ----------
    csr_addr_width : int
        Address width of the register bus.
    mem_signature : AXI4Signature
        Signature of the memory port (address, data and ID widths).
    mem_bytes : int
        Size of the memory, answered by INFO.
    timeout : int or None
        Cycles without a byte after which a half-received frame is dropped; None never drops.

    Ports
    -----
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
    csr : Out(AXI4LiteSignature)
    mem : Out(AXI4Signature)
    """

    def __init__(self, *, csr_addr_width, mem_signature, mem_bytes, timeout=None):
        if not isinstance(mem_signature, AXI4Signature):
            raise TypeError(f"mem_signature must be an AXI4Signature, not {mem_signature!r}")
        if isinstance(mem_bytes, bool) or not isinstance(mem_bytes, int) or mem_bytes < 4:
            raise ValueError(f"Memory size must be an integer of at least 4, not {mem_bytes!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                    or timeout < 1):
            raise ValueError(f"Timeout must be a positive integer or None, not {timeout!r}")
        self.mem_bytes = mem_bytes
        self.timeout = timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "csr": Out(AXI4LiteSignature(addr_width=csr_addr_width)),
            "mem": Out(mem_signature),
        })

    def elaborate(self, platform):
        m = Module()
        csr, mem = self.csr, self.mem
        B = mem.signature.data_width // 8
        lanes = B // 4

        cmd = Signal(8)
        args = Signal(64)
        # Only the bits the two buses take (the rest would be dropped on the way out anyway).
        addr = Signal(max(mem.signature.addr_width, len(csr.awaddr)))
        count = Signal(16)
        word = Signal(32)
        idx = Signal(range(8))
        status = Signal(8)
        # Argument bytes of the command arriving (rx.payload) and of the one received (cmd).
        nargs_in = Signal(range(9))
        nargs = Signal(range(9))
        for sel, out in ((self.rx.payload, nargs_in), (cmd, nargs)):
            with m.Switch(sel):
                for command, n in ARG_BYTES.items():
                    with m.Case(command):
                        m.d.comb += out.eq(n)

        # Frame timeout: restarted by every byte taken, checked while a frame is incomplete.
        expired = Signal()
        if self.timeout is not None:
            idle = Signal(range(self.timeout + 1))
            with m.If(self.rx.valid & self.rx.ready):
                m.d.sync += idle.eq(0)
            with m.Elif(idle != self.timeout):
                m.d.sync += idle.eq(idle + 1)
            m.d.comb += expired.eq(idle == self.timeout)

        lane = Signal(range(max(lanes, 2)))
        m.d.comb += lane.eq(addr[2:2 + exact_log2(lanes)] if lanes > 1 else 0)
        beat_addr = Cat(Signal(exact_log2(B)), addr[exact_log2(B):])
        m.d.comb += [
            mem.awaddr.eq(beat_addr), mem.awlen.eq(0), mem.awsize.eq(exact_log2(B)),
            mem.awburst.eq(BURST_INCR), mem.awid.eq(0),
            mem.wdata.eq(Cat(*([word] * lanes))), mem.wstrb.eq(C(0xF, 4) << (lane << 2)),
            mem.wlast.eq(1),
            mem.araddr.eq(beat_addr), mem.arlen.eq(0), mem.arsize.eq(exact_log2(B)),
            mem.arburst.eq(BURST_INCR), mem.arid.eq(0),
            csr.awaddr.eq(addr), csr.wdata.eq(word), csr.wstrb.eq(0xF), csr.araddr.eq(addr),
        ]

        def send(value, then):
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
            with m.If(self.tx.ready):
                m.next = then

        def write_word(name, bus, *, then, done=()):
            """States ``name``, ``name_AW``, ``name_W``, ``name_RESP``: one AXI write (AW and W
            offered together, each held until taken), then B; its response joins ``status``."""
            with m.State(name):
                m.d.comb += [bus.awvalid.eq(1), bus.wvalid.eq(1)]
                with m.If(bus.awready & bus.wready):
                    m.next = f"{name}_RESP"
                with m.Elif(bus.awready):
                    m.next = f"{name}_W"
                with m.Elif(bus.wready):
                    m.next = f"{name}_AW"
            for channel in ("AW", "W"):
                valid, ready = (getattr(bus, f"{channel.lower()}{x}") for x in ("valid", "ready"))
                with m.State(f"{name}_{channel}"):
                    m.d.comb += valid.eq(1)
                    with m.If(ready):
                        m.next = f"{name}_RESP"
            with m.State(f"{name}_RESP"):
                m.d.comb += bus.bready.eq(1)
                with m.If(bus.bvalid):
                    m.d.sync += [status.eq(status | bus.bresp), *done]
                    m.next = then

        with m.FSM(name="bridge"):
            with m.State("CMD"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += [cmd.eq(self.rx.payload), idx.eq(0), status.eq(0)]
                    with m.If(nargs_in != 0):
                        m.next = "ARGS"
                    with m.Else():
                        m.next = "ECHO"
            with m.State("ARGS"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += [args.word_select(idx, 8).eq(self.rx.payload), idx.eq(idx + 1)]
                    with m.If(idx == nargs - 1):
                        m.next = "LATCH"
                with m.Elif(expired):
                    m.next = "CMD"
            with m.State("LATCH"):
                m.d.sync += [addr.eq(args[:32]), word.eq(args[32:]), count.eq(args[32:48]),
                             idx.eq(0)]
                m.next = "ECHO"
            with m.State("ECHO"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(cmd)]
                with m.If(self.tx.ready), m.Switch(cmd):
                    with m.Case(Command.INFO):
                        m.d.sync += word.eq(self.mem_bytes)
                        m.next = "SEND_WORD"
                    with m.Case(Command.CSR_WRITE):
                        m.next = "CSR_WRITE"
                    with m.Case(Command.CSR_READ):
                        m.next = "CSR_READ"
                    with m.Case(Command.MEM_WRITE):
                        m.next = "MEM_WRITE_DATA"
                    with m.Case(Command.MEM_READ):
                        m.next = "MEM_READ"
                    with m.Default():
                        m.d.sync += status.eq(STATUS_BAD_COMMAND)
                        m.next = "STATUS"

            # Registers.
            write_word("CSR_WRITE", csr, then="STATUS")
            with m.State("CSR_READ"):
                m.d.comb += csr.arvalid.eq(1)
                with m.If(csr.arready):
                    m.next = "CSR_READ_RESP"
            with m.State("CSR_READ_RESP"):
                m.d.comb += csr.rready.eq(1)
                with m.If(csr.rvalid):
                    m.d.sync += [word.eq(csr.rdata), status.eq(status | csr.rresp)]
                    m.next = "SEND_WORD"

            # Memory writes: receive a word, write it, repeat.
            with m.State("MEM_WRITE_DATA"):
                with m.If(count == 0):
                    m.next = "STATUS"
                with m.Else():
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(self.rx.valid):
                        m.d.sync += [word.word_select(idx[:2], 8).eq(self.rx.payload),
                                     idx.eq(idx + 1)]
                        with m.If(idx == 3):
                            m.d.sync += idx.eq(0)
                            m.next = "MEM_WRITE"
                    with m.Elif(expired):
                        m.next = "CMD"
            write_word("MEM_WRITE", mem, then="MEM_WRITE_DATA",
                       done=[addr.eq(addr + 4), count.eq(count - 1)])

            # Memory reads: read a word, send it, repeat.
            with m.State("MEM_READ"):
                with m.If(count == 0):
                    m.next = "STATUS"
                with m.Else():
                    m.d.comb += mem.arvalid.eq(1)
                    with m.If(mem.arready):
                        m.next = "MEM_READ_RESP"
            with m.State("MEM_READ_RESP"):
                m.d.comb += mem.rready.eq(1)
                with m.If(mem.rvalid):
                    m.d.sync += [word.eq(mem.rdata.word_select(lane, 32)),
                                 status.eq(status | mem.rresp), addr.eq(addr + 4),
                                 count.eq(count - 1)]
                    m.next = "SEND_WORD"

            with m.State("SEND_WORD"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(word.word_select(idx[:2], 8))]
                with m.If(self.tx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == 3):
                        m.d.sync += idx.eq(0)
                        with m.If(cmd == Command.MEM_READ):
                            m.next = "MEM_READ"
                        with m.Else():
                            m.next = "STATUS"
            with m.State("STATUS"):
                send(status, "CMD")
        return m
