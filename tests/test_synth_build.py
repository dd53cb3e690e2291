# amaranth: UnusedElaboratable=no
"""The FPGA build: report parsing on nextpnr's documented format, tool discovery, and one
real (small) synthesis behind the ``synth`` marker."""

import json
import signal
import time

import pytest

from npu.synth.boards import BOARDS, board_config
from npu.synth.build import (
    _overrides,
    _what_to_build,
    build,
    find_toolchain,
    missing_tools,
    pe_dsp_count,
    pe_mult_choice,
    run_tools,
)
from npu.synth.build import main as build_main
from npu.synth.report import (
    parse_critical_paths,
    parse_fmax_log,
    parse_nextpnr_report,
    parse_utilisation_log,
    parse_yosys_cells,
    report_stem,
    summarise,
    write_reports,
)
from npu.synth.table import render_table

# nextpnr's --report format (docs/report.md of nextpnr), with one critical path.
NEXTPNR_REPORT = {
    "utilization": {
        "TRELLIS_COMB": {"used": 20000, "available": 83640},
        "TRELLIS_FF": {"used": 9000, "available": 83640},
        "MULT18X18D": {"used": 96, "available": 156},
        "DP16KD": {"used": 58, "available": 208},
    },
    "fmax": {"cd_sync.clk": {"achieved": 87.5, "constraint": 100.0}},
    "critical_paths": [{
        "from": "posedge cd_sync.clk", "to": "posedge cd_sync.clk",
        "path": [
            {"type": "clk-to-q", "delay": 0.5, "from": {"cell": "a_reg"}, "to": {"cell": "a_reg"}},
            {"type": "routing", "delay": 2.0, "from": {"cell": "a_reg"}, "to": {"cell": "mul"},
             "sources": ["/x/rtl/systolic.py:83", "/share/ecp5/arith_map.v:1"]},
            {"type": "logic", "delay": 6.0, "from": {"cell": "mul"}, "to": {"cell": "mul"}},
            {"type": "routing", "delay": 2.5, "from": {"cell": "mul"}, "to": {"cell": "psum"},
             "sources": ["/x/rtl/systolic.py:83"]},
            {"type": "setup", "delay": 0.43, "from": {"cell": "psum"}, "to": {"cell": "psum"}},
        ],
    }, {"from": "<async>", "to": "posedge cd_sync.clk", "path": []}],
}


def test_nextpnr_report_and_critical_path_are_parsed():
    text = json.dumps(NEXTPNR_REPORT)
    utilization, fmax = parse_nextpnr_report(text)
    assert utilization["MULT18X18D"] == {"used": 96, "available": 156}
    assert fmax == {"cd_sync.clk": {"achieved": 87.5, "constraint": 100.0}}
    paths = parse_critical_paths(text)
    assert list(paths) == ["cd_sync.clk"]
    path = paths["cd_sync.clk"]
    assert (path["from"], path["to"]) == ("a_reg", "psum")
    assert path["delay_ns"] == pytest.approx(11.43)
    assert (path["logic_ns"], path["routing_ns"]) == (pytest.approx(6.93), pytest.approx(4.5))
    assert path["sources"] == ["rtl/systolic.py:83"]


def test_report_says_fail_below_the_target_and_writes_json_and_markdown(tmp_path):
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=8, cols=8)
    text = json.dumps(NEXTPNR_REPORT)
    utilization, fmax = parse_nextpnr_report(text)
    report = summarise(BOARDS["ulx3s-85f"], config, mem_bytes=mem_bytes, clock_hz=100e6,
                       pe_mult="dsp", utilization=utilization, fmax=fmax,
                       paths=parse_critical_paths(text), yosys_cells={}, seconds=1.0,
                       command="make synth")
    assert report["pass"] is False and report["fits"] is True
    assert report["resources"]["dsps"] == {"used": 96, "available": 156, "cell": "MULT18X18D"}
    assert report["resources"]["luts"]["used"] == 20000
    assert report["peak_gops_at_target"] == 12.8          # 2 x 64 MACs x 100 MHz
    assert report["peak_gops_at_fmax"] == 11.2            # at 87.5 MHz
    json_path, md_path = write_reports(report, tmp_path, "ulx3s-85f_1x8x8")
    assert json.loads(json_path.read_text())["clocks"]["cd_sync.clk"]["pass"] is False
    md = md_path.read_text()
    assert "**FAIL**" in md and "| MULT18X18D" not in md and "| DSPs (MULT18X18D) | 96 | 156 |" in md
    assert "4.5 ns routing; rtl/systolic.py:83) |" in md
    # A path through no line of the project's sources names none.
    report["clocks"]["cd_sync.clk"]["critical_path"]["sources"] = []
    _, md_path = write_reports(report, tmp_path, "no_sources")
    assert "4.5 ns routing) |" in md_path.read_text()


