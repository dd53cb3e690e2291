"""Bus signatures shared by the core, the interconnect, the CSR block and the memory models.

Member names follow the AXI specification (``awaddr``, ``awvalid``, ...), so an exported port
reads as ``<prefix>__awaddr`` and a wrapper only has to change the separator.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BURST_INCR", "RESP_DECERR", "RESP_OKAY", "RESP_SLVERR", "AXI4LiteSignature",
           "AXI4Signature"]

BURST_INCR = 0b01
RESP_OKAY = 0b00
RESP_SLVERR = 0b10
RESP_DECERR = 0b11


class AXI4Signature(wiring.Signature):
    """AXI4 manager (master) interface: INCR bursts, one data width, an ID for routing.

    Parameters
    ----------
    addr_width, data_width, id_width : int
    """

    def __init__(self, *, addr_width, data_width, id_width):
        if data_width not in (32, 64, 128):
            raise ValueError(f"AXI data width must be 32, 64 or 128, not {data_width}")
        self.addr_width = addr_width
        self.data_width = data_width
        self.id_width = id_width
        super().__init__({
            "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8),
            "awsize": Out(3), "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8),
            "arsize": Out(3), "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and self.addr_width == other.addr_width
                and self.data_width == other.data_width and self.id_width == other.id_width)

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite manager interface (32-bit data); the CSR block takes ``.flip()`` of it."""

    def __init__(self, *, addr_width):
        self.addr_width = addr_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and self.addr_width == other.addr_width

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width})"
