"""INT8 quantisation: the TFLite / gemmlowp integer rules, written out as the oracle.

Everything that checks the requantiser (gateware tests, the golden model, the compiler) asks this
module what the right answer is, so it is written to be read against the rule text (see
``REFERENCE.md``, "INT8 quantisation semantics"; sources: gemmlowp ``fixedpoint/fixedpoint.h``,
tflite-micro ``kernels/internal/common.h`` and ``quantization_util.cc``), not to be fast.

Two layers:

* scalar functions on Python ints, one per rule: :func:`saturating_rounding_doubling_high_mul`,
  :func:`rounding_divide_by_pot`, :func:`multiply_by_quantized_multiplier`;
* :func:`requantize`, the per-output-channel epilogue of a quantised conv / fully-connected layer
  on numpy arrays (vectorised; the tests check it against the scalar functions).

Plus the host-side helpers that turn float tensors into int8 ones: :func:`quantize_multiplier`,
:func:`quantize_tensor`, :func:`choose_activation_params`, :func:`quantize_weights_per_channel`,
:func:`requant_params`.
"""

import math
import operator
from numbers import Real

import numpy as np

from npu.rtl.config import ROUNDING_MODES

__all__ = [
    "INT8_MAX",
    "INT8_MIN",
    "INT32_MAX",
    "INT32_MIN",
    "ROUNDING_MODES",
    "choose_activation_params",
    "multiply_by_quantized_multiplier",
    "quantize_multiplier",
    "quantize_tensor",
    "quantize_weights_per_channel",
    "requant_params",
    "requantize",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]

INT32_MIN = -2**31
INT32_MAX = 2**31 - 1
INT8_MIN = -128
INT8_MAX = 127
#: Largest magnitude of a symmetric int8 weight (TFLite leaves -128 unused for weights).
WEIGHT_MAX = 127
#: Shifts that ``MultiplyByQuantizedMultiplier`` accepts (TFLite checks ``-31 <= shift <= 30``).
SHIFT_MIN = -31
SHIFT_MAX = 30


# --------------------------------------------------------------------------------------------
# Small checks and integer helpers

def _check_int(name, value, lo, hi):
    """``value`` as a Python int, or raise naming ``name`` if it is not an integer in [lo, hi]."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")
    return value


def _check_rounding(rounding):
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be 'double' or 'single', not {rounding!r}")
    return rounding


def _wrap_int32(x):
    """Two's complement wrap to int32, as a C++ int32 overflow does on every target we know."""
    return ((x - INT32_MIN) % 2**32) + INT32_MIN


def _saturate_int32(x):
    return max(INT32_MIN, min(INT32_MAX, x))