def test_utilisation_of_a_design_that_does_not_fit_comes_from_the_log():
    log = ("Info: Device utilisation:\n"
           "Info: \t         ICESTORM_LC:   12137/   5280   229%\n"
           "Info: \t      ICESTORM_SPRAM:       2/      4    50%\n")
    assert parse_utilisation_log(log) == {
        "ICESTORM_LC": {"used": 12137, "available": 5280},
        "ICESTORM_SPRAM": {"used": 2, "available": 4}}


def test_yosys_cell_counts_are_the_whole_designs():
    rpt = ("Printing statistics.\n=== top ===\n      12   SB_LUT4\n"
           "=== design hierarchy ===\n     100   SB_LUT4\n      40   SB_DFFE\n"
           "        3   SB_MAC16\n     100   SB_LUT4\n")
    assert parse_yosys_cells(rpt) == {"SB_LUT4": 100, "SB_DFFE": 40, "SB_MAC16": 3}


def test_pe_multipliers_go_to_dsps_as_far_as_they_fit():
    one, _ = board_config("ulx3s-85f", cores=1, rows=8, cols=8)
    four, _ = board_config("ulx3s-85f", cores=4, rows=8, cols=8)
    assert pe_mult_choice("ulx3s-85f", one) == "dsp"        # 64 + 32 requant + 1 <= 156
    assert pe_mult_choice("ulx3s-85f", four) == "mixed"     # 256 + 128 + 4 > 156
    assert pe_dsp_count("ulx3s-85f", four) == (156 - 128 - 4) // 4
    big, _ = board_config("ulx3s-85f", cores=1, rows=16, cols=16, requant_lanes=4)
    assert pe_mult_choice("ulx3s-85f", big) == "mixed"
    assert pe_dsp_count("ulx3s-85f", big) == 156 - 16 - 1
    # The others are Booth-encoded: from the first PE past the DSPs on.
    script = _overrides("ulx3s-85f", big, "auto", seed=1)["script_after_read"]
    assert "pe_8_10 " not in script and "array.pe_8_11 " in script and "array.pe_15_15" in script
    assert pe_mult_choice("ulx3s-85f", four, "dsp") == "dsp"
    assert pe_dsp_count("ulx3s-85f", four, "lut") == 0
    with pytest.raises(ValueError,
                       match="pe_mult must be 'auto', 'dsp', 'lut' or 'mixed', not 'x'"):
        pe_mult_choice("ulx3s-85f", one, "x")


def test_toolchain_environment_variables_win(monkeypatch):
    monkeypatch.setenv("NEXTPNR_ICE40", "/nowhere/nextpnr-ice40")
    tools = find_toolchain("ice40")
    assert tools["NEXTPNR_ICE40"] == "/nowhere/nextpnr-ice40"
    assert set(tools) == {"YOSYS", "NEXTPNR_ICE40", "ICEPACK"}
    assert "NEXTPNR_ICE40" in missing_tools("ice40")


@pytest.mark.synth
def test_small_ecp5_build_reports_resources_and_fmax(tmp_path):
    missing = missing_tools("ecp5")
    if missing:
        pytest.skip(f"FPGA tools not found: {', '.join(missing)} (make synth-setup)")
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=2, cols=2, mem_bytes=16384)
    report = build("ulx3s-85f", config, mem_bytes=mem_bytes, build_dir=tmp_path / "build",
                   reports_dir=tmp_path / "reports", log=lambda *_: None)
    assert (tmp_path / "build" / "top.bit").exists()
    assert (tmp_path / "reports" / "ulx3s-85f_1x2x2.md").exists()
    res = report["resources"]
    assert report["fits"] and report["error"] is None
    assert 0 < res["luts"]["used"] < res["luts"]["available"] == 83640
    assert res["dsps"]["used"] >= 4 + 4 * 2       # PE products and requantiser on DSPs
    assert res["rams"]["DP16KD"]["used"] > 0
    assert report["fmax_mhz"] > 10


def test_a_lane_gather_build_has_its_own_report_and_row(tmp_path):
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=2, cols=2, gather="lane")
    assert report_stem("ulx3s-85f", config) == "ulx3s-85f_1x2x2_lane"
    assert report_stem("ulx3s-85f", board_config("ulx3s-85f", cores=1, rows=2, cols=2)[0]) \
        == "ulx3s-85f_1x2x2"
    utilization, fmax = parse_nextpnr_report(json.dumps(NEXTPNR_REPORT))
    report = summarise(BOARDS["ulx3s-85f"], config, mem_bytes=mem_bytes, clock_hz=100e6,
                       pe_mult="dsp", utilization=utilization, fmax=fmax, paths={},
                       yosys_cells={}, seconds=1.0, command="make synth")
    assert report["config"]["gather"] == "lane"
    write_reports(report, tmp_path, report_stem("ulx3s-85f", config))
    assert "| 1 x 2x2, lane gather |" in render_table(tmp_path)


