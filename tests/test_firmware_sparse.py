"""The zero-skipping sparse unit: bit-identical to dense, fewer passes, exact counters."""

import numpy as np
import pytest

from npu.firmware import compiler
from npu.firmware.device import Device
from npu.rtl.config import NPUConfig


def structured(rng, K, N, sparsity, group):
    """int8 weights where, in every K-group of `group` rows, round(sparsity * group) rows are
    zero for all columns: structured (row) sparsity, balanced per group like N:M pruning."""
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w[w == 0] = 1
    for q in range(0, K, group):
        n = min(group, K - q)
        w[q + rng.permutation(n)[:round(sparsity * n)]] = 0
    return w


# The gateware builds whose zero skipping differs: plain, retimed (the skip decided at issue
# over the lookahead), retimed with a one-line lookahead (the flags read with the line, the
# skip decided in the read stage).
BUILDS = {"plain": {}, "retimed": {"retime": True},
          "retimed-late-skip": {"retime": True, "zero_lookahead": 1}}


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_structured_sparse_gemm_on_golden_equals_numpy_and_dense(sparsity):
    cfg = NPUConfig(rows=8, cols=8, cores=2)
    rng = np.random.default_rng(int(sparsity * 100))
    a = rng.integers(-128, 128, (40, 96)).astype(np.int8)
    w = structured(rng, 96, 20, sparsity, cfg.gather_bytes)
    dev = Device(backend="golden", config=cfg)
    sparse = dev.gemm(a, w)
    stats = dict(dev.stats)
    dense = dev.gemm(a, w, sparse=False)
    np.testing.assert_array_equal(sparse, a.astype(np.int64) @ w)
    np.testing.assert_array_equal(sparse, dense)
    tiles = compiler.pack_weights(cfg, w)
    # Passes run = packed tiles x rows; the rest were skipped by packing.
    assert stats["macs"] == 40 * tiles.tiles * 64
    assert stats["passes_skipped"] == 40 * (tiles.dense_tiles - tiles.tiles)
    if sparsity == 1.0:
        assert tiles.tiles == 3          # one empty tile per N-block still writes the zeros


@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_structured_sparse_gemm_on_amaranth_equals_numpy(sparsity, build):
    cfg = NPUConfig(rows=4, cols=4, **BUILDS[build])
    rng = np.random.default_rng(7 + int(sparsity * 10))
    a = rng.integers(-128, 128, (12, 40)).astype(np.int8)
    w = structured(rng, 40, 6, sparsity, cfg.gather_bytes)
    gold = Device(backend="golden", config=cfg)
    hw = Device(backend="amaranth", config=cfg)
    y = hw.gemm(a, w)
    np.testing.assert_array_equal(y, a.astype(np.int64) @ w)
    gold.gemm(a, w)
    for key in ("macs", "macs_skipped", "passes_skipped"):
        assert hw.stats[key] == gold.stats[key], key


@pytest.mark.parametrize("build", list(BUILDS))
def test_unstructured_zeros_are_gated_and_counted_identically(build):
    cfg = NPUConfig(rows=4, cols=4, **BUILDS[build])
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (10, 16)).astype(np.int8)
    w = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    a[rng.random(a.shape) < 0.4] = 0
    w[rng.random(w.shape) < 0.4] = 0
    results = {}
    for backend in ("golden", "amaranth"):
        dev = Device(backend=backend, config=cfg)
        y = dev.gemm(a, w, sparse=False)
        np.testing.assert_array_equal(y, a.astype(np.int64) @ w)
        results[backend] = (dev.stats["macs"], dev.stats["macs_skipped"])
    assert results["golden"] == results["amaranth"]
    # Every MAC with a zero operand is counted: with no pass skipped here, exactly those.
    assert results["golden"][1] > 0