def _cpp_div(a, b):
    """C++ integer '/': the quotient truncated toward zero (Python's '//' floors instead)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _round_half_away(x):
    """``std::round`` on a float: nearest integer, ties away from zero. Exact for any double."""
    magnitude = math.floor(abs(x))
    if abs(x) - magnitude >= 0.5:  # exact: a double minus its floor is representable
        magnitude += 1
    return -magnitude if x < 0 else magnitude


# --------------------------------------------------------------------------------------------
# QuantizeMultiplier

def quantize_multiplier(real):
    """Split a non-negative real multiplier into a Q31 mantissa and a power-of-two shift.

    TFLite's ``QuantizeMultiplier``: ``q, shift = frexp(real)``; ``M = round_half_away(q *
    2**31)``; if ``M == 2**31`` then ``M //= 2; shift += 1``; if ``shift < -31`` the multiplier
    is flushed to ``(0, 0)``. ``real == 0`` gives ``(0, 0)``. Then ``real ~= M * 2**(shift - 31)``.

    The shift is returned as the rule gives it: ``real >= 2**30`` yields ``shift > 30``, which
    :func:`requantize` (like TFLite's ``MultiplyByQuantizedMultiplier``) rejects.

    Parameters
    ----------
    real : float
        Finite and non-negative.

    Returns
    -------
    (int, int)
        ``(M, shift)`` with ``M`` in ``[0, 2**31 - 1]`` (``M >= 2**30`` unless ``M == 0``).
    """
    if isinstance(real, (bool, np.bool_)) or not isinstance(real, (Real, np.floating,
                                                                     np.integer)):
        raise TypeError(f"real must be a real number, not {real!r}")
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"real must be finite and non-negative, not {real!r}")
    if real == 0:
        return 0, 0
    q, shift = math.frexp(real)
    # q * 2**31 is exact (a power-of-two scaling), so the rounding below is the only one.
    m = _round_half_away(q * 2**31)
    if m == 2**31:
        m //= 2
        shift += 1
    if shift < -31:
        shift, m = 0, 0
    return m, shift


# --------------------------------------------------------------------------------------------
# The scalar rules (Python ints, no numpy): the oracle of the oracle

def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on two int32 values.

    ``round(a * b / 2**31)`` with gemmlowp's nudge: ``+2**30`` when ``a * b >= 0`` and
    ``1 - 2**30`` otherwise, then a C++ (truncating) division by ``2**31``. The only overflow,
    ``INT32_MIN * INT32_MIN``, saturates to ``INT32_MAX``.
    """
    a = _check_int("a", a, INT32_MIN, INT32_MAX)
    b = _check_int("b", b, INT32_MIN, INT32_MAX)
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    return _cpp_div(ab + nudge, 2**31)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent``, rounded to nearest, ties away
    from zero, for int32 ``x`` and ``0 <= exponent <= 31``."""
    x = _check_int("x", x, INT32_MIN, INT32_MAX)
    exponent = _check_int("exponent", exponent, 0, 31)
    mask = (1 << exponent) - 1
    remainder = x & mask  # Python's '&' on a negative int is two's complement, as in C++
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding="double"):
    """TFLite ``MultiplyByQuantizedMultiplier(x, M, shift)``: about ``x * M * 2**(shift - 31)``.

    ``rounding="double"`` (TFLite's reference kernels; ``TFLITE_SINGLE_ROUNDING`` unset)::

        RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x * 2**left, M), right)

    with ``left = max(shift, 0)``, ``right = max(-shift, 0)``. ``x * 2**left`` is an int32
    multiplication in the C++ source; it wraps (two's complement) here, as the compiled code
    does, rather than saturating.

    ``rounding="single"`` (``TFLITE_SINGLE_ROUNDING=1``, XNNPACK's conv / fc)::

        total = 31 - shift;  (x * M + 2**(total - 1)) >> total      # 64-bit, arithmetic shift

    TFLite only ``DCHECK``\\ s that this fits in int32; we saturate to int32 (for example
    ``x = INT32_MAX, M = 2**31 - 1, shift = 30``), which is also what the gateware's clamp to
    int8 makes of it.

    ``multiplier`` may be any int32 here (the rule text allows it); host code only produces
    non-negative ones and :func:`requantize` insists on that.
    """
    x = _check_int("x", x, INT32_MIN, INT32_MAX)
    multiplier = _check_int("multiplier", multiplier, INT32_MIN, INT32_MAX)
    shift = _check_int("shift", shift, SHIFT_MIN, SHIFT_MAX)
    _check_rounding(rounding)
    if rounding == "double":
        left = max(shift, 0)
        right = max(-shift, 0)
        high = saturating_rounding_doubling_high_mul(_wrap_int32(x * 2**left), multiplier)
        return rounding_divide_by_pot(high, right)
    total = 31 - shift
    return _saturate_int32((x * multiplier + 2**(total - 1)) >> total)


# --------------------------------------------------------------------------------------------
# The per-channel epilogue on arrays

def _int_array(name, value, lo, hi):
    """``value`` as an int64 array, or raise naming ``name`` unless it holds integers in
    [lo, hi]."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {int(bad)}")
    return arr.astype(np.int64)


def _per_channel(name, value, lo, hi, n):
    """A scalar or a length-``n`` 1-D array of integers in [lo, hi], as int64."""
    arr = _int_array(name, value, lo, hi)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != n):
        raise ValueError(
            f"{name} must be a scalar or have length {n} (the last axis of acc), "
            f"not shape {arr.shape}")
    return arr


