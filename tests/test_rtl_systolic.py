# amaranth: UnusedElaboratable=no
# (Tests here check that constructors refuse bad arguments: the objects are never elaborated.)

import types

import numpy as np
import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from npu.rtl.config import NPUConfig
from npu.rtl.ecp5 import DSP_PRODUCTS, registered_multiply
from npu.rtl.systolic import ProcessingElement, SystolicArray, psum_bits, radix4_product
from npu.sim.amaranth_sim import run_simulation
from npu.sim.ecp5 import OnPlatform, use_mult18x18d_model
from npu.sim.streams import stream_put

SHAPES = [(1, 1), (2, 3), (4, 4), (8, 8)]


def random_int8(rng, shape):
    """Random int8 with the extremes forced in, so -128 * -128 and 127 * -128 are exercised."""
    x = rng.integers(-128, 128, size=shape, dtype=np.int64)
    flat = x.reshape(-1)
    flat[: min(4, flat.size)] = [-128, 127, -128, 127][: min(4, flat.size)]
    return x


async def load_weights(ctx, dut, w, bank):
    for i, row in enumerate(w):
        await stream_put(ctx, dut.w, {"row": i, "bank": bank, "data": [int(v) for v in row]})


def run_tiles(config, tiles, *, ready_pattern=None, name="systolic", platform=None):
    """Stream each (a, w) tile through the array, as the core does: tile t uses bank t % 2, and
    tile t+1's weights load into the other bank while tile t streams. Returns (tag, vector)."""
    dut = SystolicArray(config, tag_shape=16)
    outputs = []
    total = sum(a.shape[0] for a, _ in tiles)
    state = {"weights_loaded": 0, "tiles_issued": 0}

    async def weight_loader(ctx):
        for t, (_, w) in enumerate(tiles):
            # Bank t % 2 was last used by tile t-2: it must have been issued completely; the
            # array itself refuses the write while that tile is still in flight.
            while state["tiles_issued"] < t - 1:
                await ctx.tick()
            for i, row in enumerate(w):
                await stream_put(ctx, dut.w, {
                    "row": i, "bank": t % 2, "data": [int(v) for v in row]})
            state["weights_loaded"] = t + 1

    async def producer(ctx):
        for t, (a, _) in enumerate(tiles):
            while state["weights_loaded"] <= t:
                await ctx.tick()
            for mi, vec in enumerate(a):
                await stream_put(ctx, dut.a, {
                    "data": [int(v) for v in vec], "bank": t % 2, "tag": t * 1000 + mi})
            state["tiles_issued"] = t + 1

    async def consumer(ctx):
        rng = np.random.default_rng(7)
        while len(outputs) < total:
            ready = 1 if ready_pattern is None else int(rng.random() < ready_pattern)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                outputs.append((payload.tag, [int(v) for v in payload.data]))

    top = dut if platform is None else OnPlatform(dut, platform)
    run_simulation(top, weight_loader, producer, consumer, name=name)
    return outputs


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_array_matches_numpy_on_random_int8_tiles(rows, cols, retime):
    config = NPUConfig(rows=rows, cols=cols, retime=retime)
    rng = np.random.default_rng(rows * 100 + cols)
    tiles = [(random_int8(rng, (m, rows)), random_int8(rng, (rows, cols))) for m in (5, 1, 1, 9)]
    outputs = run_tiles(config, tiles, name=f"systolic_{rows}x{cols}")
    expected = [(t * 1000 + mi, list(a[mi] @ w))
                for t, (a, w) in enumerate(tiles) for mi in range(a.shape[0])]
    assert outputs == expected


@pytest.mark.parametrize("retime", [False, True])
def test_array_holds_results_under_backpressure(retime):
    config = NPUConfig(rows=4, cols=3, retime=retime)
    rng = np.random.default_rng(11)
    tiles = [(random_int8(rng, (12, 4)), random_int8(rng, (4, 3))) for _ in range(3)]
    outputs = run_tiles(config, tiles, ready_pattern=0.4, name="systolic_backpressure")
    expected = [list(a[mi] @ w) for a, w in tiles for mi in range(a.shape[0])]
    assert [vec for _, vec in outputs] == expected


