"""The Device runtime: compiled workloads against numpy and the written TFLite rule."""

import numpy as np
import pytest

from npu.firmware import compiler
from npu.firmware.device import Device, NPUError
from npu.firmware.ops import im2col, quantized_add
from npu.firmware.quant import requantize
from npu.rtl.config import NPUConfig
from npu.sim.backend import NPUTimeout

STATS_KEYS = {"cycles", "macs", "utilization", "dma_read_bytes", "dma_write_bytes",
              "stall_memory_cycles", "stall_dependency_cycles", "per_core"}


def rand8(rng, shape, lo=-128):
    x = rng.integers(lo, 128, size=shape).astype(np.int8)
    flat = x.reshape(-1)
    flat[:min(2, flat.size)] = [lo, 127][:min(2, flat.size)]
    return x


def conv_reference(x, w, stride, pad, pad_value):
    """Direct (not im2col) convolution in int64."""
    (pt, pb), (pl, pr) = pad
    xp = np.pad(x.astype(np.int64), ((0, 0), (pt, pb), (pl, pr), (0, 0)),
                constant_values=pad_value)
    kh, kw = w.shape[:2]
    oh = (xp.shape[1] - kh) // stride + 1
    ow = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]), np.int64)
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("nhwc,hwcd->nd", win, w.astype(np.int64))
    return out


@pytest.mark.parametrize("M,K,N,cores", [
    (1, 1, 1, 1), (1, 13, 1, 2), (7, 11, 13, 1), (17, 3, 29, 2), (31, 37, 5, 4),
    (64, 64, 64, 2), (2, 300, 3, 1), (300, 200, 9, 3),
])
def test_random_gemm_on_golden_equals_numpy(M, K, N, cores):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a, b = rand8(rng, (M, K)), rand8(rng, (K, N))
    dev = Device(backend="golden", cores=cores)
    y = dev.gemm(a, b)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, a.astype(np.int64) @ b)
    assert dev.stats["macs"] >= M * K * N


def test_gemm_larger_than_the_scratchpad_streams_its_activations():
    cfg = NPUConfig(rows=8, cols=8, scratchpad_bytes=4096, acc_rows=64)
    rng = np.random.default_rng(2)
    M, K, N = 150, 1000, 20     # A is 150 KB, 37x the scratchpad; K needs 125 blocks
    plan = compiler.plan_gemm(cfg, M, K, N, raw=True)
    assert not plan.resident
    a, b = rand8(rng, (M, K)), rand8(rng, (K, N))
    y = Device(backend="golden", config=cfg).gemm(a, b)
    np.testing.assert_array_equal(y, a.astype(np.int64) @ b)


@pytest.mark.parametrize("M,K,N,cores", [(1, 1, 1, 1), (5, 9, 3, 1), (13, 17, 11, 2)])
def test_random_gemm_on_amaranth_equals_numpy(M, K, N, cores):
    rng = np.random.default_rng(M + K + N)
    a, b = rand8(rng, (M, K)), rand8(rng, (K, N))
    dev = Device(backend="amaranth", cores=cores, rows=4, cols=4)
    np.testing.assert_array_equal(dev.gemm(a, b), a.astype(np.int64) @ b)
    assert STATS_KEYS <= set(dev.stats)
    s = dev.stats
    assert s["cycles"] > 0
    assert s["utilization"] == s["macs"] / (s["cycles"] * 4 * 4 * cores)
    assert len(s["per_core"]) == min(cores, M)


