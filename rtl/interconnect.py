"""Memory interconnect: N AXI4 managers (the cores) sharing one AXI4 subordinate port.

The arbiter adds no cycle on any channel except the first write beat of a burst, which waits
until the burst's AW has been accepted downstream (AXI4 W carries no ID, so the arbiter has
to know whose burst comes next before it can route W).
"""

from amaranth import C, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bus import AXI4Signature

__all__ = ["AXI4Arbiter", "AXI4RegisterSlice"]


def _check_int(name, value, *, minimum, maximum=None, kind="a positive integer"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {kind}, not {value}")


class AXI4Arbiter(wiring.Component):
    """Round-robin AXI4 arbiter: ``managers`` upstream ports, one downstream port.

    The downstream ID is the manager's ID with the manager index appended above it
    (``out.arid = Cat(m<i>.arid, i)``), so a subordinate that returns IDs unchanged (as AXI4
    requires) has its R and B beats routed back to the manager that asked, and responses for
    different managers may come back in any order.

    Arbitration is per burst and combinational: each cycle the first manager with a request,
    counting from the one after the manager granted last (from manager 0 after reset), is
    offered downstream. An offer that is not taken at once is held (same manager, same
    payload) until the handshake, so ``valid`` never drops and the payload never changes under
    ``valid`` downstream. With every manager requesting, grants rotate 0, 1, ..., N-1, 0, ...

    Write data follows write addresses: the index of each accepted AW is queued (a
    ``SyncFIFO`` of ``WRITE_ORDER_DEPTH`` entries) and W is taken from the manager at the head
    of the queue until its ``wlast``; so further AWs can be accepted while an earlier burst's
    data is still flowing, and the queue only throttles AW when that many bursts are waiting
    for their data. Managers must not wait for ``wready`` before offering AW (AXI4 A3.3.1).

    Latency, in cycles, from a manager's signal to the downstream port and back:

    * AR, AW, R, B: 0 (combinational), both ``valid`` and ``ready``; one AR and one AW can be
      granted every cycle, from the same or from different managers.
    * W: the first beat of a burst can cross in the cycle after its AW handshake downstream;
      from then on 0 (combinational); the next burst's beats follow its predecessor's
      ``wlast`` without a gap if its AW has already been accepted.

    With one manager the arbiter is wires (the ID is not widened and W is not held back).

    Parameters
    ----------
    managers : int
        Number of upstream ports, 1 or more.
    addr_width : int
        Byte address width, 1..64.
    data_width : int
        32, 64, 128 or 256.
    id_width : int
        ID width of the upstream ports, 0 or more; the downstream port has
        ``id_width + ceil_log2(managers)`` ID bits.

    Ports
    -----
    m0, m1, ... : In(AXI4Signature(addr_width, data_width, id_width))
        Upstream ports; a manager connects to each. Also listed in ``managers``.
    out : Out(AXI4Signature(addr_width, data_width, out_id_width))
        Downstream port, to the subordinate.
    """

    #: Bursts whose AW has been accepted downstream and whose W has not finished.
    WRITE_ORDER_DEPTH = 4

    def __init__(self, *, managers, addr_width, data_width, id_width):
        _check_int("Arbiter manager count", managers, minimum=1)
        _check_int("Arbiter address width", addr_width, minimum=1, maximum=64,
                   kind="an integer in [1, 64]")
        if isinstance(data_width, bool) or data_width not in (32, 64, 128, 256):
            raise ValueError(f"Arbiter data width must be 32, 64, 128 or 256, not {data_width!r}")
        _check_int("Arbiter ID width", id_width, minimum=0, kind="a non-negative integer")
        self.manager_count = managers
        self.addr_width = addr_width
        self.data_width = data_width
        self.id_width = id_width
        self.index_width = ceil_log2(managers)
        self.out_id_width = id_width + self.index_width
        up = AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)
        down = AXI4Signature(addr_width=addr_width, data_width=data_width,
                             id_width=self.out_id_width)
        super().__init__({
            **{f"m{i}": In(up) for i in range(managers)},
            "out": Out(down),
        })
        self.managers = [getattr(self, f"m{i}") for i in range(managers)]

    def elaborate(self, platform):
        m = Module()
        if self.manager_count == 1:
            wiring.connect(m, wiring.flipped(self.m0), wiring.flipped(self.out))
            return m

        order = m.submodules.w_order = SyncFIFO(width=self.index_width,
                                                depth=self.WRITE_ORDER_DEPTH)

        self._address_channel(m, "ar", accept=C(1))
        aw_grant, aw_fire = self._address_channel(m, "aw", accept=order.w_rdy)
        m.d.comb += [order.w_en.eq(aw_fire), order.w_data.eq(aw_grant)]

        # W: from the manager whose AW is oldest among those not yet finished.
        out = self.out
        with m.Switch(order.r_data):
            for i, mgr in enumerate(self.managers):
                with m.Case(i):
                    m.d.comb += [
                        out.wdata.eq(mgr.wdata),
                        out.wstrb.eq(mgr.wstrb),
                        out.wlast.eq(mgr.wlast),
                        out.wvalid.eq(order.r_rdy & mgr.wvalid),
                        mgr.wready.eq(order.r_rdy & out.wready),
                    ]
        m.d.comb += order.r_en.eq(out.wvalid & out.wready & out.wlast)

        self._response_channel(m, "r", ("rdata", "rresp", "rlast"))
        self._response_channel(m, "b", ("bresp",))
        return m

    def _address_channel(self, m, ch, *, accept):
        """Arbitrate the AR or AW channel; return (granted index, downstream handshake).

        ``accept`` gates the whole channel (the W order queue has room); it may only fall
        after a handshake, so it never withdraws an offer.
        """
        n = self.manager_count
        valids = [getattr(mgr, f"{ch}valid") for mgr in self.managers]
        # Granted most recently; starts at the last manager so that manager 0 goes first.
        last = Signal(range(n), name=f"{ch}_last", init=n - 1)
        held = Signal(name=f"{ch}_held")              # an offer is waiting for ready
        held_index = Signal(range(n), name=f"{ch}_held_index")
        pick = Signal(range(n), name=f"{ch}_pick")
        grant = Signal(range(n), name=f"{ch}_grant")

        # Round robin: the first requester after `last`; later Ifs take priority, so the
        # candidates are visited from lowest to highest priority.
        with m.Switch(last):
            for prev in range(n):
                with m.Case(prev):
                    for k in reversed(range(1, n + 1)):
                        i = (prev + k) % n
                        with m.If(valids[i]):
                            m.d.comb += pick.eq(i)
        m.d.comb += grant.eq(Mux(held, held_index, pick))

        out = self.out
        out_valid = getattr(out, f"{ch}valid")
        out_ready = getattr(out, f"{ch}ready")
        with m.Switch(grant):
            for i, mgr in enumerate(self.managers):
                with m.Case(i):
                    m.d.comb += [
                        getattr(out, f"{ch}id").eq(Cat(getattr(mgr, f"{ch}id"),
                                                       C(i, self.index_width))),
                        out_valid.eq(valids[i] & accept),
                        getattr(mgr, f"{ch}ready").eq(out_ready & accept),
                    ]
                    for field in ("addr", "len", "size", "burst"):
                        m.d.comb += getattr(out, f"{ch}{field}").eq(getattr(mgr, f"{ch}{field}"))

        fire = Signal(name=f"{ch}_fire")
        m.d.comb += fire.eq(out_valid & out_ready)
        with m.If(fire):
            m.d.sync += [last.eq(grant), held.eq(0)]
        with m.Elif(out_valid):
            m.d.sync += [held.eq(1), held_index.eq(grant)]
        return grant, fire

    def _response_channel(self, m, ch, fields):
        """Route R or B to the manager named by the upper ID bits; strip those bits."""
        out = self.out
        out_id = getattr(out, f"{ch}id")
        index = out_id[self.id_width:]
        for i, mgr in enumerate(self.managers):
            m.d.comb += [
                getattr(mgr, f"{ch}id").eq(out_id[:self.id_width]),
                getattr(mgr, f"{ch}valid").eq(getattr(out, f"{ch}valid") & (index == i)),
            ]
            for field in fields:
                m.d.comb += getattr(mgr, field).eq(getattr(out, field))
        # An index naming no manager (only possible from a subordinate that corrupts IDs)
        # is never taken.
        with m.Switch(index):
            for i, mgr in enumerate(self.managers):
                with m.Case(i):
                    m.d.comb += getattr(out, f"{ch}ready").eq(getattr(mgr, f"{ch}ready"))


