"""The golden model (npu.sim.golden) against numpy and the written rules of its docstring: tiled
GEMMs equal ``a @ b`` (and ``requantize(a @ b)``), the gather indices of LOADW's metadata line
pick each array row's activation byte, zero rows are skipped only where the rules allow and
counted exactly, multi-core barriers and tokens order the work, and each error halts at the
documented instruction with nothing written by it.

Programs are assembled by hand. A weight tile in the scratchpad is R weight rows followed by a
metadata line; the dense tile of sub-block ``g`` has gather indices ``g*R + i``
(:func:`put_gather_rows`)."""

import numpy as np
import pytest

from npu.firmware.asm import Program, encode, pack_param_slot
from npu.firmware.quant import requantize
from npu.rtl.config import NPUConfig
from npu.rtl.isa import INSTR_BYTES, CoreState, ErrorCode, Opcode, param_slot_bytes
from npu.sim.golden import GoldenDeadlock, GoldenNPU, GoldenUnspecified

MEM_BYTES = 1 << 16


def random_int8(rng, shape):
    """Random int8 with the extremes forced in."""
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    x.reshape(-1)[:4] = [-128, 127, -128, 127]
    return x


def put(memory, addr, array):
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    memory[addr:addr + raw.size] = raw


def put_matrix(memory, addr, matrix, ld):
    """Row-major ``matrix`` with ``ld`` bytes between rows (padding left as it was)."""
    row_bytes = matrix.shape[1] * matrix.itemsize
    for r, row in enumerate(matrix):
        put(memory, addr + r * ld, row)
    return row_bytes


def get_matrix(memory, addr, rows, cols, ld, dtype):
    itemsize = np.dtype(dtype).itemsize
    return np.stack([memory[addr + r * ld:addr + r * ld + cols * itemsize].view(dtype)
                     for r in range(rows)])


def put_program(memory, addr, program):
    put(memory, addr, np.frombuffer(program.to_bytes(), dtype=np.uint8))


def put_gather_rows(cfg, memory, addr):
    """The metadata rows of dense tiles, one per sub-block: row ``g`` holds the gather indices
    ``g*R + i`` (array row i multiplies byte i of sub-block g). Returns the stride between rows.
    """
    R = cfg.rows
    assert cfg.gather_bytes <= 256  # one byte per index
    stride = -(-R // cfg.bus_bytes) * cfg.bus_bytes
    for g in range(cfg.sparse_group):
        put(memory, addr + g * stride, (g * R + np.arange(R)).astype(np.uint8))
    return stride


def fenced_gemm(cfg, program, *, m, k, n, a, lda, b, ldb, c, ldc, raw, meta, meta_stride,
                params=None, params_stride=0):
    """Append a tiled ``C[m, n] = A[m, k] @ B[k, n]`` that orders its units with barriers only.

    Each line holds one K-group (``sparse_group * R`` columns) of a row of A; the R-row weight
    tiles of its sub-blocks follow one another, each with the dense metadata row of its
    sub-block (``meta + g * meta_stride``, see :func:`put_gather_rows`). Requantised output
    channel tile ``j`` uses slot ``j``, loaded from ``params + j * params_stride``. Partial
    tiles rely on LOAD zero-filling each line past ``row_bytes``.
    """
    R, C, GR = cfg.rows, cfg.cols, cfg.gather_bytes
    out_bytes = 4 if raw else 1
    for j, n0 in enumerate(range(0, n, C)):
        cols = min(C, n - n0)
        if not raw:
            program.loadp(j, params + j * params_stride)
        for kg in range(0, k, GR):
            program.load(0, m, min(GR, k - kg), lda, a + kg)
            for g, k0 in enumerate(range(kg, min(k, kg + GR), R)):
                program.load(m, min(R, k - k0), cols, ldb, b + k0 * ldb + n0)
                program.load(m + R, 1, R, 0, meta + g * meta_stride)
                program.barrier()  # the lines are in the scratchpad
                program.loadw(m)
                program.matmul(0, 0, m, accumulate=k0 > 0)
                program.barrier()  # the lines are free again and the accumulators final
        program.store(0, m, cols, ldc, c + n0 * out_bytes, raw=raw, slot=j)
        program.barrier()  # the next tile's first MATMUL overwrites the accumulators
    return program


def random_params(rng, n):
    return {
        "bias": rng.integers(-5000, 5000, size=n),
        "multiplier": rng.integers(2**30, 2**31, size=n),
        "shift": rng.integers(-12, -6, size=n),
        "zero_point": -5,
        "act_min": -100,
        "act_max": 127,
    }


def put_params(cfg, memory, addr, params, n):
    """Slot records for channel tiles of ``n`` channels; returns the stride between them."""
    stride = -(-param_slot_bytes(cfg.cols) // cfg.bus_bytes) * cfg.bus_bytes
    for j, n0 in enumerate(range(0, n, cfg.cols)):
        tile = slice(n0, min(n, n0 + cfg.cols))
        record = pack_param_slot(cfg.cols, bias=params["bias"][tile],
                                 multiplier=params["multiplier"][tile],
                                 shift=params["shift"][tile], zero_point=params["zero_point"],
                                 act_min=params["act_min"], act_max=params["act_max"])
        put(memory, addr + j * stride, np.frombuffer(record, dtype=np.uint8))
    return stride


def expected_requant(acc, params, rounding):
    return requantize(acc, params["bias"], params["multiplier"], params["shift"],
                      params["zero_point"], params["act_min"], params["act_max"],
                      rounding=rounding)


def done(result):
    assert result.state is CoreState.DONE, result
    assert result.error is ErrorCode.NONE


# --------------------------------------------------------------------------------------------
# GEMMs against numpy


META = 0x3800  # the dense metadata rows (put_gather_rows)


@pytest.mark.parametrize("sparse_group", [1, 4])
@pytest.mark.parametrize(("m", "k", "n"), [(20, 16, 16), (13, 11, 21), (1, 8, 8), (6, 40, 10)])
def test_tiled_gemm_raw_int32_matches_numpy(m, k, n, sparse_group):
    # sparse_group 1: one sub-block per line; 4: up to four dense tiles per K-group, each
    # gathering its own sub-block (k = 40 uses all four, then one of the next K-group).
    cfg = NPUConfig(rows=8, cols=8, sparse_group=sparse_group)
    rng = np.random.default_rng(1)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    put_matrix(memory, 0x1000, a, ld=48)
    put_matrix(memory, 0x2000, b, ld=24)
    meta_stride = put_gather_rows(cfg, memory, META)
    ldc = 4 * 24
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=48, b=0x2000, ldb=24,
                          c=0x4000, ldc=ldc, raw=True, meta=META,
                          meta_stride=meta_stride).end()
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    assert result.pc == (len(program) - 1) * INSTR_BYTES
    got = get_matrix(memory, 0x4000, m, n, ldc, "<i4")
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_tiled_gemm_requantised_matches_requantize_of_numpy(rounding):
    m, k, n = 20, 16, 12
    cfg = NPUConfig(rows=8, cols=8, rounding=rounding)
    rng = np.random.default_rng(2)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    params = random_params(rng, n)
    put_matrix(memory, 0x1000, a, ld=16)
    put_matrix(memory, 0x2000, b, ld=16)
    stride = put_params(cfg, memory, 0x3000, params, n)
    meta_stride = put_gather_rows(cfg, memory, META)
    memory[0x4000:0x5000] = 0xEE
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=16, b=0x2000, ldb=16,
                          c=0x4000, ldc=16, raw=False, meta=META, meta_stride=meta_stride,
                          params=0x3000, params_stride=stride).end()
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    expected = expected_requant(a.astype(np.int64) @ b.astype(np.int64), params, rounding)
    np.testing.assert_array_equal(get_matrix(memory, 0x4000, m, n, 16, np.int8), expected)
    # Only the cols bytes of each row are written, not the rest of the beat.
    assert (memory[0x4000 + n:0x4010] == 0xEE).all()
    assert (memory[0x4000 + m * 16:0x5000] == 0xEE).all()
    # The 4-byte rows of the second channel tile still cost a whole beat each.
    assert result.counters["dma_write_bytes"] == 2 * m * cfg.bus_bytes


