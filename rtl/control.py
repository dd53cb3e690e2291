"""Control and status of a core, and the register map that exposes them.

The CSR block (``csr.py``), the driver and the documentation all read the offsets from here.
"""

from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import CoreState, ErrorCode

__all__ = ["COUNTERS", "NPU_ID", "CoreControlSignature", "CounterLayout", "RegisterMap"]

#: Performance counters of one core, in register order. Each wraps: ``cycles`` at 32 bits,
#: the others at ``NPUConfig.counter_width`` (32 by default); the registers are 32 bits.
COUNTERS = (
    "cycles",            # cycles from start to done / error
    "array_busy",        # cycles a vector entered the systolic array
    "macs",              # multiply-accumulates issued (array rows x cols per vector entered)
    "dma_read_bytes",    # bytes read by LOAD and LOADP (instruction fetch is not counted)
    "dma_write_bytes",   # bytes written to external memory (STORE)
    "stall_memory",      # cycles a unit had work but waited on the memory bus
    "stall_dependency",  # cycles a unit had an instruction but waited for a token / barrier
    "macs_skipped",      # MACs not done for a zero operand (gated, or in a skipped vector)
    "passes_skipped",    # vectors not issued because their gathered activations were zero
)

CounterLayout = data.StructLayout({name: 32 for name in COUNTERS})

#: Value of the ID register: ASCII "NPU1".
NPU_ID = 0x4E505531


class CoreControlSignature(wiring.Signature):
    """From the CSR block to one core (the core takes ``.flip()``).

    ``start`` is a one-cycle pulse; the core samples ``prog_addr`` and the window then and
    ignores ``start`` while busy.
    """

    def __init__(self):
        super().__init__({
            "start": Out(1),
            "prog_addr": Out(32),
            "win_base": Out(32),
            "win_limit": Out(32),
            "state": In(CoreState),
            "error": In(ErrorCode),
            "pc": In(32),
            "counters": In(CounterLayout),
            "barrier_arrived": In(1),
            "barrier_release": Out(1),
        })


class RegisterMap:
    """Byte offsets of the AXI4-Lite registers (all 32 bits wide).

    Global registers, then one block of ``CORE_STRIDE`` bytes per core at
    ``CORE_BASE + core * CORE_STRIDE``.
    """

    ID = 0x000           # R: NPU_ID
    CONFIG = 0x004       # R: rows [7:0], cols [15:8], cores [19:16], bus bytes [31:24]
    IRQ_STATUS = 0x008   # R / W1C: bit i set when core i reached done or error
    IRQ_ENABLE = 0x00C   # RW: bit i enables core i's interrupt
    CORE_BASE = 0x100
    CORE_STRIDE = 0x80

    # Per-core offsets.
    CTRL = 0x00          # W: bit 0 start (ignored while busy)
    STATUS = 0x04        # R: state [1:0] (CoreState), error [7:4] (ErrorCode)
    PROG_ADDR = 0x08     # RW: byte address of the first instruction
    WIN_BASE = 0x0C      # RW: lowest byte address the core may access
    WIN_LIMIT = 0x10     # RW: first byte address above the window
    PC = 0x14            # R: address of the instruction being dispatched (faulting one on error)
    COUNTER_BASE = 0x20  # R: COUNTERS[k] at COUNTER_BASE + 4 * k

    @classmethod
    def core(cls, index, offset):
        return cls.CORE_BASE + index * cls.CORE_STRIDE + offset

    @classmethod
    def counter(cls, index, name):
        return cls.core(index, cls.COUNTER_BASE + 4 * COUNTERS.index(name))


assert RegisterMap.COUNTER_BASE + 4 * len(COUNTERS) <= RegisterMap.CORE_STRIDE