@pytest.mark.parametrize("per_channel", [False, True])
def test_requantised_gemm_follows_the_tflite_rule(per_channel):
    rng = np.random.default_rng(11)
    M, K, N = 9, 21, 12
    a, b = rand8(rng, (M, K)), rand8(rng, (K, N), lo=-127)
    if per_channel:
        mult = rng.integers(1 << 30, (1 << 31) - 1, N)
        shift = rng.integers(-12, 1, N)
    else:
        mult, shift = 1518500250, -9
    bias = rng.integers(-20000, 20000, N).astype(np.int32)
    dev = Device(backend="golden", cores=2)
    y = dev.gemm(a, b, bias=bias, multiplier=mult, shift=shift, out_zero_point=-7,
                 in_zero_point=5, relu=True)
    acc = (a.astype(np.int64) - 5) @ b.astype(np.int64)
    expected = requantize(acc, bias, mult, shift, -7, -7, 127)
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, expected)


def test_requantised_gemm_on_amaranth_matches_golden_bit_for_bit():
    rng = np.random.default_rng(12)
    a, b = rand8(rng, (6, 10)), rand8(rng, (10, 5), lo=-127)
    q = dict(bias=rng.integers(-999, 999, 5), multiplier=rng.integers(1 << 29, 1 << 31, 5),
             shift=rng.integers(-8, 2, 5), out_zero_point=3, in_zero_point=-128)
    gold = Device(backend="golden", rows=4, cols=4).gemm(a, b, **q)
    hw = Device(backend="amaranth", rows=4, cols=4).gemm(a, b, **q)
    np.testing.assert_array_equal(hw, gold)


@pytest.mark.parametrize("stride,padding", [(1, "valid"), (1, "same"), (2, 1), (3, "same")])
def test_conv2d_equals_a_direct_convolution(stride, padding):
    rng = np.random.default_rng(stride)
    x, w = rand8(rng, (2, 9, 7, 3)), rand8(rng, (3, 3, 3, 10), lo=-127)
    dev = Device(backend="golden", cores=2)
    y = dev.conv2d(x, w, stride=stride, padding=padding)
    from npu.firmware.ops import resolve_padding
    np.testing.assert_array_equal(y, conv_reference(x, w, stride, resolve_padding(padding, 3, 3),
                                                    0))


def test_quantised_conv2d_pads_with_the_input_zero_point():
    rng = np.random.default_rng(4)
    x, w = rand8(rng, (1, 5, 5, 2)), rand8(rng, (3, 3, 2, 4), lo=-127)
    mult, shift = rng.integers(1 << 30, 1 << 31, 4), np.full(4, -7)
    bias = rng.integers(-100, 100, 4)
    y = Device(backend="golden").conv2d(x, w, bias=bias, multiplier=mult, shift=shift,
                                        padding="same", in_zero_point=-20, out_zero_point=10)
    acc = conv_reference(x, w, 1, ((1, 1), (1, 1)), -20) + 20 * w.astype(np.int64).sum((0, 1, 2))
    np.testing.assert_array_equal(y, requantize(acc, bias, mult, shift, 10, -128, 127))


def test_depthwise_conv_equals_per_channel_convolution():
    rng = np.random.default_rng(5)
    x, w = rand8(rng, (1, 6, 6, 11)), rand8(rng, (3, 3, 11, 1), lo=-127)
    y = Device(backend="golden", rows=4, cols=4).conv2d(x, w, padding=1, depthwise=True)
    expected = np.stack([conv_reference(x[..., c:c + 1], w[:, :, c:c + 1, :], 1,
                                        ((1, 1), (1, 1)), 0)[..., 0] for c in range(11)], -1)
    np.testing.assert_array_equal(y, expected)


def test_conv2d_on_amaranth_matches_golden():
    rng = np.random.default_rng(6)
    x, w = rand8(rng, (1, 4, 4, 2)), rand8(rng, (2, 2, 2, 3), lo=-127)
    gold = Device(backend="golden", rows=4, cols=4).conv2d(x, w, padding="same")
    hw = Device(backend="amaranth", rows=4, cols=4).conv2d(x, w, padding="same")
    np.testing.assert_array_equal(hw, gold)