def test_counters_of_dense_gemm():
    m, k, n = 16, 24, 16
    cfg = NPUConfig(rows=8, cols=8)  # sparse_group 4: one K-group of 24 columns, 3 tiles
    rng = np.random.default_rng(3)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    a[a == 0] = 1
    b[b == 0] = 1
    # Zeros for the counters: row 5's second sub-block is all zero, so that row is skipped
    # in the accumulating MATMUL of k-tile 1 of both channel tiles; row 9's first sub-block
    # is all zero, but k-tile 0 does not accumulate, so it is issued. Three more single zeros
    # in A and two in B.
    a[5, 8:16] = 0
    a[9, 0:8] = 0
    a[0, 3] = a[12, 20] = a[15, 23] = 0
    b[2, 3] = b[17, 12] = 0
    params = random_params(rng, n)
    put_matrix(memory, 0x1000, a, ld=32)
    put_matrix(memory, 0x2000, b, ld=16)
    stride = put_params(cfg, memory, 0x3000, params, n)
    meta_stride = put_gather_rows(cfg, memory, META)
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=32, b=0x2000, ldb=16,
                          c=0x4000, ldc=16, raw=False, meta=META, meta_stride=meta_stride,
                          params=0x3000, params_stride=stride).end()
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    expected = expected_requant(a.astype(np.int64) @ b.astype(np.int64), params, cfg.rounding)
    np.testing.assert_array_equal(get_matrix(memory, 0x4000, m, n, 16, np.int8), expected)
    n_tiles, k_tiles, beat = n // 8, k // 8, cfg.bus_bytes
    rows_per_tile = 8 * 8
    # Two passes (row 5, k-tile 1, once per channel tile) are skipped.
    assert result.counters["passes_skipped"] == 2
    assert result.counters["macs"] == m * n * k - 2 * rows_per_tile
    # Gated: all 8 columns where an activation is zero (a skipped pass has only zeros), else
    # one per zero weight in that K-row of the channel tile.
    zeros_a = 3 + 8 + 8                          # 3 single zeros, row 5 and row 9 sub-blocks
    zeros_b_x_nonzero_a = (m - 1) + m            # b[2, 3]: all but a[9, 2]; b[17, 12]: all
    assert (a == 0).sum() == zeros_a
    assert result.counters["macs_skipped"] == n_tiles * 8 * zeros_a + zeros_b_x_nonzero_a
    # Per channel tile: one LOAD of the A rows (24 bytes, 3 beats each), per k-tile 8 weight
    # rows and one metadata row (1 beat each), and the LOADP record (75 bytes, 10 beats).
    assert result.counters["dma_read_bytes"] == n_tiles * (m * 3 + k_tiles * 9 + 10) * beat
    assert result.counters["dma_write_bytes"] == n_tiles * m * beat


