"""``make demo``: a digits CNN and one attention head, int8, on the simulated NPU."""

import time

import numpy as np

from . import digits
from .device import Device
from .quant import quantize_tensor

__all__ = ["attention_head", "run_demo"]


def attention_head(dev, *, seq=16, d_model=32, d_head=16, seed=0):
    """One attention head's two int8 matmuls on the NPU: scores = Q·Kᵀ and out = P·V.

    Q, K, V are projected in float and quantised per tensor; the softmax runs on the host and
    its probabilities are quantised to int8 before P·V. Returns the NPU results, numpy's and
    the dequantised output next to the float one.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((seq, d_model))
    wq, wk, wv = (rng.standard_normal((d_model, d_head)) / np.sqrt(d_model) for _ in range(3))
    q, k, v = x @ wq, x @ wk, x @ wv
    quant = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        # Symmetric (zero point 0) keeps Q·Kᵀ a plain integer product.
        s = float(np.abs(t).max()) / 127
        quant[name] = (quantize_tensor(t, s, 0), s)
    (qq, sq), (kq, sk), (vq, sv) = quant["q"], quant["k"], quant["v"]
    scores = dev.gemm(qq, np.ascontiguousarray(kq.T))
    st_scores = dict(dev.stats)
    logits = scores * (sq * sk) / np.sqrt(d_head)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p_scale = 1 / 127
    pq = quantize_tensor(p, p_scale, 0)
    out = dev.gemm(pq, vq)
    st_out = dict(dev.stats)
    ref_scores = qq.astype(np.int64) @ kq.astype(np.int64).T
    ref_out = pq.astype(np.int64) @ vq.astype(np.int64)
    pf = np.exp((q @ k.T) / np.sqrt(d_head))
    pf /= pf.sum(axis=1, keepdims=True)
    return dict(scores=scores, ref_scores=ref_scores, out=out, ref_out=ref_out,
                out_real=out * p_scale * sv, float_out=pf @ v, stats=(st_scores, st_out))


def run_demo(*, images=4, cores=1, backend="amaranth"):
    ok = True
    print("== Digits CNN: conv3x3(1->8)+ReLU, maxpool 2, conv3x3(8->16)+ReLU, fc(256->10) ==")
    t0 = time.time()
    train, test = digits.load_digits_split()
    params = digits.train_cnn(train)
    float_acc = (digits.float_forward(params, test[0]).argmax(1) == test[1]).mean()
    print(f"trained in numpy on {len(train[0])} images in {time.time() - t0:.1f} s")
    print(f"float accuracy              {float_acc:7.2%}  ({len(test[0])} test images)")

    q = digits.quantise_cnn(params, train[0][:512])
    xq = q.quantize_input(test[0])
    ref = digits.run_int8_reference(q, xq)

    gold = Device(backend="golden", cores=cores)
    logits, _ = digits.run_on_device(gold, q, xq)
    agree = (logits == ref).all(axis=1).mean()
    npu_acc = (logits.argmax(1) == test[1]).mean()
    print(f"int8 NPU accuracy (golden)  {npu_acc:7.2%}  (whole test split)")
    print(f"agreement with int8 numpy   {agree:7.2%}  (bit-exact logits)")
    ok &= agree == 1.0

    n = min(images, len(xq))
    dev = Device(backend=backend, cores=cores, progress=True)
    print(f"\n{backend} backend (cycle-exact gateware), {n} images, {cores} core(s) of "
          f"{dev.config.rows}x{dev.config.cols}:")
    t0 = time.time()
    hw_logits, stats = digits.run_on_device(dev, q, xq[:n])
    wall = time.time() - t0
    hw_agree = (hw_logits == ref[:n]).all()
    ok &= bool(hw_agree)
    cycles = sum(s["cycles"] for s in stats)
    macs = sum(s["macs"] for s in stats)
    for name, s in zip(("conv1", "conv2", "fc"), stats):
        print(f"  {name:<6} {s['cycles']:>7} cycles  {s['macs']:>8} MACs  "
              f"utilisation {s['utilization']:6.1%}")
    util = macs / (cycles * dev.config.macs_per_cycle)
    print(f"  logits identical to the int8 reference: {'yes' if hw_agree else 'NO'}")
    print(f"  cycles per image {cycles / n:.0f}, utilisation {util:.1%} "
          f"(simulated in {wall:.1f} s)")

    print("\n== One attention head (seq 16, d_head 16): Q·Kᵀ and softmax(...)·V ==")
    att = attention_head(dev)
    s1, s2 = att["stats"]
    same = (np.array_equal(att["scores"], att["ref_scores"])
            and np.array_equal(att["out"], att["ref_out"]))
    ok &= same
    err = np.abs(att["out_real"] - att["float_out"]).max()
    print(f"  Q·Kᵀ   {s1['cycles']:>6} cycles, equal to numpy: "
          f"{np.array_equal(att['scores'], att['ref_scores'])}")
    print(f"  P·V    {s2['cycles']:>6} cycles, equal to numpy: "
          f"{np.array_equal(att['out'], att['ref_out'])}")
    print(f"  dequantised output vs float attention: max abs error {err:.3f}")
    print("\n" + ("demo OK" if ok else "demo FAILED: a result differs from its reference"))
    return 0 if ok else 1
