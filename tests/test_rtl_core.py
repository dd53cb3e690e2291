"""The NPU running programs in the Amaranth simulator, against numpy and the golden model."""

import dataclasses
import types

import numpy as np
import pytest

from npu.firmware import compiler
from npu.firmware.asm import Program, decode
from npu.firmware.device import build_gemm_image
from npu.firmware.quant import requantize
from npu.rtl.config import NPUConfig
from npu.rtl.control import RegisterMap
from npu.rtl.isa import CoreState, ErrorCode, Opcode
from npu.rtl.top import NPU
from npu.sim.amaranth_backend import AmaranthBackend, configure_core, read_core
from npu.sim.amaranth_sim import run_simulation
from npu.sim.axi_mem import AXI4Memory
from npu.sim.axil import axil_write
from npu.sim.backend import NPUTimeout
from npu.sim.ecp5 import use_mult18x18d_model
from npu.sim.golden_backend import GoldenBackend
from npu.synth.boards import board_config
from npu.synth.build import board_platform


def random_int8(rng, shape):
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    x.reshape(-1)[:2] = [-128, 127]
    return x


def one_core_image(memory):
    """A hand-made program image: ``memory`` with core 0 starting at address 0."""
    return types.SimpleNamespace(memory=memory, starts=[0])


def run_both(config, image, windows=None, **timing):
    hw = AmaranthBackend(config, **timing).run(image.memory, image.starts, windows)
    gold = GoldenBackend(config).run(image.memory, image.starts, windows)
    return hw, gold


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_tiled_gemm_matches_numpy_and_golden_memory(cores):
    config = NPUConfig(rows=4, cols=4, cores=cores)
    rng = np.random.default_rng(cores)
    a, b = random_int8(rng, (24, 10)), random_int8(rng, (10, 9))
    image = build_gemm_image(config, a, b, raw=True)
    assert len(image.starts) == cores
    hw, gold = run_both(config, image)
    assert all(c.state == CoreState.DONE for c in hw.cores)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    for h, g in zip(hw.cores, gold.cores):
        assert h.pc == g.pc
        for name in ("macs", "dma_read_bytes", "dma_write_bytes"):
            assert h.counters[name] == g.counters[name]


def test_requantised_gemm_matches_the_tflite_rule():
    config = NPUConfig(rows=4, cols=4, cores=2)
    rng = np.random.default_rng(5)
    a, b = random_int8(rng, (12, 8)), random_int8(rng, (8, 6))
    params = dict(bias=rng.integers(-5000, 5000, 6), multiplier=rng.integers(1 << 28, 1 << 31, 6),
                  shift=rng.integers(-9, 2, 6), zero_point=-5, act_min=-5, act_max=127)
    image = build_gemm_image(config, a, b, raw=False, params=params)
    hw, gold = run_both(config, image)
    expected = requantize(a.astype(np.int64) @ b, params["bias"], params["multiplier"],
                          params["shift"], -5, -5, 127)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)


# Each core's cycles in the test below: plain, retimed, retimed with a zero lookahead of 1.
RETIMED_CYCLES = {
    (4, 4, 2, True): ([702, 750], [720, 770], [727, 777]),
    (4, 4, 2, False): ([751, 802], [871, 905], [873, 907]),
    (8, 8, 1, True): ([461], [499], [519]),
    (8, 8, 1, False): ([519], [643], [663]),
}


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("rows, cols, cores", [(4, 4, 2), (8, 8, 1)])
def test_retimed_cores_match_numpy_golden_and_the_plain_build_but_take_longer(
        raw, rows, cols, cores):
    # The FPGA register stages (requantiser, gather stage, PE product registers) change only
    # the timing: the same program gives the same memory and counters, in more cycles. (An
    # 8x8 array gathers from 32 bytes in two stages and sums its zero-operand counts in
    # registered groups of four lanes.)
    rng = np.random.default_rng(17)
    a, b = random_int8(rng, (21, 40)), random_int8(rng, (40, 11))
    a[3:9] = 0                      # whole zero vectors: skipped passes
    b[rng.random(b.shape) < 0.3] = 0   # zero weights: gated MACs counted per row
    params = {"bias": rng.integers(-5000, 5000, 11),
              "multiplier": rng.integers(1 << 28, 1 << 31, 11),
              "shift": rng.integers(-9, 2, 11), "zero_point": 3, "act_min": -128, "act_max": 127}
    runs = {}
    timing = ("cycles", "stall_dependency", "stall_memory")
    # Plain; retimed; retimed with a one-line zero lookahead (the skip decided a stage later).
    for build, options in enumerate(({}, {"retime": True},
                                     {"retime": True, "zero_lookahead": 1})):
        config = NPUConfig(rows=rows, cols=cols, cores=cores, **options)
        image = build_gemm_image(config, a, b, raw=raw, params=None if raw else params)
        hw, gold = run_both(config, image)
        np.testing.assert_array_equal(hw.memory, gold.memory)
        # The data counters (MACs, gated and skipped ones, passes skipped) as the numpy
        # model counts them from the program and the data.
        for core, model in zip(hw.cores, gold.cores):
            for name, value in model.counters.items():
                if name not in timing:
                    assert core.counters[name] == value, (build, name)
        runs[build] = hw
        # Deterministic: the register stages' cost, to the cycle.
        assert [core.counters["cycles"] for core in hw.cores] == \
            RETIMED_CYCLES[rows, cols, cores, raw][build]
    expected = a.astype(np.int64) @ b
    if not raw:
        expected = requantize(expected, params["bias"], params["multiplier"], params["shift"],
                              3, -128, 127)
    for retimed_run in (runs[1], runs[2]):
        np.testing.assert_array_equal(image.read_output(retimed_run.memory), expected)
        for plain, retimed in zip(runs[0].cores, retimed_run.cores):
            assert retimed.state == CoreState.DONE
            for name, value in plain.counters.items():
                if name not in timing:
                    assert retimed.counters[name] == value, name
            assert retimed.counters["cycles"] > plain.counters["cycles"]
        assert sum(core.counters["passes_skipped"] for core in retimed_run.cores) > 0