# --------------------------------------------------------------------------------------------
# Gather indices and zero-skipping, worked by hand

LINES, TILES, OUT = 0x1000, 0x2000, 0x4000


def put_rows(memory, addr, rows, pitch):
    """int8 ``rows`` (one per list entry), ``pitch`` bytes apart; returns the row bytes."""
    rows = np.asarray(rows, dtype=np.int8)
    put_matrix(memory, addr, rows, ld=pitch)
    return rows.shape[1]


def put_tile(cfg, memory, addr, weights, gather, pitch):
    """R weight rows and the metadata row (the gather indices), ``pitch`` bytes apart."""
    put_rows(memory, addr, weights, pitch)
    put(memory, addr + cfg.rows * pitch, np.asarray(gather, dtype=np.uint8))


def load_tile(cfg, program, sp_addr, addr, pitch):
    """LOAD the R weight lines and the metadata line of the tile at ``addr``."""
    program.load(sp_addr, cfg.rows, cfg.cols, pitch, addr)
    program.load(sp_addr + cfg.rows, 1, cfg.rows, 0, addr + cfg.rows * pitch)
    return program


def test_gather_permutes_and_picks_lanes_from_sub_blocks():
    cfg = NPUConfig(rows=4, cols=3, sparse_group=4)  # 16-byte lines, four 4-byte sub-blocks
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    lines = [[10 + j for j in range(16)], [-3 * (j + 1) for j in range(16)]]
    put_rows(memory, LINES, lines, 16)
    weights = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 2, 2]]  # x @ W = x[:3] + 2 * x[3]
    permute = [3, 0, 2, 1]       # inside sub-block 0
    across = [13, 6, 8, 3]       # one lane from each of sub-blocks 3, 1, 2, 0
    put_tile(cfg, memory, TILES, weights, permute, 8)
    put_tile(cfg, memory, TILES + 0x100, weights, across, 8)
    program = Program().load(0, 2, 16, 16, LINES)
    load_tile(cfg, program, 2, TILES, 8)
    load_tile(cfg, program, 7, TILES + 0x100, 8)
    (program.barrier().loadw(2).matmul(0, 0, 2).loadw(7).matmul(0, 2, 2).barrier()
     .store(0, 4, 3, 16, OUT, raw=True).end())
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    got = get_matrix(memory, OUT, 4, 3, 16, "<i4")
    # permute: line 0 gives x = [13, 10, 12, 11], line 1 x = [-12, -3, -9, -6];
    # across: line 0 gives x = [23, 16, 18, 13], line 1 x = [-42, -21, -27, -12].
    expected = [[35, 32, 34], [-24, -15, -21], [49, 42, 44], [-66, -45, -51]]
    np.testing.assert_array_equal(got, expected)
    x = np.array(lines, dtype=np.int64)
    w = np.array(weights, dtype=np.int64)
    np.testing.assert_array_equal(got, np.concatenate([x[:, permute] @ w, x[:, across] @ w]))
    # No zero activations; the weights have 2, 2, 2 and 0 zeros per row.
    assert result.counters["macs"] == 4 * 4 * 3
    assert result.counters["macs_skipped"] == 4 * 6
    assert result.counters["passes_skipped"] == 0


def test_gather_index_past_the_sub_blocks_reads_zero():
    # Lines are 8 bytes (8 weight columns) but only the first sparse_group * rows = 4 can be
    # gathered: index 5 names a non-zero byte of the line and still reads zero, as do 4 (the
    # first invalid index) and 255.
    cfg = NPUConfig(rows=2, cols=8, sparse_group=2)
    assert (cfg.gather_bytes, cfg.line_bytes) == (4, 8)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_rows(memory, LINES, [[1, 2, 3, 4, 5, 6, 7, 8]], 8)
    weights = [[10] * 8, [1, 2, 3, 4, 5, 6, 7, 8]]
    gathers = [[5, 1], [3, 4], [255, 0]]
    for t, gather in enumerate(gathers):
        put_tile(cfg, memory, TILES + t * 0x100, weights, gather, 8)
    program = Program().load(0, 1, 8, 0, LINES)
    for t in range(len(gathers)):
        load_tile(cfg, program, 1 + 3 * t, TILES + t * 0x100, 8)
    program.barrier()
    for t in range(len(gathers)):
        program.loadw(1 + 3 * t).matmul(0, t, 1)
    program.barrier().store(0, 3, 8, 32, OUT, raw=True).end()
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    # x = [0, 2], [4, 0], [0, 1].
    expected = [[2, 4, 6, 8, 10, 12, 14, 16], [40] * 8, [1, 2, 3, 4, 5, 6, 7, 8]]
    np.testing.assert_array_equal(get_matrix(memory, OUT, 3, 8, 32, "<i4"), expected)
    # One zero lane per row, gated for all 8 columns; no zero weights.
    assert result.counters["macs"] == 3 * 2 * 8
    assert result.counters["macs_skipped"] == 3 * 8
    assert result.counters["passes_skipped"] == 0


