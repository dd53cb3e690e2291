# amaranth: UnusedElaboratable=no
"""The requantiser gateware in the Amaranth simulator against the oracle, npu.firmware.quant."""

import random
import re
import types

import numpy as np
import pytest

from npu.firmware.quant import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, requantize
from npu.rtl.config import NPUConfig
from npu.rtl.ecp5 import DSP_PARTIAL_PRODUCTS
from npu.rtl.requant import Requantiser, SequentialRequantiser, SerialRequantiser
from npu.sim.amaranth_sim import run_simulation
from npu.sim.ecp5 import OnPlatform, use_mult18x18d_model

LANES = 4
FULL = (0, -128, 127)  # zero point, act_min, act_max


def _beat(lanes_params, zp=0, act_min=-128, act_max=127):
    """One input beat from per-lane ``(acc, bias, multiplier, shift)`` tuples."""
    acc, bias, mult, shift = (list(col) for col in zip(*lanes_params))
    return {"acc": acc, "bias": bias, "multiplier": mult, "shift": shift,
            "zero_point": zp, "act_min": act_min, "act_max": act_max}


def _beats(lane_params, fields=(FULL,)):
    """Pack a flat list of lane tuples into beats of LANES, cycling through beat fields."""
    lane_params = list(lane_params)
    lane_params += [(0, 0, 0, 0)] * (-len(lane_params) % LANES)
    return [_beat(lane_params[i:i + LANES], *fields[(i // LANES) % len(fields)])
            for i in range(0, len(lane_params), LANES)]


def _expected(beat, rounding):
    if min(beat["multiplier"]) >= 0:
        return requantize(np.array(beat["acc"]), np.array(beat["bias"]),
                          np.array(beat["multiplier"]), np.array(beat["shift"]),
                          beat["zero_point"], beat["act_min"], beat["act_max"],
                          rounding).tolist()
    # A negative multiplier never comes from the host (requantize refuses it), but it is the
    # only way to reach SRDHM's INT32_MIN * INT32_MIN saturation: use the scalar rule.
    out = []
    for acc, bias, mult, shift in zip(beat["acc"], beat["bias"], beat["multiplier"],
                                      beat["shift"]):
        x = (acc + bias - INT32_MIN) % 2**32 + INT32_MIN
        y = multiply_by_quantized_multiplier(x, mult, shift, rounding) + beat["zero_point"]
        out.append(min(max(y, beat["act_min"]), beat["act_max"]))
    return out


def _run(rounding, beats, *, valid_prob=1.0, ready_prob=1.0, seed=0, dut=None,
         cycles_per_beat=1, retime=False, stall=True, platform=None):
    """Stream ``beats`` through a Requantiser (or ``dut``, with LANES channels per beat);
    return outputs and the cycles of each handshake.

    Also checks the stream rule on ``o``: a stalled output holds its payload until taken.
    """
    if dut is None:
        dut = Requantiser(NPUConfig(rounding=rounding, retime=retime), lanes=LANES, stall=stall)
    rng = random.Random(seed)
    got, accepted_at, delivered_at = [], [], []

    async def testbench(ctx):
        sent = cycle = 0
        offering = False
        stalled = None
        while len(got) < len(beats):
            if not offering and sent < len(beats) and rng.random() < valid_prob:
                offering = True  # once offered, a beat stays on i until it is taken
                ctx.set(dut.i.payload, beats[sent])
            ctx.set(dut.i.valid, offering)
            ready = rng.random() < ready_prob
            ctx.set(dut.o.ready, ready)
            taken_in = offering and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                payload = [ctx.get(dut.o.payload[k]) for k in range(LANES)]
                if stalled is not None:
                    assert payload == stalled, f"o.payload changed while stalled (cycle {cycle})"
                if ready:
                    got.append(payload)
                    delivered_at.append(cycle)
                stalled = None if ready else payload
            else:
                assert stalled is None, f"o.valid dropped while stalled (cycle {cycle})"
            if taken_in:
                accepted_at.append(cycle)
            await ctx.tick()
            if taken_in:
                sent += 1
                offering = False
            cycle += 1

    limit = int(len(beats) * cycles_per_beat / min(valid_prob, ready_prob) * 3) + 50
    top = dut if platform is None else OnPlatform(dut, platform)
    run_simulation(top, testbench, name=f"requant_{rounding}", deadline_cycles=limit)
    assert len(got) == len(beats), f"{len(got)} of {len(beats)} beats came out in {limit} cycles"
    return dut, got, accepted_at, delivered_at


def _check(rounding, beats, **kwargs):
    _, got, _, _ = _run(rounding, beats, **kwargs)
    for n, (beat, out) in enumerate(zip(beats, got)):
        assert out == _expected(beat, rounding), f"beat {n}: {beat}"


def _random_lane(rng):
    bits = rng.randint(0, 31)
    acc = rng.randint(-2**bits, 2**bits - 1)
    bias = rng.choice([0, rng.randint(-2**bits, 2**bits - 1), rng.randint(INT32_MIN, INT32_MAX)])
    mult = rng.choice([rng.randint(2**30, INT32_MAX)] * 6 + [0, rng.randint(0, 2**30),
                                                             INT32_MAX])
    if rng.random() < 0.5:
        shift = rng.randint(-31, 30)
    else:  # land near the int8 range so that the rounding is visible in the output
        shift = min(30, max(-31, 7 - bits + rng.randint(-2, 1)))
    return acc, bias, mult, shift


def _random_fields(rng):
    zp = rng.randint(-128, 127)
    kind = rng.random()
    if kind < 0.5:
        return zp, -128, 127
    if kind < 0.75:
        return zp, zp, 127  # fused ReLU
    lo, hi = sorted(rng.randint(-128, 127) for _ in range(2))
    return zp, lo, hi


def _random_beats(seed, count):
    rng = random.Random(seed)
    return [_beat([_random_lane(rng) for _ in range(LANES)], *_random_fields(rng))
            for _ in range(count)]


def _edge_lanes():
    lanes = []
    mults = (2**30, INT32_MAX, 1234567891, 2**30 + 1)
    # Every shift, with the extreme accumulators and ones that land next to +-100.5 in int8.
    for shift in range(-31, 31):
        for mult in mults:
            near = round(100.5 * 2**(31 - shift) / mult)
            for acc in (INT32_MIN, INT32_MAX, 0, -1, 1, near, -near):
                lanes.append((max(INT32_MIN, min(INT32_MAX, acc)), 0, mult, shift))
    # Exact ties of RoundingDivideByPOT (double) and of the single-rounding shift: M = 0.5,
    # shift -e, acc = (2k+1) * 2**e, so acc * M * 2**shift = (2k+1) / 2.
    for e in range(1, 31):
        for k in (0, -1, 3, -4, 50, -51):
            acc = (2 * k + 1) * 2**e
            if INT32_MIN <= acc <= INT32_MAX:
                lanes.append((acc, 0, 2**30, -e))
    # int32 wrap of acc + bias, and of double rounding's left shift.
    lanes += [(INT32_MAX, 1, 2**30, -24), (INT32_MIN, -1, 2**30, -24),
              (2**30, 0, 2**30, 1), (3, 0, INT32_MAX, 30), (-3, 0, INT32_MAX, 29)]
    # Saturation at both ends (single rounding saturates int32 itself here).
    lanes += [(INT32_MAX, 0, INT32_MAX, 30), (INT32_MIN, 0, INT32_MAX, 30),
              (INT32_MAX, 0, INT32_MAX, 0), (INT32_MIN, 0, INT32_MAX, 0),
              (INT32_MIN, 0, INT32_MAX, -31), (INT32_MAX, 0, INT32_MAX, -31),
              (INT32_MIN, 0, 0, 0), (INT32_MAX, 0, 0, 30)]
    # SRDHM(INT32_MIN, INT32_MIN) -> INT32_MAX, seen through the extreme right shifts.
    lanes += [(INT32_MIN, 0, INT32_MIN, s) for s in (0, -1, -24, -30, -31)]
    return lanes


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantiser_matches_oracle_on_edge_cases(rounding, retime):
    fields = [FULL, (0, 0, 127), (-128, -128, 127), (127, -128, 127), (-3, -20, 20),
              (5, 5, 5)]
    beats = _beats(_edge_lanes(), fields)
    covered = {s for beat in beats for s in beat["shift"]}
    assert covered >= set(range(-31, 31))
    _check(rounding, beats, retime=retime)


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantiser_matches_oracle_on_random_beats(rounding, retime):
    _check(rounding, _random_beats(seed=11, count=300), retime=retime)


@pytest.mark.parametrize("retime", [False, True])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantiser_backpressure_loses_and_duplicates_nothing(rounding, retime):
    # Distinct accumulators per beat, so that a lost or repeated beat cannot go unnoticed.
    beats = _random_beats(seed=12, count=150)
    for n, beat in enumerate(beats):
        beat["acc"][0], beat["bias"][0], beat["multiplier"][0], beat["shift"][0] = n, 0, 2**30, 1
        beat["zero_point"], beat["act_min"], beat["act_max"] = -128, -128, 127
    _, got, accepted, delivered = _run(rounding, beats, valid_prob=0.7, ready_prob=0.5, seed=3,
                                       retime=retime)
    assert len(accepted) == len(set(accepted)) == len(beats)
    assert [out[0] for out in got] == [n - 128 for n in range(len(beats))]
    assert got == [_expected(beat, rounding) for beat in beats]
    # The random stalls did happen: the output was not taken every cycle it was valid.
    assert delivered[-1] - delivered[0] > len(beats) + 20


@pytest.mark.parametrize("stall", [True, False])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_dsp_partial_products_match_the_oracle_through_a_model_of_the_mult18x18d(
        monkeypatch, rounding, stall):
    # The ECP5 build's retimed requantiser: its four partial products per lane are
    # MULT18X18Ds registered inside the DSP (simulated by a model of the primitive that checks
    # their parameters and wiring), at the edge cases, with and without stalls. Negative
    # multipliers never come from the host, but the rule is defined for them, and only they
    # make the multiplier's high half negative: the one operand whose SIGNEDB matters.
    made = use_mult18x18d_model(monkeypatch)
    platform = types.SimpleNamespace(**{DSP_PARTIAL_PRODUCTS: True})
    fields = [FULL, (0, 0, 127), (-3, -20, 20)]
    rng = random.Random(14)
    negative = [(rng.randint(INT32_MIN, INT32_MAX), 0, rng.randint(INT32_MIN, -1),
                 rng.randint(-31, 30)) for _ in range(8 * LANES)]
    beats = (_beats(_edge_lanes(), fields) + _beats(negative, fields)
             + _random_beats(seed=13, count=200))
    _check(rounding, beats, retime=True, stall=stall, platform=platform,
           ready_prob=0.6 if stall else 1.0)
    assert made == ["MULT18X18D"] * 4 * LANES


@pytest.mark.parametrize("stall", [True, False])
@pytest.mark.parametrize("retime, latency", [(False, 5), (True, 11)])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantiser_latency_is_exact_and_throughput_one_beat_per_cycle(rounding, retime,
                                                                          latency, stall):
    beats = _random_beats(seed=13, count=20)
    dut, got, accepted, delivered = _run(rounding, beats, retime=retime, stall=stall,
                                         valid_prob=1.0 if stall else 0.6, seed=5)
    assert dut.latency == latency
    if stall:
        assert accepted == list(range(len(beats)))
    else:
        # Gaps in the input (and nothing else) make gaps in the output.
        assert accepted != list(range(len(beats)))
    assert delivered == [n + dut.latency for n in accepted]
    assert got == [_expected(beat, rounding) for beat in beats]


@pytest.mark.parametrize("lanes", [1, 2])
def test_serial_requantiser_matches_oracle_under_backpressure(lanes):
    # LANES channels through `lanes` lanes: LANES / lanes cycles per beat, nothing lost,
    # duplicated or mixed up between the groups of a beat.
    config = NPUConfig(cols=LANES, rounding="double", requant_lanes=lanes)
    beats = _random_beats(seed=15, count=60)
    for n, beat in enumerate(beats):
        beat["acc"][0], beat["bias"][0], beat["multiplier"][0], beat["shift"][0] = n, 0, 2**30, 1
    dut = SerialRequantiser(config)
    _, got, accepted, _ = _run("double", beats, valid_prob=0.7, ready_prob=0.6, seed=4, dut=dut)
    assert got == [_expected(beat, "double") for beat in beats]
    assert len(accepted) == len(set(accepted)) == len(beats)


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_serial_requantiser_takes_a_beat_every_cols_over_lanes_cycles(lanes):
    config = NPUConfig(cols=LANES, rounding="single", requant_lanes=lanes)
    dut = SerialRequantiser(config)
    beats = _random_beats(seed=16, count=12)
    _, got, accepted, delivered = _run("single", beats, dut=dut)
    groups = LANES // lanes
    assert dut.groups == groups and dut.latency == 5 + groups - 1
    assert accepted == [groups * n + groups - 1 for n in range(len(beats))]
    assert delivered == [groups * n + dut.latency for n in range(len(beats))]
    assert got == [_expected(beat, "single") for beat in beats]


def test_requantiser_fills_while_output_is_not_ready():
    # The pipeline advances whenever o holds nothing, so with o.ready low it still takes exactly
    # `latency` beats (one per stage) before it stalls, and the first shows up on time.
    dut = Requantiser(NPUConfig(), lanes=LANES)
    beats = _random_beats(seed=14, count=dut.latency + 3)
    accepted, valid_from = [], []

    async def testbench(ctx):
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        sent = 0
        for cycle in range(3 * dut.latency):
            ctx.set(dut.i.payload, beats[sent])
            taken = ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                valid_from.append(cycle)
            await ctx.tick()
            if taken:
                accepted.append(cycle)
                sent += 1

    run_simulation(dut, testbench, name="requant_fill")
    assert accepted == list(range(dut.latency))
    assert valid_from[0] == dut.latency
    assert valid_from == list(range(dut.latency, 3 * dut.latency))


def test_requantiser_lanes_default_to_config_columns():
    dut = Requantiser(NPUConfig(cols=6, rounding="single"))
    assert dut.lanes == 6 and dut.rounding == "single"
    assert dut.i.payload.shape() == Requantiser.input_layout(6)
    assert dut.o.payload.shape() == Requantiser.output_layout(6)


@pytest.mark.parametrize(("args", "kwargs", "exc", "message"), [
    ((None,), {}, TypeError, "Requantiser config must be an NPUConfig, not None"),
    ((NPUConfig(),), {"lanes": 0}, ValueError,
     "Requantiser lanes must be a positive integer, not 0"),
    ((NPUConfig(),), {"lanes": 2.0}, TypeError,
     "Requantiser lanes must be a positive integer, not 2.0"),
    ((NPUConfig(),), {"lanes": True}, TypeError,
     "Requantiser lanes must be a positive integer, not True"),
])
def test_requantiser_rejects_bad_constructor_arguments(args, kwargs, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        Requantiser(*args, **kwargs)


def test_requantiser_lanes_is_keyword_only():
    with pytest.raises(TypeError):
        Requantiser(NPUConfig(), 4)


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_sequential_requantiser_matches_oracle_on_edge_cases(rounding):
    # Every shift, the int32 wraps, the ties of both roundings and SRDHM's saturating case,
    # one channel at a time through the shift-and-add datapath.
    config = NPUConfig(cols=LANES, rounding=rounding, requant_sequential=True)
    fields = [FULL, (0, 0, 127), (-128, -128, 127), (127, -128, 127), (-3, -20, 20)]
    beats = _beats(_edge_lanes(), fields)
    _, got, _, _ = _run(rounding, beats, dut=SequentialRequantiser(config),
                        cycles_per_beat=LANES * 110)
    for n, (beat, out) in enumerate(zip(beats, got)):
        assert out == _expected(beat, rounding), f"beat {n}: {beat}"


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_sequential_requantiser_matches_oracle_under_backpressure(rounding):
    config = NPUConfig(cols=LANES, rounding=rounding, requant_sequential=True)
    beats = _random_beats(seed=17, count=40)
    for n, beat in enumerate(beats):
        beat["acc"][0], beat["bias"][0], beat["multiplier"][0], beat["shift"][0] = n, 0, 2**30, 1
    _, got, accepted, _ = _run(rounding, beats, valid_prob=0.7, ready_prob=0.5, seed=5,
                               dut=SequentialRequantiser(config), cycles_per_beat=LANES * 110)
    assert got == [_expected(beat, rounding) for beat in beats]
    assert len(accepted) == len(set(accepted)) == len(beats)
