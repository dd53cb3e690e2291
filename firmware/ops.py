"""Host-side pieces of the layers: im2col for convolutions, max pooling, and TFLite's integer
ADD (the residual add). The NPU runs the GEMMs; these run on the host in numpy.
"""

import numpy as np

from .quant import multiply_by_quantized_multiplier

__all__ = ["conv_output_size", "im2col", "maxpool2d", "quantized_add", "resolve_padding"]


def resolve_padding(padding, kh, kw):
    """``padding``: "valid", "same" (stride-1 sense, odd kernels), an int, or a
    ((top, bottom), (left, right)) pair."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, not {padding}")
        return (int(padding),) * 2, (int(padding),) * 2
    try:
        (t, b), (l_, r) = padding
    except (TypeError, ValueError):
        raise ValueError("padding must be 'valid', 'same', an int or ((top, bottom), "
                         f"(left, right)), not {padding!r}") from None
    if min(t, b, l_, r) < 0:
        raise ValueError(f"padding must be non-negative, not {padding!r}")
    return (int(t), int(b)), (int(l_), int(r))


def conv_output_size(size, k, stride, pad):
    return (size + pad[0] + pad[1] - k) // stride + 1


def im2col(x, kh, kw, stride, pad, pad_value):
    """NHWC int8 -> patches [N * OH * OW, KH * KW * C] (kh, kw, c order), padding with
    ``pad_value`` (the input zero point: a real zero)."""
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = pad
    xp = np.full((n, h + pt + pb, w + pl + pr, c), pad_value, dtype=x.dtype)
    xp[:, pt:pt + h, pl:pl + w, :] = x
    oh = conv_output_size(h, kh, stride, (pt, pb))
    ow = conv_output_size(w, kw, stride, (pl, pr))
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
    return cols.reshape(n * oh * ow, kh * kw * c), (n, oh, ow)


def maxpool2d(x, size, stride=None):
    """Max pooling of NHWC int8 (no padding; a partial window at the edge is dropped)."""
    stride = size if stride is None else stride
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    out = np.full((n, oh, ow, c), -128, dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            out = np.maximum(out, x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :])
    return out


def quantized_add(x1, x2, *, zero_point1, multiplier1, shift1, zero_point2, multiplier2, shift2,
                  out_zero_point, out_multiplier, out_shift, left_shift=20, act_min=-128,
                  act_max=127):
    """TFLite's int8 ADD (reference_integer_ops::AddElementwise), element by element:
    each input is offset, scaled up by 2**left_shift and requantised to a common scale, the two
    are summed and requantised to the output scale."""
    a = x1.astype(np.int64).ravel() - zero_point1
    b = x2.astype(np.int64).ravel() - zero_point2
    out = np.empty(a.shape, np.int64)
    for i in range(a.size):
        sa = multiply_by_quantized_multiplier(int(a[i]) << left_shift, multiplier1, shift1)
        sb = multiply_by_quantized_multiplier(int(b[i]) << left_shift, multiplier2, shift2)
        out[i] = multiply_by_quantized_multiplier(sa + sb, out_multiplier, out_shift)
    out = np.clip(out + out_zero_point, act_min, act_max)
    return out.astype(np.int8).reshape(x1.shape)