# R = 2, C = 3, G = 4 (8-byte lines). W's rows have 1 and 2 zero weights; the gather [1, 2]
# uses sub-blocks 0 (bytes 0-1) and 1 (bytes 2-3).
SKIP_CFG = NPUConfig(rows=2, cols=3, sparse_group=4)
SKIP_WEIGHTS = [[1, 0, 2], [0, 0, 3]]
SKIP_GATHER = [1, 2]
SKIP_PRIMER = [0, 1, 1, 0, 0, 0, 0, 0]      # x = [1, 1]: x @ W = [1, 0, 5], 3 gated
SKIP_LINES = [
    [0, 5, 0, 0, 0, 0, 0, 0],    # x = [5, 0]: issued, x @ W = [5, 0, 10], gated 1 + 3
    [0, 0, 0, 0, 0, 0, 0, 0],    # all zero: may be skipped, gated 6 if issued
    [7, 0, 0, 9, 0, 0, 0, 0],    # x = [0, 0], but sub-blocks 0 and 1 are not zero: issued
    [0, 0, 0, 0, 8, -8, 1, 1],   # sub-blocks 2 and 3 are not gathered: may be skipped
]


@pytest.mark.parametrize(("accumulate", "deps", "skipped_rows"), [
    (False, [], []),
    (True, [], [1, 3]),
    (True, ["pop_prev"], [1, 3]),    # popping does not matter, only pushing
    (True, ["push_next"], [1]),      # the last row of a MATMUL that pushes is issued
    (True, ["push_prev"], [1]),
], ids=["overwrite", "accumulate", "accumulate-pop", "accumulate-push-next",
        "accumulate-push-prev"])
def test_zero_rows_are_skipped_only_when_accumulating(accumulate, deps, skipped_rows):
    cfg = SKIP_CFG
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_rows(memory, LINES, [SKIP_PRIMER], 8)
    put_rows(memory, LINES + 8, SKIP_LINES, 8)
    put_tile(cfg, memory, TILES, SKIP_WEIGHTS, SKIP_GATHER, 8)
    program = Program().load(0, 4, 8, 0, LINES).load(4, 4, 8, 8, LINES + 8)
    program.load(8, 2, 3, 8, TILES)
    program.load(10, 1, 2, 0, TILES + 16, deps=["push_next"] if "pop_prev" in deps else [])
    (program.barrier().loadw(8)
     .matmul(0, 0, 4)                                    # acc rows 0-3 = [1, 0, 5]
     .matmul(4, 0, 4, accumulate=accumulate, deps=deps)
     .barrier().store(0, 4, 3, 16, OUT, raw=True).end())
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    primer = [1, 0, 5] if accumulate else [0, 0, 0]
    expected = np.array([[5, 0, 10], [0, 0, 0], [0, 0, 0], [0, 0, 0]]) + primer
    np.testing.assert_array_equal(get_matrix(memory, OUT, 4, 3, 16, "<i4"), expected)
    issued = 4 - len(skipped_rows)
    assert result.counters == {
        "macs": (4 + issued) * 2 * 3,
        "passes_skipped": len(skipped_rows),
        # Primer: 4 x 3. Data: a skipped row 6; issued, rows 0-3 gate 4, 6, 6 and 6.
        "macs_skipped": 4 * 3 + 4 + 6 + 6 + 6,
        "dma_read_bytes": (4 + 4 + 2 + 1) * 8,
        "dma_write_bytes": 4 * 16,             # 12 bytes per row: two beats
    }


# --------------------------------------------------------------------------------------------
# Several cores, barriers and tokens


def token_gemm(cfg, program, *, m, k, n, a, lda, b, ldb, c, ldc, raw, meta, meta_stride,
               params=None, params_stride=0, m_tile=None, skip_token=False):
    """Append ``C[m, n] = A[m, k] @ B[k, n]`` ordered by tokens only, double-buffered: two
    scratchpad buffers (the load unit runs up to two tiles ahead of the execute unit) and two
    accumulator buffers (the execute unit runs up to two output tiles ahead of the store unit).

    Output tiles are ``m_tile`` rows by the array's columns; ``k`` and ``n`` are multiples of
    the array. A tile's activations are those of sub-block ``g`` of their K-group: the LOAD
    reads the K-group's row from its start through that sub-block, and the tile's metadata row
    is the dense one of sub-block ``g`` (see :func:`put_gather_rows`).

    Tokens balance, but nothing carries over to a following call: a program runs one of these
    per core and phase. ``skip_token`` leaves out the wait that protects the first reused
    scratchpad buffer."""
    R, C, GR = cfg.rows, cfg.cols, cfg.gather_bytes
    m_tile = m_tile or m
    outputs = [(m0, n0) for m0 in range(0, m, m_tile) for n0 in range(0, n, C)]
    tiles = [(o, k0) for o in range(len(outputs)) for k0 in range(0, k, R)]
    out_bytes = 4 if raw else 1
    for t, (o, k0) in enumerate(tiles):
        m0, n0 = outputs[o]
        rows = min(m_tile, m - m0)
        slot = n0 // C
        buf = (t % 2) * (m_tile + R + 1)
        kg, g = k0 - k0 % GR, k0 % GR // R
        acc = (o % 2) * m_tile
        if k0 == 0 and not raw and o < n // C:
            program.loadp(slot, params + slot * params_stride)
        # Buffer t % 2 is free once MATMUL t - 2 has given it back.
        wait = ["pop_next"] if t >= 2 and not (skip_token and t == 2) else []
        program.load(buf, rows, (g + 1) * R, lda, a + m0 * lda + kg, deps=wait)
        program.load(buf + m_tile + R, 1, R, 0, meta + g * meta_stride)
        program.load(buf + m_tile, R, C, ldb, b + k0 * ldb + n0, deps=["push_next"])
        deps = ["pop_prev"]
        if k0 == 0 and o >= 2:
            deps.append("pop_next")  # the STORE of this accumulator buffer has finished
        program.loadw(buf + m_tile, deps=deps)
        last_k = k0 + R == k
        deps = ["push_prev"] if t + 2 < len(tiles) else []
        if last_k:
            deps.append("push_next")
        program.matmul(buf, acc, rows, accumulate=k0 > 0, deps=deps)
        if last_k:
            deps = ["pop_prev"] + (["push_prev"] if o + 2 < len(outputs) else [])
            program.store(acc, rows, C, ldc, c + m0 * ldc + n0 * out_bytes, raw=raw,
                          slot=slot, deps=deps)
    return program