@pytest.mark.parametrize("m", [1, 2, 3])
def test_retimed_accumulation_into_the_same_rows_back_to_back_is_exact(m):
    # A few rows and many K-blocks: the passes into one accumulator row follow each other
    # closely, through the retimed write-back's forwarding.
    config = NPUConfig(rows=4, cols=4, cores=1, retime=True, sparse_group=1)
    rng = np.random.default_rng(m)
    a, b = random_int8(rng, (m, 37)), random_int8(rng, (37, 6))
    image = build_gemm_image(config, a, b, raw=True)
    hw, gold = run_both(config, image)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rows, step", [(4, 3), (4, 2), (4, 1), (1, 0)],
                         ids=["one-apart", "two-apart", "three-apart", "one-row-each"])
def test_matmul_streams_back_to_back_through_a_shared_accumulator_row(retime, rows, step):
    # Four MATMULs of `rows` rows, each starting `step` accumulator rows after the one before,
    # so that they overlap: the next stream starts while the last vector of the one before
    # issues, and the vectors into a shared row enter the array one, two or three cycles
    # apart (one-row streams into one row: as often as the execute unit starts a stream).
    # The retimed write-back reads a row before the two writes just ahead of it land and
    # must forward them; three cycles apart the read sees the write itself.
    config = NPUConfig(rows=4, cols=4, cores=1, retime=retime)
    memory = np.zeros(0x4000, np.uint8)
    rng = np.random.default_rng(9)
    memory[0x1000:0x1200] = rng.integers(0, 256, 0x200, dtype=np.uint8)
    memory[0x1000:0x1008] = [0x80] * 4 + [0x7F] * 4          # the extremes
    memory[0x1180:0x1184] = [0, 1, 2, 3]                    # gather indices 0..3
    streams = [(8 + 4 * n, 1 + step * n, n > 0) for n in range(4)]
    out_rows = 1 + 3 * step + rows
    p = Program()
    p.load(0, 4, 4, 8, 0x1100)                              # weights
    p.load(4, 1, 4, 8, 0x1180)
    p.load(8, 16, 4, 8, 0x1000, deps=("push_next",))        # 16 activation lines
    p.loadw(0, deps=("pop_prev",))
    for n, (line, acc, accumulate) in enumerate(streams):
        p.matmul(line, acc, rows, accumulate=accumulate,
                 deps=("push_next",) if n == len(streams) - 1 else ())
    p.store(0, out_rows, 4, 16, 0x2000, raw=True, deps=("pop_prev",))
    p.end()
    words = np.frombuffer(p.to_bytes(), np.uint8)
    memory[:len(words)] = words
    hw, gold = run_both(config, one_core_image(memory))
    a = memory[0x1000:0x1080].view(np.int8).reshape(16, 8)[:, :4].astype(np.int64)
    w = memory[0x1100:0x1120].view(np.int8).reshape(4, 8)[:, :4].astype(np.int64)
    expected = np.zeros((out_rows, 4), np.int64)
    for line, acc, accumulate in streams:
        product = a[line - 8:line - 8 + rows] @ w
        expected[acc:acc + rows] = (expected[acc:acc + rows] if accumulate else 0) + product
    got = hw.memory[0x2000:0x2000 + out_rows * 16].view("<i4").reshape(out_rows, 4)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)


@pytest.mark.parametrize("timing", [{}, {"retime": True}, {"retime": True, "zero_lookahead": 1}],
                         ids=["plain", "retimed", "retimed-late-skip"])
def test_lane_gather_reads_each_rows_own_byte_of_a_sub_block_or_zero(timing):
    # R = 4, C = 3, G = 4: 16-byte lines of four 4-byte sub-blocks. Row i reads byte
    # g*4 + i of the line when its index is g*4 + i, and 0 for any other index.
    config = NPUConfig(rows=4, cols=3, gather="lane", **timing)
    lines = np.array([[-128, 127] + list(range(-20, 36, 4)),
                      [3 * j - 7 for j in range(16)],
                      [9] + [0] * 15], np.int8)   # only byte 0 (sub-block 0) non-zero
    weights = np.array([[1, -2, 3], [-128, 127, 5], [7, 0, -1], [2, 2, 127]], np.int8)
    gathers = [[8, 9, 10, 11],      # sub-block 2, dense
               [12, 1, 255, 7],     # sub-blocks 3, 0, none, 1
               [1, 0, 3, 2],        # every index in another row's lane: all read 0
               [4, 0, 6, 15]]       # row 1's index is row 0's byte: 0; sub-blocks 1, 3 used
    memory = np.zeros(0x4000, np.uint8)
    memory[0x1000:0x1030] = lines.view(np.uint8).reshape(-1)
    p = Program().load(0, 3, 16, 16, 0x1000)
    for t, gather in enumerate(gathers):
        base = 0x1100 + 0x40 * t
        memory[base:base + 4 * 8].reshape(4, 8)[:, :3] = weights.view(np.uint8)
        memory[base + 0x20:base + 0x24] = gather
        p.load(3 + 5 * t, 4, 3, 8, base).load(7 + 5 * t, 1, 4, 0, base + 0x20)
    p.barrier()
    for t in range(len(gathers)):
        p.loadw(3 + 5 * t).matmul(0, 3 * t, 3)
    # The last tile again, accumulating: the third line's only non-zero byte is in sub-block
    # 0, which the tile reads nothing from (row 1's index 0 is not its lane), so it is skipped.
    p.loadw(3 + 5 * 3).matmul(0, 9, 3, accumulate=True)
    p.barrier().store(0, 12, 3, 16, 0x2000, raw=True).end()
    words = np.frombuffer(p.to_bytes(), np.uint8)
    memory[:len(words)] = words
    hw, gold = run_both(config, one_core_image(memory))
    x = lines.astype(np.int64)
    expected = []
    for t, gather in enumerate(gathers):
        vec = np.zeros((3, 4), np.int64)
        for i, index in enumerate(gather):
            if index < 16 and index % 4 == i:
                vec[:, i] = x[:, index]
        expected.append(vec @ weights.astype(np.int64) * (2 if t == 3 else 1))
    got = hw.memory[0x2000:0x2000 + 12 * 16].view("<i4").reshape(12, 4)[:, :3]
    np.testing.assert_array_equal(got, np.concatenate(expected))
    np.testing.assert_array_equal(got[6:9], 0)                    # all indices out of lane
    # By hand: tile 1 on line 0 reads x = [line[12], line[1], 0, line[7]] = [20, 127, 0, 0].
    np.testing.assert_array_equal(got[3], [20 - 127 * 128, -2 * 20 + 127 * 127, 60 + 5 * 127])
    np.testing.assert_array_equal(hw.memory, gold.memory)
    [h], [g] = hw.cores, gold.cores
    assert h.state == CoreState.DONE
    assert h.counters["passes_skipped"] == g.counters["passes_skipped"] == 1
    for name in ("macs", "macs_skipped"):
        assert h.counters[name] == g.counters[name], name


