"""The quantisation oracle (npu.firmware.quant) against values worked out by hand from the TFLite
rules (REFERENCE.md, "INT8 quantisation semantics"), and its vectorised epilogue against its own
scalar rules."""

import math
import random
import re
from fractions import Fraction

import numpy as np
import pytest

from npu.firmware.quant import (
    INT32_MAX,
    INT32_MIN,
    choose_activation_params,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantize_tensor,
    quantize_weights_per_channel,
    requant_params,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

srdhm = saturating_rounding_doubling_high_mul
rdbp = rounding_divide_by_pot
mbqm = multiply_by_quantized_multiplier


# --------------------------------------------------------------------------------------------
# Hand-worked values

@pytest.mark.parametrize(("a", "b", "expected"), [
    # The one overflow: special-cased to INT32_MAX.
    (INT32_MIN, INT32_MIN, INT32_MAX),
    # ab = (2**31-1)**2 = 2**62 - 2**32 + 1 >= 0, nudge 2**30:
    # (2**62 - 2**32 + 2**30 + 1) / 2**31 = 2**31 - 2 + 0.5 + 2**-31 -> trunc 2**31 - 2.
    (INT32_MAX, INT32_MAX, 2**31 - 2),
    # ab = 2**60, nudge 2**30: 2**29 + 0.5 -> trunc 2**29.
    (2**30, 2**30, 2**29),
    # ab = 2**30 (+0.5 in units of 2**31), nudge 2**30: 2**31 / 2**31 = 1.
    (2**30, 1, 1),
    # ab = -2**30 (-0.5), nudge 1 - 2**30: (-2**31 + 1) / 2**31 = -0.99.. -> trunc 0.
    # So gemmlowp sends the negative tie up (toward +inf), not away from zero.
    (-2**30, 1, 0),
    # ab = -2**30 - 1, nudge 1 - 2**30: -2**31 / 2**31 = -1 exactly.
    (-2**30 - 1, 1, -1),
    # ab = -2**62 + 2**31, nudge 1 - 2**30: sum / 2**31 = -2**31 + 1 - 0.5 + 2**-31
    # = -2147483647.4999... -> C++ truncation gives -2147483647 (Python's // would give -2**31).
    (INT32_MIN, INT32_MAX, -2**31 + 1),
    # ab = 0: nudge 2**30, 2**30 / 2**31 = 0.5 -> trunc 0.
    (0, INT32_MIN, 0),
])
def test_srdhm_matches_hand_worked_values(a, b, expected):
    assert srdhm(a, b) == expected


@pytest.mark.parametrize(("x", "exponent", "expected"), [
    # mask = 1, rem = (-5) & 1 = 1, threshold = (1 >> 1) + 1 = 1, -5 >> 1 = -3, 1 > 1 false
    # -> -3: -2.5 rounds away from zero.
    (-5, 1, -3),
    # mask = 1, rem = 1, threshold = 0, 5 >> 1 = 2, 1 > 0 -> 3: 2.5 rounds away from zero.
    (5, 1, 3),
    # -1.5: mask = 3, rem = (-6) & 3 = 2, threshold = 1 + 1 = 2, -6 >> 2 = -2, 2 > 2 false -> -2.
    (-6, 2, -2),
    # -1.25: rem = (-5) & 3 = 3, threshold 2, -5 >> 2 = -2, 3 > 2 -> -1.
    (-5, 2, -1),
    # -1.75: rem = (-7) & 3 = 1, threshold 2, -7 >> 2 = -2, 1 > 2 false -> -2.
    (-7, 2, -2),
    # exponent 0: mask 0, rem 0, threshold 0 or 1, 0 > threshold false -> x unchanged.
    (-7, 0, -7),
    (7, 0, 7),
    # mask = 2**31 - 1, rem = INT32_MAX, threshold = 2**30 - 1, INT32_MAX >> 31 = 0 -> 1.
    (INT32_MAX, 31, 1),
    # rem = INT32_MIN & (2**31 - 1) = 0, threshold = 2**30, INT32_MIN >> 31 = -1 -> -1.
    (INT32_MIN, 31, -1),
    # -0.5: rem = (-2**30) & (2**31 - 1) = 2**30, threshold = 2**30 - 1 + 1 = 2**30,
    # -2**30 >> 31 = -1, 2**30 > 2**30 false -> -1 (away from zero).
    (-2**30, 31, -1),
    # +0.5: rem = 2**30, threshold = 2**30 - 1, 2**30 >> 31 = 0 -> 1.
    (2**30, 31, 1),
])
def test_rounding_divide_by_pot_matches_hand_worked_values(x, exponent, expected):
    assert rdbp(x, exponent) == expected


@pytest.mark.parametrize(("x", "m", "shift", "double", "single"), [
    # M = 2**30 is 0.5. double: SRDHM(100, 2**30) = (100 * 2**30 + 2**30) / 2**31 = 50.5 ->
    # trunc 50; RDBP(50, 0) = 50. single: total 31, (100 * 2**30 + 2**30) >> 31 = 50.
    (100, 2**30, 0, 50, 50),
    # -100 * 0.5: double: (-100 * 2**30 + 1 - 2**30) / 2**31 = -50.5 + 2**-31 -> trunc -50.
    # single: (-100 * 2**30 + 2**30) >> 31 = -99 * 2**30 >> 31 = floor(-49.5) = -50.
    (-100, 2**30, 0, -50, -50),
    # -10 * 0.5 * 2**-1 = -2.5. double: SRDHM(-10, 2**30) = (-11 * 2**30 + 1) / 2**31
    # = -5.5 + tiny -> trunc -5; RDBP(-5, 1) = -3 (away from zero).
    # single: total 32, (-10 * 2**30 + 2**31) >> 32 = -8 * 2**30 >> 32 = -2 (tie goes up).
    (-10, 2**30, -1, -3, -2),
    # double: x * 2**1 = 2**31 wraps to INT32_MIN; SRDHM(INT32_MIN, 2**30)
    # = (-2**61 + 1 - 2**30) / 2**31 = -2**30 - 0.5 + tiny -> trunc -2**30.
    # single: total 30, (2**60 + 2**29) >> 30 = 2**30 (no wrap: 64-bit product).
    (2**30, 2**30, 1, -2**30, 2**30),
    # single saturates: total 1, ((2**31-1)**2 + 1) >> 1 = 2**61 - 2**31 + 1 -> INT32_MAX.
    # double: INT32_MAX * 2**30 = 2**61 - 2**30 wraps to -2**30; SRDHM(-2**30, 2**31 - 1):
    # ab = -2**61 + 2**30, nudge 1 - 2**30: (-2**61 + 1) / 2**31 = -2**30 + 2**-31
    # -> trunc toward zero -2**30 + 1.
    (INT32_MAX, 2**31 - 1, 30, -2**30 + 1, INT32_MAX),
    # single: (-2**31 * (2**31 - 1) + 1) >> 1 = (-2**62 + 2**31 + 1) >> 1 = -2**61 + 2**30
    # -> INT32_MIN. double: INT32_MIN * 2**30 wraps to 0 -> SRDHM 0 -> 0.
    (INT32_MIN, 2**31 - 1, 30, 0, INT32_MIN),
    # shift -31, M = 2**30: x * 2**-32. double: SRDHM(INT32_MIN, 2**30) = -2**30 (as above);
    # RDBP(-2**30, 31) = -1 (-0.5 away from zero). single: total 62,
    # (-2**61 + 2**61) >> 62 = 0 (tie goes up).
    (INT32_MIN, 2**30, -31, -1, 0),
])
def test_multiply_by_quantized_multiplier_matches_hand_worked_values(x, m, shift, double,
                                                                     single):
    assert mbqm(x, m, shift, "double") == double
    assert mbqm(x, m, shift, "single") == single


@pytest.mark.parametrize(("real", "expected"), [
    (0.0, (0, 0)),
    # frexp(0.5) = (0.5, 0): M = 0.5 * 2**31 = 2**30.
    (0.5, (2**30, 0)),
    # frexp(1.0) = (0.5, 1).
    (1.0, (2**30, 1)),
    # frexp(0.75) = (0.75, 0): M = 3 * 2**29.
    (0.75, (3 * 2**29, 0)),
    # 0.1 = 0.8 * 2**-3; 0.8 * 2**31 = 1717986918.4 (the double 0.1 is slightly above 0.1,
    # 1717986918.40000001) -> 1717986918.
    (0.1, (1717986918, -3)),
    # q = 0.5 + 2**-32: q * 2**31 = 2**30 + 0.5 exactly -> half away from zero: 2**30 + 1
    # (round half to even would give 2**30).
    (0.5 + 2**-32, (2**30 + 1, 0)),
    # q = 1 - 2**-40, shift 0: q * 2**31 = 2**31 - 2**-9 rounds to 2**31 -> (2**30, 1).
    (1 - 2**-40, (2**30, 1)),
    # 2**-32 = 0.5 * 2**-31: shift -31 is still allowed.
    (2**-32, (2**30, -31)),
    # 2**-33 = 0.5 * 2**-32: shift < -31 -> flushed to (0, 0).
    (2**-33, (0, 0)),
])
def test_quantize_multiplier_matches_hand_worked_values(real, expected):
    assert quantize_multiplier(real) == expected


def test_requantize_hand_worked_channels_saturate_at_both_ends():
    # M = 2**30 (x0.5), shift 0, zero point 3: 100 -> 50 + 3; -100 -> -50 + 3 (see the MBQM
    # cases above); 1000 -> 503 -> 127; -1000 -> -497 -> -128.
    y = requantize(np.array([100, -100, 1000, -1000]), 0, 2**30, 0, 3)
    assert y.dtype == np.int8
    assert y.tolist() == [53, -47, 127, -128]


def test_requantize_acc_plus_bias_wraps_int32():
    # INT32_MAX + 1 wraps to INT32_MIN; SRDHM(INT32_MIN, 2**30) = -2**30;
    # RDBP(-2**30, 24) = -2**6 = -64. (Without the wrap it would be +64.)
    assert requantize(np.array([INT32_MAX]), 1, 2**30, -24, 0).tolist() == [-64]


def test_requantize_per_channel_parameters_and_relu_clamp():
    acc = np.array([[40, 40, -40], [7, -7, 1000]])
    bias = np.array([2, 0, 0])
    mult = np.array([2**30, 2**30, 2**30])
    shift = np.array([0, 1, -1])
    # Channel 0: (40 + 2) * 0.5 = 21; channel 1: 40 * 0.5 * 2 = 40; channel 2: -40 / 4 = -10.
    # Row 1: 9 * 0.5 = 4.5 -> SRDHM 4.5 + nudge -> trunc (9 * 2**30 + 2**30) / 2**31 = 5;
    # -7 * 0.5 * 2 = -7; 1000 / 4 = 250.
    # Zero point -5, ReLU: act_min = -5 so -10 - 5 and -7 - 5 clamp to -5; 250 - 5 -> 127.
    y = requantize(acc, bias, mult, shift, -5, act_min=-5, act_max=127)
    assert y.tolist() == [[16, 35, -5], [0, -5, 127]]


# --------------------------------------------------------------------------------------------
# Identities the rules satisfy (each from exact rational arithmetic, not from the code)

def test_srdhm_is_round_half_up_of_the_exact_product():
    rng = random.Random(1)
    for _ in range(2000):
        a = rng.randint(INT32_MIN, INT32_MAX)
        b = rng.choice([rng.randint(INT32_MIN, INT32_MAX), 2**30, -2**30, 1, -1, 3])
        if a == b == INT32_MIN:
            continue
        exact = Fraction(a * b, 2**31)
        assert srdhm(a, b) == math.floor(exact + Fraction(1, 2)), (a, b)


def test_rounding_divide_by_pot_rounds_half_away_from_zero():
    rng = random.Random(2)
    for _ in range(2000):
        x = rng.randint(INT32_MIN, INT32_MAX) >> rng.randint(0, 31)
        e = rng.randint(0, 31)
        exact = Fraction(x, 2**e)
        away = math.floor(abs(exact) + Fraction(1, 2))
        assert rdbp(x, e) == (away if exact >= 0 else -away), (x, e)


def test_quantized_multiplier_reproduces_the_real_multiplier_within_one_lsb():
    rng = random.Random(3)
    for _ in range(500):
        real = 10 ** rng.uniform(-6, 0)
        m, shift = quantize_multiplier(real)
        x = rng.randint(-2**24, 2**24)
        for rounding in ("double", "single"):
            assert abs(mbqm(x, m, shift, rounding) - x * real) <= 1, (real, x, rounding)


def test_double_and_single_rounding_differ_by_at_most_one_lsb_and_do_differ():
    rng = random.Random(4)
    differing = 0
    for _ in range(3000):
        shift = rng.randint(-31, 30)
        m = rng.randint(2**30, 2**31 - 1)
        x = rng.randint(INT32_MIN, INT32_MAX) >> rng.randint(0, 31)
        if not INT32_MIN <= x * 2**max(shift, 0) <= INT32_MAX:
            continue  # double rounding's int32 left shift wraps: not a rounding difference
        d, s = mbqm(x, m, shift, "double"), mbqm(x, m, shift, "single")
        if s in (INT32_MIN, INT32_MAX):
            continue  # single rounding saturated
        assert abs(d - s) <= 1, (x, m, shift)
        differing += d != s
    assert differing > 0


# --------------------------------------------------------------------------------------------
# The vectorised epilogue against the scalar rules

def _scalar_requantize(acc, bias, mult, shift, zp, lo, hi, rounding):
    x = (acc + bias + 2**31) % 2**32 - 2**31
    return min(max(mbqm(x, mult, shift, rounding) + zp, lo), hi)


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_matches_scalar_rules_on_random_data(rounding):
    rng = np.random.default_rng(5)
    rows, n = 400, 8
    bits = rng.integers(0, 32, size=(rows, n))
    acc = rng.integers(INT32_MIN, INT32_MAX, size=(rows, n), endpoint=True) >> (31 - bits)
    acc[0] = [INT32_MIN, INT32_MAX, 0, -1, 1, INT32_MIN, INT32_MAX, -2**30]
    bias = rng.integers(-2**20, 2**20, size=n)
    bias[0] = INT32_MAX  # makes acc + bias wrap
    mult = rng.integers(2**30, 2**31 - 1, size=n, endpoint=True)
    mult[1], mult[2] = 0, 2**31 - 1
    shift = rng.integers(-31, 30, size=n, endpoint=True)
    shift[3], shift[4] = -31, 30
    for zp, lo, hi in [(0, -128, 127), (-7, -7, 127), (100, -20, 120)]:
        y = requantize(acc, bias, mult, shift, zp, lo, hi, rounding)
        expected = [[_scalar_requantize(int(acc[r, c]), int(bias[c]), int(mult[c]),
                                        int(shift[c]), zp, lo, hi, rounding)
                     for c in range(n)] for r in range(rows)]
        assert y.tolist() == expected


def test_requantize_matches_scalar_rules_near_the_int8_range():
    # Random data mostly saturates; here the shifts are chosen so that outputs land in int8 and
    # the rounding actually shows.
    rng = random.Random(6)
    for rounding in ("double", "single"):
        for _ in range(1500):
            bits = rng.randint(0, 31)
            acc = rng.randint(-2**bits, 2**bits - 1)
            mult = rng.randint(2**30, 2**31 - 1)
            shift = min(30, max(-31, 7 - bits + rng.randint(-2, 1)))
            zp = rng.randint(-128, 127)
            got = requantize(np.array([acc]), 0, mult, shift, zp, rounding=rounding)[0]
            assert got == _scalar_requantize(acc, 0, mult, shift, zp, -128, 127, rounding)


# --------------------------------------------------------------------------------------------
# Host-side helpers

def test_quantize_tensor_rounds_half_away_from_zero_and_saturates():
    # x / 0.5 = 0.5, -0.5, 1.5, 2000, -2000 -> 1, -1, 2, 127, -128.
    q = quantize_tensor([0.25, -0.25, 0.75, 1000.0, -1000.0], 0.5, 0)
    assert q.dtype == np.int8
    assert q.tolist() == [1, -1, 2, 127, -128]
    # With zero point -128 (a ReLU output): 0 -> -128, 0.5 / 0.5 = 1 -> -127.
    assert quantize_tensor([0.0, 0.5, -3.0], 0.5, -128).tolist() == [-128, -127, -128]


def test_choose_activation_params_covers_the_range_and_represents_zero():
    # [0, 6.375]: scale 6.375 / 255 = 0.025, zero point -128 - 0 / scale = -128.
    scale, zp = choose_activation_params(0.0, 6.375)
    assert scale == pytest.approx(0.025) and zp == -128
    # [2, 5] is widened to [0, 5].
    scale, zp = choose_activation_params(2.0, 5.0)
    assert scale == pytest.approx(5 / 255) and zp == -128
    # [-1.5, 4]: scale 5.5 / 255; zero point -128 + 1.5 * 255 / 5.5 = -128 + 69.545 = -58.45
    # -> -58. Zero maps exactly to it; the ends to round(-69.55) - 58 = -128 and
    # round(185.45) - 58 = 127.
    scale, zp = choose_activation_params(-1.5, 4.0)
    assert scale == pytest.approx(5.5 / 255)
    assert zp == -58
    assert quantize_tensor([0.0, -1.5, 4.0], scale, zp).tolist() == [-58, -128, 127]
    assert choose_activation_params(0.0, 0.0) == (1.0, 0)


def test_quantize_weights_per_channel_is_symmetric_with_one_scale_per_channel():
    # Channel 0: max 127 -> scale 1: 127, -63.5 -> -64, 31.75 -> 32, 0.3 -> 0.
    # Channel 1: max 254 -> scale 2: -127, 0.5 -> 1, -1.5 -> -2, 0.
    # Channel 2: all zero -> scale 1.
    w = np.array([[127.0, -63.5, 31.75, 0.3], [-254.0, 1.0, -3.0, 0.0], [0.0] * 4])
    q, scales = quantize_weights_per_channel(w, axis=0)
    assert q.dtype == np.int8
    assert q.tolist() == [[127, -64, 32, 0], [-127, 1, -2, 0], [0, 0, 0, 0]]
    assert scales.tolist() == [1.0, 2.0, 1.0]
    # The channel axis can be any axis, e.g. the last one of an HWIO kernel.
    q_t, scales_t = quantize_weights_per_channel(w.T.reshape(1, 4, 3), axis=-1)
    assert q_t.reshape(4, 3).T.tolist() == q.tolist()
    assert scales_t.tolist() == scales.tolist()


def test_requant_params_quantizes_each_channel_multiplier():
    # 0.5 * 0.25 / 0.125 = 1.0 -> (2**30, 1); 0.5 * 1.0 / 0.125 = 4.0 -> (2**30, 3).
    m, shift = requant_params(0.5, [0.25, 1.0], 0.125)
    assert m.tolist() == [2**30, 2**30]
    assert shift.tolist() == [1, 3]


# --------------------------------------------------------------------------------------------
# Validation

@pytest.mark.parametrize(("real", "exc", "message"), [
    (-0.5, ValueError, "real must be finite and non-negative, not -0.5"),
    (math.inf, ValueError, "real must be finite and non-negative, not inf"),
    (math.nan, ValueError, "real must be finite and non-negative, not nan"),
    ("0.5", TypeError, "real must be a real number, not '0.5'"),
])
def test_quantize_multiplier_rejects_bad_reals(real, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        quantize_multiplier(real)


_GOOD = {"acc": np.array([1, 2]), "bias": 0, "multiplier": 2**30, "shift": 0,
         "out_zero_point": 0, "act_min": -128, "act_max": 127, "rounding": "double"}


@pytest.mark.parametrize(("change", "exc", "message"), [
    ({"multiplier": -1}, ValueError, "multiplier must be in [0, 2147483647], not -1"),
    ({"multiplier": np.array([1, 2**31])}, ValueError,
     "multiplier must be in [0, 2147483647], not 2147483648"),
    ({"shift": 31}, ValueError, "shift must be in [-31, 30], not 31"),
    ({"shift": np.array([0, -32])}, ValueError, "shift must be in [-31, 30], not -32"),
    ({"out_zero_point": 128}, ValueError, "out_zero_point must be in [-128, 127], not 128"),
    ({"out_zero_point": 1.5}, TypeError, "out_zero_point must be an integer, not 1.5"),
    ({"act_min": -129}, ValueError, "act_min must be in [-128, 127], not -129"),
    ({"act_max": 128}, ValueError, "act_max must be in [-128, 127], not 128"),
    ({"act_min": 1, "act_max": 0}, ValueError, "act_min must be at most act_max (0), not 1"),
    ({"rounding": "nearest"}, ValueError, "rounding must be 'double' or 'single', not 'nearest'"),
    ({"acc": np.array([1.0, 2.0])}, TypeError, "acc must hold integers, not float64"),
    ({"acc": np.array([2**31, 0])}, ValueError,
     "acc must be in [-2147483648, 2147483647], not 2147483648"),
    ({"bias": np.array([1, 2, 3])}, ValueError,
     "bias must be a scalar or have length 2 (the last axis of acc), not shape (3,)"),
])
def test_requantize_rejects_bad_arguments(change, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        requantize(**{**_GOOD, **change})


def test_scalar_rules_reject_out_of_range_arguments():
    with pytest.raises(ValueError, match=re.escape("exponent must be in [0, 31], not 32")):
        rdbp(1, 32)
    with pytest.raises(ValueError, match=re.escape("a must be in [-2147483648, 2147483647], "
                                                   "not 2147483648")):
        srdhm(2**31, 1)
    with pytest.raises(ValueError, match=re.escape("shift must be in [-31, 30], not -32")):
        mbqm(1, 2**30, -32)


def test_host_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("scale must be finite and positive, not 0.0")):
        quantize_tensor([1.0], 0.0, 0)
    with pytest.raises(ValueError, match=re.escape("zero_point must be in [-128, 127], not 200")):
        quantize_tensor([1.0], 1.0, 200)
    with pytest.raises(ValueError, match=re.escape("min_value must be at most max_value (1.0), "
                                                   "not 2.0")):
        choose_activation_params(2.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("axis must be in [-2, 1], not 2")):
        quantize_weights_per_channel(np.zeros((2, 2)), axis=2)
    with pytest.raises(ValueError, match=re.escape("w_scales[1] must be finite and positive, "
                                                   "not -1.0")):
        requant_params(1.0, [1.0, -1.0], 1.0)
    with pytest.raises(ValueError, match=re.escape("effective scale of channel 0 must be below "
                                                   "2**30")):
        requant_params(2.0**20, [2.0**20], 1.0)