def two_layer_programs(cfg, memory, rng):
    """Two cores, two layers of 16x16 GEMM. Layer 1: core 0 computes rows 0-3 in one pass,
    core 1 rows 4-15 in three, so it finishes much later; layer 2: each core consumes the rows
    the other one wrote. Only the barrier between the layers orders them."""
    k = n = 16
    x, w1, w2 = (random_int8(rng, (16, 16)) for _ in range(3))
    p1, p2 = random_params(rng, n), random_params(rng, n)
    for addr, mat in ((0x1000, x), (0x1100, w1), (0x1200, w2)):
        put_matrix(memory, addr, mat, ld=16)
    s1 = put_params(cfg, memory, 0x1400, p1, n)
    s2 = put_params(cfg, memory, 0x1600, p2, n)
    meta_stride = put_gather_rows(cfg, memory, META)
    memory[0x2000:0x2200] = 0x55  # layer outputs start as garbage
    # (first row, rows, rows per output tile) of each core in each layer.
    layer1 = ((0, 4, 4), (4, 12, 4))
    layer2 = ((4, 12, 12), (0, 4, 4))
    programs = []
    for core in range(2):
        program = Program()
        row0, m, m_tile = layer1[core]
        token_gemm(cfg, program, m=m, k=k, n=n, a=0x1000 + row0 * 16, lda=16, b=0x1100,
                   ldb=16, c=0x2000 + row0 * 16, ldc=16, raw=False, meta=META,
                   meta_stride=meta_stride, params=0x1400, params_stride=s1, m_tile=m_tile)
        program.barrier()
        row0, m, m_tile = layer2[core]
        token_gemm(cfg, program, m=m, k=k, n=n, a=0x2000 + row0 * 16, lda=16, b=0x1200,
                   ldb=16, c=0x2100 + row0 * 16, ldc=16, raw=False, meta=META,
                   meta_stride=meta_stride, params=0x1600, params_stride=s2, m_tile=m_tile)
        programs.append(program.end())
    y1 = expected_requant(x.astype(np.int64) @ w1.astype(np.int64), p1, cfg.rounding)
    y2 = expected_requant(y1.astype(np.int64) @ w2.astype(np.int64), p2, cfg.rounding)
    return programs, y1, y2


@pytest.mark.parametrize("seed", [None, *range(8)])
def test_two_cores_two_layers_across_barrier(seed):
    cfg = NPUConfig(rows=8, cols=8, cores=2)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    programs, y1, y2 = two_layer_programs(cfg, memory, np.random.default_rng(4))
    put_program(memory, 0x8000, programs[0])
    put_program(memory, 0xA000, programs[1])

    results = GoldenNPU(cfg, memory, schedule_seed=seed).run([0x8000, 0xA000])

    for result in results:
        done(result)
    np.testing.assert_array_equal(get_matrix(memory, 0x2000, 16, 16, 16, np.int8), y1)
    np.testing.assert_array_equal(get_matrix(memory, 0x2100, 16, 16, 16, np.int8), y2)


def test_barrier_does_not_wait_for_finished_or_failed_cores():
    cfg = NPUConfig(rows=8, cols=8, cores=3)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_program(memory, 0x0000, Program().barrier().store(0, 1, 8, 0, 0x4000, raw=True)
                .barrier().end())
    put_program(memory, 0x1000, Program().end())
    put_program(memory, 0x2000, Program().barrier().word(encode(9)))

    results = GoldenNPU(cfg, memory).run([0x0000, 0x1000, 0x2000])

    done(results[0])
    assert results[0].pc == 3 * INSTR_BYTES
    done(results[1])
    assert results[2].state is CoreState.ERROR
    assert (results[2].error, results[2].pc) == (ErrorCode.ILLEGAL_OPCODE, 0x2010)
    assert results[0].counters["dma_write_bytes"] == 32


