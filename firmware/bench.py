"""``make bench``: the NPU measured against its goals and against the ideal.

Every cycle count comes from a cycle-exact run (Verilator when it is available, else the
Amaranth simulator). Results go to ``docs/bench.json``, plots to ``docs/*.png``, and the
README's performance table is regenerated from the JSON (between its bench markers).
"""

import json
import platform
import re
import time
from pathlib import Path

import numpy as np

from .device import Device
from .quant import requantize

__all__ = ["ENERGY_PJ", "energy_estimate", "run_bench"]

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "docs" / "bench.json"
README = ROOT / "README.md"

#: Energy per operation at 45 nm (Horowitz, ISSCC 2014), in pJ.
ENERGY_PJ = {
    "mult8": 0.2,           # 8-bit multiply
    "add32": 0.1,           # 32-bit add
    "sram64_32k": 20.0,     # 64-bit read or write of a 32 KB SRAM
    "dram64": 2000.0,       # 64-bit DRAM access (1.3-2.6 nJ; the middle)
}

#: Memory of the benchmark setting: bytes per cycle each way and latency in cycles.
BYTES_PER_CYCLE = 8
LATENCY = 32


def _backend():
    try:
        from npu.sim.verilator_backend import VerilatorBackend  # noqa: F401
        from npu.synth.export import verilator_path
        if verilator_path():
            return "verilator"
    except ImportError:
        pass
    return "amaranth"


