"""The tiling compiler: INT8 GEMM -> one command stream per core.

Memory layout
-------------
The driver stores operands in *blocked* layouts that make every DMA row start on a bus-word
boundary, whatever the array size:

* activations ``A[M, K]``: K-block ``kb`` (``R`` columns) is a contiguous ``M x a_pitch`` slab,
  ``a_pitch = roundup(R, bus bytes)``; row m of block kb is at
  ``a_addr + (kb * M + m) * a_pitch``.
* weights ``W[K, N]``: N-block ``nb`` (``C`` columns) is a ``K x w_pitch`` slab,
  ``w_pitch = roundup(C, bus bytes)``.
* output ``Y[M, N]`` (int8, or int32 for raw results): N-block ``nb`` is an ``M x o_pitch`` slab,
  ``o_pitch = roundup(C * element bytes, bus bytes)``.
* requantisation parameters: one LOADP record per N-block, ``param_pitch`` bytes apart.

Schedule (per core)
-------------------
A core computes a band of output rows. The band is cut into *chunks* of ``mt`` rows; for each
chunk and each N-block the K-blocks accumulate into one accumulator region; regions alternate
(two of ``mt`` rows) so the store of one block overlaps the compute of the next. A *tile* is one
(chunk, N-block, K-block) step: LOAD its weights (and its activations), LOADW, MATMUL.

* ``resident`` mode keeps a chunk's activations for all K-blocks in the scratchpad (two chunk
  buffers, so the next chunk loads while this one computes): activations are read once.
* ``streamed`` mode (when K is too large for that) loads each tile's activations with it.

Tokens: the load unit pushes one token per tile (load -> execute); the execute unit gives one
back when the tile's MATMUL has read its lines (``D`` tiles of weight / activation buffers are
in flight); execute -> store when a block's last K-step is in the accumulator; store -> execute
when the region has been read. Instructions are emitted in an order where every token a unit
waits for was emitted earlier, so no queue depth can deadlock a program.
"""

from dataclasses import dataclass, field

import numpy as np

from npu.rtl.isa import param_slot_bytes

from .asm import Program, pack_param_slot

__all__ = ["GemmLayout", "GemmPlan", "plan_gemm", "compile_gemm", "pack_a", "pack_w",
           "unpack_out", "pack_params", "roundup"]

#: Tiles in flight between the load and execute units (buffers per kind).
PIPELINE_DEPTH = 2