def run_token_gemm(seed, *, skip_token=False):
    m, k, n = 20, 32, 24
    cfg = NPUConfig(rows=8, cols=8)
    rng = np.random.default_rng(5)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    put_matrix(memory, 0x1000, a, ld=k)
    put_matrix(memory, 0x2000, b, ld=n)
    meta_stride = put_gather_rows(cfg, memory, META)
    program = token_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=k, b=0x2000, ldb=n,
                         c=0x4000, ldc=4 * n, raw=True, meta=META, meta_stride=meta_stride,
                         m_tile=8, skip_token=skip_token).end()
    put_program(memory, 0x8000, program)
    [result] = GoldenNPU(cfg, memory, schedule_seed=seed).run([0x8000])
    got = get_matrix(memory, 0x4000, m, n, 4 * n, "<i4")
    return result, got, a.astype(np.int64) @ b.astype(np.int64)


@pytest.mark.parametrize("seed", [None, *range(10, 18)])
def test_token_ordered_double_buffered_gemm(seed):
    result, got, expected = run_token_gemm(seed)
    done(result)
    np.testing.assert_array_equal(got, expected)


def test_missing_token_shows_up_under_some_schedule():
    wrong = 0
    for seed in range(20):
        _, got, expected = run_token_gemm(seed, skip_token=True)
        wrong += not np.array_equal(got, expected)
    assert wrong > 0


def test_semaphores_count_tokens():
    # Two pushes before two pops: the counter keeps both tokens.
    cfg = NPUConfig(rows=8, cols=8)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    program = (Program().nop(deps=["push_next"]).nop(deps=["push_next"])
               .store(0, 1, 8, 0, 0x4000, raw=True, deps=["pop_prev"])
               .store(0, 1, 8, 0, 0x4100, raw=True, deps=["pop_prev"]).end())
    put_program(memory, 0, program)
    [result] = GoldenNPU(cfg, memory).run([0])
    done(result)
    assert result.counters["dma_write_bytes"] == 64


# --------------------------------------------------------------------------------------------
# Deadlock


def test_missing_token_deadlocks():
    cfg = NPUConfig(rows=8, cols=8)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_program(memory, 0x100, Program().load(0, 1, 8, 0, 0x1000)
                .matmul(0, 0, 1, deps=["pop_prev"]).end())
    with pytest.raises(GoldenDeadlock) as info:
        GoldenNPU(cfg, memory).run([0x100])
    message = str(info.value)
    assert "core 0: pc=0x120 (end)" in message
    assert "load->execute=0" in message
    assert "execute unit: MATMUL at 0x110 waits for pop_prev" in message
    assert info.value.cores[0]["waiting"] == {"execute": (0x110, Opcode.MATMUL, ["pop_prev"])}


def test_barrier_with_stuck_core_deadlocks():
    cfg = NPUConfig(rows=8, cols=8, cores=2)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_program(memory, 0x000, Program().barrier().end())
    put_program(memory, 0x100, Program().store(0, 1, 8, 0, 0x1000, deps=["pop_prev"])
                .barrier().end())
    with pytest.raises(GoldenDeadlock, match=r"core 0: pc=0x0 \(barrier\)"):
        GoldenNPU(cfg, memory).run([0x000, 0x100])


# --------------------------------------------------------------------------------------------
# Errors: the documented code and pc, earlier instructions complete, the bad one writes
# nothing, later ones do not run, memory outside the window untouched.

CFG = NPUConfig(rows=8, cols=8)
WINDOW = (0x1000, 0x8000)
PROG = 0x1000
BEFORE = 0x3000   # raw STORE target of the instruction before the bad one
AFTER = 0x3100    # and of the one after it
FILL = 0xA5


def run_with_bad(bad, *, window=WINDOW, memory_bytes=MEM_BYTES, config=CFG):
    """[STORE -> BEFORE, bad, STORE -> AFTER, END] in ``window``; returns (result, memory,
    the memory before the run)."""
    memory = np.full(memory_bytes, FILL, dtype=np.uint8)
    program = Program().store(0, 1, 8, 0, BEFORE, raw=True)
    program.word(bad if isinstance(bad, int) else bad.words[0])
    program.store(0, 1, 8, 0, AFTER, raw=True).end()
    put_program(memory, PROG, program)
    snapshot = memory.copy()
    [result] = GoldenNPU(config, memory).run([PROG], windows=[window])
    return result, memory, snapshot


def assert_halted_at_bad(result, memory, snapshot, error):
    assert result.state is CoreState.ERROR
    assert result.error is error
    assert result.pc == PROG + INSTR_BYTES
    # The accumulators start at zero: the earlier STORE wrote 32 zero bytes, nothing else did.
    assert (memory[BEFORE:BEFORE + 32] == 0).all()
    changed = np.flatnonzero(memory != snapshot)
    assert changed.min() >= BEFORE and changed.max() < BEFORE + 32
    assert result.counters == {"macs": 0, "dma_read_bytes": 0, "dma_write_bytes": 32,
                               "macs_skipped": 0, "passes_skipped": 0}


L = CFG.line_bytes

