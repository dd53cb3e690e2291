"""A passive AXI4 monitor for Amaranth testbenches: what happened on a bus, edge by edge."""

__all__ = ["AXI4Monitor"]


class AXI4Monitor:
    """Logs every rising edge of ``bus`` (an :class:`~npu.rtl.bus.AXI4Signature` interface),
    numbered from 0 like :class:`~npu.sim.axi_mem.AXI4Memory` numbers them.

    Add :meth:`process` as a background process. Attributes, filled as the edges go by:

    * ``ar``, ``aw``, ``w``: the edges of each handshake on that channel;
    * ``rvalid``, ``bvalid``: the edges with that valid high;
    * ``r``: ``(edge, rid, rdata, rresp, rlast)`` of each R handshake; ``b``: ``(edge, bid,
      bresp)`` of each B handshake;
    * ``edges``: per edge, ``(ar handshake, aw handshake, w handshake, arready, awready,
      wready, R beat or None, B beat or None)``, the beats as ``(rid, rdata, rresp, rlast)``
      and ``(bid, bresp)`` while their valid is high: all a subordinate drives, to compare two
      subordinates cycle for cycle.
    """

    def __init__(self, bus):
        self.bus = bus
        self.ar, self.aw, self.w = [], [], []
        self.rvalid, self.bvalid = [], []
        self.r, self.b = [], []
        self.edges = []

    async def process(self, ctx):
        b = self.bus
        cycle = -1
        async for (_, _, arvalid, arready, awvalid, awready, wvalid, wready,
                   rvalid, rready, rid, rdata, rresp, rlast,
                   bvalid, bready, bid, bresp) in ctx.tick().sample(
                b.arvalid, b.arready, b.awvalid, b.awready, b.wvalid, b.wready,
                b.rvalid, b.rready, b.rid, b.rdata, b.rresp, b.rlast,
                b.bvalid, b.bready, b.bid, b.bresp):
            cycle += 1
            hs = (arvalid and arready, awvalid and awready, wvalid and wready)
            for taken, log in zip(hs, (self.ar, self.aw, self.w)):
                if taken:
                    log.append(cycle)
            r = (rid, rdata, rresp, rlast) if rvalid else None
            bb = (bid, bresp) if bvalid else None
            self.edges.append((*hs, arready, awready, wready, r, bb))
            if rvalid:
                self.rvalid.append(cycle)
                if rready:
                    self.r.append((cycle, *r))
            if bvalid:
                self.bvalid.append(cycle)
                if bready:
                    self.b.append((cycle, *bb))
