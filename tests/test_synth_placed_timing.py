"""The placed-netlist timing ranker on hand-made placed netlists, against its model worked
out by hand (``ROUTE_*`` per tile of Manhattan distance, constant cell delays), and with a
routed run's arrival times in place of the model."""

import json

import pytest

from npu.synth.placed_timing import (
    CELL,
    ROUTE_BASE,
    ROUTE_PER_TILE,
    ROUTE_SAME_TILE,
    PlacedTiming,
    main,
    pe_dsp_distances,
    routed_arrivals,
)

_DIRECTIONS = {
    "TRELLIS_FF": {"DI": "input", "CE": "input", "LSR": "input", "CLK": "input", "Q": "output"},
    "TRELLIS_COMB": {**{p: "input" for p in ("A", "B", "C", "D", "M", "FCI", "FXA", "FXB",
                                              "F1", "WRE", "WD")},
                     "F": "output", "FCO": "output", "OFX": "output"},
    "MULT18X18D": {"A0": "input", "B0": "input", "CLK0": "input", "P0": "output"},
}


def cell(kind, x, y, connections, **parameters):
    directions = _DIRECTIONS[kind]
    return {"type": kind, "parameters": parameters,
            "attributes": {"NEXTPNR_BEL": f"X{x}/Y{y}/SLICEA"},
            "port_directions": {p: directions[p] for p in connections},
            "connections": {p: [bit] for p, bit in connections.items()}}


def netlist(cells, nets=None):
    return {"modules": {"top": {"cells": cells,
                                "netnames": {name: {"bits": [bit]}
                                             for name, bit in (nets or {}).items()}}}}


def route(dx, dy):
    return ROUTE_BASE + ROUTE_PER_TILE * (dx + dy)


def test_a_path_is_clock_to_q_routes_luts_and_setup():
    timing = PlacedTiming(netlist({
        "src": cell("TRELLIS_FF", 0, 0, {"Q": 2, "CLK": 1}),
        "lut": cell("TRELLIS_COMB", 10, 0, {"A": 2, "F": 3}, MODE="LOGIC"),
        "dst": cell("TRELLIS_FF", 10, 5, {"DI": 3, "CLK": 1}),
        "near": cell("TRELLIS_FF", 0, 0, {"DI": 2, "CLK": 1}),
    }, {"src_q": 2, "sum": 3}))
    (worst, bit, name, port), (near, *_) = timing.endpoints()
    assert (name, port) == ("dst", "DI")
    assert worst == pytest.approx(CELL["ff"] + route(10, 0) + CELL["lut"] + route(0, 5)
                                  + CELL["setup"])
    assert near == pytest.approx(CELL["ff"] + ROUTE_SAME_TILE + CELL["setup"])
    assert [(step[1], step[2], step[3]) for step in timing.path(bit)] == [
        ("src", "Q", "src_q"), ("lut", "F", "sum")]


def test_a_carry_chain_costs_its_steps_not_routes():
    timing = PlacedTiming(netlist({
        "src": cell("TRELLIS_FF", 0, 0, {"Q": 2}),
        "c0": cell("TRELLIS_COMB", 0, 1, {"A": 2, "FCO": 3}, MODE="CCU2"),
        "c1": cell("TRELLIS_COMB", 0, 9, {"FCI": 3, "FCO": 4}, MODE="CCU2"),
        "c2": cell("TRELLIS_COMB", 0, 9, {"FCI": 4, "F": 5}, MODE="CCU2"),
        "dst": cell("TRELLIS_FF", 0, 9, {"DI": 5}),
    }))
    worst = timing.endpoints()[0][0]
    assert worst == pytest.approx(CELL["ff"] + route(0, 1) + CELL["carry_first"]
                                  + CELL["carry_step"] + CELL["carry_in"] + ROUTE_SAME_TILE
                                  + CELL["setup"])


def test_a_luts_output_does_not_wait_for_its_multiplexer_inputs():
    """F comes from A-D; only OFX (the wide-function multiplexer) from M, FXA, FXB, F1."""
    timing = PlacedTiming(netlist({
        "far": cell("TRELLIS_FF", 80, 80, {"Q": 2}),
        "near": cell("TRELLIS_FF", 0, 0, {"Q": 3}),
        "mux": cell("TRELLIS_COMB", 0, 1, {"A": 3, "FXA": 2, "F": 4, "OFX": 5}, MODE="LOGIC"),
        "from_f": cell("TRELLIS_FF", 0, 1, {"DI": 4}),
        "from_ofx": cell("TRELLIS_FF", 0, 1, {"DI": 5}),
    }))
    times = {name: time for time, _, name, _ in timing.endpoints()}
    assert times["from_f"] == pytest.approx(CELL["ff"] + route(0, 1) + CELL["lut"]
                                            + ROUTE_SAME_TILE + CELL["setup"])
    assert times["from_ofx"] == pytest.approx(CELL["ff"] + route(80, 79) + CELL["mux"]
                                              + ROUTE_SAME_TILE + CELL["setup"])


