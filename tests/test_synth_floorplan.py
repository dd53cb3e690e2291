# amaranth: UnusedElaboratable=no
"""The floorplan of the PEs' DSPs: every pinned PE gets its own site, in its core's strip,
in the array's shape; the build pins them when asked, where it can; and the pins name
instances the board top has (no toolchain needed)."""

import re

import pytest

from npu.synth.boards import BOARDS, BoardTop, board_config
from npu.synth.build import _overrides, board_platform, pe_dsp_count, pins_pe_dsps
from npu.synth.build import main as build_main
from npu.synth.floorplan import pe_dsp_sites, pin_script

SITES = BOARDS["ulx3s-85f"].dsp_sites


def _xy(site):
    x, y = re.match(r"X(\d+)/Y(\d+)/MULT18_\d$", site).groups()
    return int(x), int(y)


def test_the_85f_has_its_156_multiplier_sites_in_three_rows():
    assert sum(len(row) for row in SITES) == BOARDS["ulx3s-85f"].dsp_count == 156
    assert len({s for row in SITES for s in row}) == 156
    for row in SITES:
        assert len({_xy(s)[1] for s in row}) == 1                 # one row of the die
        assert [_xy(s)[0] for s in row] == sorted(_xy(s)[0] for s in row)


@pytest.mark.parametrize("cores, rows, cols, on_dsp", [
    (1, 16, 16, 147),       # the 16x16 build: 256 PEs, 147 on DSPs
    (4, 8, 8, 30),          # four 8x8 cores
    (1, 3, 5, 15),          # all of a small odd array
    (2, 2, 2, 1),           # one PE per core
])
def test_every_pe_gets_its_own_site_in_the_arrays_shape(cores, rows, cols, on_dsp):
    placed = pe_dsp_sites(SITES, cores=cores, rows=rows, cols=cols, on_dsp=on_dsp)
    first = [(r, c) for r in range(rows) for c in range(cols)][:on_dsp]
    assert sorted(placed) == sorted((k, r, c) for k in range(cores) for r, c in first)
    assert len(set(placed.values())) == len(placed)
    xs = {k: sorted(_xy(s)[0] for (core, _, _), s in placed.items() if core == k)
          for k in range(cores)}
    for k in range(cores - 1):
        assert xs[k][-1] < xs[k + 1][0]               # each core in its own strip
    for k in range(cores):
        for c in range(cols):
            column = sorted((r, _xy(s)) for (core, r, cc), s in placed.items()
                            if core == k and cc == c)
            # Down a column: DSP row by DSP row, never back up the die ...
            ys = [y for _, (_, y) in column]
            assert ys == sorted(ys)
            # ... and within one DSP row, left to right as the rows go.
            for y in set(ys):
                in_row = [x for _, (x, yy) in column if yy == y]
                assert in_row == sorted(in_row)
        for y in {_xy(s)[1] for s in placed.values()}:
            # Along a DSP row the columns follow one another.
            by_x = sorted((_xy(s)[0], c) for (core, _, c), s in placed.items()
                          if core == k and _xy(s)[1] == y)
            assert [c for _, c in by_x] == sorted(c for _, c in by_x)


def test_the_16x16_uses_every_dsp_row_evenly():
    placed = pe_dsp_sites(SITES, cores=1, rows=16, cols=16, on_dsp=147)
    per_row = [sum(1 for s in placed.values() if _xy(s)[1] == y) for y in (10, 34, 58)]
    assert per_row == [49, 49, 49]
    # 9 sites are left: the two requantiser lanes' 8 partial products and the dispatch's span.
    assert 156 - len(placed) == 9


def test_too_many_pes_for_the_sites_is_an_error():
    with pytest.raises(ValueError, match="2 x 79 PE multipliers do not fit 156 DSP sites"):
        pe_dsp_sites(SITES, cores=2, rows=16, cols=16, on_dsp=79)
    with pytest.raises(ValueError, match="Core 0's 52 PE multipliers do not fit its 51 DSP sites"):
        pe_dsp_sites(SITES, cores=3, rows=8, cols=8, on_dsp=52)
    with pytest.raises(ValueError, match=r"on_dsp must be 0 to 4 \(rows x cols\), not 5"):
        pe_dsp_sites(SITES, cores=1, rows=2, cols=2, on_dsp=5)


def test_the_build_pins_the_dsps_only_when_asked_and_where_it_can():
    big, _ = board_config("ulx3s-85f", cores=1, rows=16, cols=16, requant_lanes=2)
    eight, _ = board_config("ulx3s-85f", cores=1, rows=8, cols=8)
    four, _ = board_config("ulx3s-85f", cores=4, rows=8, cols=8)
    small, _ = board_config("icebreaker", cores=1, rows=2, cols=2)
    for config in (big, eight, four):
        assert not pins_pe_dsps("ulx3s-85f", config)
        assert pins_pe_dsps("ulx3s-85f", config, pin_dsps=True)
    assert not pins_pe_dsps("icebreaker", small)
    with pytest.raises(ValueError, match="icebreaker cannot pin PE DSPs"):
        pins_pe_dsps("icebreaker", small, pin_dsps=True)
    with pytest.raises(ValueError, match="ulx3s-85f cannot pin PE DSPs"):
        pins_pe_dsps("ulx3s-85f", big, "lut", pin_dsps=True)      # no DSP instances to pin
    script = _overrides("ulx3s-85f", big, "auto", 1, pin_dsps=True)["script_after_read"]
    pins = [line for line in script.splitlines() if line.startswith("setattr -set BEL")]
    assert len(pins) == pe_dsp_count("ulx3s-85f", big) == 147
    assert pins[0] == ('setattr -set BEL "X4/Y10/MULT18_0" '
                       'top.system.npu.core0.execute.array.pe_0_0.mult/dsp')
    assert "BEL" not in _overrides("ulx3s-85f", big, "auto", 1)["script_after_read"]


def test_the_pins_name_the_dsp_instances_of_the_board_top():
    config, mem_bytes = board_config("ulx3s-85f", cores=2, rows=2, cols=2)
    plan = board_platform("ulx3s-85f", config, "dsp").build(
        BoardTop("ulx3s-85f", config, mem_bytes=mem_bytes), name="top", do_build=False)
    modules = dict(re.findall(r"^module \\(\S+)\n(.*?)^end$", plan.files["top.il"],
                              re.MULTILINE | re.DOTALL))
    lines = pin_script(pe_dsp_sites(SITES, cores=2, rows=2, cols=2, on_dsp=4))
    assert len(lines) == 8
    for line in lines:
        module, cell = line.split()[-1].split("/")
        assert "cell \\MULT18X18D \\" + cell + "\n" in modules[module]


def test_pinning_what_cannot_be_pinned_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        build_main(["--board", "icebreaker", "--rows", "2", "--cols", "2", "--pin-dsps"])
    assert info.value.code == 2
    assert "icebreaker cannot pin PE DSPs for this configuration" in capsys.readouterr().err