BAD_CASES = {
    "illegal opcode": (encode(8), ErrorCode.ILLEGAL_OPCODE),
    "illegal opcode 15": (encode(15, deps=["push_next"]), ErrorCode.ILLEGAL_OPCODE),
    "load rows 0": (Program().load(0, 0, 8, 0, 0x2000), ErrorCode.ILLEGAL_FIELD),
    "load row_bytes 0": (Program().load(0, 1, 0, 0, 0x2000), ErrorCode.ILLEGAL_FIELD),
    "load row_bytes > line": (Program().load(0, 1, L + 1, 0, 0x2000), ErrorCode.ILLEGAL_FIELD),
    "load past scratchpad": (Program().load(CFG.sp_lines - 1, 2, 8, 0, 0x2000),
                             ErrorCode.ILLEGAL_FIELD),
    "load pop_prev": (Program().load(0, 1, 8, 0, 0x2000, deps=["pop_prev"]),
                      ErrorCode.ILLEGAL_FIELD),
    "load push_prev": (Program().load(0, 1, 8, 0, 0x2000, deps=["push_prev"]),
                       ErrorCode.ILLEGAL_FIELD),
    "loadp slot": (Program().loadp(CFG.param_slots, 0x2000), ErrorCode.ILLEGAL_FIELD),
    # LOADW reads R weight lines and the metadata line: sp_addr + R + 1 > lines.
    "loadw past scratchpad": (Program().loadw(CFG.sp_lines - CFG.rows),
                              ErrorCode.ILLEGAL_FIELD),
    "matmul rows 0": (Program().matmul(0, 0, 0), ErrorCode.ILLEGAL_FIELD),
    "matmul past accumulators": (Program().matmul(0, CFG.acc_rows - 1, 2),
                                 ErrorCode.ILLEGAL_FIELD),
    "matmul past scratchpad": (Program().matmul(CFG.sp_lines - 1, 0, 2),
                               ErrorCode.ILLEGAL_FIELD),
    "store cols 0": (Program().store(0, 1, 0, 0, 0x2000), ErrorCode.ILLEGAL_FIELD),
    "store cols > array": (Program().store(0, 1, CFG.cols + 1, 0, 0x2000),
                           ErrorCode.ILLEGAL_FIELD),
    "store slot": (Program().store(0, 1, 8, 0, 0x2000, raw=True, slot=CFG.param_slots),
                   ErrorCode.ILLEGAL_FIELD),
    "store push_next": (Program().store(0, 1, 8, 0, 0x2000, deps=["push_next"]),
                        ErrorCode.ILLEGAL_FIELD),
    "store pop_next": (Program().store(0, 1, 8, 0, 0x2000, deps=["pop_next"]),
                       ErrorCode.ILLEGAL_FIELD),
    "barrier with deps": (Program().barrier(deps=["push_next"]), ErrorCode.ILLEGAL_FIELD),
    "end with deps": (Program().end(deps=["pop_prev"]), ErrorCode.ILLEGAL_FIELD),
    # A field error wins over a misalignment and a window error in the same instruction.
    "field before alignment": (Program().load(0, 0, 8, 3, 0x9001), ErrorCode.ILLEGAL_FIELD),
    "load addr misaligned": (Program().load(0, 1, 8, 0, 0x2004), ErrorCode.MISALIGNED),
    "load stride misaligned": (Program().load(0, 2, 8, 12, 0x2000), ErrorCode.MISALIGNED),
    "loadp misaligned": (Program().loadp(0, 0x2001), ErrorCode.MISALIGNED),
    "store addr misaligned": (Program().store(0, 1, 8, 0, 0x2002, raw=True),
                              ErrorCode.MISALIGNED),
    "store stride misaligned": (Program().store(0, 2, 8, 36, 0x2000, raw=True),
                                ErrorCode.MISALIGNED),
    # An instruction both misaligned and outside the window is MISALIGNED.
    "alignment before window": (Program().load(0, 1, 8, 0, 0x9004), ErrorCode.MISALIGNED),
    "load below window": (Program().load(0, 1, 8, 0, 0x0FF8), ErrorCode.DMA_WINDOW),
    "load last row past window": (Program().load(0, 3, 8, 0x800, 0x7000),
                                  ErrorCode.DMA_WINDOW),
    "loadp record past window": (Program().loadp(0, 0x8000 - 8 * 9), ErrorCode.DMA_WINDOW),
    "store last row past window": (Program().store(0, 4, 8, 0x400, 0x7400, raw=True),
                                   ErrorCode.DMA_WINDOW),
    "store below window": (Program().store(0, 1, 8, 0, 0x0800), ErrorCode.DMA_WINDOW),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_instruction_halts_with_error(case):
    bad, error = BAD_CASES[case]
    result, memory, snapshot = run_with_bad(bad)
    assert_halted_at_bad(result, memory, snapshot, error)


def test_window_edges_are_inclusive_exclusive():
    # The last whole beat under the limit and a record ending exactly at it are fine.
    record = -(-param_slot_bytes(CFG.cols) // CFG.bus_bytes) * CFG.bus_bytes
    for good in (Program().load(0, 1, 8, 0, 0x8000 - 8), Program().loadp(0, 0x8000 - record),
                 Program().store(0, 4, 8, 0x400, 0x7000, raw=True)):
        result, _, _ = run_with_bad(good)
        done(result)


def test_loadw_metadata_line_is_the_last_it_may_read():
    # sp_addr + R + 1 == lines reads the last line as metadata; one further is an error.
    result, _, _ = run_with_bad(Program().loadw(CFG.sp_lines - CFG.rows - 1))
    done(result)
    result, memory, snapshot = run_with_bad(Program().loadw(CFG.sp_lines - CFG.rows))
    assert_halted_at_bad(result, memory, snapshot, ErrorCode.ILLEGAL_FIELD)
    config = NPUConfig(rows=4, cols=8, sparse_group=1)  # 8-byte lines, 4096 of them
    result, _, _ = run_with_bad(Program().loadw(4096 - 5), config=config)
    done(result)
    result, memory, snapshot = run_with_bad(Program().loadw(4096 - 4), config=config)
    assert_halted_at_bad(result, memory, snapshot, ErrorCode.ILLEGAL_FIELD)


@pytest.mark.parametrize("bad", [
    Program().load(0, 1, 4, 0, 0x7FF8),
    Program().store(0, 1, 4, 0, 0x7FF8),
    Program().loadp(0, 0x8000 - 9 * CFG.cols - 8),
], ids=["load", "store", "loadp"])
def test_extent_is_rounded_to_beats(bad):
    # The bytes themselves end at or before the (unaligned) limit; the beat holding them
    # does not.
    result, memory, snapshot = run_with_bad(bad, window=(0x1000, 0x7FFC))
    assert_halted_at_bad(result, memory, snapshot, ErrorCode.DMA_WINDOW)


def test_store_partly_inside_window_writes_nothing():
    # Rows 0-2 of the bad STORE are inside the window; none of them may be written.
    result, memory, snapshot = run_with_bad(Program().store(0, 4, 8, 0x400, 0x7400, raw=True))
    assert_halted_at_bad(result, memory, snapshot, ErrorCode.DMA_WINDOW)
    assert (memory[0x7400:0x8000] == FILL).all()


def test_fetch_runs_off_window_end():
    memory = np.full(MEM_BYTES, FILL, dtype=np.uint8)
    put_program(memory, 0x7FE0, Program().store(0, 1, 8, 0, BEFORE, raw=True).nop())
    snapshot = memory.copy()
    [result] = GoldenNPU(CFG, memory).run([0x7FE0], windows=[WINDOW])
    assert (result.state, result.error, result.pc) == (
        CoreState.ERROR, ErrorCode.DMA_WINDOW, 0x8000)
    changed = np.flatnonzero(memory != snapshot)
    assert changed.min() == BEFORE and changed.max() == BEFORE + 31


@pytest.mark.parametrize(("start", "error"), [
    (0x0FF0, ErrorCode.DMA_WINDOW),   # below the window
    (0x8000, ErrorCode.DMA_WINDOW),   # at the limit
    (0x1008, ErrorCode.MISALIGNED),   # not a whole instruction
])
def test_bad_start_address(start, error):
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_program(memory, 0x1000, Program().end())
    [result] = GoldenNPU(CFG, memory).run([start], windows=[WINDOW])
    assert (result.state, result.error, result.pc) == (CoreState.ERROR, error, start)


def test_access_past_memory_end_is_bus_error():
    small = 0x4000
    result, memory, snapshot = run_with_bad(Program().load(0, 1, 8, 0, small),
                                            window=(0, 1 << 20), memory_bytes=small)
    assert_halted_at_bad(result, memory, snapshot, ErrorCode.BUS_ERROR)


def test_error_drops_instructions_waiting_for_later_tokens():
    # The LOAD waits for a token only the NOP after the bad instruction would give: the core
    # still halts (no deadlock) and the LOAD never reads.
    program = (Program().store(0, 1, 8, 0, BEFORE, raw=True)
               .word(encode(12))
               .nop(deps=["push_prev"]))
    memory = np.full(MEM_BYTES, FILL, dtype=np.uint8)
    put_program(memory, PROG, Program().load(0, 1, 8, 0, 0x2000, deps=["pop_next"])
                .extend(program))
    [result] = GoldenNPU(CFG, memory).run([PROG])
    assert (result.state, result.error, result.pc) == (
        CoreState.ERROR, ErrorCode.ILLEGAL_OPCODE, PROG + 2 * INSTR_BYTES)
    assert result.counters["dma_read_bytes"] == 0
    assert result.counters["dma_write_bytes"] == 32


def test_requantiser_parameters_out_of_range_are_unspecified():
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put(memory, 0x2000, np.frombuffer(pack_param_slot(CFG.cols, shift=31), dtype=np.uint8))
    put_program(memory, 0, Program().loadp(0, 0x2000).barrier().store(0, 1, 8, 0, 0x3000)
                .end())
    with pytest.raises(GoldenUnspecified, match=r"^Core 0: STORE at 0x20 uses parameter "
                                                r"slot 0, .*shift must be in \[-31, 30\]"):
        GoldenNPU(CFG, memory).run([0])


def test_run_argument_checks():
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    npu = GoldenNPU(CFG, memory)
    with pytest.raises(ValueError, match=r"^Expected 1 to 1 programs, not 2$"):
        npu.run([0, 0x100])
    with pytest.raises(ValueError, match=r"^Window 0 must satisfy 0 <= base <= limit"):
        npu.run([0], windows=[(0x100, 0x80)])
    with pytest.raises(TypeError, match=r"^memory must be a one-dimensional numpy uint8"):
        GoldenNPU(CFG, memory.view(np.int8))