def test_a_placed_only_build_is_an_estimate_and_never_passes(tmp_path):
    config, mem_bytes = board_config("ulx3s-85f", cores=1, rows=8, cols=8)
    fast = dict(NEXTPNR_REPORT, fmax={"cd_sync.clk": {"achieved": 120.0, "constraint": 100.0}})
    utilization, fmax = parse_nextpnr_report(json.dumps(fast))
    report = summarise(BOARDS["ulx3s-85f"], config, mem_bytes=mem_bytes, clock_hz=100e6,
                       pe_mult="dsp", utilization=utilization, fmax=fmax, paths={},
                       yosys_cells={}, seconds=1.0, command="make synth", routed=False)
    assert report["routed"] is False and report["pass"] is False
    assert report["fmax_mhz"] == 120.0
    _, md_path = write_reports(report, tmp_path, "ulx3s-85f_1x8x8_placed")
    assert "Placed, not routed" in md_path.read_text()
    placed = _overrides("ulx3s-85f", config, "dsp", 1, place_only=True)["nextpnr_opts"]
    assert "--no-route" in placed
    assert placed[placed.index("--write") + 1] == "top.placed.json"
    routed = _overrides("ulx3s-85f", config, "dsp", 1)["nextpnr_opts"]
    assert "--no-route" not in routed and "--detailed-timing-report" in routed
    assert routed[routed.index("--write") + 1] == "top.routed.json"
    opts = _overrides("ulx3s-85f", config, "dsp", 1, router="router2")["nextpnr_opts"]
    assert opts[opts.index("--router") + 1] == "router2"
    assert "--router" not in _overrides("ulx3s-85f", config, "dsp", 1)["nextpnr_opts"]
    opts = _overrides("ulx3s-85f", config, "dsp", 1, placer="static")["nextpnr_opts"]
    assert opts[opts.index("--placer") + 1] == "static"
    assert "--placer" not in _overrides("ulx3s-85f", config, "dsp", 1)["nextpnr_opts"]


def test_fmax_estimate_is_read_from_the_log_when_the_report_has_none():
    log = ("Info: Max frequency for clock '$glbnet$clk': 28.91 MHz (FAIL at 100.00 MHz)\n"
           "Info: placing\n"
           "Info: Max frequency for clock '$glbnet$clk': 30.69 MHz (FAIL at 100.00 MHz)\n")
    assert parse_fmax_log(log) == {"$glbnet$clk": {"achieved": 30.69, "constraint": 100.0}}
    assert parse_fmax_log("Info: no timing\n") == {}


def test_a_bad_configuration_on_the_command_line_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        build_main(["--board", "ulx3s-85f", "--cols", "8", "--requant-lanes", "3"])
    assert info.value.code == 2
    assert "Requantiser lanes must divide the array columns (8), not 3" in capsys.readouterr().err


def test_the_reproducing_command_leaves_out_where_files_go():
    # (Written out, with "=", or abbreviated as argparse allows.)
    argv = ["--board", "ulx3s-85f", "--build-dir", "/tmp/b", "--seed", "3",
            "--reports-dir=/tmp/r", "--rows", "8", "--build", "/tmp/c"]
    assert _what_to_build(argv) == ["--board", "ulx3s-85f", "--seed", "3", "--rows", "8"]


def _running(pid):
    """Whether process ``pid`` runs (neither gone nor a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stopped_build_stops_its_tools(tmp_path):
    # The build script's tools run in their own process group; when the build is stopped
    # (here by an exception from a timer signal) the group is stopped too.
    (tmp_path / "tools.sh").write_text("sleep 60 &\necho $! > tool.pid\nwait\n")

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        start = time.monotonic()
        with pytest.raises(Stopped), open(tmp_path / "build.log", "w") as out:
            run_tools(["sh", "tools.sh"], cwd=tmp_path, env=None, out=out)
        assert time.monotonic() - start < 10        # not waiting for the tool to finish
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    tool = int((tmp_path / "tool.pid").read_text())
    deadline = time.monotonic() + 5
    while _running(tool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(tool)


@pytest.mark.synth
def test_synthesis_keeps_replicas_apart(tmp_path):
    """A retimed 2 x 2 array's replicas: PE(0, 1) and PE(1, 0) carry the same bank, each
    column's PEs the same weight data, each row's the same write enable. Without the build's
    keep line Yosys merges those registers; with it every PE keeps its four."""
    import subprocess

    from amaranth.back import rtlil

    from npu.rtl.config import NPUConfig
    from npu.rtl.systolic import SystolicArray
    from npu.synth.build import _KEEP_REPLICAS

    if "YOSYS" in missing_tools("ecp5"):
        pytest.skip("Yosys not found (make synth-setup)")
    yosys = find_toolchain("ecp5")["YOSYS"]
    (tmp_path / "array.il").write_text(rtlil.convert(SystolicArray(NPUConfig(rows=2, cols=2,
                                                                            retime=True))))

    def replica_registers(keep):
        script = ["read_rtlil array.il", "hierarchy -top top", "proc",
                  *([_KEEP_REPLICAS] if keep else []), "flatten", "opt",
                  "select -count a:keep %ci1 t:$*dff* %i"]
        out = subprocess.run([yosys, "-p", "; ".join(script)], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout
        return int(out.split("objects.")[0].split()[-1])

    assert replica_registers(keep=True) == 4 * 4
    assert replica_registers(keep=False) < 4 * 4