def roundup(value, multiple):
    return -(-value // multiple) * multiple


def cdiv(a, b):
    return -(-a // b)


@dataclass(frozen=True)
class GemmLayout:
    """Where a GEMM's operands live in memory (byte addresses) and their pitches."""
    a_addr: int
    w_addr: int
    out_addr: int
    param_addr: int
    a_pitch: int
    w_pitch: int
    o_pitch: int
    param_pitch: int


@dataclass
class GemmPlan:
    """How a GEMM is split: per core a band of rows (or of N-blocks), chunk size and mode."""
    M: int
    K: int
    N: int
    raw: bool
    nK: int
    nN: int
    bands: list = field(default_factory=list)   # per core: (m0, m1, nb0, nb1)
    mt: int = 0
    resident: bool = True


def layout_sizes(config, M, K, N, raw):
    """Bytes of each blocked operand and the pitches, for the driver."""
    B = config.bus_bytes
    R, C = config.rows, config.cols
    nK, nN = cdiv(K, R), cdiv(N, C)
    a_pitch = roundup(R, B)
    w_pitch = roundup(C, B)
    o_pitch = roundup(C * (4 if raw else 1), B)
    param_pitch = roundup(param_slot_bytes(C), B)
    return dict(a_bytes=nK * M * a_pitch, w_bytes=nN * K * w_pitch, o_bytes=nN * M * o_pitch,
                p_bytes=0 if raw else nN * param_pitch, a_pitch=a_pitch, w_pitch=w_pitch,
                o_pitch=o_pitch, param_pitch=param_pitch)


def pack_a(config, a):
    """int8 [M, K] -> the blocked activation layout (bytes)."""
    M, K = a.shape
    R, B = config.rows, config.bus_bytes
    nK, pitch = cdiv(K, R), roundup(R, B)
    out = np.zeros((nK, M, pitch), np.uint8)
    for kb in range(nK):
        blk = a[:, kb * R:(kb + 1) * R]
        out[kb, :, :blk.shape[1]] = blk.view(np.uint8)
    return out.reshape(-1)


def pack_w(config, w):
    """int8 [K, N] -> the blocked weight layout (bytes)."""
    K, N = w.shape
    C, B = config.cols, config.bus_bytes
    nN, pitch = cdiv(N, C), roundup(C, B)
    out = np.zeros((nN, K, pitch), np.uint8)
    for nb in range(nN):
        blk = w[:, nb * C:(nb + 1) * C]
        out[nb, :, :blk.shape[1]] = blk.view(np.uint8)
    return out.reshape(-1)


def unpack_out(config, raw_bytes, M, N, raw):
    """The blocked output layout -> int8 or int32 [M, N]."""
    C, B = config.cols, config.bus_bytes
    es = 4 if raw else 1
    nN, pitch = cdiv(N, C), roundup(C * es, B)
    blocks = np.asarray(raw_bytes, np.uint8)[:nN * M * pitch].reshape(nN, M, pitch)
    cols = blocks[:, :, :C * es].copy()
    if raw:
        vals = cols.view("<i4").reshape(nN, M, C)
    else:
        vals = cols.view(np.int8).reshape(nN, M, C)
    return np.concatenate(list(vals), axis=1)[:, :N]


def pack_params(config, bias, multiplier, shift, zero_point, act_min, act_max):
    """Per-channel parameters (length N) -> one LOADP record per N-block, padded."""
    C, B = config.cols, config.bus_bytes
    N = len(bias)
    pitch = roundup(param_slot_bytes(C), B)
    out = np.zeros((cdiv(N, C), pitch), np.uint8)
    for nb in range(cdiv(N, C)):
        sl = slice(nb * C, (nb + 1) * C)
        rec = pack_param_slot(C, bias=bias[sl], multiplier=multiplier[sl], shift=shift[sl],
                              zero_point=zero_point, act_min=act_min, act_max=act_max)
        out[nb, :len(rec)] = np.frombuffer(rec, np.uint8)
    return out.reshape(-1)


def plan_gemm(config, M, K, N, *, raw, cores=None, split="auto"):
    """Split an M x K x N GEMM over the cores and choose the chunking.

    ``split`` is "rows" (each core a band of output rows), "cols" (each core a band of
    N-blocks) or "auto" (rows unless that leaves cores without a useful band).
    """
    if split not in ("auto", "rows", "cols"):
        raise ValueError(f"split must be 'auto', 'rows' or 'cols', not {split!r}")
    R, C = config.rows, config.cols
    cores = config.cores if cores is None else cores
    nK, nN = cdiv(K, R), cdiv(N, C)
    plan = GemmPlan(M=M, K=K, N=N, raw=raw, nK=nK, nN=nN)
    # Split rows when each core still gets a useful band; otherwise split N-blocks.
    if split == "auto":
        split = "rows" if (M >= cores * min(M, R) or nN < cores) else "cols"
    if split == "rows":
        n = min(cores, M)
        edges = [M * i // n for i in range(n + 1)]
        plan.bands = [(edges[i], edges[i + 1], 0, nN) for i in range(n)]
    else:
        n = min(cores, nN)
        edges = [nN * i // n for i in range(n + 1)]
        plan.bands = [(0, M, edges[i], edges[i + 1]) for i in range(n)]
    band_rows = max(m1 - m0 for m0, m1, _, _ in plan.bands)

    D = PIPELINE_DEPTH
    acc_limit = config.acc_rows // 2
    sp_free = config.sp_lines - D * R
    mt_resident = min(band_rows, acc_limit, max(0, sp_free // (2 * nK)))
    if mt_resident >= min(band_rows, 32):
        plan.mt, plan.resident = mt_resident, True
    else:
        mt = min(band_rows, acc_limit, (config.sp_lines - D * R) // D)
        if mt < 1:
            raise ValueError(f"the scratchpad ({config.scratchpad_bytes} bytes) is too small "
                             f"for a {R}x{C} array")
        plan.mt, plan.resident = mt, False
    return plan


def compile_gemm(config, plan, layout, *, barrier_after=False):
    """Emit one Program per core band of ``plan`` (without END; the caller appends it)."""
    programs = []
    for band in plan.bands:
        programs.append(_compile_band(config, plan, layout, band))
    # Requantised output needs parameter slots; a band with more N-blocks than slots runs in
    # passes separated by barriers, and every core must pass the same number of barriers.
    passes = [p for _, p in programs]
    most = max(passes)
    out = []
    for prog, n in programs:
        for _ in range(most - n):
            prog.barrier()
        if barrier_after:
            prog.barrier()
        out.append(prog)
    return out


def _compile_band(config, plan, layout, band):
    R, C = config.rows, config.cols
    D = PIPELINE_DEPTH
    m0, m1, nb0, nb1 = band
    nK, mt = plan.nK, plan.mt
    slots = config.param_slots
    prog = Program()

    chunks = [(c0, min(c0 + mt, m1)) for c0 in range(m0, m1, mt)]
    nbs = list(range(nb0, nb1))
    # Passes over N-blocks so that each pass's parameters fit the slots.
    if plan.raw:
        passes = [nbs]
    else:
        passes = [nbs[i:i + slots] for i in range(0, len(nbs), slots)]

    # Scratchpad map (lines).
    if plan.resident:
        a_buf = [b * mt * nK for b in range(2)]
        w_buf = [2 * mt * nK + s * R for s in range(D)]
    else:
        a_buf = [s * mt for s in range(D)]
        w_buf = [D * mt + s * R for s in range(D)]

    for pass_index, pass_nbs in enumerate(passes):
        if pass_index:
            prog.barrier()
        if not plan.raw:
            for nb in pass_nbs:
                prog.loadp(nb % slots, layout.param_addr + nb * layout.param_pitch)

        tiles = [(ci, nb, kb) for ci in range(len(chunks)) for nb in pass_nbs
                 for kb in range(nK)]
        T = len(tiles)
        blocks = [(ci, nb) for ci in range(len(chunks)) for nb in pass_nbs]
        block_of = {blk: j for j, blk in enumerate(blocks)}

        def emit_loads(t):
            ci, nb, kb = tiles[t]
            c0, c1 = chunks[ci]
            rows = c1 - c0
            instrs = []
            if plan.resident:
                if nb == pass_nbs[0] and kb == 0:
                    buf = a_buf[ci % 2]
                    for k in range(nK):
                        instrs.append(("load", dict(
                            sp_addr=buf + k * mt, rows=rows,
                            row_bytes=min(R, plan.K - k * R), stride=layout.a_pitch,
                            addr=layout.a_addr + (k * plan.M + c0) * layout.a_pitch)))
            else:
                instrs.append(("load", dict(
                    sp_addr=a_buf[t % D], rows=rows, row_bytes=min(R, plan.K - kb * R),
                    stride=layout.a_pitch,
                    addr=layout.a_addr + (kb * plan.M + c0) * layout.a_pitch)))
            k_rows = min(R, plan.K - kb * R)
            instrs.append(("load", dict(
                sp_addr=w_buf[t % D], rows=k_rows, row_bytes=min(C, plan.N - nb * C),
                stride=layout.w_pitch,
                addr=layout.w_addr + (nb * plan.K + kb * R) * layout.w_pitch)))
            for i, (_, f) in enumerate(instrs):
                deps = []
                if i == 0 and t >= D:
                    deps.append("pop_next")
                if i == len(instrs) - 1:
                    deps.append("push_next")
                prog.load(**f, deps=tuple(deps))

        def emit_exec(t):
            ci, nb, kb = tiles[t]
            c0, c1 = chunks[ci]
            j = block_of[(ci, nb)]
            region = (j % 2) * mt
            prog.loadw(w_buf[t % D], deps=("pop_prev",))
            if plan.resident:
                sp = a_buf[ci % 2] + kb * mt
            else:
                sp = a_buf[t % D]
            deps = []
            if t + D < T:
                deps.append("push_prev")
            if kb == nK - 1:
                deps.append("push_next")
            if kb == 0 and j >= 2:
                deps.append("pop_next")
            prog.matmul(sp, region, c1 - c0, accumulate=kb > 0, deps=tuple(deps))

        def emit_store(j):
            ci, nb = blocks[j]
            c0, c1 = chunks[ci]
            deps = ["pop_prev"]
            if j + 2 < len(blocks):
                deps.append("push_prev")
            prog.store((j % 2) * mt, c1 - c0, min(C, plan.N - nb * C), layout.o_pitch,
                       layout.out_addr + (nb * plan.M + c0) * layout.o_pitch,
                       raw=plan.raw, slot=0 if plan.raw else nb % slots, deps=tuple(deps))

        for t in range(min(D - 1, T)):
            emit_loads(t)
        for t in range(T):
            if t + D - 1 < T:
                emit_loads(t + D - 1)
            emit_exec(t)
            ci, nb, kb = tiles[t]
            if kb == nK - 1:
                emit_store(block_of[(ci, nb)])
    return prog, len(passes)
