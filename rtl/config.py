"""The one configuration object of the NPU.

Every gateware constructor, the compiler, the golden model and the runtime read the same
:class:`NPUConfig`, so no dimension or width is written down twice.
"""

from dataclasses import dataclass, field

__all__ = ["GATHER_MODES", "ROUNDING_MODES", "NPUConfig"]

#: Requantisation rounding modes (see docs/architecture.md and REFERENCE: TFLite rules).
#: "double" matches TFLite's reference kernels (the default build); "single" matches
#: ``TFLITE_SINGLE_ROUNDING=1`` (XNNPACK's conv / fully-connected kernels).
ROUNDING_MODES = ("double", "single")

#: How an array row picks its activation from a scratchpad line (the sparse unit's gather):
#: "crossbar" from any of the line's ``sparse_group * rows`` bytes, "lane" only from its own
#: byte of one of the ``sparse_group`` sub-blocks.
GATHER_MODES = ("crossbar", "lane")


def _check_positive_int(name, value, *, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, not {value}")


def _is_pow2(value):
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, kw_only=True)
class NPUConfig:
    """Parameters of one NPU build.

    Parameters
    ----------
    rows : int
        Rows of the systolic array: the reduction (K) dimension of one pass. 1..64.
    cols : int
        Columns of the systolic array: output channels (N) of one pass. 1..64.
    cores : int
        Number of cores sharing external memory. 1..8.
    scratchpad_bytes : int
        On-chip scratchpad per core, in bytes. A power of two.
    acc_rows : int
        Rows of the int32 accumulator per core (each row is ``cols`` int32 lanes). A power of
        two.
    bus_width : int
        Data width of the external AXI4 memory port, in bits: 32, 64 or 128 (an instruction is
        16 bytes, so it never shares a beat with the next one).
    addr_width : int
        Byte address width of the external memory port, 16..32.
    rounding : str
        Requantisation rounding, ``"double"`` (TFLite reference default) or ``"single"``.
    param_slots : int
        Requantisation parameter slots per core (one slot: per-channel parameters of ``cols``
        output channels). 1..256.
    sparse_group : int
        Sub-blocks of ``rows`` activations per scratchpad line (1..16). Each array row gathers
        its activation from the ``sparse_group * rows`` bytes of a line (see ``gather``), so a
        weight tile packed from the non-zero K-rows of up to ``sparse_group`` K-blocks runs in
        one pass: the zero-skipping speedup is at most ``sparse_group``.
    gather : str
        How an array row picks its activation from a line. ``"crossbar"`` (the default):
        row ``i`` reads any of the ``sparse_group * rows`` bytes its gather index names (a
        ``sparse_group * rows``:1 select per row). ``"lane"``: row ``i`` reads byte ``i`` of
        the sub-block its index names (index ``g * rows + i``; any other index reads 0), a
        ``sparse_group``:1 select per row, so a packed tile keeps every K-row in its own lane
        and a K-group takes as many tiles as its busiest lane has non-zero K-rows (N:M
        sparsity balanced per lane still runs ``sparse_group`` times faster). For large
        arrays on FPGAs, where the crossbar is what congests the routing.
    fetch_depth : int
        Instructions the fetch unit keeps in flight and queued ahead of dispatch, 1..64.
    unit_queue_depth : int
        Instructions queued between dispatch and each of the load, execute and store units,
        1..64. A queue of depth 1 takes an instruction every other cycle at most, which
        dispatch (4 cycles per instruction) never exceeds.
    requant_lanes : int or None
        Output channels the requantiser computes per cycle; it must divide ``cols``. None
        (the default) means ``cols``: a whole accumulator row per cycle. Fewer lanes take
        ``cols / requant_lanes`` cycles per row and need proportionally fewer multipliers
        (four 17x17 partial products per lane).
    requant_sequential : bool
        Requantise one channel at a time by shifting and adding, without multipliers (about
        40 to 100 cycles per channel; see ``rtl/requant.py``), for the smallest FPGAs.
        ``requant_lanes`` must then be None.
    load_queue_depth : int
        LOAD / LOADP instructions whose data may still be arriving when the next one issues
        its reads, 1..64.
    store_queue_depth : int
        Rows the store unit reads and requantises ahead of their bus writes, 1..64 (its
        queue of burst lengths holds twice as many bursts).
    zero_skip : bool
        Skip the all-zero activation lines of accumulating MATMULs (the sparse unit's
        zero skipping; see docs/architecture.md). False drops the zero flags and the skipping
        logic: the lines are multiplied instead (more cycles, the same results), so
        ``passes_skipped`` stays 0 and their MACs count in ``macs`` (and, as zero operands,
        in ``macs_skipped``).
    zero_lookahead : int
        Scratchpad lines the execute unit looks at per cycle to skip all-zero lines of an
        accumulating MATMUL, 1..8: it passes over at most that many zero lines per cycle.
    counter_width : int
        Bits of each performance counter but ``cycles`` (always 32), 1..32; a counter wraps
        at ``2**counter_width`` (its register reads zeros above).
    retime : bool
        Extra register stages for FPGA clock rates: among them an 11-stage requantiser (not
        5), the scratchpad line registered before the gather and the gathered vector
        before the array (a crossbar gather from more than 16 bytes in two stages), each
        processing element's operands and then its product registered before the add (array
        latency ``R + C + 1``), registered DMA burst lengths and a longer accumulator
        write-back (docs/architecture.md lists them all). The ECP5 builds set it (see
        ``npu.synth.boards``).

    ``fetch_depth``, ``unit_queue_depth``, ``requant_lanes``, ``requant_sequential``,
    ``load_queue_depth``, ``store_queue_depth``, ``zero_lookahead`` and ``retime`` change only
    the timing (cycle counts), never a result.
    """

    rows: int = 8
    cols: int = 8
    cores: int = 1
    scratchpad_bytes: int = 32768
    acc_rows: int = 1024
    bus_width: int = 64
    addr_width: int = 32
    rounding: str = "double"
    param_slots: int = 16
    sparse_group: int = 4
    gather: str = "crossbar"
    fetch_depth: int = 8
    unit_queue_depth: int = 4
    requant_lanes: int | None = None
    requant_sequential: bool = False
    load_queue_depth: int = 4
    store_queue_depth: int = 4
    zero_skip: bool = True
    zero_lookahead: int = 4
    counter_width: int = 32
    retime: bool = False
    # Widths of the datapath; fixed by the INT8 design, kept here so that no constant is
    # repeated elsewhere.
    in_width: int = field(default=8, init=False)
    acc_width: int = field(default=32, init=False)

    def __post_init__(self):
        _check_positive_int("Array rows", self.rows, maximum=64)
        _check_positive_int("Array columns", self.cols, maximum=64)
        _check_positive_int("Core count", self.cores, maximum=8)
        _check_positive_int("Sparse group", self.sparse_group, maximum=16)
        if self.sparse_group * self.rows > 128:
            # Gather indices are one byte, and 0xFF marks an empty row of a packed tile.
            raise ValueError(
                f"Sparse group x array rows must be at most 128, not {self.sparse_group} x "
                f"{self.rows}")
        if self.gather not in GATHER_MODES:
            raise ValueError(f"Gather must be 'crossbar' or 'lane', not {self.gather!r}")
        _check_positive_int("Scratchpad size", self.scratchpad_bytes)
        if not _is_pow2(self.scratchpad_bytes):
            raise ValueError(
                f"Scratchpad size must be a power of two, not {self.scratchpad_bytes}")
        if self.scratchpad_bytes < self.line_bytes * 16:
            raise ValueError(
                f"Scratchpad size must hold at least 16 lines of {self.line_bytes} bytes, "
                f"not {self.scratchpad_bytes}")
        if self.sp_lines > 65536:
            raise ValueError(
                f"Scratchpad size must be at most 65536 lines, not {self.sp_lines}")
        _check_positive_int("Accumulator rows", self.acc_rows, maximum=65536)
        if not _is_pow2(self.acc_rows):
            raise ValueError(f"Accumulator rows must be a power of two, not {self.acc_rows}")
        if self.acc_rows < self.rows:
            raise ValueError(
                f"Accumulator rows must be at least the array rows ({self.rows}), "
                f"not {self.acc_rows}")
        if self.bus_width not in (32, 64, 128):
            raise ValueError(
                f"Bus width must be one of 32, 64, 128 bits, not {self.bus_width!r}")
        _check_positive_int("Address width", self.addr_width, maximum=32)
        if self.addr_width < 16:
            raise ValueError(f"Address width must be at least 16, not {self.addr_width}")
        _check_positive_int("Parameter slots", self.param_slots, maximum=256)
        _check_positive_int("Fetch depth", self.fetch_depth, maximum=64)
        _check_positive_int("Unit queue depth", self.unit_queue_depth, maximum=64)
        if self.requant_lanes is not None:
            _check_positive_int("Requantiser lanes", self.requant_lanes)
            if self.cols % self.requant_lanes:
                raise ValueError(
                    f"Requantiser lanes must divide the array columns ({self.cols}), "
                    f"not {self.requant_lanes}")
        if not isinstance(self.requant_sequential, bool):
            raise TypeError(f"Sequential requantiser must be True or False, not "
                            f"{self.requant_sequential!r}")
        if self.requant_sequential and self.requant_lanes is not None:
            raise ValueError(f"A sequential requantiser has no lanes: requant_lanes must be "
                             f"None, not {self.requant_lanes}")
        _check_positive_int("Load queue depth", self.load_queue_depth, maximum=64)
        _check_positive_int("Store queue depth", self.store_queue_depth, maximum=64)
        if not isinstance(self.zero_skip, bool):
            raise TypeError(f"Zero skipping must be True or False, not {self.zero_skip!r}")
        _check_positive_int("Zero lookahead", self.zero_lookahead, maximum=8)
        _check_positive_int("Counter width", self.counter_width, maximum=32)
        if not isinstance(self.retime, bool):
            raise TypeError(f"Retiming must be True or False, not {self.retime!r}")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(
                f"Rounding mode must be 'double' or 'single', not {self.rounding!r}")

    # Derived quantities. Read them; never recompute them elsewhere.

    @property
    def macs_per_cycle(self):
        """Peak multiply-accumulates per cycle over all cores."""
        return self.rows * self.cols * self.cores

    @property
    def gather_bytes(self):
        """Bytes of a line an array row can gather its activation from."""
        return self.sparse_group * self.rows

    @property
    def line_bytes(self):
        """Width of one scratchpad line: ``sparse_group`` activation sub-blocks of one row,
        or one weight row."""
        return max(self.gather_bytes, self.cols)

    @property
    def sp_lines(self):
        """Lines in the scratchpad of one core."""
        return self.scratchpad_bytes // self.line_bytes

    @property
    def requant_groups(self):
        """Cycles the requantiser takes per accumulator row: ``cols / requant_lanes``."""
        return 1 if self.requant_lanes is None else self.cols // self.requant_lanes

    @property
    def window_bits(self):
        """Width of a core's program counter and DMA window registers: 32, or
        ``addr_width + 1`` for a narrower bus (the window is then clipped to the
        ``2**addr_width`` bytes the bus reaches, so its limit can be ``2**addr_width``)."""
        return min(32, self.addr_width + 1)

    @property
    def bus_bytes(self):
        """Bytes per beat of the external memory bus."""
        return self.bus_width // 8