def test_extreme_products_accumulate_without_loss():
    # -128 * -128 * 8 = 131072 needs 18 bits: the int32 partial sums must carry it exactly.
    config = NPUConfig(rows=8, cols=2)
    a = np.full((3, 8), -128)
    w = np.stack([np.full(8, -128), np.full(8, 127)], axis=1)
    outputs = run_tiles(config, [(a, w)], name="systolic_extremes")
    assert [vec for _, vec in outputs] == [[131072, -130048]] * 3


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (8, 8)])
def test_latency_is_rows_plus_cols_minus_one_or_plus_one_retimed(rows, cols, retime):
    config = NPUConfig(rows=rows, cols=cols, retime=retime)
    dut = SystolicArray(config)
    assert dut.latency == rows + cols + (1 if retime else -1)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for i in range(rows):
            await stream_put(ctx, dut.w, {"row": i, "bank": 0, "data": [1] * cols})
        # Cycle 0: the vector is accepted at the clock edge ending this cycle (retimed, the
        # cycle after the last weight row was written from the PEs' registers, two cycles
        # after it was taken: with weights of 0 before, an earlier vector would sum one
        # product fewer).
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.a.payload, {"data": [1] * rows, "bank": 0, "tag": 0})
        waited = 0
        while not (await ctx.tick().sample(dut.a.ready))[-1]:
            waited += 1
        assert waited == (2 if retime else 0)
        ctx.set(dut.a.valid, 0)
        for cycle in range(1, 4 * (rows + cols)):
            if ctx.get(dut.o.valid):
                seen["cycle"] = cycle
                seen["data"] = [int(v) for v in ctx.get(dut.o.payload.data)]
                break
            await ctx.tick()

    run_simulation(dut, tb, name="systolic_latency")
    assert seen == {"cycle": dut.latency, "data": [rows] * cols}


def test_array_rejects_a_non_config():
    with pytest.raises(TypeError, match=r"^config must be an NPUConfig, not 8$"):
        SystolicArray(8)


@pytest.mark.parametrize("retime", [False, True])
def test_weight_write_waits_while_its_bank_is_in_flight(retime):
    config = NPUConfig(rows=2, cols=2, retime=retime)
    dut = SystolicArray(config)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.a.payload, {"data": [1, 1], "bank": 0, "tag": 0})
        await ctx.tick()
        ctx.set(dut.a.valid, 0)
        ctx.set(dut.w.valid, 1)
        ctx.set(dut.w.payload, {"row": 0, "bank": 0, "data": [0, 0]})
        for _ in range(2 * dut.latency):
            seen.append((ctx.get(dut.w.ready), ctx.get(dut.bank_busy)))
            await ctx.tick()
        ctx.set(dut.w.payload, {"row": 0, "bank": 1, "data": [0, 0]})
        seen.append((ctx.get(dut.w.ready), ctx.get(dut.bank_busy)))

    run_simulation(dut, tb, name="systolic_bank_busy")
    # The vector is in flight for `latency` cycles: bank 0 refuses writes for exactly as long;
    # bank 1 is free throughout.
    assert seen == [(0, 1)] * dut.latency + [(1, 0)] * dut.latency + [(1, 0)]


@pytest.mark.parametrize("rows,cols,on_dsp", [(4, 4, 16), (3, 5, 7), (8, 8, 64)])
def test_dsp_products_match_numpy_through_a_model_of_the_mult18x18d(monkeypatch, rows, cols,
                                                                     on_dsp):
    # The simulators cannot run the ECP5 primitive: here each instance the PEs make is
    # replaced by a model of it, which checks its parameters and wiring (sign, clock, enable,
    # output bits) against the documented behaviour; some or all PEs on DSPs. (The 16 product
    # bits the PE keeps do not depend on SIGNEDA / SIGNEDB: an 8 x 8-bit product fits them.)
    made = use_mult18x18d_model(monkeypatch)
    config = NPUConfig(rows=rows, cols=cols, retime=True)
    rng = np.random.default_rng(rows * 10 + on_dsp)
    tiles = [(random_int8(rng, (m, rows)), random_int8(rng, (rows, cols))) for m in (6, 1, 9)]
    tiles.append((np.full((2, rows), -128), np.full((rows, cols), -128)))
    platform = types.SimpleNamespace(**{DSP_PRODUCTS: on_dsp})
    outputs = run_tiles(config, tiles, ready_pattern=0.7, name="systolic_dsp",
                        platform=platform)
    expected = [(t * 1000 + mi, list(a[mi] @ w))
                for t, (a, w) in enumerate(tiles) for mi in range(a.shape[0])]
    assert outputs == expected
    assert len(made) == on_dsp      # one modelled instance per PE on a DSP


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_extreme_sums_fit_the_narrow_partial_sums(rows, retime):
    # Row i's partial sums are psum_bits(i + 1) wide: the largest and the most negative sums
    # of `rows` products must come out exact, sign-extended to int32.
    config = NPUConfig(rows=rows, cols=2, retime=retime)
    a = np.array([[-128] * rows, [127] * rows, [-128] * rows])
    w = np.stack([np.full(rows, -128), np.full(rows, 127)], axis=1)
    outputs = run_tiles(config, [(a, w)], name="systolic_extreme_sums")
    assert [vec for _, vec in outputs] == [list(v) for v in a @ w]
    assert outputs[0][1] == [16384 * rows, -16256 * rows]


