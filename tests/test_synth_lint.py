# amaranth: UnusedElaboratable=no
import pytest

from npu.rtl.config import NPUConfig
from npu.rtl.requant import Requantiser
from npu.rtl.systolic import SystolicArray
from npu.synth.export import lint, verilator_path, write_verilog

pytestmark = pytest.mark.skipif(verilator_path() is None, reason="verilator is not installed")


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (8, 8)])
def test_array_verilog_is_lint_clean(tmp_path, rows, cols):
    path = write_verilog(SystolicArray(NPUConfig(rows=rows, cols=cols)), "systolic_array",
                         tmp_path / "array.v")
    result = lint(path, "systolic_array")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantiser_verilog_is_lint_clean(tmp_path, rounding):
    path = write_verilog(Requantiser(NPUConfig(cols=4, rounding=rounding)), "requantiser",
                         tmp_path / "requant.v")
    result = lint(path, "requantiser")
    assert result.returncode == 0, result.stderr


def test_lint_reports_a_real_problem(tmp_path):
    # The waivers must not hide everything: a multi-driven signal still fails.
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output y); assign y = a; assign y = ~a; endmodule\n")
    assert lint(bad, "bad").returncode != 0