def _wrap_int32_array(x):
    return (x - INT32_MIN) % 2**32 + INT32_MIN


def _srdhm_array(a, b):
    """Vectorised :func:`saturating_rounding_doubling_high_mul` (int64 in and out)."""
    ab = a * b  # |a * b| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 2**30, 1 - 2**30)
    v = ab + nudge
    truncated = np.where(v >= 0, v >> 31, -((-v) >> 31))  # C++ '/' by 2**31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, truncated)


def _rdbp_array(x, exponent):
    """Vectorised :func:`rounding_divide_by_pot` (int64 in and out)."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def requantize(acc, bias, multiplier, shift, out_zero_point, act_min=INT8_MIN,
               act_max=INT8_MAX, rounding="double"):
    """The epilogue of a quantised conv / fully-connected layer, channel by channel.

    ``y = clamp(MBQM(wrap32(acc + bias), M, shift) + out_zero_point, act_min, act_max)``

    Parameters
    ----------
    acc : array of int, shape ``[..., N]``
        int32 accumulators; the last axis is the output channel.
    bias, multiplier, shift : int or array of int, shape ``[N]``
        Per output channel (or one value for all). ``bias`` is int32 and the sum with ``acc``
        wraps like C++ int32 arithmetic; ``multiplier`` in ``[0, 2**31 - 1]`` (TFLite's
        multipliers are non-negative); ``shift`` in ``[-31, 30]``.
    out_zero_point : int
        In ``[-128, 127]``. Added exactly (no int32 wrap) before the clamp.
    act_min, act_max : int
        Clamp bounds in ``[-128, 127]`` with ``act_min <= act_max``; fused ReLU is
        ``act_min = out_zero_point``.
    rounding : str
        ``"double"`` or ``"single"``; see :func:`multiply_by_quantized_multiplier`.

    Returns
    -------
    numpy.ndarray of int8, the shape of ``acc``.
    """
    _check_rounding(rounding)
    x = _int_array("acc", acc, INT32_MIN, INT32_MAX)
    if x.ndim < 1:
        raise ValueError(f"acc must have at least one axis (the channels), not shape {x.shape}")
    n = x.shape[-1]
    b = _per_channel("bias", bias, INT32_MIN, INT32_MAX, n)
    m = _per_channel("multiplier", multiplier, 0, INT32_MAX, n)
    s = _per_channel("shift", shift, SHIFT_MIN, SHIFT_MAX, n)
    zp = _check_int("out_zero_point", out_zero_point, INT8_MIN, INT8_MAX)
    lo = _check_int("act_min", act_min, INT8_MIN, INT8_MAX)
    hi = _check_int("act_max", act_max, INT8_MIN, INT8_MAX)
    if lo > hi:
        raise ValueError(f"act_min must be at most act_max ({hi}), not {lo}")

    x = _wrap_int32_array(x + b)
    m, s = np.broadcast_to(m, x.shape), np.broadcast_to(s, x.shape)
    if rounding == "double":
        left = np.maximum(s, 0)
        right = np.maximum(-s, 0)
        y = _rdbp_array(_srdhm_array(_wrap_int32_array(x << left), m), right)
    else:
        total = 31 - s
        # |x * M| <= 2**62 and the rounding term <= 2**61: the sum fits in int64.
        y = np.clip((x * m + (np.int64(1) << (total - 1))) >> total, INT32_MIN, INT32_MAX)
    return np.clip(y + zp, lo, hi).astype(np.int8)


# --------------------------------------------------------------------------------------------
# Host-side quantisation of float tensors

def _check_scale(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.floating,
                                                                       np.integer)):
        raise TypeError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and positive, not {value!r}")
    return value


def _round_half_away_array(x):
    """``std::round`` elementwise (numpy's ``round`` is half-to-even)."""
    magnitude = np.floor(np.abs(x))
    magnitude += (np.abs(x) - magnitude) >= 0.5  # exact, see _round_half_away
    return np.copysign(magnitude, x)


def quantize_tensor(x, scale, zero_point):
    """TFLite's affine quantisation: ``clamp(round_half_away(x / scale) + zero_point)`` to int8.

    Parameters
    ----------
    x : array of float
        Finite values.
    scale : float
        Positive.
    zero_point : int
        In ``[-128, 127]``.
    """
    scale = _check_scale("scale", scale)
    zero_point = _check_int("zero_point", zero_point, INT8_MIN, INT8_MAX)
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("x must hold only finite values")
    q = _round_half_away_array(x / scale) + zero_point
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def choose_activation_params(min_value, max_value):
    """Asymmetric int8 ``(scale, zero_point)`` covering ``[min_value, max_value]``.

    As TFLite's ``ChooseQuantizationParams``: the range is first widened to include 0 (so that
    real 0, e.g. padding, is exactly representable), ``scale = (max - min) / 255`` and the zero
    point is the rounded, clamped ``-128 - min / scale`` (TFLite picks whichever end has the
    smaller rounding error; both give the same integer up to float noise). An all-zero range
    gives ``(1.0, 0)`` rather than TFLite's unusable scale of 0.
    """
    lo = float(min_value)
    hi = float(max_value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"min_value and max_value must be finite, not {lo!r} and {hi!r}")
    if lo > hi:
        raise ValueError(f"min_value must be at most max_value ({hi!r}), not {lo!r}")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lo == hi:
        return 1.0, 0
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    from_min = INT8_MIN - lo / scale
    from_max = INT8_MAX - hi / scale
    err_min = abs(INT8_MIN) + abs(lo / scale)
    err_max = abs(INT8_MAX) + abs(hi / scale)
    zp = from_min if err_min < err_max else from_max
    zp = min(max(zp, INT8_MIN), INT8_MAX)
    return scale, int(_round_half_away(zp))


def quantize_weights_per_channel(w, axis):
    """Symmetric per-channel int8 weights: ``scale[c] = max|w[c]| / 127``, zero point 0.

    Parameters
    ----------
    w : array of float
    axis : int
        The output-channel axis (may be negative).

    Returns
    -------
    (numpy.ndarray of int8, numpy.ndarray of float64)
        The weights in ``[-127, 127]`` (same shape as ``w``) and one scale per channel. An
        all-zero channel gets scale 1.0 so that no division by zero happens.
    """
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("w must hold only finite values")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, not {axis!r}")
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis must be in [{-w.ndim}, {w.ndim - 1}], not {axis}")
    axis = int(axis) % w.ndim
    others = tuple(a for a in range(w.ndim) if a != axis)
    max_abs = np.max(np.abs(w), axis=others) if others else np.abs(w)
    scales = np.where(max_abs > 0, max_abs / WEIGHT_MAX, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = _round_half_away_array(w / scales.reshape(shape))
    return np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8), scales


def requant_params(in_scale, w_scales, out_scale):
    """Per-channel ``(M, shift)`` for ``in_scale * w_scale[c] / out_scale``, as TFLite computes
    them for a conv / fully-connected layer (in double precision, then
    :func:`quantize_multiplier`).

    Returns
    -------
    (numpy.ndarray of int32, numpy.ndarray of int32)
        Ready for :func:`requantize`.
    """
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    w_scales = np.atleast_1d(np.asarray(w_scales))
    if w_scales.ndim != 1:
        raise ValueError(f"w_scales must be one-dimensional, not shape {w_scales.shape}")
    ms, shifts = [], []
    for c, w_scale in enumerate(w_scales):
        w_scale = _check_scale(f"w_scales[{c}]", w_scale.item())
        m, shift = quantize_multiplier(in_scale * w_scale / out_scale)
        if shift > SHIFT_MAX:
            raise ValueError(
                f"effective scale of channel {c} must be below 2**30, "
                f"not {in_scale * w_scale / out_scale!r}")
        ms.append(m)
        shifts.append(shift)
    return np.array(ms, dtype=np.int32), np.array(shifts, dtype=np.int32)
