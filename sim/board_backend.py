"""Run programs on an FPGA board through its UART host bridge (``npu.synth.bridge``).

:class:`BoardBackend` has the same ``run()`` as the simulator backends: it loads the memory
image over the serial line, writes the control registers, starts the cores, polls until they
finish, and reads status, counters and memory back. The serial line is a pyserial ``Serial``
(``port=``) or any object with ``write(bytes)`` and ``read(n)`` (``serial=``), such as
:class:`SimulatedSerial`, which runs the board's bridge, memory and NPU in the Amaranth
simulator so that the whole path is tested without a board.
"""

import struct
from collections import deque

import numpy as np
from amaranth.sim import Simulator

from npu.rtl.control import COUNTERS, RegisterMap
from npu.rtl.isa import CoreState, ErrorCode
from npu.synth.bridge import ARG_BYTES, MAX_WORDS, STATUS_BAD_COMMAND, Command
from npu.synth.system import NPUSystem

from .amaranth_sim import CLOCK_PERIOD
from .backend import CoreResult, NPUTimeout, RunResult, check_run_arguments

__all__ = ["DEFAULT_BAUD", "BoardBackend", "BridgeClient", "BridgeError", "SimulatedSerial"]

DEFAULT_BAUD = 115200


class BridgeError(RuntimeError):
    """The board answered a frame with an error status, a wrong echo, or not at all."""