@pytest.mark.parametrize("slots, barriers", [(4, 0), (1, 5)])
def test_more_n_blocks_than_parameter_slots(slots, barriers):
    # 6 N-blocks, resident activations: with 4 slots each slot is reloaded as soon as tokens
    # prove its previous STORE done (no BARRIER); with 1 slot that proof would come too late,
    # so the compiler falls back to one pass per slot, separated by barriers.
    config = NPUConfig(rows=4, cols=4, cores=2, param_slots=slots)
    rng = np.random.default_rng(11)
    a, b = random_int8(rng, (16, 32)), random_int8(rng, (32, 24))
    params = dict(bias=rng.integers(-5000, 5000, 24),
                  multiplier=rng.integers(1 << 28, 1 << 31, 24),
                  shift=rng.integers(-9, 2, 24), zero_point=3, act_min=-128, act_max=127)
    image = build_gemm_image(config, a, b, raw=False, params=params)
    for prog in image.programs:
        ops = [decode(w)["op"] for w in prog.words]
        assert ops.count(Opcode.BARRIER) == barriers
        assert ops.count(Opcode.LOADP) == 6
    hw, gold = run_both(config, image)
    expected = requantize(a.astype(np.int64) @ b, params["bias"], params["multiplier"],
                          params["shift"], 3, -128, 127)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)


# The iCEBreaker's configuration (synth/boards.py): the options that change only the timing
# (short queues, one requantiser lane) and one parameter slot.
SMALL = NPUConfig(rows=2, cols=2, bus_width=32, addr_width=16, scratchpad_bytes=256,
                  acc_rows=64, param_slots=1, fetch_depth=2, unit_queue_depth=1,
                  requant_lanes=1)


@pytest.mark.parametrize("raw", [True, False])
def test_small_board_config_gemm_matches_numpy_and_golden(raw):
    rng = np.random.default_rng(11)
    a, b = random_int8(rng, (9, 6)), random_int8(rng, (6, 5))
    params = dict(bias=rng.integers(-3000, 3000, 5),
                  multiplier=rng.integers(1 << 28, 1 << 31, 5), shift=rng.integers(-8, 2, 5),
                  zero_point=3, act_min=-100, act_max=120)
    image = build_gemm_image(SMALL, a, b, raw=raw, params=None if raw else params)
    hw, gold = run_both(SMALL, image)
    assert all(c.state == CoreState.DONE for c in hw.cores)
    acc = a.astype(np.int64) @ b
    expected = acc if raw else requantize(acc, params["bias"], params["multiplier"],
                                          params["shift"], 3, -100, 120)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    for h, g in zip(hw.cores, gold.cores):
        assert h.pc == g.pc
        for name in ("macs", "dma_read_bytes", "dma_write_bytes", "macs_skipped",
                     "passes_skipped"):
            assert h.counters[name] == g.counters[name]


def test_grid_split_over_four_cores_matches_numpy_and_golden():
    # Row bands of 4 rows would each read all 8 N-blocks' weights; a 2 x 2 grid of 8-row
    # bands x 4 N-blocks reads less, and auto picks it.
    config = NPUConfig(rows=4, cols=4, cores=4)
    rng = np.random.default_rng(12)
    a, b = random_int8(rng, (16, 64)), random_int8(rng, (64, 32))
    image = build_gemm_image(config, a, b, raw=True)
    assert image.plan.bands == [(0, 8, 0, 4), (0, 8, 4, 8), (8, 16, 0, 4), (8, 16, 4, 8)]
    hw, gold = run_both(config, image)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)


@pytest.mark.parametrize("cores, grid", [(2, (2, 1)), (4, (4, 1)), (8, (4, 2))])
def test_auto_split_of_256_cubed(cores, grid):
    # 64-row bands fit the scratchpad whole; 128-row ones would be re-read in chunks.
    plan = compiler.plan_gemm(NPUConfig(cores=cores), 256, 256, 256, raw=False)
    assert len({b[:2] for b in plan.bands}) == grid[0]
    assert len({b[2:] for b in plan.bands}) == grid[1]


def test_short_chunks_get_enough_activation_buffers():
    # 4 chunks of 32 rows, 2 steps each: a chunk buffer comes round again before the tokens
    # that free it; the compiler must give the chunks more buffers (it raced with 2 before).
    config = NPUConfig(rows=8, cols=8, cores=1, acc_rows=64)
    rng = np.random.default_rng(3)
    a, b = random_int8(rng, (128, 9)), random_int8(rng, (9, 8))
    image = build_gemm_image(config, a, b, raw=True)
    assert image.plan.resident and image.plan.a_buffers > 2
    hw, gold = run_both(config, image)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)