def test_linear_uses_tflite_weight_layout():
    rng = np.random.default_rng(7)
    x, w = rand8(rng, (3, 20)), rand8(rng, (6, 20), lo=-127)
    dev = Device(backend="golden")
    np.testing.assert_array_equal(dev.linear(x, w), x.astype(np.int64) @ w.T)
    np.testing.assert_array_equal(dev.linear(x[0], w), x[0].astype(np.int64) @ w.T)


def test_maxpool_takes_the_window_maximum():
    x = np.arange(-128, 0, dtype=np.int8).reshape(1, 4, 4, 8)
    y = Device().maxpool2d(x, 2)
    assert y.shape == (1, 2, 2, 8)
    np.testing.assert_array_equal(y[0, 0, 0], x[0, 1, 1])


def test_residual_add_matches_tflite_values_worked_by_hand():
    # Input multipliers (2**30, shift 0) are 0.5; the output one (2**30, shift -19) is
    # 0.5 * 2**-19 = 2**-20, undoing the left shift of 20: y = (x1 + x2) / 2, rounded.
    # x1 = 3, x2 = 4: 3 * 2**20 * 0.5 + 4 * 2**20 * 0.5 = 3.5 * 2**20; SRDHM by 2**30 halves it
    # to 1835008; RoundingDivideByPOT(1835008, 19) = 3.5 -> 4 (ties away from zero), and -3.5
    # -> -4. 127 + 127 -> 127 and -128 + -128 -> -128 exactly. x1 = 1, x2 = 0 -> 0.5 -> 1.
    params = dict(zero_point1=0, multiplier1=1 << 30, shift1=0, zero_point2=0,
                  multiplier2=1 << 30, shift2=0, out_zero_point=0, out_multiplier=1 << 30,
                  out_shift=-19)
    y = Device().add(np.array([3, -3, 127, -128], np.int8), np.array([4, -4, 127, -128], np.int8),
                     **params)
    np.testing.assert_array_equal(y, [4, -4, 127, -128])
    assert quantized_add(np.array([1], np.int8), np.array([0], np.int8), **params)[0] == 1


def test_stats_have_the_documented_keys_and_add_up_over_layers():
    dev = Device(backend="amaranth", rows=4, cols=4, cores=2)
    rng = np.random.default_rng(8)
    dev.gemm(rand8(rng, (8, 8)), rand8(rng, (8, 8)))
    assert STATS_KEYS <= set(dev.stats)
    assert dev.stats["macs"] == sum(c["macs"] for c in dev.stats["per_core"]) == 512
    assert dev.stats["stall_memory_cycles"] >= 0 and dev.stats["stall_dependency_cycles"] >= 0


def test_disassembly_lists_every_core_program():
    dev = Device(backend="golden", cores=2)
    rng = np.random.default_rng(9)
    dev.gemm(rand8(rng, (16, 8)), rand8(rng, (8, 8)))
    text = dev.disassemble()
    assert text.count("; core") == 2 and "MATMUL" in text and text.count("END") == 2


# --- bad input -----------------------------------------------------------------------------

A8 = np.zeros((4, 4), np.int8)


