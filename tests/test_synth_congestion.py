"""The congestion ranker on a hand-made heatmap and placed netlist, against its sums worked
out by hand (each tile's congestion shared evenly by the cells on it)."""

import json

import pytest

from npu.synth.congestion import congestion_by_part, main, part_of, read_heatmap


def placed(cells):
    return {"modules": {"top": {"cells": {
        name: {"type": "TRELLIS_COMB", "attributes": {"NEXTPNR_BEL": f"X{x}/Y{y}/SLICEA"}}
        for name, (x, y) in cells.items()} | {
        "system.unplaced_LUT4_Z": {"type": "TRELLIS_COMB", "attributes": {}}}}}}


CELLS = {
    # Tile (2, 2), congestion 12: two gather cells and a PE cell share it.
    "system.npu.core0.execute.g1_picks3_LUT4_Z": (2, 2),
    "system.npu.core0.execute.g1_picks12_LUT4_Z_1": (2, 2),
    "system.npu.core0.execute.array.pe_3_12.registered_TRELLIS_FF_Q_1": (2, 2),
    # Tile (1, 1), congestion 4: a cell of another PE.
    "system.npu.core0.execute.array.pe_0_1.psum_out_TRELLIS_FF_Q": (1, 1),
    # Tile (0, 0), no congestion.
    "system.memory.bank6.0.0_DOB7_TRELLIS_FF_Q": (0, 0),
    "$nextpnr_CCU2C_5$CCU2_COMB0": (0, 0),
}


def heatmap_file(tmp_path):
    # One line per X, one value per Y (router2 ends every line with a comma).
    path = tmp_path / "heatmap_congestion_by_coordinate_1.csv"
    path.write_text("0,0,0,\n0,4,0,\n0,0,12,\n")
    return path


def test_the_heatmap_is_read_by_x_then_y(tmp_path):
    assert read_heatmap(heatmap_file(tmp_path)) == {(1, 1): 4, (2, 2): 12}


@pytest.mark.parametrize("name, depth, part", [
    ("system.npu.core0.execute.g1_picks3_LUT4_Z_1", 5, "system.npu.core0.execute.gN_picksN"),
    ("system.npu.core0.execute.g1_picks3_LUT4_Z_1", 4, "system.npu.core0.execute"),
    ("system.npu.core0.execute.array.pe_3_12.registered_TRELLIS_FF_Q_1", 5,
     "system.npu.core0.execute.array"),
    ("system.npu.core0.execute.array.pe_3_12.registered_TRELLIS_FF_Q_1", 6,
     "system.npu.core0.execute.array.pe_*"),
    ("system.npu.core0.execute.rd_line[5]_TRELLIS_FF_Q_3", 9,
     "system.npu.core0.execute.rd_line[N]"),
    ("system.memory.bank6.0.0_DOB7_TRELLIS_FF_Q", 3, "system.memory.bank*"),
    ("$nextpnr_CCU2C_514$CCU2_COMB1", 5, "(tools)"),
])
def test_a_cell_belongs_to_its_part_with_indices_folded(name, depth, part):
    assert part_of(name, depth) == part


def test_congestion_is_shared_by_the_cells_on_a_tile_and_summed_by_part(tmp_path):
    parts = congestion_by_part(placed(CELLS), read_heatmap(heatmap_file(tmp_path)))
    assert parts == {
        "system.npu.core0.execute.gN_picksN": (pytest.approx(8.0), 2),
        "system.npu.core0.execute.array": (pytest.approx(4.0 + 4.0), 2),
        "system.memory.bank*.0.N_DOBN": (0.0, 1),
        "(tools)": (0.0, 1),
    }


def test_the_command_line_ranks_the_parts(tmp_path, capsys):
    netlist = tmp_path / "top.placed.json"
    netlist.write_text(json.dumps(placed(CELLS)))
    assert main([str(heatmap_file(tmp_path)), str(netlist), "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "16 nets on overused wires, on 2 tiles; 6 placed cells"
    assert lines[2].split() == ["8", "50.0%", "2", "33.3%", "system.npu.core0.execute.gN_picksN"]
    assert lines[3].split() == ["8", "50.0%", "2", "33.3%", "system.npu.core0.execute.array"]
    assert len(lines) == 4