# The smallest options on top of SMALL (the iCEBreaker's, but for 8-bit counters): no
# instruction prefetched ahead, the sequential requantiser, one LOAD in flight, one row
# between the requantiser and the bus, one line of zero lookahead.
TINY = dataclasses.replace(SMALL, fetch_depth=1, requant_lanes=None, requant_sequential=True,
                           load_queue_depth=1, store_queue_depth=1, zero_lookahead=1,
                           counter_width=8)


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("raw", [True, False])
def test_tiny_options_match_numpy_and_golden_and_counters_wrap(raw, retime):
    # Retimed too: the sequential requantiser stalls the store's row reads, which the
    # retimed store therefore does not register.
    config = dataclasses.replace(TINY, retime=retime)
    rng = np.random.default_rng(12)
    a, b = random_int8(rng, (9, 20)), random_int8(rng, (20, 5))
    a[2:7, 8:] = 0          # zero lines in the accumulating K-groups: passes are skipped
    params = {"bias": rng.integers(-3000, 3000, 5),
              "multiplier": rng.integers(1 << 28, 1 << 31, 5),
              "shift": rng.integers(-8, 2, 5), "zero_point": -2, "act_min": -128,
              "act_max": 100}
    image = build_gemm_image(config, a, b, raw=raw, params=None if raw else params)
    hw, gold = run_both(config, image)
    assert all(c.state == CoreState.DONE for c in hw.cores)
    acc = a.astype(np.int64) @ b
    expected = acc if raw else requantize(acc, params["bias"], params["multiplier"],
                                          params["shift"], -2, -128, 100)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    # The same program with 32-bit counters: the 8-bit ones are those values modulo 256.
    wide = GoldenBackend(dataclasses.replace(config, counter_width=32)).run(
        image.memory, image.starts)
    for h, g, w in zip(hw.cores, gold.cores, wide.cores):
        assert h.pc == g.pc
        assert w.counters["passes_skipped"] > 0 and w.counters["macs"] > 255
        for name in ("macs", "dma_read_bytes", "dma_write_bytes", "macs_skipped",
                     "passes_skipped"):
            assert h.counters[name] == g.counters[name] == w.counters[name] % 256
        assert h.counters["cycles"] > 255     # cycles keeps 32 bits

def test_dense_gemm_counters_add_up():
    config = NPUConfig(rows=4, cols=4, cores=2)
    rng = np.random.default_rng(9)
    M, K, N = 16, 8, 8
    image = build_gemm_image(config, random_int8(rng, (M, K)), random_int8(rng, (K, N)),
                             raw=True)
    hw, _ = run_both(config, image)
    c = [core.counters for core in hw.cores]
    assert sum(x["macs"] for x in c) == M * N * K
    # One vector per cycle enters the array; each carries rows x cols MACs.
    assert all(x["macs"] == x["array_busy"] * 16 for x in c)
    # Bus bytes. Activations: once per core band, the K = 8 bytes of each row's K-group line
    # (one beat). Weights: each core reads 2 N-blocks x 2 tiles, a tile being 4 weight rows
    # and a gather row of one 8-byte beat each. Results: 4 int32 lanes = 2 beats per row per
    # N-block.
    assert sum(x["dma_read_bytes"] for x in c) == M * 8 + 2 * (2 * 2 * 5 * 8)
    assert sum(x["dma_write_bytes"] for x in c) == M * N * 4
    for x in c:
        assert x["array_busy"] <= x["cycles"]
        assert x["stall_memory"] < x["cycles"] and x["stall_dependency"] < x["cycles"]


def test_64_cubed_gemm_on_two_8x8_cores_is_exact_and_takes_a_fixed_cycle_count():
    config = NPUConfig(rows=8, cols=8, cores=2)
    rng = np.random.default_rng(64)
    a, b = random_int8(rng, (64, 64)), random_int8(rng, (64, 64))
    image = build_gemm_image(config, a, b, raw=True)
    hw, gold = run_both(config, image)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    print(f"64x64x64 int8 GEMM, 2 cores of 8x8: {hw.cycles} cycles")
    assert hw.cycles == 2899
    assert sum(c.counters["macs"] for c in hw.cores) == 64 ** 3


def two_layer_image(config, rng):
    """Layer 1 split by rows, layer 2 by columns: every core's layer-2 input includes rows the
    other core wrote, so only the BARRIER between the layers makes the result right."""
    a = random_int8(rng, (16, 8))
    w1, w2 = random_int8(rng, (8, 8)), random_int8(rng, (8, 8))
    p1 = dict(bias=np.zeros(8, np.int64), multiplier=np.full(8, 1 << 30),
              shift=np.full(8, -6), zero_point=0, act_min=-128, act_max=127)
    first = build_gemm_image(config, a, w1, raw=False, params=p1, split="rows")
    y1 = requantize(a.astype(np.int64) @ w1, 0, 1 << 30, -6, 0, -128, 127)
    # With sparse_group 1 and a square array, layer 1's blocked int8 output is exactly layer
    # 2's K-grouped input.
    lay = first.layout
    sizes = compiler.layout_sizes(config, 16, 8, 8, True)
    assert sizes["a_pitch"] == lay.o_pitch
    weights2 = compiler.pack_weights(config, w2)
    w2_addr = len(first.memory)
    out2 = w2_addr + compiler.roundup(len(weights2.blob), 4096)
    memory = np.zeros(out2 + sizes["o_bytes"], np.uint8)
    memory[:len(first.memory)] = first.memory
    memory[w2_addr:w2_addr + len(weights2.blob)] = weights2.blob
    plan2 = compiler.plan_gemm(config, 16, 8, 8, raw=True, split="cols")
    layout2 = compiler.GemmLayout(lay.out_addr, w2_addr, out2, 0, sizes["a_pitch"],
                                  sizes["w_pitch"], sizes["o_pitch"], sizes["param_pitch"])
    second = compiler.compile_gemm(config, plan2, layout2, weights2)
    starts = []
    for i in range(2):
        prog = Program(first.programs[i].words[:-1])   # drop the END
        prog.barrier()
        prog.extend(second[i])
        prog.end()
        code = np.frombuffer(prog.to_bytes(), np.uint8)
        memory[first.starts[i]:first.starts[i] + len(code)] = code
        starts.append(first.starts[i])
    expected = y1.astype(np.int64) @ w2
    return memory, starts, (out2, sizes["o_bytes"]), expected


def test_barrier_orders_a_two_layer_program_across_cores():
    config = NPUConfig(rows=4, cols=4, cores=2, sparse_group=1)
    memory, starts, (out, nbytes), expected = two_layer_image(config, np.random.default_rng(3))
    hw = AmaranthBackend(config).run(memory, starts)
    gold = GoldenBackend(config).run(memory, starts)
    assert all(c.state == CoreState.DONE for c in hw.cores)
    got = compiler.unpack_out(config, hw.memory[out:out + nbytes], 16, 8, True)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)