#: The AXI4 channels: (valid, ready, payload members, direction) with "down" from manager to
#: subordinate.
_AXI4_CHANNELS = (
    ("awvalid", "awready", ("awid", "awaddr", "awlen", "awsize", "awburst"), "down"),
    ("wvalid", "wready", ("wdata", "wstrb", "wlast"), "down"),
    ("arvalid", "arready", ("arid", "araddr", "arlen", "arsize", "arburst"), "down"),
    ("rvalid", "rready", ("rid", "rdata", "rresp", "rlast"), "up"),
    ("bvalid", "bready", ("bid", "bresp"), "up"),
)


class AXI4RegisterSlice(wiring.Component):
    """A full AXI4 register slice: every channel's valid, payload and ready are registered.

    Each of the five channels goes through a two-entry skid buffer, so no combinational path
    crosses the slice in either direction and a channel still moves a beat every cycle; each
    channel takes one cycle longer. For cutting timing paths between an FPGA design's
    blocks.

    Parameters
    ----------
    signature : AXI4Signature

    Ports
    -----
    up : In(signature)
        Towards the manager.
    down : Out(signature)
        Towards the subordinate.
    """

    def __init__(self, signature):
        if not isinstance(signature, AXI4Signature):
            raise TypeError(f"signature must be an AXI4Signature, not {signature!r}")
        super().__init__({"up": In(signature), "down": Out(signature)})

    def elaborate(self, platform):
        m = Module()
        for valid, ready, members, direction in _AXI4_CHANNELS:
            src, dst = (self.up, self.down) if direction == "down" else (self.down, self.up)
            payload_in = Cat(getattr(src, name) for name in members)
            payload_out = Cat(getattr(dst, name) for name in members)
            out_valid = Signal(name=f"{valid}_out")
            # Only the valid bits are reset (the data goes nowhere without them).
            out_data = Signal(len(payload_in), name=f"{valid[:-5]}_out", reset_less=True)
            skid_valid = Signal(name=f"{valid}_skid")
            skid_data = Signal(len(payload_in), name=f"{valid[:-5]}_skid", reset_less=True)
            m.d.comb += [
                getattr(dst, valid).eq(out_valid),
                payload_out.eq(out_data),
                getattr(src, ready).eq(~skid_valid),
            ]
            taken_in = getattr(src, valid) & ~skid_valid
            with m.If(getattr(dst, ready) | ~out_valid):
                # The output register moves: from the skid buffer first.
                with m.If(skid_valid):
                    m.d.sync += [out_valid.eq(1), out_data.eq(skid_data), skid_valid.eq(0)]
                with m.Else():
                    m.d.sync += [out_valid.eq(getattr(src, valid)), out_data.eq(payload_in)]
            with m.Elif(taken_in):
                m.d.sync += [skid_valid.eq(1), skid_data.eq(payload_in)]
        return m
