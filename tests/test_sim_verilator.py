# amaranth: UnusedElaboratable=no
"""The Verilog in Verilator (cocotb 1.8 runner) against the Amaranth simulation and numpy.

The default suite builds two configurations once per session: the harness of a 2-core 8x8 NPU
(memory latency 8, 8 bytes per cycle) and the plain 1-core top for cocotbext-axi's models; one
more is built for the FPGA build's retimed options.
Builds are kept in build/verilator/ and reused across sessions while the sources are unchanged.
"""

import dataclasses

import numpy as np
import pytest

from npu.firmware.device import Device, build_gemm_image
from npu.firmware.quant import requantize
from npu.rtl.config import NPUConfig
from npu.rtl.control import COUNTERS
from npu.rtl.isa import CoreState, ErrorCode
from npu.rtl.top import NPU
from npu.sim.amaranth_backend import AmaranthBackend
from npu.sim.backend import NPUTimeout
from npu.sim.golden_backend import GoldenBackend
from npu.sim.verilator_backend import (
    VerilatorBackend,
    build_top,
    decode_core,
    long_program,
    measure_speed,
    run_cocotb,
    verilator_available,
)
from npu.synth.boards import board_config
from npu.synth.export import lint, port_names

pytestmark = pytest.mark.skipif(not verilator_available(), reason="verilator is not installed")

#: The configuration of the default suite's harness.
CONFIG = NPUConfig(cores=2)


@pytest.fixture(scope="session")
def verilator():
    backend = VerilatorBackend(CONFIG)
    backend.build()
    return backend


@pytest.fixture(scope="session")
def plain_top():
    return build_top(NPUConfig())


