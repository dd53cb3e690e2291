"""Testbench helpers acting as the manager of an AXI4-Lite subordinate (async testbenches only).

``bus`` is the subordinate's port (``In(AXI4LiteSignature(...))``, e.g. ``dut.bus``); the
helpers drive its manager-side members and wait on the subordinate's. Each call offers the
request at once, holds every ``valid`` until its handshake, keeps ``bready`` / ``rready`` high
while waiting and returns in the cycle after the response handshake, with every ``valid`` and
``ready`` it drove low again. Against ``ControlRegisters`` a write takes 3 clock cycles and a
read 2; a slower subordinate just makes them wait longer.
"""

__all__ = ["axil_read", "axil_write"]


async def axil_write(ctx, bus, addr, value, strb=0xF):
    """Write ``value`` to ``addr`` with byte strobes ``strb``; return BRESP.

    AW and W are offered together and each withdrawn as soon as it is taken, so a subordinate
    may accept them in either order.
    """
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.awprot, 0)
    ctx.set(bus.awvalid, 1)
    ctx.set(bus.wdata, value)
    ctx.set(bus.wstrb, strb)
    ctx.set(bus.wvalid, 1)
    ctx.set(bus.bready, 1)
    aw_pending = w_pending = True
    while True:
        _, _, awready, wready, bvalid, bresp = await ctx.tick().sample(
            bus.awready, bus.wready, bus.bvalid, bus.bresp)
        if bvalid:
            assert not (aw_pending or w_pending), \
                "B response before the write address and data were accepted"
            ctx.set(bus.bready, 0)
            return bresp
        if aw_pending and awready:
            aw_pending = False
            ctx.set(bus.awvalid, 0)
        if w_pending and wready:
            w_pending = False
            ctx.set(bus.wvalid, 0)


async def axil_read(ctx, bus, addr):
    """Read ``addr``; return ``(RDATA, RRESP)``."""
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arprot, 0)
    ctx.set(bus.arvalid, 1)
    ctx.set(bus.rready, 1)
    ar_pending = True
    while True:
        _, _, arready, rvalid, rdata, rresp = await ctx.tick().sample(
            bus.arready, bus.rvalid, bus.rdata, bus.rresp)
        if rvalid:
            assert not ar_pending, "R response before the read address was accepted"
            ctx.set(bus.rready, 0)
            return rdata, rresp
        if ar_pending and arready:
            ar_pending = False
            ctx.set(bus.arvalid, 0)
