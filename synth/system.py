"""The NPU with its memory and the host bridge: everything a board top puts behind its UART.

Byte streams in and out, no pins and no clocking, so the same component runs in the Amaranth
simulator (``npu.sim.board_backend.SimulatedSerial``) and on every board.
"""

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from npu.rtl.bus import AXI4Signature
from npu.rtl.config import NPUConfig
from npu.rtl.csr import ControlRegisters
from npu.rtl.interconnect import AXI4Arbiter, AXI4RegisterSlice
from npu.rtl.top import NPU

from .bridge import HostBridge
from .memory import AXI4OnChipMemory

__all__ = ["NPUSystem"]


class NPUSystem(wiring.Component):
    """``NPU(config)`` sharing ``mem_bytes`` of on-chip memory with a :class:`HostBridge`.

    The NPU and the bridge are the two managers of an ``AXI4Arbiter`` in front of an
    :class:`AXI4OnChipMemory`; the bridge also owns the NPU's register bus. With
    ``config.retime`` each of the three links goes through an ``AXI4RegisterSlice`` and the
    memory is pipelined.

    Parameters
    ----------
    config : NPUConfig
    mem_bytes : int
        On-chip memory size, a power of two.
    timeout : int or None
        The bridge's frame timeout in cycles.
    spram : bool
        Build the memory from iCE40UP5K SPRAM (see ``AXI4OnChipMemory``).

    Ports
    -----
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    irq : Out(1)

    Attributes
    ----------
    npu : NPU
    memory : AXI4OnChipMemory
    slice, bridge_slice, memory_slice : AXI4RegisterSlice or None
        The register slices after the NPU and the bridge and before the memory (retimed).
    """

    def __init__(self, config, *, mem_bytes, timeout=None, spram=False):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        self.config = config
        self.npu = NPU(config)
        up = self.npu.axi.signature
        # Retimed, AXI4 register slices cut the paths from the NPU and the bridge to the
        # arbiter and from the arbiter to the memory.
        self.slice = AXI4RegisterSlice(up) if config.retime else None
        self.bridge_slice = AXI4RegisterSlice(up) if config.retime else None
        self.arbiter = AXI4Arbiter(managers=2, addr_width=config.addr_width,
                                   data_width=config.bus_width, id_width=up.id_width)
        down = AXI4Signature(addr_width=config.addr_width, data_width=config.bus_width,
                             id_width=self.arbiter.out_id_width)
        self.memory_slice = AXI4RegisterSlice(down) if config.retime else None
        self.memory = AXI4OnChipMemory(down, size=mem_bytes, spram=spram,
                                       pipelined=config.retime and not spram)
        self.bridge = HostBridge(csr_addr_width=ControlRegisters.ADDR_WIDTH,
                                 mem_signature=up, mem_bytes=mem_bytes, timeout=timeout)
        self.mem_bytes = mem_bytes
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.npu = self.npu
        m.submodules.arbiter = self.arbiter
        m.submodules.memory = self.memory
        m.submodules.bridge = self.bridge
        _through(m, "slice", self.slice, self.npu.axi, self.arbiter.m0)
        _through(m, "bridge_slice", self.bridge_slice, self.bridge.mem, self.arbiter.m1)
        _through(m, "memory_slice", self.memory_slice, self.arbiter.out, self.memory.bus)
        wiring.connect(m, self.bridge.csr, self.npu.csr)
        wiring.connect(m, wiring.flipped(self.rx), self.bridge.rx)
        wiring.connect(m, self.bridge.tx, wiring.flipped(self.tx))
        m.d.comb += self.irq.eq(self.npu.irq)
        return m


def _through(m, name, register_slice, manager, subordinate):
    """Connect ``manager`` to ``subordinate``, through ``register_slice`` unless it is None."""
    if register_slice is None:
        wiring.connect(m, manager, subordinate)
    else:
        m.submodules[name] = register_slice
        wiring.connect(m, manager, register_slice.up)
        wiring.connect(m, register_slice.down, subordinate)