@pytest.mark.parametrize("build", list(BUILDS))
def test_zero_activation_vectors_are_skipped_when_accumulating(build):
    cfg = NPUConfig(rows=4, cols=4, sparse_group=1, **BUILDS[build])
    rng = np.random.default_rng(4)
    a = rng.integers(1, 128, (16, 8)).astype(np.int8)
    a[4:12, 4:] = 0         # rows 4..11 zero in K-block 1 (the accumulating one)
    w = rng.integers(1, 128, (8, 4)).astype(np.int8)
    counts = {}
    for backend in ("golden", "amaranth"):
        dev = Device(backend=backend, config=cfg)
        np.testing.assert_array_equal(dev.gemm(a, w), a.astype(np.int64) @ w)
        counts[backend] = dev.stats["passes_skipped"]
        cycles = dev.stats["cycles"]
    assert counts == {"golden": 8, "amaranth": 8}
    dense = Device(backend="amaranth", config=cfg)
    dense.gemm(np.where(a == 0, 1, a).astype(np.int8), w)
    if cfg.zero_lookahead > 1:
        assert cycles < dense.stats["cycles"]
    else:
        # Looking one line ahead, a skipped line takes its cycle like an issued one.
        assert cycles == dense.stats["cycles"]


def test_fully_structured_75_percent_sparse_tile_takes_a_fixed_cycle_count():
    # 8x8 array, sparse group 4: one K-group of 32 rows with 8 non-zero rows packs into a
    # single tile, a quarter of the dense passes.
    cfg = NPUConfig(rows=8, cols=8)
    rng = np.random.default_rng(75)
    a = rng.integers(-128, 128, (64, 32)).astype(np.int8)
    w = structured(rng, 32, 8, 0.75, 32)
    sparse = Device(backend="amaranth", config=cfg)
    np.testing.assert_array_equal(sparse.gemm(a, w), a.astype(np.int64) @ w)
    dense = Device(backend="amaranth", config=cfg)
    dense.gemm(a, w, sparse=False)
    assert sparse.stats["macs"] == 64 * 64 and dense.stats["macs"] == 4 * 64 * 64
    assert sparse.stats["passes_skipped"] == 3 * 64
    print(f"75 % structured tile: {sparse.stats['cycles']} cycles (dense "
          f"{dense.stats['cycles']})")
    assert sparse.stats["cycles"] == SPARSE_75_CYCLES
    assert dense.stats["cycles"] == DENSE_CYCLES


SPARSE_75_CYCLES = 669
DENSE_CYCLES = 865


def lane_balanced(rng, K, N, keep, cfg):
    """int8 weights where, in every K-group, each array row's lane keeps ``keep`` of its
    ``sparse_group`` K-rows (g * R + i) and the rest are zero: N:M sparsity balanced per lane,
    the pattern the lane gather packs fully."""
    R, G = cfg.rows, cfg.sparse_group
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    w[w == 0] = 1
    w.reshape(-1)[:2] = [-128, 127]
    for q in range(0, K, G * R):
        for i in range(R):
            w[rng.permutation(range(q + i, min(q + G * R, K), R))[keep:]] = 0
    return w


LANE_BUILDS = {name: {"gather": "lane", **options} for name, options in BUILDS.items()}


@pytest.mark.parametrize("build", list(LANE_BUILDS))
@pytest.mark.parametrize("keep", [4, 2, 1, 0])
def test_lane_gather_sparse_gemm_on_amaranth_equals_numpy(keep, build):
    # Array 4x4, sparse group 4: each lane keeps `keep` of the 4 K-rows it can read.
    cfg = NPUConfig(rows=4, cols=4, **LANE_BUILDS[build])
    rng = np.random.default_rng(11 + keep)
    a = rng.integers(-128, 128, (12, 40)).astype(np.int8)
    a.reshape(-1)[:2] = [-128, 127]
    w = lane_balanced(rng, 40, 6, keep, cfg)
    gold = Device(backend="golden", config=cfg)
    hw = Device(backend="amaranth", config=cfg)
    y = hw.gemm(a, w)
    np.testing.assert_array_equal(y, a.astype(np.int64) @ w)
    np.testing.assert_array_equal(gold.gemm(a, w), y)
    for key in ("macs", "macs_skipped", "passes_skipped"):
        assert hw.stats[key] == gold.stats[key], key
    # K = 40: two K-groups of 16 rows (4 per lane) and one of 8 (2 per lane), two N-blocks.
    # Balanced per lane, a group packs into as many tiles as each lane keeps rows; all zero,
    # each N-block still gets its one empty tile.
    tiles = compiler.pack_weights(cfg, w)
    assert tiles.dense_tiles == 2 * (4 + 4 + 2)
    assert tiles.tiles == (2 * (keep + keep + min(keep, 2)) if keep else 2)