@pytest.mark.parametrize("depth, cycles", [(4, 743), (16, 551)])
def test_the_store_queue_depth_caps_a_requantised_stores_row_rate(depth, cycles):
    # A STORE reads a row only while the row queue has room for it and for every row still
    # in the requantiser: on the ULX3S build (retimed, an 11-stage requantiser behind two row
    # read registers) its default depth of 4 lets 4 rows at a time through that pipeline;
    # 16 covers it. Same results, exact cycles (the figures docs/architecture.md quotes).
    config, _ = board_config("ulx3s-85f", cores=1, rows=4, cols=4)
    config = dataclasses.replace(config, store_queue_depth=depth)
    rng = np.random.default_rng(1)
    a, b = random_int8(rng, (64, 16)), random_int8(rng, (16, 4))
    a[0, 0], b[0, 0] = -128, 127
    params = {"bias": rng.integers(-5000, 5000, 4), "multiplier": np.full(4, 1 << 30),
              "shift": np.full(4, -6), "zero_point": 0, "act_min": -128, "act_max": 127}
    image = build_gemm_image(config, a, b, raw=False, params=params)
    hw = AmaranthBackend(config).run(image.memory, image.starts, max_cycles=20000)
    expected = requantize(a.astype(np.int64) @ b, params["bias"], params["multiplier"],
                          params["shift"], 0, -128, 127)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    assert hw.cycles == cycles


# --- Bad programs --------------------------------------------------------------------------

CFG2 = NPUConfig(rows=4, cols=4, cores=2)
WINDOW0 = (0x0000, 0x4000)    # core 0 may touch only its first 16 KB
WINDOW1 = (0x4000, 0x10000)


def good_program(base):
    """Core 1's program: y = a @ w on data inside its own window."""
    p = Program()
    p.load(0, 4, 4, 8, base + 0x1100)                         # weights
    p.load(4, 1, 4, 8, base + 0x1180)                         # gather indices 0..3
    p.load(8, 4, 4, 8, base + 0x1000, deps=("push_next",))    # activations
    p.loadw(0, deps=("pop_prev",))
    p.matmul(8, 0, 4, deps=("push_next",))
    p.store(0, 4, 4, 16, base + 0x2000, raw=True, deps=("pop_prev",))
    p.end()
    return p


BAD_PROGRAMS = {
    "illegal_opcode": (lambda p: p.word(0xF), ErrorCode.ILLEGAL_OPCODE),
    "rows_zero": (lambda p: p.matmul(0, 0, 0), ErrorCode.ILLEGAL_FIELD),
    "row_bytes_too_wide": (lambda p: p.load(0, 1, 17, 8, 0x1000), ErrorCode.ILLEGAL_FIELD),
    "cols_too_wide": (lambda p: p.store(0, 1, 5, 16, 0x2000, raw=True), ErrorCode.ILLEGAL_FIELD),
    "acc_overflow": (lambda p: p.matmul(0, 1023, 2), ErrorCode.ILLEGAL_FIELD),
    # A tile is R weight lines and a metadata line: the last one must be inside the scratchpad.
    "loadw_metadata_outside": (lambda p: p.loadw(CFG2.sp_lines - CFG2.rows),
                               ErrorCode.ILLEGAL_FIELD),
    "matmul_weights_outside": (lambda p: p.matmul(0, 0, 1, load_weights=True,
                                                  w_sp_addr=CFG2.sp_lines - CFG2.rows),
                               ErrorCode.ILLEGAL_FIELD),
    "load_pops_prev": (lambda p: p.load(0, 1, 4, 8, 0x1000, deps=("pop_prev",)),
                       ErrorCode.ILLEGAL_FIELD),
    "end_with_token": (lambda p: p.end(deps=("push_next",)), ErrorCode.ILLEGAL_FIELD),
    "misaligned_load": (lambda p: p.load(0, 1, 4, 8, 0x1004), ErrorCode.MISALIGNED),
    "misaligned_stride": (lambda p: p.store(0, 2, 4, 12, 0x2000, raw=True),
                          ErrorCode.MISALIGNED),
    "load_outside_window": (lambda p: p.load(0, 2, 4, 8, 0x3FF8), ErrorCode.DMA_WINDOW),
    "store_outside_window": (lambda p: p.store(0, 4, 4, 0x1000, 0x1000, raw=True),
                             ErrorCode.DMA_WINDOW),
    "store_into_other_core": (lambda p: p.store(0, 1, 4, 16, 0x6000, raw=True),
                              ErrorCode.DMA_WINDOW),
}


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("case", sorted(BAD_PROGRAMS))
def test_bad_instruction_halts_its_core_only_and_writes_nothing_outside_its_window(case, retime):
    check_bad_program(case, dataclasses.replace(CFG2, retime=retime))


def ulx3s_with_dsps_modelled(monkeypatch):
    """The ULX3S build of two 4x4 cores as the FPGA flow elaborates it, every DSP instance
    replaced by the MULT18X18D model: (config, platform, the instances made)."""
    made = use_mult18x18d_model(monkeypatch)
    config, _ = board_config("ulx3s-85f", cores=2, rows=4, cols=4)
    return config, board_platform("ulx3s-85f", config), made


@pytest.mark.parametrize("case", ["load_outside_window", "store_outside_window",
                                  "store_into_other_core", "misaligned_stride"])
def test_ulx3s_build_with_its_dsps_modelled_checks_windows_and_computes_exactly(monkeypatch,
                                                                                 case):
    # The ULX3S build as the FPGA flow elaborates it, every DSP instance modelled: the PEs'
    # products, the requantisers' partial products, and each dispatch's rows x stride product
    # (its 16-bit address makes both factors fit a MULT18X18D), which the window check uses.
    config, platform, made = ulx3s_with_dsps_modelled(monkeypatch)
    check_bad_program(case, config, platform)
    # Per core, counted by hand: all 16 PE products (2 x (16 + 1 + 16) DSPs fit the 156), the
    # span, and four partial products for each of the 4 requantiser lanes.
    assert (config.cores, config.requant_lanes or config.cols) == (2, 4)
    assert len(made) == 2 * (16 + 1 + 4 * 4)