class BridgeClient:
    """The host side of the bridge protocol over a byte link (see ``npu.synth.bridge``).

    Parameters
    ----------
    link : object with ``write(bytes)`` and ``read(n) -> bytes``
        ``read`` may return fewer bytes than asked (a pyserial timeout); that is an error.
    chunk_words : int
        Most words per MEM_WRITE / MEM_READ frame.
    """

    def __init__(self, link, *, chunk_words=1024):
        if not 1 <= chunk_words <= MAX_WORDS:
            raise ValueError(f"chunk_words must be in [1, {MAX_WORDS}], not {chunk_words}")
        self.link = link
        self.chunk_words = chunk_words

    def _frame(self, command, args=b"", payload=b"", reply_bytes=0):
        assert len(args) == ARG_BYTES[command]
        self.link.write(bytes([command.value]) + args + payload)
        want = 1 + reply_bytes + 1
        reply = self.link.read(want)
        if len(reply) != want:
            raise BridgeError(f"{command.name}: the board answered {len(reply)} of {want} "
                              "bytes (is the bitstream loaded and the baud rate right?)")
        if reply[0] != command.value:
            raise BridgeError(f"{command.name}: the board echoed 0x{reply[0]:02x}, not "
                              f"0x{command.value:02x} (the link is out of step)")
        status = reply[-1]
        if status == STATUS_BAD_COMMAND:
            raise BridgeError(f"{command.name}: the board does not know this command")
        if status:
            raise BridgeError(f"{command.name}: bus error (AXI response {status & 3})")
        return reply[1:-1]

    def info(self):
        """Bytes of memory on the board."""
        return struct.unpack("<I", self._frame(Command.INFO, reply_bytes=4))[0]

    def csr_write(self, addr, value):
        self._frame(Command.CSR_WRITE, struct.pack("<II", addr, value & 0xFFFF_FFFF))

    def csr_read(self, addr):
        return struct.unpack("<I", self._frame(Command.CSR_READ, struct.pack("<I", addr),
                                               reply_bytes=4))[0]

    def mem_write(self, addr, data):
        """Write ``data`` (bytes-like, a multiple of 4 bytes) at byte address ``addr``."""
        data = bytes(data)
        if addr % 4 or len(data) % 4:
            raise ValueError("memory writes must be whole aligned 32-bit words")
        step = 4 * self.chunk_words
        for offset in range(0, len(data), step):
            chunk = data[offset:offset + step]
            self._frame(Command.MEM_WRITE, struct.pack("<IH", addr + offset, len(chunk) // 4),
                        chunk)

    def mem_read(self, addr, nbytes):
        """``nbytes`` (a multiple of 4) from byte address ``addr``."""
        if addr % 4 or nbytes % 4:
            raise ValueError("memory reads must be whole aligned 32-bit words")
        out = bytearray()
        step = 4 * self.chunk_words
        for offset in range(0, nbytes, step):
            n = min(step, nbytes - offset)
            out += self._frame(Command.MEM_READ, struct.pack("<IH", addr + offset, n // 4),
                               reply_bytes=n)
        return bytes(out)


class BoardBackend:
    """Runs on a board built by ``npu.synth.build``, through its UART bridge.

    Parameters
    ----------
    config : NPUConfig
        Must be the configuration the bitstream was built with (checked against the CONFIG
        register on the first run).
    port : str, optional
        Serial device (``/dev/ttyUSB0``), opened with pyserial.
    serial : object, optional
        An open link instead of ``port`` (``write`` / ``read``), e.g. :class:`SimulatedSerial`.
    baud : int
        UART rate of the bitstream (``port`` only).
    timeout : float
        pyserial read timeout in seconds (``port`` only).
    chunk_words : int
        Words per memory frame.
    """

    name = "board"

    def __init__(self, config, *, port=None, serial=None, baud=DEFAULT_BAUD, timeout=2.0,
                 chunk_words=1024):
        if (port is None) == (serial is None):
            raise ValueError("give exactly one of port= (a serial device) or serial= "
                             "(an open link)")
        if serial is None:
            import serial as pyserial
            serial = pyserial.Serial(port, baud, timeout=timeout)
        self.config = config
        self.link = serial
        self.client = BridgeClient(serial, chunk_words=chunk_words)
        self._checked = False
        self.mem_bytes = None

    def _check_board(self):
        if self._checked:
            return
        c = self.config
        expect = c.rows | c.cols << 8 | c.cores << 16 | c.bus_bytes << 24
        got = self.client.csr_read(RegisterMap.CONFIG)
        if got != expect:
            raise ValueError(
                f"the board's NPU is {got & 0xFF}x{got >> 8 & 0xFF} with {got >> 16 & 0xF} "
                f"core(s) and a {8 * (got >> 24)}-bit bus, not the configuration given "
                f"({c.rows}x{c.cols}, {c.cores} core(s), {c.bus_width}-bit)")
        self.mem_bytes = self.client.info()
        self._checked = True

    def run(self, memory, programs, windows=None, *, max_cycles=1_000_000, progress=None):
        programs, windows = check_run_arguments(self.config, memory, programs, windows)
        self._check_board()
        if len(memory) > self.mem_bytes:
            raise ValueError(f"the memory image has {len(memory)} bytes; the board has "
                             f"{self.mem_bytes}")
        client = self.client
        size = -(-len(memory) // 4) * 4
        image = np.zeros(size, np.uint8)
        image[:len(memory)] = memory
        client.mem_write(0, image.tobytes())

        n = len(programs)
        all_bits = (1 << n) - 1
        # Clear interrupts left over from an earlier run before starting.
        client.csr_write(RegisterMap.IRQ_STATUS, 0xFF)
        client.csr_write(RegisterMap.IRQ_ENABLE, all_bits)
        for i, (prog, (base, limit)) in enumerate(zip(programs, windows)):
            client.csr_write(RegisterMap.core(i, RegisterMap.PROG_ADDR), prog)
            client.csr_write(RegisterMap.core(i, RegisterMap.WIN_BASE), base)
            client.csr_write(RegisterMap.core(i, RegisterMap.WIN_LIMIT), limit)
        for i in range(n):
            client.csr_write(RegisterMap.core(i, RegisterMap.CTRL), 1)

        finished = 0
        while True:
            status = client.csr_read(RegisterMap.IRQ_STATUS) & all_bits
            if status & ~finished and progress is not None:
                progress((finished | status).bit_count(), n)
            finished |= status
            if finished == all_bits:
                break
            # The budget is counted by the cores' own cycle counters.
            running = [i for i in range(n) if not finished >> i & 1]
            if max(client.csr_read(RegisterMap.counter(i, "cycles"))
                   for i in running) >= max_cycles:
                raise NPUTimeout(max_cycles, [self._read_core(i) for i in range(n)])
        client.csr_write(RegisterMap.IRQ_STATUS, finished)

        states = [self._read_core(i) for i in range(n)]
        # Polling is slower than the NPU: a core may finish past its budget between two polls.
        if max(c["counters"]["cycles"] for c in states) > max_cycles:
            raise NPUTimeout(max_cycles, states)
        cores = [CoreResult(**c) for c in states]
        out = np.frombuffer(client.mem_read(0, size), np.uint8)[:len(memory)].copy()
        return RunResult(memory=out, cores=cores,
                         cycles=max(c.counters["cycles"] for c in cores))

    def _read_core(self, i):
        client = self.client
        status = client.csr_read(RegisterMap.core(i, RegisterMap.STATUS))
        pc = client.csr_read(RegisterMap.core(i, RegisterMap.PC))
        counters = {name: client.csr_read(RegisterMap.counter(i, name)) for name in COUNTERS}
        return {"state": CoreState(status & 3), "error": ErrorCode((status >> 4) & 0xF),
                "pc": pc, "counters": counters}

    def close(self):
        close = getattr(self.link, "close", None)
        if close is not None:
            close()


class SimulatedSerial:
    """A serial link to a simulated board: ``NPUSystem`` (bridge, memory, NPU) in the Amaranth
    simulator, at byte-stream level (one byte per cycle each way; the UART PHY in front of it
    on a real board is tested on its own).

    ``write()`` queues bytes for the board; ``read(n)`` runs the simulation until ``n`` bytes
    have come back or ``timeout_cycles`` pass without one, like pyserial's read timeout.

    Parameters
    ----------
    config : NPUConfig
    mem_bytes : int
        The board memory (a power of two).
    timeout_cycles : int
        Cycles without a byte from the board after which ``read`` returns short.
    timeout : int or None
        The bridge's frame timeout in cycles (as a board top sets it from its baud rate).

    Attributes
    ----------
    system : NPUSystem
    cycles : int
        Cycles simulated so far.
    """

    #: Cycles simulated between checks for the bytes a read waits for.
    STEP = 64

    def __init__(self, config, *, mem_bytes, timeout_cycles=100_000, timeout=None):
        self.system = NPUSystem(config, mem_bytes=mem_bytes, timeout=timeout)
        self.timeout_cycles = timeout_cycles
        self.cycles = 0
        self._to_board = deque()
        self._from_board = deque()
        self._sim = Simulator(self.system)
        self._sim.add_clock(CLOCK_PERIOD)
        self._sim.add_testbench(self._host)
        self._now = 0

    async def _host(self, ctx):
        rx, tx = self.system.rx, self.system.tx
        ctx.set(tx.ready, 1)
        while True:
            offered = bool(self._to_board)
            ctx.set(rx.valid, offered)
            if offered:
                ctx.set(rx.payload, self._to_board[0])
            _, _, rx_ready, tx_valid, tx_payload = await ctx.tick().sample(
                rx.ready, tx.valid, tx.payload)
            self.cycles += 1
            if offered and rx_ready:
                self._to_board.popleft()
            if tx_valid:
                self._from_board.append(tx_payload)

    def _advance(self, cycles):
        self._now += cycles
        self._sim.run_until(self._now * CLOCK_PERIOD)

    def write(self, data):
        self._to_board.extend(bytes(data))
        return len(data)

    def read(self, n):
        waited = 0
        have = len(self._from_board)
        while len(self._from_board) < n and waited < self.timeout_cycles:
            self._advance(self.STEP)
            if len(self._from_board) != have:
                have, waited = len(self._from_board), 0
            else:
                waited += self.STEP
        count = min(n, len(self._from_board))
        return bytes(self._from_board.popleft() for _ in range(count))

    @property
    def in_waiting(self):
        return len(self._from_board)

    def reset_input_buffer(self):
        self._from_board.clear()

    def close(self):
        pass