def test_psum_bits_hold_the_extreme_sums_and_no_fewer_do():
    for n in (1, 2, 3, 8, 16, 64):
        bits = psum_bits(n)
        assert -(1 << (bits - 1)) <= -16256 * n and 16384 * n < (1 << (bits - 1))
        assert not 16384 * n < (1 << (bits - 2))
    assert [psum_bits(n) for n in (1, 2, 4, 8, 16)] == [16, 17, 18, 19, 20]
    with pytest.raises(ValueError, match=r"^psum_width must be at least 16 \(one product\), "
                                         r"not 15$"):
        ProcessingElement(psum_width=15)
    with pytest.raises(ValueError, match=r"^product_stages must be 0, 1 or 2, not 3$"):
        ProcessingElement(product_stages=3)
    with pytest.raises(ValueError, match=r"^An ECP5 DSP product needs a product register"):
        ProcessingElement(ecp5_dsp=True)


@pytest.mark.parametrize("a, b, p, message", [
    (signed(19), signed(8), 16,
     r"^Operand a \(signed\(19\)\) does not fit a signed 18-bit DSP input$"),
    (signed(8), unsigned(18), 16,
     r"^Operand b \(unsigned\(18\)\) does not fit a signed 18-bit DSP input$"),
    (signed(18), unsigned(17), 37, r"^A MULT18X18D product has 36 bits, not 37$"),
])
def test_dsp_product_rejects_operands_the_dsp_cannot_take(a, b, p, message):
    with pytest.raises(ValueError, match=message):
        registered_multiply(Signal(a), Signal(b), Signal(p), 1)


@pytest.mark.parametrize("input_registers", [False, True])
def test_dsp_product_is_one_or_two_enabled_cycles_late(monkeypatch, input_registers):
    # registered_multiply through the MULT18X18D model: the product of the operands offered
    # one (output register) or two (input and output registers) enabled cycles before.
    made = use_mult18x18d_model(monkeypatch)
    a, b, ce, p = Signal(signed(8)), Signal(signed(8)), Signal(), Signal(signed(16))
    dut = registered_multiply(a, b, p, ce, input_registers=input_registers)
    rng = np.random.default_rng(7)
    offered = [(-128, -128), (127, -128), (-128, 127), (0, 5)] + [
        tuple(int(v) for v in rng.integers(-128, 128, 2)) for _ in range(40)]
    enables = [1, 1, 0, 1] + [int(v) for v in rng.integers(0, 2, 40)]
    seen = []

    async def bench(ctx):
        for (x, y), e in zip(offered, enables):
            ctx.set(a, x)
            ctx.set(b, y)
            ctx.set(ce, e)
            await ctx.tick()
            seen.append(ctx.get(p))

    run_simulation(dut, bench, name="dsp_product")
    # Reference: registers that load on enabled cycles, read after each edge.
    operands, product = (0, 0), 0
    expected = []
    for (x, y), e in zip(offered, enables):
        if e:
            if input_registers:
                product, operands = operands[0] * operands[1], (x, y)
            else:
                product = x * y
        expected.append(product)
    assert seen == expected
    assert made == ["MULT18X18D"]