def check_bad_program(case, config, platform=None):
    """Core 0 runs a legal store then BAD_PROGRAMS[case], core 1 `good_program`: core 0 must
    halt with the case's error and nothing, there or in core 1's window, be written but the
    legal results."""
    emit, code = BAD_PROGRAMS[case]
    memory = np.zeros(0x10000, np.uint8)
    rng = np.random.default_rng(1)
    memory[0x5000:0x5180] = rng.integers(0, 256, 0x180, dtype=np.uint8)
    memory[0x5180:0x5184] = [0, 1, 2, 3]
    memory[0x3000:0x4000] = 0xA5           # core 0's own data: must stay unless written legally
    bad = Program()
    bad.store(0, 1, 4, 16, 0x2000, raw=True)    # a legal store before the bad instruction
    emit(bad)
    bad.end()
    for base, prog in ((0x0, bad), (0x4000, good_program(0x4000))):
        words = np.frombuffer(prog.to_bytes(), np.uint8)
        memory[base:base + len(words)] = words
    hw = AmaranthBackend(config, platform=platform).run(memory, [0x0, 0x4000],
                                                        [WINDOW0, WINDOW1], max_cycles=20000)
    c0, c1 = hw.cores
    assert (c0.state, c0.error, c0.pc) == (CoreState.ERROR, code, 16)
    assert c1.state == CoreState.DONE
    a = memory[0x5000:0x5100].view(np.int8).reshape(-1, 8)[:4, :4]
    w = memory[0x5100:0x5180].view(np.int8).reshape(-1, 8)[:4, :4]
    got = hw.memory[0x6000:0x6040].view("<i4").reshape(4, 4)
    np.testing.assert_array_equal(got, a.astype(np.int32) @ w)
    # Outside core 0's window only core 1's output changed; inside it only the legal store.
    changed = np.flatnonzero(hw.memory != memory)
    assert set(changed) <= set(range(0x2000, 0x2010)) | set(range(0x6000, 0x6040))
    # The golden model agrees on how core 0 failed.
    gold = GoldenBackend(config).run(memory, [0x0, 0x4000], [WINDOW0, WINDOW1])
    assert (gold.cores[0].state, gold.cores[0].error, gold.cores[0].pc) == (c0.state, c0.error,
                                                                            c0.pc)


@pytest.mark.parametrize("build", ["plain", "retimed", "ulx3s"])
@pytest.mark.parametrize("op", ["load", "store"])
@pytest.mark.parametrize("beyond", [False, True], ids=["at-limit", "a-beat-beyond"])
def test_a_transfer_ending_at_the_window_limit_is_inside_and_a_beat_further_is_not(
        monkeypatch, build, op, beyond):
    # Two rows a long stride apart, the second ending exactly at the window's limit (inside)
    # or one bus beat past it (a window error, nothing written): the window check's end is
    # the first row's address + (rows - 1) x stride + the row's extent, to the byte. "ulx3s"
    # is that board's build with its DSP instances modelled (the span is one of them).
    if build == "ulx3s":
        config, platform, _ = ulx3s_with_dsps_modelled(monkeypatch)
    else:
        config, platform = dataclasses.replace(CFG2, retime=build == "retimed"), None
    beat = config.bus_bytes
    memory = np.zeros(0x10000, np.uint8)
    memory[0x1000:0x4000] = 0xA5
    first = 0x2000 + (beat if beyond else 0)
    p = Program()
    p.nop()
    if op == "load":                       # one-beat rows
        p.load(0, 2, beat, 0x4000 - beat - 0x2000, first)
        written = []
    else:                                  # raw int32 rows of 4 columns: 16 bytes
        p.store(0, 2, 4, 0x4000 - 16 - 0x2000, first, raw=True)
        written = [*range(0x2000, 0x2010), *range(0x3FF0, 0x4000)]   # if inside
    p.end()
    words = np.frombuffer(p.to_bytes(), np.uint8)
    memory[:len(words)] = words
    hw = AmaranthBackend(config, platform=platform).run(memory, [0x0], [WINDOW0],
                                                        max_cycles=20000)
    gold = GoldenBackend(config).run(memory, [0x0], [WINDOW0])
    core = hw.cores[0]
    if beyond:
        assert (core.state, core.error, core.pc) == (CoreState.ERROR, ErrorCode.DMA_WINDOW, 16)
        np.testing.assert_array_equal(hw.memory, memory)
    else:
        assert core.state == CoreState.DONE
        assert set(np.flatnonzero(hw.memory != memory)) == set(written)
    assert (gold.cores[0].state, gold.cores[0].error, gold.cores[0].pc) == (
        core.state, core.error, core.pc)
    np.testing.assert_array_equal(hw.memory, gold.memory)


@pytest.mark.parametrize("retime", [False, True])
def test_fetch_past_the_window_is_a_window_error_not_a_read(retime):
    memory = np.zeros(0x10000, np.uint8)
    prog = Program()
    prog.nop()
    code = np.frombuffer(prog.to_bytes(), np.uint8)
    memory[0x3FF0:0x4000] = code           # the last instruction of the window, and no END
    hw = AmaranthBackend(dataclasses.replace(CFG2, retime=retime)).run(memory, [0x3FF0],
                                                                       [WINDOW0])
    c = hw.cores[0]
    assert (c.state, c.error, c.pc) == (CoreState.ERROR, ErrorCode.DMA_WINDOW, 0x4000)


@pytest.mark.parametrize("retime", [False, True])
def test_misaligned_program_address_is_reported_at_start(retime):
    memory = np.zeros(0x1000, np.uint8)
    hw = AmaranthBackend(dataclasses.replace(CFG2, retime=retime)).run(
        memory, [0x8], [(0, 0x1000)], max_cycles=20000)
    assert (hw.cores[0].state, hw.cores[0].error, hw.cores[0].pc) == (
        CoreState.ERROR, ErrorCode.MISALIGNED, 0x8)