def _rand(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


def _gemm(backend, M, K, N, *, cores=1, bytes_per_cycle=BYTES_PER_CYCLE, sparse=None,
          b=None, seed=0, quantised=True):
    rng = np.random.default_rng(seed)
    a = _rand(rng, (M, K))
    b = _rand(rng, (K, N)) if b is None else b
    dev = Device(backend=backend, cores=cores, memory_latency=LATENCY,
                 bytes_per_cycle=bytes_per_cycle, max_cycles=50_000_000)
    t0 = time.time()
    kwargs = dict(multiplier=1 << 30, shift=-12) if quantised else {}
    y = dev.gemm(a, b, sparse=sparse, **kwargs)
    wall = time.time() - t0
    acc = a.astype(np.int64) @ b.astype(np.int64)
    expected = requantize(acc, 0, 1 << 30, -12, 0, -128, 127) if quantised else acc
    if not np.array_equal(y, expected):
        raise AssertionError(f"{M}x{K}x{N} on {backend}: result differs from numpy")
    s = dict(dev.stats)
    s["wall_seconds"] = wall
    return s


def energy_estimate(stats, config):
    """pJ per MAC and the shares of DRAM, SRAM and MAC energy, from a run's counters.

    MAC: every issued MAC that is not gated costs a multiply and a 32-bit add. SRAM: each
    issued vector reads one scratchpad line and read-modify-writes one accumulator row; every
    DMA byte is written to or read from SRAM once. DRAM: every DMA byte.
    """
    e = ENERGY_PJ
    R, C, L = config.rows, config.cols, config.line_bytes
    vectors = stats["macs"] // (R * C)
    gated = max(0, stats["macs_skipped"] - stats["passes_skipped"] * R * C)
    mac = (stats["macs"] - gated) * (e["mult8"] + e["add32"])
    words = lambda nbytes: -(-nbytes // 8)   # 64-bit accesses
    dma = stats["dma_read_bytes"] + stats["dma_write_bytes"]
    sram = (vectors * (words(L) + 2 * words(4 * C)) + words(dma)) * e["sram64_32k"]
    dram = words(dma) * e["dram64"]
    total = mac + sram + dram
    useful = max(1, stats["macs"] + stats["passes_skipped"] * R * C)
    return {"pj_per_mac": total / useful, "dram_share": dram / total,
            "sram_share": sram / total, "mac_share": mac / total}


SECTIONS = ("utilization", "scaling", "memory_wall", "sparse", "speed")


def run_bench(*, quick=False, backend=None, out=JSON_PATH, sections=SECTIONS):
    """Run the benchmark sections; results already in ``out`` for other sections are kept."""
    from npu.rtl.config import NPUConfig
    backend = backend or _backend()
    big = 128 if quick else 256
    results = json.loads(out.read_text()) if out.exists() and set(sections) != set(
        SECTIONS) else {}
    results.update({"backend": backend, "memory": {"bytes_per_cycle": BYTES_PER_CYCLE,
                                                   "latency": LATENCY},
                    "machine": platform.machine(), "quick": quick})
    cfg = NPUConfig()
    print(f"benchmarks on the {backend} backend; memory {BYTES_PER_CYCLE} B/cycle, "
          f"latency {LATENCY} cycles; 8x8 array")

    if "utilization" in sections:
        _utilization(results, backend, big, cfg)
    if "scaling" in sections:
        _scaling(results, backend, big)
    if "memory_wall" in sections:
        _memory_wall(results, backend, cfg)
    if "sparse" in sections:
        _sparse(results, backend, big, cfg)
    if "speed" in sections:
        _speed(results, backend)
    if "utilization" in results:
        e = results["utilization"][f"{big}x{big}x{big}"]["energy"]
        print(f"\n-- energy estimate ({big}^3): {e['pj_per_mac']:.2f} pJ/MAC; DRAM "
              f"{e['dram_share']:.0%}, SRAM {e['sram_share']:.0%}, MAC {e['mac_share']:.0%}")
    results["energy_pj"] = ENERGY_PJ
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    _plots(results, out.parent)
    if not quick:
        update_readme(results)
    print(f"\nwrote {out}")
    return 0


def _utilization(results, backend, big, cfg):
    print("\n-- dense GEMM utilisation, 1 core (goal: >= 95 % on 256^3, DMA included) --")
    util = {}
    shapes = [(64, 64, 64), (big, big, big)] + ([] if big < 256 else [(512, 512, 128)])
    for M, K, N in shapes:
        s = _gemm(backend, M, K, N)
        key = f"{M}x{K}x{N}"
        util[key] = {k: s[k] for k in ("cycles", "macs", "utilization", "dma_read_bytes",
                                       "dma_write_bytes", "stall_memory_cycles",
                                       "stall_dependency_cycles")}
        util[key]["energy"] = energy_estimate(s, cfg)
        ideal = M * K * N / 64
        print(f"  {key:<14} {s['cycles']:>9} cycles (ideal {ideal:>9.0f})  "
              f"utilisation {s['utilization']:6.1%}  stall mem {s['stall_memory_cycles']}")
    results["utilization"] = util
    results["utilization_goal"] = {"shape": f"{big}x{big}x{big}", "goal": 0.95,
                                   "met": util[f"{big}x{big}x{big}"]["utilization"] >= 0.95}

    # Digits CNN layers (batch of 32 images), as GEMMs after im2col.
    cnn = {}
    for name, (M, K, N) in {"conv1": (32 * 64, 9, 8), "conv2": (32 * 16, 72, 16),
                            "fc": (32, 256, 10)}.items():
        s = _gemm(backend, M, K, N, seed=1)
        cnn[name] = {"shape": [M, K, N], "cycles": s["cycles"],
                     "utilization": s["utilization"], "energy": energy_estimate(s, cfg)}
        print(f"  digits {name:<6} {M}x{K}x{N}: {s['cycles']} cycles, utilisation "
              f"{s['utilization']:6.1%} (K or N below the array size caps it)")
    results["digits_cnn"] = cnn


def _scaling(results, backend, big):
    print(f"\n-- multi-core scaling, {big}^3 (goal: >= 3.6x at 4 cores) --")
    scaling = {}
    base = None
    for cores in (1, 2, 4, 8):
        s = _gemm(backend, big, big, big, cores=cores)
        base = base or s["cycles"]
        scaling[cores] = {"cycles": s["cycles"], "speedup": base / s["cycles"],
                          "utilization": s["utilization"]}
        print(f"  {cores} core(s): {s['cycles']:>8} cycles  speedup {base / s['cycles']:5.2f}x"
              f"  (ideal {cores}x)  utilisation {s['utilization']:6.1%}")
    results["scaling"] = scaling
    results["scaling_goal"] = {"cores": 4, "goal": 3.6, "met": scaling[4]["speedup"] >= 3.6}


def _memory_wall(results, backend, cfg):
    print("\n-- memory wall: utilisation against memory bytes per cycle, 1 core --")
    wall = {}
    for bpc in (1, 2, 4, 8, 16):
        s = _gemm(backend, 128, 128, 128, bytes_per_cycle=bpc)
        roof = _roof(s, bpc, cfg)
        wall[bpc] = {"cycles": s["cycles"], "utilization": s["utilization"],
                     "dma_read_bytes": s["dma_read_bytes"], "roof": roof}
        print(f"  {bpc:>2} B/cycle: utilisation {s['utilization']:6.1%}  (ideal {roof:6.1%}: "
              f"compute or reading its {s['dma_read_bytes']} bytes at {bpc} B/cycle)")
    results["memory_wall"] = wall


def _roof(stats, bytes_per_cycle, cfg):
    """Roofline bound on utilisation (one core): the MACs at one vector per cycle, or the run's
    DMA reads at ``bytes_per_cycle``, whichever takes longer (the bus moves at most one beat
    per cycle)."""
    compute = stats["macs"] / cfg.macs_per_cycle
    reads = stats["dma_read_bytes"] / min(bytes_per_cycle, cfg.bus_bytes)
    return min(1.0, compute / reads) if reads else 1.0


def _sparse(results, backend, big, cfg):
    print(f"\n-- sparse sweep, {big}^3, 1 core (goal: >= 1.8x at 50 %, >= 3.6x at 75 %) --")
    sweep = {}
    dense = None
    rng = np.random.default_rng(5)
    for sparsity in (0.0, 0.25, 0.5, 0.75, 0.9):
        b = _rand(rng, (big, big))
        b[b == 0] = 1
        group = cfg.gather_bytes
        for q in range(0, big, group):
            b[q + rng.permutation(group)[:round(sparsity * group)]] = 0
        s = _gemm(backend, big, big, big, b=b, seed=2)
        dense = dense or s["cycles"]
        sweep[sparsity] = {"cycles": s["cycles"], "speedup": dense / s["cycles"],
                           "ideal": 1 / (1 - sparsity),
                           "passes_skipped": s["passes_skipped"]}
        print(f"  {sparsity:4.0%} zero K-rows: {s['cycles']:>8} cycles  speedup "
              f"{dense / s['cycles']:5.2f}x  (ideal {1 / (1 - sparsity):5.2f}x, "
              f"cap {cfg.sparse_group}x)")
    results["sparse"] = sweep
    results["sparse_goal"] = {"0.5": sweep[0.5]["speedup"] >= 1.8,
                              "0.75": sweep[0.75]["speedup"] >= 3.6}


def _speed(results, backend):
    print("\n-- simulation speed (simulated NPU cycles per wall-clock second) --")
    speed = {}
    # Golden: a 128^3 GEMM, rated by the cycles its cycle-exact run takes.
    s = _gemm("golden", 128, 128, 128)
    speed["golden"] = _gemm(backend, 128, 128, 128)["cycles"] / s["wall_seconds"]
    if backend == "verilator":
        # Same program on both, each long enough for its fixed costs not to dominate.
        from npu.sim.verilator_backend import measure_speed
        r = measure_speed(verbose=False)
        speed["amaranth"], speed["verilator"] = r["amaranth_cps"], r["verilator_cps"]
        results["verilator_speedup"] = r["speedup"]
    else:
        s = _gemm("amaranth", 64, 64, 64)
        speed["amaranth"] = s["cycles"] / s["wall_seconds"]
    for name, v in speed.items():
        print(f"  {name:<9} {v:>12.0f} cycles/s")
    results["sim_speed"] = speed


def _plots(results, folder):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "memory_wall" in results:
        _plot_wall(results["memory_wall"], folder, plt)
    if "sparse" in results:
        _plot_sparse(results["sparse"], folder, plt)


def _plot_wall(wall, folder, plt):
    bpc = [int(k) for k in wall]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(bpc, [wall[k]["utilization"] for k in wall], "o-", label="measured")
    # Roofline: the MACs at one vector per cycle, or the run's DMA reads at that bandwidth.
    if all("roof" in v for v in wall.values()):
        ax.plot(bpc, [wall[k]["roof"] for k in wall], "--", label="roof (compute or DMA reads)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory bytes per cycle")
    ax.set_ylabel("MAC utilisation")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Memory wall, 128^3 GEMM, 8x8 array")
    fig.tight_layout()
    fig.savefig(folder / "roofline.png", dpi=120)
    plt.close(fig)


def _plot_sparse(sweep, folder, plt):
    s = [float(k) for k in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(s, [sweep[k]["speedup"] for k in sweep], "o-", label="measured")
    ax.plot(s, [sweep[k]["ideal"] for k in sweep], "--", label="ideal 1/(1-s)")
    ax.set_xlabel("fraction of zero K-rows (structured)")
    ax.set_ylabel("speedup over dense")
    ax.legend()
    ax.set_title("Zero skipping")
    fig.tight_layout()
    fig.savefig(folder / "sparse.png", dpi=120)
    plt.close(fig)


def update_readme(results, readme=README):
    """Rewrite the README's performance section from the benchmark results."""
    big = results.get("utilization_goal", {}).get("shape", "256x256x256")
    u = results.get("utilization", {})
    lines = [(f"Measured by `make bench` on the {results['backend']} backend (memory "
             f"{results['memory']['bytes_per_cycle']} B/cycle each way, latency "
             f"{results['memory']['latency']} cycles; 8x8 array). Raw data: "
             "`docs/bench.json`."), "",
             "| benchmark | measured | goal | ideal |", "|---|---|---|---|"]
    for key, v in u.items():
        goal = "≥ 95 %" if key == big else ""
        lines.append(f"| utilisation {key}, 1 core | {v['utilization']:.1%} "
                     f"({v['cycles']} cycles) | {goal} | 100 % |")
    for cores, v in results.get("scaling", {}).items():
        goal = "≥ 3.6x" if str(cores) == "4" else ""
        lines.append(f"| {big}, {cores} core(s) | {v['speedup']:.2f}x ({v['cycles']} cycles) "
                     f"| {goal} | {cores}x |")
    for s, v in results.get("sparse", {}).items():
        goal = {"0.5": "≥ 1.8x", "0.75": "≥ 3.6x"}.get(str(s), "")
        lines.append(f"| {big} with {float(s):.0%} zero K-rows | {v['speedup']:.2f}x | {goal} "
                     f"| {v['ideal']:.2f}x |")
    for bpc, v in results.get("memory_wall", {}).items():
        roof = f"{v['roof']:.1%}" if "roof" in v else ""
        lines.append(f"| 128^3 at {bpc} B/cycle | {v['utilization']:.1%} | | {roof} |")
    for name, v in results.get("sim_speed", {}).items():
        lines.append(f"| simulation speed, {name} | {v:,.0f} cycles/s | | |")
    if big in u:
        e = u[big]["energy"]
        lines.append(f"| energy estimate, {big} | {e['pj_per_mac']:.2f} pJ/MAC (DRAM "
                     f"{e['dram_share']:.0%}, SRAM {e['sram_share']:.0%}, MAC "
                     f"{e['mac_share']:.0%}) | | |")
    lines += ["", "![roofline](docs/roofline.png) ![sparse](docs/sparse.png)"]
    table = "\n".join(lines)
    text = readme.read_text()
    pattern = re.compile(r"(<!-- begin bench -->\n).*?(\n<!-- end bench -->)", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda m: m.group(1) + table + m.group(2), text)
    else:
        text += "\n## Performance\n\n<!-- begin bench -->\n" + table + "\n<!-- end bench -->\n"
    readme.write_text(text)
