"""The README's FPGA table is generated from the committed build reports."""

import json
import shutil

import pytest

from npu.synth.build import REPORTS_DIR
from npu.synth.table import README, make_line, render_table, update_readme


def test_readme_table_matches_the_reports():
    text = README.read_text()
    assert render_table() in text, "run `python -m npu.synth.table` to refresh the README"


def test_every_report_has_a_row_with_its_make_line():
    table = render_table()
    for path in REPORTS_DIR.glob("*.json"):
        report = json.loads(path.read_text())
        assert f"`{make_line(report['command'])}`" in table


@pytest.mark.parametrize("command, line", [
    ("python -m npu.synth.build --board icebreaker --cores 1 --rows 2 --cols 2",
     "make synth BOARD=icebreaker CORES=1 ROWS=2 COLS=2"),
    ("python -m npu.synth.build --board ulx3s-85f --cores 4 --rows 8 --cols 8 --clock-mhz 80",
     "make synth BOARD=ulx3s-85f CORES=4 ROWS=8 COLS=8 SYNTH_ARGS='--clock-mhz 80'"),
    ("python -m npu.synth.build --board=ulx3s-85f --cores=2", "make synth BOARD=ulx3s-85f CORES=2"),
    ("python -m npu.synth.build --board ulx3s-85f --place-only --cores 1",
     "make synth BOARD=ulx3s-85f CORES=1 SYNTH_ARGS=--place-only"),
    ("yosys -p synth", "yosys -p synth"),
])
def test_make_line(command, line):
    assert make_line(command) == line


def test_update_rewrites_only_between_the_markers(tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(REPORTS_DIR, reports)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- begin synth -->\nold\n<!-- end synth -->\noutro\n")
    assert update_readme(readme, reports)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- begin synth -->\n| board |")
    assert text.endswith("\n<!-- end synth -->\noutro\n") and "old" not in text
    assert not update_readme(readme, reports)


def test_update_needs_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no table here\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme)
