"""Verilog export of the NPU's blocks, and Verilator lint of the result.

``python -m npu.synth.export -o build/npu.v`` writes the whole top; the functions below also
write single blocks, for lint and for tests.

The top's ports carry the names the AXI convention expects, so the file drops into a Vivado,
LiteX or Zynq design as it is: ``m_axi_awaddr``, ``m_axi_awvalid``, ... (the AXI4 manager, to
memory), ``s_axil_awaddr``, ... (the AXI4-Lite subordinate, the control registers), ``irq``,
``clk`` and ``rst`` (synchronous, active high). Amaranth's own names would be ``axi__awaddr``;
:func:`port_names` renames them through ``verilog.convert``'s ``ports=`` mapping, so no wrapper
module is added.
"""

import argparse
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

__all__ = [
    "AXI_PREFIXES",
    "LINT_WAIVERS",
    "lint",
    "port_names",
    "to_verilog",
    "verilator_path",
    "write_top",
    "write_verilog",
]

#: Verilator configuration file with the narrow, explained waivers for Amaranth's output.
LINT_WAIVERS = Path(__file__).with_name("lint.vlt")


#: Port prefix of each bus member of the NPU top (``axi`` -> ``m_axi_awaddr``, ...).
AXI_PREFIXES = {"axi": "m_axi", "csr": "s_axil"}


def port_names(component, prefixes=AXI_PREFIXES):
    """A ``ports=`` mapping for ``verilog.convert``: every member of ``component``'s signature
    under a flat name, ``"_"``-joined, with the first path element replaced by its prefix.

    ``axi.awaddr`` becomes ``m_axi_awaddr``; ``irq`` stays ``irq``; an array member
    ``cores[1].pc`` becomes ``cores_1_pc``. Directions are left to Amaranth, which infers them
    from which side drives each signal (the member's flow says the same).
    """
    ports = {}
    for path, _member, value in component.signature.flatten(component):
        head, *rest = (str(p) for p in path)
        name = "_".join([prefixes.get(head, head), *rest])
        ports[name] = (value.as_value() if hasattr(value, "as_value") else value, None)
    return ports


def to_verilog(component, name, *, ports=None):
    """Verilog text of a ``wiring.Component``.

    Without ``ports`` the ports keep Amaranth's names (``axi__awaddr``); with a mapping from
    :func:`port_names` they take those names.
    """
    if ports is None:
        return verilog.convert(component, name=name, emit_src=False)
    return verilog.convert(component, name=name, ports=ports, emit_src=False)


def write_verilog(component, name, path, *, ports=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_verilog(component, name, ports=ports))
    return path


def write_top(config, path, name="npu"):
    """Write ``NPU(config)`` as module ``name`` with AXI-convention port names."""
    from npu.rtl.top import NPU

    npu = NPU(config)
    return write_verilog(npu, name, path, ports=port_names(npu))


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
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def main(argv=None):
    from npu.rtl.config import NPUConfig

    parser = argparse.ArgumentParser(description="Write the NPU top as one Verilog file.")
    parser.add_argument("-o", "--output", default="build/npu.v")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--name", default="npu")
    args = parser.parse_args(argv)
    config = NPUConfig(cores=args.cores, rows=args.rows, cols=args.cols)
    path = write_top(config, args.output, args.name)
    print(f"wrote {path} ({config.cores} cores, {config.rows}x{config.cols})")


if __name__ == "__main__":
    main()
