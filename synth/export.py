"""Verilog export of the NPU's blocks, and Verilator lint of the result.

``python -m npu.synth.export -o build/npu.v`` writes the whole top; the functions below also
write single blocks, for lint and for tests.
"""

import argparse
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

__all__ = ["to_verilog", "write_verilog", "lint", "LINT_WAIVERS", "verilator_path"]

#: Verilator configuration file with the narrow, explained waivers for Amaranth's output.
LINT_WAIVERS = Path(__file__).with_name("lint.vlt")


def to_verilog(component, name):
    """Verilog text of a ``wiring.Component``; ports keep their signature names."""
    return verilog.convert(component, name=name, emit_src=False)


def write_verilog(component, name, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_verilog(component, name))
    return path


def verilator_path():
    return shutil.which("verilator")


def lint(path, top, *, all_warnings=True):
    """Run ``verilator --lint-only`` (with ``-Wall`` by default) on ``path``.

    Returns the completed process; ``returncode == 0`` means clean under LINT_WAIVERS.
    """
    exe = verilator_path()
    if exe is None:
        raise FileNotFoundError("verilator is not installed (make setup installs it)")
    cmd = [exe, "--lint-only", *(["-Wall"] if all_warnings else []), str(LINT_WAIVERS),
           str(path), "--top-module", top]
    return subprocess.run(cmd, capture_output=True, text=True)


def main(argv=None):
    from npu.rtl.config import NPUConfig
    from npu.rtl.top import NPU

    parser = argparse.ArgumentParser(description="Write the NPU top as one Verilog file.")
    parser.add_argument("-o", "--output", default="build/npu.v")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--name", default="npu")
    args = parser.parse_args(argv)
    config = NPUConfig(cores=args.cores, rows=args.rows, cols=args.cols)
    path = write_verilog(NPU(config), args.name, args.output)
    print(f"wrote {path} ({config.cores} cores, {config.rows}x{config.cols})")


if __name__ == "__main__":
    main()