def test_memory_error_response_is_a_bus_error():
    memory = np.zeros(0x1000, np.uint8)
    prog = Program()
    prog.load(0, 1, 4, 8, 0x8000)          # inside the window but past the end of memory
    prog.end()
    memory[:32] = np.frombuffer(prog.to_bytes(), np.uint8)
    hw = AmaranthBackend(CFG2).run(memory, [0], [(0, 0x10000)])
    assert (hw.cores[0].state, hw.cores[0].error) == (CoreState.ERROR, ErrorCode.BUS_ERROR)


def test_a_run_that_never_finishes_times_out_with_the_cores_state():
    memory = np.zeros(0x1000, np.uint8)
    prog = Program()
    prog.matmul(0, 0, 1, deps=("pop_prev",))   # waits for a token nobody gives
    prog.end()
    memory[:32] = np.frombuffer(prog.to_bytes(), np.uint8)
    with pytest.raises(NPUTimeout, match=r"within 400 cycles") as info:
        AmaranthBackend(CFG2).run(memory, [0], max_cycles=400)
    (core,) = info.value.cores
    assert core["state"] == CoreState.BUSY
    assert core["counters"]["stall_dependency"] > 300
    assert "core 0: BUSY" in str(info.value)


@pytest.mark.parametrize("limit", [0xFFFF_FFFF, 0x10000])
def test_narrow_bus_clips_the_window_to_its_address_space(limit):
    # SMALL has a 16-bit address: a window limit written above 2**16 acts as 2**16, so the
    # second row of this LOAD (at 0x10000) is outside instead of wrapping around to 0x0000.
    memory = np.zeros(0x10000, np.uint8)
    prog = Program()
    prog.load(0, 2, 8, 8, 0xFFF8)
    prog.end()
    memory[:len(prog.to_bytes())] = np.frombuffer(prog.to_bytes(), np.uint8)
    hw = AmaranthBackend(SMALL).run(memory, [0], [(0, limit)], max_cycles=2000)
    gold = GoldenBackend(SMALL).run(memory, [0], [(0, 0x10000)])
    for c in (hw.cores[0], gold.cores[0]):
        assert (c.state, c.error, c.pc) == (CoreState.ERROR, ErrorCode.DMA_WINDOW, 0)


@pytest.mark.parametrize("start, code", [(0x10000, ErrorCode.DMA_WINDOW),
                                         (0x10004, ErrorCode.MISALIGNED)])
def test_narrow_bus_program_above_the_address_space_faults(start, code):
    memory = np.zeros(0x10000, np.uint8)
    hw = AmaranthBackend(SMALL).run(memory, [start], [(0, 0xFFFF_FFFF)], max_cycles=2000)
    c = hw.cores[0]
    assert (c.state, c.error) == (CoreState.ERROR, code)
    assert c.pc == (0x10000 if code == ErrorCode.DMA_WINDOW else start)


def test_one_deep_fetch_without_a_queue_keeps_the_cycle_count_of_a_one_entry_queue():
    # fetch_depth=1 offers the instruction from its shift register instead of a one-entry
    # SyncFIFOBuffered; 8785 cycles is what the queue took on this program.
    config = dataclasses.replace(SMALL, fetch_depth=1)
    rng = np.random.default_rng(1)
    a, b = random_int8(rng, (9, 20)), random_int8(rng, (20, 5))
    image = build_gemm_image(config, a, b, raw=True)
    hw = AmaranthBackend(config).run(image.memory, image.starts)
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    assert hw.cycles == 8785


# Field bounds at the edges, on SMALL (32 scratchpad lines, 64 accumulator rows): the checks
# look only at the bits a legal value can have, and must still see the high ones.
BOUND_CASES = {
    "load_last_line": (lambda p: p.load(31, 1, 8, 8, 0x1000), ErrorCode.NONE),
    "load_past_the_end": (lambda p: p.load(31, 2, 8, 8, 0x1000), ErrorCode.ILLEGAL_FIELD),
    "load_high_sp_addr": (lambda p: p.load(0x8000, 1, 8, 8, 0x1000), ErrorCode.ILLEGAL_FIELD),
    "load_high_rows": (lambda p: p.load(0, 0x8001, 8, 8, 0x1000), ErrorCode.ILLEGAL_FIELD),
    "loadw_last_tile": (lambda p: p.loadw(29), ErrorCode.NONE),
    "loadw_past_the_end": (lambda p: p.loadw(30), ErrorCode.ILLEGAL_FIELD),
    "loadw_high": (lambda p: p.loadw(0x8000 + 1), ErrorCode.ILLEGAL_FIELD),
    "matmul_last_row": (lambda p: p.matmul(31, 63, 1), ErrorCode.NONE),
    "matmul_acc_past_the_end": (lambda p: p.matmul(0, 63, 2), ErrorCode.ILLEGAL_FIELD),
    "matmul_high_acc": (lambda p: p.matmul(0, 0x4000, 1), ErrorCode.ILLEGAL_FIELD),
    "matmul_high_weights": (lambda p: p.matmul(0, 0, 1, load_weights=True, w_sp_addr=0x8000),
                            ErrorCode.ILLEGAL_FIELD),
    "store_last_row": (lambda p: p.store(63, 1, 2, 8, 0x1000, raw=True), ErrorCode.NONE),
    "store_high_rows": (lambda p: p.store(1, 0xFFFF, 2, 8, 0x1000, raw=True),
                        ErrorCode.ILLEGAL_FIELD),
}


@pytest.mark.parametrize("name", sorted(BOUND_CASES))
def test_field_bounds_at_the_edges_match_the_golden_model(name):
    emit, code = BOUND_CASES[name]
    prog = Program()
    emit(prog)
    prog.end()
    memory = np.zeros(0x10000, np.uint8)
    memory[:len(prog.to_bytes())] = np.frombuffer(prog.to_bytes(), np.uint8)
    hw = AmaranthBackend(SMALL).run(memory, [0], max_cycles=5000).cores[0]
    gold = GoldenBackend(SMALL).run(memory, [0]).cores[0]
    assert (hw.state, hw.error, hw.pc) == (gold.state, gold.error, gold.pc)
    assert hw.error == code



