"""An AXI4 subordinate memory for the Amaranth simulator that also checks the manager's protocol.

:class:`AXI4Memory` holds a byte array (:attr:`AXI4Memory.mem`) and answers AXI4 bursts on the
manager-side interface of an :class:`~npu.rtl.bus.AXI4Signature` (typically a DUT's ``axi``
port). Its :meth:`~AXI4Memory.process` is a background process (``add_process``, or
``processes=`` of :func:`~npu.sim.amaranth_sim.run_simulation`) that behaves like registered
logic: at every rising edge it samples the manager's outputs and its own, then drives its
outputs for the next edge.

Timing model
------------
Every rule is exact and deterministic, because the NPU's cycle counts are asserted in tests.
Rising clock edges are numbered from 0 (the first edge of the simulation); a handshake "at edge
N" means valid and ready were both high when edge N sampled them. Error messages name the edge
as "cycle N".

* **Read address.** ARREADY is high whenever fewer than :attr:`AXI4Memory.QUEUE_DEPTH` (16)
  read bursts are outstanding (accepted, last R beat not yet taken), so with a free queue an AR
  is taken at the first edge that sees ARVALID.
* **Read data.** Bursts are served strictly in order of acceptance, back to back. The first R
  beat of a burst accepted at edge N is valid at edge ``N + latency`` at the earliest (with
  ``latency=1``: the very next edge). It is later only if an earlier burst still occupies the R
  channel or the byte budget has no credit. RID echoes ARID; RVALID and the beat stay stable
  until RREADY.
* **Write address and data.** AWREADY is high whenever fewer than 16 write bursts are in the
  model (accepted, B not yet taken). WREADY goes high only for a burst whose AW has been taken:
  after an AW handshake at edge N the first W beat can be taken at edge N + 1. A manager may
  offer W before, or together with, AW (AXI allows this); the model just holds WREADY low until
  the AW has been taken, which the AXI specification permits a subordinate to do. (A manager
  that waits for WREADY before offering AW deadlocks, but waiting like that is itself an AXI
  violation.) Each beat is written into :attr:`~AXI4Memory.mem` as it is taken, under WSTRB.
* **Write response.** BVALID for a burst whose WLAST beat was taken at edge N is high at edge
  ``N + latency`` at the earliest, in order, one response at a time, held until BREADY. BID
  echoes AWID.
* **Bandwidth.** Reads and writes have separate budgets of ``bytes_per_cycle`` each, like a
  port with independent read and write channels. Each budget is a credit counter in bytes: every
  cycle it gains ``bytes_per_cycle``, at most ``bus_bytes - 1`` bytes of unused credit carry
  over to the next cycle, and sending a beat costs ``bus_bytes`` (full-width beats only). An R
  beat is put on the bus, or WREADY raised, only when the credit covers a beat. So a channel
  moves one beat per cycle when ``bytes_per_cycle >= bus_bytes``, otherwise one beat every
  ``bus_bytes / bytes_per_cycle`` cycles on average (64-bit bus: every 2nd cycle at 4 bytes per
  cycle, every 8th at 1), and an idle channel sends its first beat without delay.
* **Errors.** A beat whose bytes are not all inside ``[0, size)`` gets RESP_SLVERR: a read beat
  returns zeros, a write beat is dropped (its burst's BRESP is SLVERR). Beats inside the memory
  are still served.

Protocol checks
---------------
Violations raise :class:`AXIProtocolError` from the process, which ends the simulation:

* ARBURST / AWBURST must be INCR; ARSIZE / AWSIZE must be log2 of the bus width in bytes; the
  address must be aligned to the bus width; a burst must not cross a 4 KB boundary.
* WLAST must be set on beat AWLEN + 1 of a burst and on no other beat.
* ARVALID, AWVALID and WVALID must stay high until their handshake, and the channel's payload
  must not change while the valid is high and the ready low.

The clock domain's reset is ignored: the model starts idle at time 0.
"""

from collections import deque

import numpy as np
from amaranth.lib import wiring

from npu.rtl.bus import BURST_INCR, RESP_OKAY, RESP_SLVERR, AXI4Signature

