"""The NPU instruction set, defined once.

The gateware decodes these layouts, the assembler (``npu.firmware.asm``) packs them, the
disassembler unpacks them and the golden model (``npu.sim.golden``) executes them. Every
instruction is 128 bits, stored little-endian in 16 bytes; see docs/architecture.md.
"""

from amaranth.lib import data, enum

__all__ = [
    "FIELD_LIMITS", "INSTR_BITS", "INSTR_BYTES", "UNIT_OF", "Body", "CoreState", "Deps",
    "ErrorCode", "Instruction", "LoadBody", "LoadParamsBody", "LoadWeightsBody", "MatmulBody",
    "Opcode", "StoreBody", "Unit", "param_slot_bytes",
]

INSTR_BITS = 128
INSTR_BYTES = INSTR_BITS // 8


class Opcode(enum.Enum, shape=4):
    """What an instruction does. Values not listed are illegal (error ILLEGAL_OPCODE)."""
    NOP = 0      # no effect (still honours its dependency flags, on the execute unit)
    LOAD = 1     # load unit: 2-D strided DMA, external memory -> scratchpad lines
    LOADP = 2    # load unit: DMA one requantisation parameter slot from memory
    LOADW = 3    # execute unit: rows scratchpad lines -> the array's idle weight bank
    MATMUL = 4   # execute unit: stream scratchpad lines through the array into accumulators
    STORE = 5    # store unit: accumulator rows -> requantiser (or raw int32) -> memory
    BARRIER = 6  # all units idle, then wait until every running core has reached its barrier
    END = 7      # all units idle, then the core is done


class Unit(enum.Enum, shape=2):
    LOAD = 0
    EXECUTE = 1
    STORE = 2
    CONTROL = 3


#: Which unit runs each opcode.
UNIT_OF = {
    Opcode.NOP: Unit.EXECUTE,
    Opcode.LOAD: Unit.LOAD, Opcode.LOADP: Unit.LOAD,
    Opcode.LOADW: Unit.EXECUTE, Opcode.MATMUL: Unit.EXECUTE,
    Opcode.STORE: Unit.STORE,
    Opcode.BARRIER: Unit.CONTROL, Opcode.END: Unit.CONTROL,
}


class Deps(data.Struct):
    """Dependency tokens (VTA-style). The units form a chain load -> execute -> store; each
    has a previous and a next neighbour (load has no previous, store no next). Pops wait for a
    token from that neighbour before the instruction starts; pushes give one after it has
    finished (its results are visible to the neighbour)."""
    pop_prev: 1
    pop_next: 1
    push_prev: 1
    push_next: 1


class LoadBody(data.Struct):
    """LOAD: for r in range(rows): line sp_addr + r <- bytes [addr + r*stride, +row_bytes);
    the rest of each line is zero."""
    sp_addr: 16
    rows: 16
    row_bytes: 8
    stride: 24
    addr: 32


class LoadParamsBody(data.Struct):
    """LOADP: parameter slot ``slot`` <- param_slot_bytes(cols) bytes at ``addr``:
    cols x int32 bias, cols x int32 multiplier, cols x int8 shift, then int8 zero point,
    int8 act_min, int8 act_max (all little-endian)."""
    slot: 8
    _pad: 8
    addr: 32


class LoadWeightsBody(data.Struct):
    """LOADW: into the idle weight bank, weight row i <- the first cols bytes of line
    sp_addr + i (i < R), and gather index i <- byte i of line sp_addr + R (the metadata line).

    Lane i of each vector a later MATMUL streams is byte ``gather[i]`` of its line (0 when
    ``gather[i] >= sparse_group * R``, and in a ``gather="lane"`` build when ``gather[i] % R
    != i``): a dense tile of sub-block g has gather[i] = g*R + i; a packed sparse tile names
    the K-rows its non-zero weight rows belong to."""
    sp_addr: 16


class MatmulBody(data.Struct):
    """MATMUL: for r in range(rows): acc[acc_addr + r] (+)= gather(line(sp_addr + r)) @ W.

    With ``accumulate``, a row whose gathered sub-blocks are all zero is skipped (not issued
    to the array; adding zero changes nothing), except the last row of a MATMUL that pushes a
    token. With ``load_weights`` the MATMUL first does ``LOADW w_sp_addr`` (one instruction
    instead of two: a tiled GEMM fetches a third less)."""
    sp_addr: 16
    acc_addr: 16
    rows: 16
    accumulate: 1
    load_weights: 1
    w_sp_addr: 16


class StoreBody(data.Struct):
    """STORE: for r in range(rows): the first ``cols`` lanes of acc[acc_addr + r] go to
    addr + r*stride, requantised to int8 with slot ``slot`` or, with ``raw``, as int32."""
    acc_addr: 16
    rows: 16
    cols: 8
    stride: 24
    addr: 32
    raw: 1
    slot: 8


class Body(data.Union):
    load: LoadBody
    loadp: LoadParamsBody
    loadw: LoadWeightsBody
    matmul: MatmulBody
    store: StoreBody
    raw: 120


class Instruction(data.Struct):
    op: Opcode
    deps: Deps
    body: Body


assert Instruction.as_shape().size == INSTR_BITS


class ErrorCode(enum.Enum, shape=4):
    """Why a core halted with an error (STATUS.error)."""
    NONE = 0
    ILLEGAL_OPCODE = 1   # opcode not in Opcode
    ILLEGAL_FIELD = 2    # a field out of range for this configuration (see FIELD_LIMITS)
    DMA_WINDOW = 3       # an access (fetch, load, store) outside [window base, window limit)
    MISALIGNED = 4       # a DMA address or stride not a multiple of the bus width in bytes
    BUS_ERROR = 5        # the memory answered SLVERR / DECERR


class CoreState(enum.Enum, shape=2):
    IDLE = 0
    BUSY = 1
    DONE = 2
    ERROR = 3


def param_slot_bytes(cols):
    """Bytes one LOADP reads for an array of ``cols`` columns (before padding to the bus)."""
    return 9 * cols + 3


#: The rules each field must satisfy, for the documentation and the golden model's checks
#: (the gateware checks the same conditions at dispatch).
FIELD_LIMITS = {
    "LOAD": "1 <= rows; sp_addr + rows <= scratchpad lines; 1 <= row_bytes <= line bytes; "
            "addr and stride multiples of the bus bytes",
    "LOADP": "slot < param slots; addr a multiple of the bus bytes",
    "LOADW": "sp_addr + array rows + 1 <= scratchpad lines",
    "MATMUL": "1 <= rows; sp_addr + rows <= scratchpad lines; acc_addr + rows <= acc rows; "
              "with load_weights, w_sp_addr + array rows + 1 <= scratchpad lines",
    "STORE": "1 <= rows; acc_addr + rows <= acc rows; 1 <= cols <= array cols; "
             "slot < param slots; addr and stride multiples of the bus bytes",
}