def test_constants_are_not_paths_and_unregistered_dsp_inputs_include_the_multiply():
    timing = PlacedTiming(netlist({
        "$PACKER_GND": cell("TRELLIS_COMB", 50, 50, {"F": 2}, MODE="LOGIC"),
        "tied": cell("TRELLIS_FF", 0, 0, {"DI": 2}),
        "src": cell("TRELLIS_FF", 0, 0, {"Q": 3}),
        "registered": cell("MULT18X18D", 0, 0, {"A0": 3}, REG_INPUTA_CLK="CLK0"),
        "bare": cell("MULT18X18D", 0, 0, {"A0": 3}, REG_INPUTA_CLK="NONE"),
    }))
    times = {name: time for time, _, name, _ in timing.endpoints()}
    assert "tied" not in times
    assert times["registered"] == pytest.approx(CELL["ff"] + ROUTE_SAME_TILE + CELL["setup"])
    assert times["bare"] == pytest.approx(CELL["ff"] + ROUTE_SAME_TILE + CELL["dsp_input"])


def test_the_command_prints_the_worst_path_first(tmp_path, capsys):
    path = tmp_path / "top.placed.json"
    path.write_text(json.dumps(netlist({
        "src": cell("TRELLIS_FF", 0, 0, {"Q": 2}),
        "slow": cell("TRELLIS_FF", 40, 40, {"DI": 2}),
        "fast": cell("TRELLIS_FF", 1, 0, {"DI": 2}),
    }, {"src_q": 2})))
    main([str(path), "-n", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [f"{CELL['ff'] + route(40, 40) + CELL['setup']:.2f}", "ns",
                              "slow.DI", "at", "(40,", "40)"]
    assert "src.Q" in out[1] and "(src_q)" in out[1]
    assert not any("fast.DI" in line for line in out)
    assert out[-1].startswith("endpoints per ns:")


def test_pe_dsp_distances_are_from_each_dsp_to_its_own_pes_cells(tmp_path, capsys):
    pe = "system.npu.core0.execute.array.pe_{}_{}."
    placed = netlist({
        # PE (0, 0): DSP at (10, 0), its other cells at (0, 0) and (2, 4): mean (1, 2).
        pe.format(0, 0) + "mult.dsp": cell("MULT18X18D", 10, 0, {"P0": 2}),
        pe.format(0, 0) + "psum_FF": cell("TRELLIS_FF", 0, 0, {"DI": 2}),
        pe.format(0, 0) + "add_LUT4": cell("TRELLIS_COMB", 2, 4, {"A": 2}),
        # PE (0, 1): beside its DSP; PE (1, 0) is in LUTs (no DSP) and not counted.
        pe.format(0, 1) + "mult.dsp": cell("MULT18X18D", 5, 5, {"P0": 3}),
        pe.format(0, 1) + "psum_FF": cell("TRELLIS_FF", 5, 6, {"DI": 3}),
        pe.format(1, 0) + "psum_FF": cell("TRELLIS_FF", 40, 40, {"DI": 3}),
        "system.npu.core0.execute.array.psum_FF": cell("TRELLIS_FF", 90, 90, {"DI": 2}),
    })
    distances = pe_dsp_distances(placed)
    assert distances == {pe.format(0, 0)[:-1]: 9 + 2, pe.format(0, 1)[:-1]: 1}
    path = tmp_path / "top.placed.json"
    path.write_text(json.dumps(placed))
    main([str(path), "--pe-dsps"])
    assert capsys.readouterr().out.strip() == (
        "2 PE DSPs, tiles from each to its PE's other cells: median 6.0, 90th percentile 11.0, "
        "max 11.0")


def test_routed_arrivals_replace_the_model_where_nextpnr_gives_them(tmp_path, capsys):
    """A report's per-net timing is the arrival at each sink: those inputs take it as is, the
    cells after them add their modelled delay, inputs it does not name keep the model."""
    cells = {
        "src": cell("TRELLIS_FF", 0, 0, {"Q": 2}),
        "lut": cell("TRELLIS_COMB", 1, 0, {"A": 2, "F": 3}, MODE="LOGIC"),
        "dst": cell("TRELLIS_FF", 1, 0, {"DI": 3}),
        "other": cell("TRELLIS_FF", 9, 0, {"DI": 2}),
    }
    report = {"detailed_net_timings": [
        {"net": "src_q", "driver": "src", "port": "Q",
         "endpoints": [{"cell": "lut", "port": "A", "delay": [1.0, 4.5]}]},
        {"net": "sum", "driver": "lut", "port": "F",
         "endpoints": [{"cell": "dst", "port": "DI", "delay": [2.0, 9.25]}]},
    ]}
    arrivals = routed_arrivals(report)
    assert arrivals == {("lut", "A"): 4.5, ("dst", "DI"): 9.25}
    timing = PlacedTiming(netlist(cells), arrivals=arrivals)
    times = {name: time for time, _, name, _ in timing.endpoints()}
    assert times["dst"] == pytest.approx(9.25 + CELL["setup"])
    assert times["other"] == pytest.approx(CELL["ff"] + route(9, 0) + CELL["setup"])
    assert timing.arrival(3)[0] == pytest.approx(4.5 + CELL["lut"])

    # The command takes the report beside the routed netlist.
    (tmp_path / "routed.json").write_text(json.dumps(netlist(cells)))
    (tmp_path / "report.json").write_text(json.dumps(report))
    main([str(tmp_path / "routed.json"), "--routed", str(tmp_path / "report.json"), "-n", "1"])
    assert capsys.readouterr().out.split()[:3] == [f"{9.25 + CELL['setup']:.2f}", "ns",
                                                   "dst.DI"]
    # A report without per-net timing is refused with the option that writes it.
    with pytest.raises(ValueError, match="--detailed-timing-report"):
        routed_arrivals({"fmax": {}})