__all__ = ["AXI4Memory", "AXIProtocolError"]

_BOUNDARY = 4096
_BURST_NAMES = {0b00: "FIXED", 0b01: "INCR", 0b10: "WRAP", 0b11: "reserved"}
_AR_FIELDS = ("ARADDR", "ARLEN", "ARSIZE", "ARBURST", "ARID")
_AW_FIELDS = ("AWADDR", "AWLEN", "AWSIZE", "AWBURST", "AWID")
_W_FIELDS = ("WDATA", "WSTRB", "WLAST")


class AXIProtocolError(Exception):
    """The manager broke an AXI4 rule that :class:`AXI4Memory` checks."""


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value}")


class AXI4Memory:
    """AXI4 subordinate memory model and protocol checker (see the module docstring for timing).

    Parameters
    ----------
    bus : interface of an :class:`~npu.rtl.bus.AXI4Signature`
        The manager side (e.g. ``dut.axi`` of a component with ``axi: Out(AXI4Signature(...))``).
        The model drives its ``In`` members (AWREADY, WREADY, B*, ARREADY, R*).
    size : int
        Memory size in bytes.
    latency : int
        Cycles from an AR handshake to the first R beat, and from the WLAST handshake to BVALID.
    bytes_per_cycle : int
        Bandwidth of the read channel and, separately, of the write channel.
    image : numpy.ndarray of uint8, or bytes, optional
        Initial contents, loaded at address 0; the rest of the memory is zero.

    Attributes
    ----------
    size, latency, bytes_per_cycle : int
        The constructor arguments.
    bus_bytes : int
        Bytes per beat (the bus data width / 8).
    mem : numpy.ndarray
        ``size`` bytes (uint8) of contents; read and write it directly before or after a run.
    reads, writes : int
        Read and write bursts accepted (AR / AW handshakes).
    read_beats, write_beats : int
        R and W beat handshakes.
    max_outstanding_reads : int
        Most read bursts accepted and not yet completed at any one time.
    """

    #: Bursts each of the read and write paths holds before deasserting ARREADY / AWREADY.
    QUEUE_DEPTH = 16

    def __init__(self, bus, *, size, latency=8, bytes_per_cycle=8, image=None):
        signature = getattr(bus, "signature", None)
        if (not isinstance(signature, AXI4Signature)
                or isinstance(signature, wiring.FlippedSignature)):
            raise TypeError(
                f"Bus must be the manager side of an AXI4Signature interface, not {bus!r}")
        _check_positive_int("Memory size", size)
        _check_positive_int("Latency", latency)
        _check_positive_int("Bytes per cycle", bytes_per_cycle)
        self.bus = bus
        self.size = size
        self.latency = latency
        self.bytes_per_cycle = bytes_per_cycle
        self.bus_bytes = signature.data_width // 8
        self.mem = np.zeros(size, dtype=np.uint8)
        if image is not None:
            if isinstance(image, (bytes, bytearray, memoryview)):
                image = np.frombuffer(image, dtype=np.uint8)
            elif not isinstance(image, np.ndarray):
                raise TypeError(
                    f"Image must be a uint8 numpy array or bytes, not {type(image).__name__}")
            if image.dtype != np.uint8:
                raise TypeError(f"Image must be a uint8 numpy array, not an array of {image.dtype}")
            if image.ndim != 1:
                raise ValueError(f"Image must be a 1-D array, not {image.ndim}-D")
            if image.size > size:
                raise ValueError(
                    f"Image of {image.size} bytes does not fit in a memory of {size} bytes")
            self.mem[:image.size] = image
        self.reads = 0
        self.writes = 0
        self.read_beats = 0
        self.write_beats = 0
        self.max_outstanding_reads = 0

    def _check_burst(self, ch, addr, length, size, burst, cycle):
        bb = self.bus_bytes
        if burst != BURST_INCR:
            self._fail(cycle, f"{ch}BURST must be INCR, not {_BURST_NAMES[burst]} ({burst:#04b})")
        if 1 << size != bb:
            self._fail(cycle, f"{ch}SIZE must be {bb.bit_length() - 1} ({bb}-byte beats, the bus "
                              f"width), not {size}")
        if addr % bb:
            self._fail(cycle, f"{ch}ADDR {addr:#x} is not aligned to the {bb}-byte bus width")
        if addr % _BOUNDARY + (length + 1) * bb > _BOUNDARY:
            self._fail(cycle, f"{ch} burst of {length + 1} beats at {addr:#x} crosses a 4 KB "
                              f"boundary")

    @staticmethod
    def _check_held(ch, fields, held, valid, now_payload, cycle):
        if not valid:
            AXI4Memory._fail(cycle, f"{ch}VALID dropped before {ch}READY")
        for name, old, new in zip(fields, held, now_payload, strict=True):
            if old != new:
                AXI4Memory._fail(cycle, f"{name} changed from {old:#x} to {new:#x} while "
                                        f"{ch}VALID was high and {ch}READY low")

    @staticmethod
    def _fail(cycle, message):
        raise AXIProtocolError(f"cycle {cycle}: {message}")

    def _read_beat(self, addr):
        bb = self.bus_bytes
        if addr + bb <= self.size:
            return int.from_bytes(self.mem[addr:addr + bb].tobytes(), "little"), RESP_OKAY
        return 0, RESP_SLVERR

    def _write_beat(self, addr, data, strb):
        bb = self.bus_bytes
        if addr + bb > self.size:
            return RESP_SLVERR
        raw = data.to_bytes(bb, "little")
        if strb == (1 << bb) - 1:
            self.mem[addr:addr + bb] = np.frombuffer(raw, dtype=np.uint8)
        else:
            for i in range(bb):
                if strb >> i & 1:
                    self.mem[addr + i] = raw[i]
        return RESP_OKAY

    async def process(self, ctx):
        """Serve the bus forever; register with ``add_process``.

        Each edge costs one ``ctx.tick().sample()`` of the 18 manager-driven signals (a process
        cannot ``ctx.get``) and a ``ctx.set`` only for outputs whose value changes.

        Raises
        ------
        AXIProtocolError
            When the manager breaks one of the checked rules.
        """
        bus = self.bus
        set_ = ctx.set
        bb = self.bus_bytes
        # Less than one beat of unused credit carries over: an idle channel sends at once, yet
        # never two beats back to back when bytes_per_cycle is below the bus width.
        carry = bb - 1
        bpc = self.bytes_per_cycle
        wait = self.latency - 1  # response may be driven `wait` edges after the handshake edge
        depth = self.QUEUE_DEPTH
        check_burst = self._check_burst
        check_held = self._check_held

        # Read bursts: [first edge to drive a beat, addr, beats, id, beats driven].
        rq = deque()
        # Write bursts waiting for data: [addr, beats, id, beats taken, resp].
        wq = deque()
        # Write responses: [first edge to drive BVALID, id, resp].
        bq = deque()
        r_credit = w_credit = carry
        ar_hold = aw_hold = w_hold = None

        # Values this process drives, so that a signal is only set when it changes.
        arready = awready = 1
        wready = rvalid = bvalid = 0
        rdata = rid = rresp = rlast = bid = bresp = 0
        set_(bus.arready, 1)
        set_(bus.awready, 1)

        cycle = -1
        async for (_, _, arvalid, awvalid, wvalid, rready, bready,
                   araddr, arlen, arsize, arburst, arid,
                   awaddr, awlen, awsize, awburst, awid,
                   wdata, wstrb, wlast) in ctx.tick().sample(
                bus.arvalid, bus.awvalid, bus.wvalid, bus.rready, bus.bready,
                bus.araddr, bus.arlen, bus.arsize, bus.arburst, bus.arid,
                bus.awaddr, bus.awlen, bus.awsize, bus.awburst, bus.awid,
                bus.wdata, bus.wstrb, bus.wlast):
            cycle += 1

            # -- AR: accept into the read queue.
            if ar_hold is not None:
                check_held("AR", _AR_FIELDS, ar_hold, arvalid,
                           (araddr, arlen, arsize, arburst, arid), cycle)
                ar_hold = None
            if arvalid:
                if arready:
                    check_burst("AR", araddr, arlen, arsize, arburst, cycle)
                    rq.append([cycle + wait, araddr, arlen + 1, arid, 0])
                    self.reads += 1
                    self.max_outstanding_reads = max(self.max_outstanding_reads, len(rq))
                else:
                    ar_hold = (araddr, arlen, arsize, arburst, arid)

            # -- R: retire the beat taken at this edge, then drive the next one if it is due.
            r_credit = min(carry, r_credit) + bpc
            if rvalid and rready:
                self.read_beats += 1
                if rlast:
                    rq.popleft()
                free = True
            else:
                free = not rvalid
            if free:
                if rq and rq[0][0] <= cycle and r_credit >= bb:
                    r_credit -= bb
                    burst = rq[0]
                    beat = burst[4]
                    burst[4] = beat + 1
                    data, resp = self._read_beat(burst[1] + beat * bb)
                    last = int(beat + 1 == burst[2])
                    if data != rdata:
                        rdata = data
                        set_(bus.rdata, data)
                    if resp != rresp:
                        rresp = resp
                        set_(bus.rresp, resp)
                    if last != rlast:
                        rlast = last
                        set_(bus.rlast, last)
                    if burst[3] != rid:
                        rid = burst[3]
                        set_(bus.rid, rid)
                    if not rvalid:
                        rvalid = 1
                        set_(bus.rvalid, 1)
                elif rvalid:
                    rvalid = 0
                    set_(bus.rvalid, 0)
            if (len(rq) < depth) != arready:
                arready ^= 1
                set_(bus.arready, arready)

            # -- AW: accept into the write queue.
            if aw_hold is not None:
                check_held("AW", _AW_FIELDS, aw_hold, awvalid,
                           (awaddr, awlen, awsize, awburst, awid), cycle)
                aw_hold = None
            if awvalid:
                if awready:
                    check_burst("AW", awaddr, awlen, awsize, awburst, cycle)
                    wq.append([awaddr, awlen + 1, awid, 0, RESP_OKAY])
                    self.writes += 1
                else:
                    aw_hold = (awaddr, awlen, awsize, awburst, awid)

            # -- W: take the beat of the oldest burst still waiting for data.
            if w_hold is not None:
                check_held("W", _W_FIELDS, w_hold, wvalid, (wdata, wstrb, wlast), cycle)
                w_hold = None
            if wvalid:
                if wready:
                    w_credit -= bb
                    burst = wq[0]
                    beat = burst[3]
                    beats = burst[1]
                    if wlast != (beat + 1 == beats):
                        if wlast:
                            self._fail(cycle, f"WLAST set on beat {beat + 1} of a {beats}-beat "
                                              f"write burst at {burst[0]:#x}")
                        self._fail(cycle, f"WLAST not set on beat {beats}, the last of a write "
                                          f"burst at {burst[0]:#x}")
                    if self._write_beat(burst[0] + beat * bb, wdata, wstrb) != RESP_OKAY:
                        burst[4] = RESP_SLVERR
                    self.write_beats += 1
                    if wlast:
                        wq.popleft()
                        bq.append([cycle + wait, burst[2], burst[4]])
                    else:
                        burst[3] = beat + 1
                else:
                    w_hold = (wdata, wstrb, wlast)
            w_credit = min(carry, w_credit) + bpc
            if (bool(wq) and w_credit >= bb) != wready:
                wready ^= 1
                set_(bus.wready, wready)

            # -- B: retire the response taken at this edge, then drive the next one if due.
            if bvalid and bready:
                bq.popleft()
                free = True
            else:
                free = not bvalid
            if free:
                if bq and bq[0][0] <= cycle:
                    _, resp_id, resp = bq[0]
                    if resp_id != bid:
                        bid = resp_id
                        set_(bus.bid, bid)
                    if resp != bresp:
                        bresp = resp
                        set_(bus.bresp, bresp)
                    if not bvalid:
                        bvalid = 1
                        set_(bus.bvalid, 1)
                elif bvalid:
                    bvalid = 0
                    set_(bus.bvalid, 0)
            if (len(wq) + len(bq) < depth) != awready:
                awready ^= 1
                set_(bus.awready, awready)