def test_lane_gather_on_a_retimed_8x8_whose_crossbar_would_take_two_stages():
    # 32-byte gather: the crossbar build selects in two registered stages, the lane gather in
    # one 4:1 select per row. Dense weights, then half the K-rows zero at random (the lane
    # packing of unbalanced sparsity), with zero activations.
    rng = np.random.default_rng(88)
    a = rng.integers(-128, 128, (20, 70)).astype(np.int8)
    a[rng.random(a.shape) < 0.3] = 0
    dense = rng.integers(-128, 128, (70, 11)).astype(np.int8)
    dense.reshape(-1)[:2] = [-128, 127]
    sparse = np.where((rng.random(70) < 0.5)[:, None], 0, dense).astype(np.int8)
    runs = {}
    for name, w in (("dense", dense), ("sparse", sparse)):
        for gather in ("crossbar", "lane"):
            cfg = NPUConfig(rows=8, cols=8, retime=True, zero_lookahead=1, gather=gather)
            hw = Device(backend="amaranth", config=cfg)
            np.testing.assert_array_equal(hw.gemm(a, w), a.astype(np.int64) @ w)
            gold = Device(backend="golden", config=cfg)
            gold.gemm(a, w)
            for key in ("macs", "macs_skipped", "passes_skipped"):
                assert hw.stats[key] == gold.stats[key], (name, gather, key)
            runs[name, gather] = (compiler.pack_weights(cfg, w).tiles, hw.stats["cycles"])
    # Dense, the same 18 tiles: the lane gather's one stage less saves cycles. Sparse, the
    # crossbar packs 14 tiles, the lane gather 16 (its lanes are not balanced): it takes longer.
    assert runs == LANE_VS_CROSSBAR


LANE_VS_CROSSBAR = {("dense", "crossbar"): (18, 775), ("dense", "lane"): (18, 767),
                    ("sparse", "crossbar"): (14, 682), ("sparse", "lane"): (16, 724)}


def test_lane_packing_puts_each_k_row_in_its_own_lane():
    cfg = NPUConfig(rows=4, cols=2, sparse_group=4, gather="lane")
    w = np.zeros((16, 2), np.int8)
    # K-rows 1, 5, 9 (all lane 1) and 2: three tiles for lane 1; the crossbar needs one.
    w[[1, 5, 9, 2]] = [[1, -1], [2, -2], [3, -3], [4, -4]]
    tiles = compiler.pack_weights(cfg, w)
    crossbar = compiler.pack_weights(NPUConfig(rows=4, cols=2, sparse_group=4), w)
    assert (tiles.tiles, crossbar.tiles) == (3, 1)
    pitch = compiler.roundup(max(cfg.cols, cfg.rows), cfg.bus_bytes)
    blob = tiles.blob.reshape(3, cfg.rows + 1, pitch)
    no = compiler.NO_ROW
    np.testing.assert_array_equal(blob[:, cfg.rows, :4], [[no, 1, 2, no], [no, 5, no, no],
                                                          [no, 9, no, no]])
    np.testing.assert_array_equal(blob[:, 1, :2].view(np.int8), [[1, -1], [2, -2], [3, -3]])
    np.testing.assert_array_equal(blob[0, 2, :2].view(np.int8), [4, -4])
    assert not blob[:, 0].any() and not blob[1:, 2].any() and not blob[:, 3, :2].any()