def gemm(cfg, m, k, n, *, seed, cores=1, barrier=False):
    """A raw int32 GEMM laid out by Device's compiler. With ``barrier``, each core's program
    ends with a BARRIER, so the first core to finish waits for the others."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    image = build_gemm_image(cfg, a, b, raw=True, cores=cores, barrier_after=barrier)
    return image, a, b


def summary(result):
    return [(c.state, c.error, c.pc, c.counters) for c in result.cores]


def assert_identical(got, expected):
    assert summary(got) == summary(expected)
    assert got.cycles == expected.cycles
    np.testing.assert_array_equal(got.memory, expected.memory)


def test_gemm_matches_amaranth_cycle_for_cycle(verilator):
    image, a, b = gemm(CONFIG, 40, 30, 20, seed=1)
    expected = AmaranthBackend(CONFIG).run(image.memory, image.starts)
    got = verilator.run(image.memory, image.starts)
    assert_identical(got, expected)
    assert all(c.state is CoreState.DONE for c in got.cores)
    np.testing.assert_array_equal(image.read_output(got.memory), a.astype(np.int32) @ b)
    assert got.cores[0].counters["stall_memory"] > 0  # the memory timing was exercised


def test_retimed_fpga_configuration_matches_amaranth_cycle_for_cycle():
    # The ECP5 build's options (register stages, one-line zero lookahead), on a smaller array;
    # requantised, with whole zero vectors to skip.
    cfg, _ = board_config("ulx3s-85f", cores=2, rows=4, cols=4)
    assert cfg.retime
    cfg = dataclasses.replace(cfg, addr_width=32)    # the harness memory is larger than 64 KiB
    rng = np.random.default_rng(12)
    a = rng.integers(-128, 128, (30, 40)).astype(np.int8)
    b = rng.integers(-128, 128, (40, 9)).astype(np.int8)
    a[5:17] = 0
    params = {"bias": rng.integers(-5000, 5000, 9),
              "multiplier": rng.integers(1 << 28, 1 << 31, 9),
              "shift": rng.integers(-9, 2, 9), "zero_point": -3, "act_min": -128, "act_max": 127}
    image = build_gemm_image(cfg, a, b, raw=False, params=params)
    expected = AmaranthBackend(cfg).run(image.memory, image.starts)
    got = VerilatorBackend(cfg).run(image.memory, image.starts)
    assert_identical(got, expected)
    np.testing.assert_array_equal(
        image.read_output(got.memory),
        requantize(a.astype(np.int64) @ b, params["bias"], params["multiplier"],
                   params["shift"], -3, -128, 127))
    assert sum(c.counters["passes_skipped"] for c in got.cores) > 0


def test_two_cores_meeting_at_a_barrier_match_amaranth_cycle_for_cycle(verilator):
    image, a, b = gemm(CONFIG, 24, 16, 16, seed=2, cores=2, barrier=True)
    expected = AmaranthBackend(CONFIG).run(image.memory, image.starts)
    got = verilator.run(image.memory, image.starts)
    assert_identical(got, expected)
    assert len(got.cores) == 2 and all(c.state is CoreState.DONE for c in got.cores)
    # The core that reached the barrier first waited there.
    assert max(c.counters["stall_dependency"] for c in got.cores) > 0
    np.testing.assert_array_equal(image.read_output(got.memory), a.astype(np.int32) @ b)


def test_quantised_conv_layer_matches_amaranth_output_cycles_and_counters(verilator):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 5, 5, 4)).astype(np.int8)
    w = rng.integers(-127, 128, (3, 3, 4, 6)).astype(np.int8)
    quant = {"bias": rng.integers(-500, 500, 6), "multiplier": rng.integers(1 << 29, 1 << 31, 6),
             "shift": np.full(6, -6), "padding": "same", "in_zero_point": -3,
             "out_zero_point": 5}
    devices = [Device(backend=name, config=CONFIG) for name in ("amaranth", "verilator")]
    amaranth_y, verilator_y = (dev.conv2d(x, w, **quant) for dev in devices)
    np.testing.assert_array_equal(verilator_y, amaranth_y)
    amaranth_stats, verilator_stats = (dev.stats for dev in devices)
    assert verilator_stats["cycles"] == amaranth_stats["cycles"] > 0
    assert verilator_stats["per_core"] == amaranth_stats["per_core"]
    golden_y = Device(backend="golden", config=CONFIG).conv2d(x, w, **quant)
    np.testing.assert_array_equal(verilator_y, golden_y)


def test_device_gemm_on_verilator_equals_numpy():
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (33, 47)).astype(np.int8)
    b = rng.integers(-128, 128, (47, 19)).astype(np.int8)
    dev = Device(backend="verilator", config=CONFIG)
    np.testing.assert_array_equal(dev.gemm(a, b), a.astype(np.int64) @ b)
    assert dev.stats["backend"] == "verilator" and dev.stats["cycles"] > 0


@pytest.mark.parametrize("budget", [60, 200])  # the run takes about 360 cycles
def test_budget_exhaustion_reports_the_same_state_as_amaranth(verilator, budget):
    image, _, _ = gemm(CONFIG, 16, 16, 16, seed=5, cores=2)
    with pytest.raises(NPUTimeout) as amaranth_exc:
        AmaranthBackend(CONFIG).run(image.memory, image.starts, max_cycles=budget)
    with pytest.raises(NPUTimeout) as verilator_exc:
        verilator.run(image.memory, image.starts, max_cycles=budget)
    assert str(verilator_exc.value) == str(amaranth_exc.value)
    assert verilator_exc.value.cores == amaranth_exc.value.cores
    assert verilator_exc.value.cores[0]["state"] is CoreState.BUSY
    assert verilator_exc.value.cores[0]["counters"]["cycles"] > 0


def test_error_status_and_faulting_pc_match_amaranth(verilator):
    # A window that ends before the data: the first LOAD outside it halts with DMA_WINDOW.
    image, _, _ = gemm(CONFIG, 8, 8, 8, seed=6)
    windows = [(0, image.layout.a_addr)]
    expected = AmaranthBackend(CONFIG).run(image.memory, image.starts, windows)
    got = verilator.run(image.memory, image.starts, windows)
    assert_identical(got, expected)
    assert got.cores[0].state is CoreState.ERROR
    assert got.cores[0].error is ErrorCode.DMA_WINDOW


def test_axi_ram_and_axi_lite_master_from_cocotbext_run_a_gemm(plain_top, tmp_path):
    # Someone else's AXI models judge the bus: AxiRam serves memory, AxiLiteMaster drives the
    # registers of the plain top (AXI-convention port names, as exported).
    cfg = NPUConfig()
    image, a, b = gemm(cfg, 20, 24, 12, seed=7)
    np.save(tmp_path / "image.npy", image.memory)
    job = {"image": str(tmp_path / "image.npy"), "memory_out": str(tmp_path / "memory.npy"),
           "programs": image.starts, "windows": [[0, len(image.memory)]],
           "max_cycles": 200_000, "period_ns": 10, "ports": sorted(port_names(NPU(cfg)))}
    _, result = run_cocotb(plain_top, "npu", "axiram_job", job, workdir=tmp_path)
    memory = np.load(tmp_path / "memory.npy")
    np.testing.assert_array_equal(image.read_output(memory), a.astype(np.int32) @ b)
    (core,) = [decode_core(**c) for c in result["cores"]]
    assert core["state"] is CoreState.DONE and core["error"] is ErrorCode.NONE
    # The counters that do not depend on timing agree with the golden model.
    golden = GoldenBackend(cfg).run(image.memory, image.starts).cores[0]
    for name in ("macs", "dma_read_bytes", "dma_write_bytes"):
        assert core["counters"][name] == golden.counters[name], name
    assert core["pc"] == golden.pc


def test_exported_top_has_axi_port_names_and_is_lint_clean(plain_top):
    path = plain_top / "npu.v"
    text = path.read_text()
    port_list = text[text.index("module npu(") + len("module npu("):text.index(");")]
    ports = {name.strip() for name in port_list.split(",")}
    axi = ["awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready", "wdata",
           "wstrb", "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready", "arid",
           "araddr", "arlen", "arsize", "arburst", "arvalid", "arready", "rid", "rdata",
           "rresp", "rlast", "rvalid", "rready"]
    axil = ["awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
            "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready", "rdata",
            "rresp", "rvalid", "rready"]
    assert ports == ({f"m_axi_{s}" for s in axi} | {f"s_axil_{s}" for s in axil}
                     | {"irq", "clk", "rst"})
    result = lint(path, "npu")
    assert result.returncode == 0, result.stderr


def test_counters_are_read_in_register_order():
    # decode_core unpacks the probe word in COUNTERS order, 32 bits each.
    packed = sum((k + 1) << (32 * k) for k in range(len(COUNTERS)))
    core = decode_core(state=2, error=0, pc=0x40, counters=packed)
    assert core["counters"] == {name: k + 1 for k, name in enumerate(COUNTERS)}
    assert core["state"] is CoreState.DONE and core["error"] is ErrorCode.NONE


# --------------------------------------------------------------------------------------------
# Long: other memory timings, more cores, the speed figure, waveforms.


@pytest.mark.slow
@pytest.mark.parametrize(("latency", "bytes_per_cycle"), [(1, 8), (3, 4), (12, 2)])
def test_other_memory_timings_match_amaranth(latency, bytes_per_cycle):
    image, _, _ = gemm(CONFIG, 20, 20, 20, seed=8, cores=2, barrier=True)
    timing = {"latency": latency, "bytes_per_cycle": bytes_per_cycle}
    expected = AmaranthBackend(CONFIG, **timing).run(image.memory, image.starts)
    got = VerilatorBackend(CONFIG, **timing).run(image.memory, image.starts)
    assert_identical(got, expected)


@pytest.mark.slow
def test_four_cores_match_amaranth():
    cfg = NPUConfig(cores=4, rows=4, cols=4)
    image, a, b = gemm(cfg, 32, 12, 8, seed=9, cores=4, barrier=True)
    expected = AmaranthBackend(cfg).run(image.memory, image.starts)
    got = VerilatorBackend(cfg).run(image.memory, image.starts)
    assert_identical(got, expected)
    np.testing.assert_array_equal(image.read_output(got.memory), a.astype(np.int32) @ b)


@pytest.mark.slow
def test_verilator_runs_at_least_100_times_more_cycles_per_second(verilator):
    report = measure_speed(CONFIG, repeats=(2, 100), verbose=False)
    assert report["verilator_cycles"] > 100_000
    assert report["speedup"] >= 100, report


@pytest.mark.slow
def test_long_program_result_and_cycles_match_amaranth(verilator):
    memory, base, image, a, b = long_program(CONFIG, 2, size=32)
    expected = AmaranthBackend(CONFIG).run(memory, [base])
    got = verilator.run(memory, [base])
    assert_identical(got, expected)
    np.testing.assert_array_equal(image.read_output(got.memory), a.astype(np.int32) @ b)


@pytest.mark.slow
def test_waves_env_writes_an_fst(monkeypatch):
    from npu.sim.verilator_backend import _PACKAGE_ROOT

    monkeypatch.setenv("WAVES", "1")
    cfg = NPUConfig()
    image, _, _ = gemm(cfg, 8, 8, 8, seed=10)
    backend = VerilatorBackend(cfg)
    build_dir = backend.build()
    fst = _PACKAGE_ROOT / "build" / "waves" / f"verilator_{build_dir.name}.fst"
    fst.unlink(missing_ok=True)
    backend.run(image.memory, image.starts)
    assert fst.exists() and fst.stat().st_size > 0
