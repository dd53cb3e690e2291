"""The golden model (npu.sim.golden) against numpy and the written rules of its docstring: tiled
GEMMs equal ``a @ b`` (and ``requantize(a @ b)``), multi-core barriers and tokens order the work,
and each error halts at the documented instruction with nothing written by it."""

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


def fenced_gemm(cfg, program, *, m, k, n, a, lda, b, ldb, c, ldc, raw, params=None,
                params_stride=0):
    """Append a tiled ``C[m, n] = A[m, k] @ B[k, n]`` that orders its units with barriers only.

    Requantised output channel tile ``j`` uses slot ``j``, loaded from ``params + j *
    params_stride``. Partial tiles rely on LOAD zero-filling each line past ``row_bytes``.
    """
    R, C = cfg.rows, cfg.cols
    out_bytes = 4 if raw else 1
    for j, n0 in enumerate(range(0, n, C)):
        cols = min(C, n - n0)
        if not raw:
            program.loadp(j, params + j * params_stride)
        for k0 in range(0, k, R):
            program.load(0, m, min(R, k - k0), lda, a + k0)
            program.load(m, min(R, k - k0), cols, ldb, b + k0 * ldb + n0)
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


@pytest.mark.parametrize(("m", "k", "n"), [(20, 16, 16), (13, 11, 21), (1, 8, 8)])
def test_tiled_gemm_raw_int32_matches_numpy(m, k, n):
    cfg = NPUConfig(rows=8, cols=8)
    rng = np.random.default_rng(1)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    put_matrix(memory, 0x1000, a, ld=24)
    put_matrix(memory, 0x2000, b, ld=24)
    ldc = 4 * 24
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=24, b=0x2000, ldb=24,
                          c=0x4000, ldc=ldc, raw=True).end()
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
    memory[0x4000:0x5000] = 0xEE
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=16, b=0x2000, ldb=16,
                          c=0x4000, ldc=16, raw=False, params=0x3000,
                          params_stride=stride).end()
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
    cfg = NPUConfig(rows=8, cols=8)
    rng = np.random.default_rng(3)
    memory = np.zeros(MEM_BYTES, dtype=np.uint8)
    put_matrix(memory, 0x1000, random_int8(rng, (m, k)), ld=32)
    put_matrix(memory, 0x2000, random_int8(rng, (k, n)), ld=16)
    stride = put_params(cfg, memory, 0x3000, random_params(rng, n), n)
    program = fenced_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=32, b=0x2000, ldb=16,
                          c=0x4000, ldc=16, raw=False, params=0x3000,
                          params_stride=stride).end()
    put_program(memory, 0, program)

    [result] = GoldenNPU(cfg, memory).run([0])

    done(result)
    tiles = (n // 8) * (k // 8)
    beat = cfg.bus_bytes
    assert result.counters["macs"] == m * n * k
    # Every 8-byte row is one beat; each LOADP record (75 bytes) is 10 beats.
    assert result.counters["dma_read_bytes"] == tiles * (m + 8) * beat + (n // 8) * 10 * beat
    assert result.counters["dma_write_bytes"] == (n // 8) * m * beat


# --------------------------------------------------------------------------------------------
# Several cores, barriers and tokens


def token_gemm(cfg, program, *, m, k, n, a, lda, b, ldb, c, ldc, raw, params=None,
               params_stride=0, m_tile=None, skip_token=False):
    """Append ``C[m, n] = A[m, k] @ B[k, n]`` ordered by tokens only, double-buffered: two
    scratchpad buffers (the load unit runs up to two tiles ahead of the execute unit) and two
    accumulator buffers (the execute unit runs up to two output tiles ahead of the store unit).

    Output tiles are ``m_tile`` rows by the array's columns; ``k`` and ``n`` are multiples of
    the array. Tokens balance, but nothing carries over to a following call: a program runs
    one of these per core and phase. ``skip_token`` leaves out the wait that protects the first
    reused scratchpad buffer."""
    R, C = cfg.rows, cfg.cols
    m_tile = m_tile or m
    outputs = [(m0, n0) for m0 in range(0, m, m_tile) for n0 in range(0, n, C)]
    tiles = [(o, k0) for o in range(len(outputs)) for k0 in range(0, k, R)]
    out_bytes = 4 if raw else 1
    for t, (o, k0) in enumerate(tiles):
        m0, n0 = outputs[o]
        rows = min(m_tile, m - m0)
        slot = n0 // C
        buf = (t % 2) * (m_tile + R)
        acc = (o % 2) * m_tile
        if k0 == 0 and not raw and o < n // C:
            program.loadp(slot, params + slot * params_stride)
        # Buffer t % 2 is free once MATMUL t - 2 has given it back.
        wait = ["pop_next"] if t >= 2 and not (skip_token and t == 2) else []
        program.load(buf, rows, R, lda, a + m0 * lda + k0, deps=wait)
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
    memory[0x2000:0x2200] = 0x55  # layer outputs start as garbage
    # (first row, rows, rows per output tile) of each core in each layer.
    layer1 = ((0, 4, 4), (4, 12, 4))
    layer2 = ((4, 12, 12), (0, 4, 4))
    programs = []
    for core in range(2):
        program = Program()
        row0, m, m_tile = layer1[core]
        token_gemm(cfg, program, m=m, k=k, n=n, a=0x1000 + row0 * 16, lda=16, b=0x1100,
                   ldb=16, c=0x2000 + row0 * 16, ldc=16, raw=False, params=0x1400,
                   params_stride=s1, m_tile=m_tile)
        program.barrier()
        row0, m, m_tile = layer2[core]
        token_gemm(cfg, program, m=m, k=k, n=n, a=0x2000 + row0 * 16, lda=16, b=0x1200,
                   ldb=16, c=0x2100 + row0 * 16, ldc=16, raw=False, params=0x1600,
                   params_stride=s2, m_tile=m_tile)
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
    program = token_gemm(cfg, Program(), m=m, k=k, n=n, a=0x1000, lda=k, b=0x2000, ldb=n,
                         c=0x4000, ldc=4 * n, raw=True, m_tile=8, skip_token=skip_token).end()
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
    assert result.counters == {"macs": 0, "dma_read_bytes": 0, "dma_write_bytes": 32}


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
    "loadw past scratchpad": (Program().loadw(CFG.sp_lines - CFG.rows + 1),
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