@pytest.mark.parametrize("call,exc,message", [
    (lambda d: d.gemm(A8.astype(np.int16), A8), TypeError, "a must have dtype int8, not int16"),
    (lambda d: d.gemm([[1]], A8), TypeError, "a must be a numpy array, not list"),
    (lambda d: d.gemm(A8[0], A8), ValueError, "a must have 2 dimensions, not 1"),
    (lambda d: d.gemm(A8, np.zeros((3, 4), np.int8)), ValueError, "a has 4 columns but b has 3"),
    (lambda d: d.gemm(np.zeros((0, 4), np.int8), A8), ValueError, "a must not be empty"),
    (lambda d: d.gemm(A8, A8, multiplier=-1, shift=0), ValueError,
     r"multiplier must be in \[0, 2147483647\], not -1"),
    (lambda d: d.gemm(A8, A8, multiplier=1 << 30, shift=31), ValueError,
     r"shift must be in \[-31, 30\], not 31"),
    (lambda d: d.gemm(A8, A8, multiplier=[1, 2], shift=0), ValueError,
     r"multiplier must be a scalar or have shape \(4,\), not \(2,\)"),
    (lambda d: d.gemm(A8, A8, multiplier=1, shift=0, out_zero_point=200), ValueError,
     r"out_zero_point must be in \[-128, 127\], not 200"),
    (lambda d: d.gemm(A8, A8, multiplier=1, shift=0, bias=np.zeros(4, np.float32)), TypeError,
     "bias must be integers, not dtype float32"),
    (lambda d: d.gemm(A8, A8, multiplier=1), ValueError, "multiplier and shift must be given"),
    (lambda d: d.gemm(A8, A8, relu=True), ValueError, "relu needs multiplier and shift"),
    (lambda d: d.conv2d(A8, A8), ValueError, "x must have 4 dimensions, not 2"),
    (lambda d: d.conv2d(np.zeros((1, 4, 4, 3), np.int8), np.zeros((3, 3, 2, 1), np.int8)),
     ValueError, r"x has 3 channels but w expects 2"),
    (lambda d: d.conv2d(np.zeros((1, 4, 4, 3), np.int8), np.zeros((3, 3, 3, 1), np.int8),
                        stride=0), ValueError, "stride must be a positive integer, not 0"),
    (lambda d: d.conv2d(np.zeros((1, 2, 2, 1), np.int8), np.zeros((3, 3, 1, 1), np.int8)),
     ValueError, "does not fit the padded 2x2 input"),
    (lambda d: d.linear(A8, np.zeros((2, 3), np.int8)), ValueError, "x has 4 features"),
])
def test_bad_arguments_raise_before_anything_runs(call, exc, message):
    with pytest.raises(exc, match=message):
        call(Device(backend="golden"))


@pytest.mark.parametrize("kwargs,exc,message", [
    ({"backend": "fpga"}, ValueError, "backend must be one of 'golden', 'amaranth', "),
    ({"rows": 0}, ValueError, "Array rows must be a positive integer, not 0"),
    ({"config": NPUConfig(), "cores": 2}, TypeError, "give either config= or"),
    ({"max_cycles": 0}, ValueError, r"max_cycles must be in \[1, "),
])
def test_bad_device_configuration_raises(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        Device(**kwargs)


def test_workload_too_large_for_the_address_space_is_refused():
    dev = Device(backend="golden", addr_width=16)
    with pytest.raises(ValueError, match="more than the 16-bit address space"):
        dev.gemm(np.zeros((300, 300), np.int8), np.zeros((300, 8), np.int8))


def test_a_run_past_its_cycle_budget_raises_a_timeout_with_core_state():
    dev = Device(backend="amaranth", rows=4, cols=4, max_cycles=60)
    with pytest.raises(NPUTimeout, match="did not finish within 60 cycles") as info:
        dev.gemm(np.ones((8, 8), np.int8), np.ones((8, 8), np.int8))
    assert "core 0: BUSY" in str(info.value)


def test_im2col_orders_patches_kh_kw_c():
    x = np.arange(2 * 3 * 3 * 2, dtype=np.int8).reshape(2, 3, 3, 2)
    cols, (n, oh, ow) = im2col(x, 2, 2, 1, ((0, 0), (0, 0)), 0)
    assert (n, oh, ow) == (2, 2, 2)
    np.testing.assert_array_equal(cols[0], [0, 1, 2, 3, 6, 7, 8, 9])


def test_npu_error_names_the_failing_core():
    from npu.rtl.isa import CoreState, ErrorCode
    from npu.sim.golden import CoreResult
    err = NPUError([CoreResult(CoreState.ERROR, ErrorCode.DMA_WINDOW, 0x40)])
    assert "core 0: ERROR error=DMA_WINDOW pc=0x00000040" in str(err)