@pytest.mark.parametrize("a_shape, b_shape, p_width", [
    (signed(8), signed(8), 16), (signed(18), signed(18), 36), (unsigned(17), unsigned(17), 34),
    (signed(18), unsigned(17), 35), (signed(5), unsigned(3), 12), (unsigned(1), signed(8), 6),
])
def test_dsp_product_of_any_operand_shape_is_exact(monkeypatch, a_shape, b_shape, p_width):
    # Through the MULT18X18D model, the product of every pair of extremes (and random
    # ones) lands in p: its low p_width bits, or sign-extended to them.
    use_mult18x18d_model(monkeypatch)
    a, b, p = Signal(a_shape), Signal(b_shape), Signal(signed(p_width))
    dut = registered_multiply(a, b, p, 1)
    rng = np.random.default_rng(11)

    def values(shape):
        lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
            else (0, (1 << shape.width) - 1)
        return [lo, hi, lo + 1, hi - 1, 0, 1] + [int(v) for v in rng.integers(lo, hi + 1, 6)]

    offered = [(x, y) for x in values(a_shape) for y in values(b_shape)]
    seen = []

    async def bench(ctx):
        for x, y in offered:
            ctx.set(a, x)
            ctx.set(b, y)
            await ctx.tick()
            seen.append(ctx.get(p))

    run_simulation(dut, bench, name="dsp_shapes")
    wrap = 1 << p_width
    assert seen == [((x * y + wrap // 2) % wrap) - wrap // 2 for x, y in offered]


def test_radix4_product_halves_sum_to_every_int8_product_and_fit_12_bits():
    # Every (a, w) pair: lo + 16 hi == a * w, with lo and hi read through wide signals so a
    # half that needed more than the 12 bits a PE registers it in would show.
    m = Module()
    a, w = Signal(signed(8)), Signal(signed(8))
    w3, wn = Signal(signed(10)), Signal(signed(9))
    lo, hi = Signal(signed(24)), Signal(signed(24))
    halves = radix4_product(a, w, w3, wn)
    m.d.comb += [lo.eq(halves[0]), hi.eq(halves[1])]
    wrong = []

    async def bench(ctx):
        for wv in range(-128, 128):
            ctx.set(w, wv)
            ctx.set(w3, 3 * wv)
            ctx.set(wn, -wv)
            for av in range(-128, 128):
                ctx.set(a, av)
                got_lo, got_hi = ctx.get(lo), ctx.get(hi)
                if got_lo + 16 * got_hi != av * wv or not all(
                        -2048 <= half < 2048 for half in (got_lo, got_hi)):
                    wrong.append((av, wv, got_lo, got_hi))

    sim = Simulator(m)          # combinational: no clock
    sim.add_testbench(bench)
    sim.run()
    assert wrong == []


# Weights with the extremes and the values around powers of two and zero.
EDGE_WEIGHTS = [-128, -127, -113, -112, -17, -16, -15, -9, -8, -1, 0, 1, 7, 8, 15, 16, 17, 112,
                127]


# (A DSP product is always registered: no DSP PE with 0 stages.)
@pytest.mark.parametrize("stages, ecp5_dsp", [(0, False), (1, False), (2, False), (1, True),
                                              (2, True)])
def test_a_pe_adds_the_product_of_every_activation_stages_cycles_later(monkeypatch, stages,
                                                                       ecp5_dsp):
    # One PE, enabled throughout: after the edge that ends cycle t, psum_out is psum_in(t) +
    # a(t - stages) x w, for every int8 activation a and the weights in EDGE_WEIGHTS (bank 1
    # holds the weight, bank 0 its negation, clamped to 127; activations alternate banks).
    if ecp5_dsp:
        use_mult18x18d_model(monkeypatch)
    dut = ProcessingElement(psum_width=20, product_stages=stages, ecp5_dsp=ecp5_dsp)
    activations = list(range(-128, 128))
    seen = {}

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for w in EDGE_WEIGHTS:
            for bank, value in ((1, w), (0, min(127, -w))):
                ctx.set(dut.w_we, 1)
                ctx.set(dut.w_bank, bank)
                ctx.set(dut.w_data, value)
                await ctx.tick()
            ctx.set(dut.w_we, 0)
            await ctx.tick().repeat(2)          # retimed, the write lands a cycle later
            for t, a in enumerate(activations + [0] * stages):
                ctx.set(dut.a_in, a)
                ctx.set(dut.a_bank_in, t % 2)
                ctx.set(dut.psum_in, t - 1000)
                await ctx.tick()
                if t >= stages:
                    seen[w, t - stages] = ctx.get(dut.psum_out) - (t - 1000)

    run_simulation(dut, bench, name="pe_stages")
    for w in EDGE_WEIGHTS:
        for t, a in enumerate(activations):
            weight = w if t % 2 else min(127, -w)
            assert seen[w, t] == a * weight, (w, a, weight)