def test_without_zero_skipping_zero_lines_are_multiplied_with_the_same_results():
    # The iCEBreaker drops the zero flags: the same GEMM, no pass skipped, the skipped
    # passes' MACs counted as issued (and as zero-operand MACs, as before).
    config = dataclasses.replace(TINY, zero_skip=False, counter_width=32)
    skipping = dataclasses.replace(config, zero_skip=True)
    rng = np.random.default_rng(12)
    a, b = random_int8(rng, (9, 20)), random_int8(rng, (20, 5))
    a[2:7, 8:] = 0
    image = build_gemm_image(config, a, b, raw=True)
    hw, gold = run_both(config, image)
    assert hw.cores[0].state == CoreState.DONE
    np.testing.assert_array_equal(image.read_output(hw.memory), a.astype(np.int64) @ b)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    skipped = GoldenBackend(skipping).run(image.memory, image.starts).cores[0].counters
    h, g = hw.cores[0].counters, gold.cores[0].counters
    for name in ("macs", "dma_read_bytes", "dma_write_bytes", "macs_skipped",
                 "passes_skipped"):
        assert h[name] == g[name]
    assert h["passes_skipped"] == 0 and skipped["passes_skipped"] > 0
    assert h["macs"] == skipped["macs"] + skipped["passes_skipped"] * 4
    assert h["macs_skipped"] == skipped["macs_skipped"]



@pytest.mark.parametrize("raw", [True, False])
def test_icebreaker_board_config_gemm_matches_numpy_and_golden(raw):
    # Exactly what `python -m npu.synth.build --board icebreaker --rows 2 --cols 2` builds.
    config, _ = board_config("icebreaker", cores=1, rows=2, cols=2)
    rng = np.random.default_rng(21)
    a, b = random_int8(rng, (7, 12)), random_int8(rng, (12, 3))
    a[1:4, 4:] = 0
    params = {"bias": rng.integers(-3000, 3000, 3),
              "multiplier": rng.integers(1 << 28, 1 << 31, 3),
              "shift": rng.integers(-8, 2, 3), "zero_point": 1, "act_min": -128,
              "act_max": 127}
    image = build_gemm_image(config, a, b, raw=raw, params=None if raw else params)
    hw, gold = run_both(config, image)
    assert hw.cores[0].state == CoreState.DONE
    acc = a.astype(np.int64) @ b
    expected = acc if raw else requantize(acc, params["bias"], params["multiplier"],
                                          params["shift"], 1, -128, 127)
    np.testing.assert_array_equal(image.read_output(hw.memory), expected)
    np.testing.assert_array_equal(hw.memory, gold.memory)
    for name in ("macs", "dma_read_bytes", "dma_write_bytes", "macs_skipped",
                 "passes_skipped"):
        assert hw.cores[0].counters[name] == gold.cores[0].counters[name]


def _run_one_core_twice(config, first, second, starts):
    """Run core 0 from ``starts[0]`` on memory ``first``; then, as a host loading the next
    job would, overwrite the memory with ``second`` and start the core again from
    ``starts[1]``, in the same simulation (whatever the first run left in the core's
    registers stays there). Returns the memory and each run's (state, counters)."""
    dut = NPU(config)
    mem = AXI4Memory(dut.axi, size=len(first), image=first)
    runs = []

    async def host(ctx):
        bus = dut.csr
        await axil_write(ctx, bus, RegisterMap.IRQ_ENABLE, 1)
        for start, image in zip(starts, (first, second)):
            mem.mem[:] = image
            await configure_core(ctx, bus, 0, start, (0, len(image)))
            await axil_write(ctx, bus, RegisterMap.core(0, RegisterMap.CTRL), 1)
            while not ctx.get(dut.irq):
                await ctx.changed(dut.irq)
            await ctx.tick()
            await axil_write(ctx, bus, RegisterMap.IRQ_STATUS, 1)
            core = await read_core(ctx, bus, 0)
            runs.append((core["state"], core["counters"]))

    run_simulation(dut, host, processes=[mem.process], name="restart", deadline_cycles=40000)
    assert len(runs) == 2, "the runs did not finish within the simulation's deadline"
    return mem.mem.copy(), runs


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("first_run", ["stopped_by_an_error", "finished"])
def test_a_restarted_core_computes_exactly_whatever_the_last_run_left(first_run, retime):
    # The data registers (array, write-back, requantiser) are not reset at a run start: only
    # the valid bits are. The first run leaves other data in them (a stream in flight when an
    # illegal instruction stops it, or the last results of a finished GEMM); the second run
    # must give the same results and counters as a fresh core.
    config = NPUConfig(rows=4, cols=4, cores=1, retime=retime)
    rng = np.random.default_rng(31)
    params = dict(bias=rng.integers(-5000, 5000, 9), multiplier=rng.integers(1 << 28, 1 << 31, 9),
                  shift=rng.integers(-9, 2, 9), zero_point=3, act_min=-128, act_max=127)
    old_a, old_b = random_int8(rng, (24, 10)), random_int8(rng, (10, 9))
    a, b = random_int8(rng, (24, 10)), random_int8(rng, (10, 9))
    old = build_gemm_image(config, old_a, old_b, raw=False, params=params, sparse=False)
    new = build_gemm_image(config, a, b, raw=False, params=params, sparse=False)
    first = old.memory.copy()
    if first_run == "stopped_by_an_error":
        # The first STORE becomes an illegal instruction: the core stops with the tile's
        # MATMULs dispatched.
        words = old.programs[0].words
        at = old.starts[0] + 16 * [decode(w)["op"] for w in words].index(Opcode.STORE)
        first[at:at + 16] = np.frombuffer((0xF).to_bytes(16, "little"), np.uint8)
    memory, runs = _run_one_core_twice(config, first, new.memory, (old.starts[0], new.starts[0]))
    assert runs[0][0] == (CoreState.ERROR if first_run == "stopped_by_an_error"
                          else CoreState.DONE)
    state, counters = runs[1]
    assert state == CoreState.DONE
    expected = requantize(a.astype(np.int64) @ b, params["bias"], params["multiplier"],
                          params["shift"], 3, -128, 127)
    np.testing.assert_array_equal(new.read_output(memory), expected)
    fresh = AmaranthBackend(config).run(new.memory, new.starts)
    np.testing.assert_array_equal(memory, fresh.memory)
    assert counters == fresh.cores[0].counters
