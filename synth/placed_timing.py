"""A rough timing of a placed, unrouted ECP5 design: which paths a placement makes long.

nextpnr prints no critical path before routing, and routing the largest builds takes longer
than anyone iterates on; a placed-only build (``--place-only``) writes its placed netlist to
``top.placed.json``. This module times that netlist with a model far simpler than nextpnr's:

- a route between two cells costs ``ROUTE_BASE + ROUTE_PER_TILE`` x their Manhattan distance
  in tiles (``ROUTE_SAME_TILE`` within a tile; a carry chain's FCI costs nothing), loosely
  fitted to routed ECP5 paths of this design;
- a cell costs a constant (``CELL``): a LUT, a carry step, a wide-function multiplexer, a
  flip-flop's clock to output and a block RAM's or DSP's clock to output.

Its figures are not a timing result and are not comparable with nextpnr's estimate; what it
gives is a ranking: which endpoints a placement leaves worst, and through which cells.
``python -m npu.synth.placed_timing build/synth/<stem>_placed/top.placed.json`` prints the
worst paths (one per endpoint register group) and how many endpoints lie in each range; with
``--pe-dsps``, how far each PE's DSP lies from the PE's other cells (:func:`pe_dsp_distances`).

A routed design has nextpnr's own timing: with ``--detailed-timing-report`` its report gives
the arrival time at every cell input (:func:`routed_arrivals`). With ``--routed REPORT``
those arrivals replace the model wherever they exist, so the ranking is nextpnr's and lists
every endpoint a routed build fails, where nextpnr prints only its worst path. Both come from
one nextpnr run: a routed build keeps them, ``build/synth/<stem>/top.routed.json`` and
``top.report.json`` beside it.
"""

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict

__all__ = ["CELL", "MAPPING_SUFFIX", "PlacedTiming", "cell_location", "main",
           "pe_dsp_distances", "routed_arrivals"]

ROUTE_SAME_TILE = 0.1
ROUTE_BASE = 0.3
ROUTE_PER_TILE = 0.07

#: Constant cell delays (ns).
CELL = {
    "lut": 0.3,            # TRELLIS_COMB: A-D to F
    "mux": 0.2,            # TRELLIS_COMB: M, FXA, FXB, F1 to OFX (PFUMX, L6MUX21)
    "carry_in": 0.44,      # CCU2 input to its sum
    "carry_step": 0.07,    # CCU2 FCI to FCO
    "carry_first": 0.45,   # CCU2 A-D to FCO or F
    "ramw": 0.1,           # TRELLIS_RAMW: write address and data into the LUT RAM
    "ff": 0.52,            # TRELLIS_FF clock to Q
    "bram": 5.83,          # DP16KD clock to output, no output register
    "dsp": 2.0,            # MULT18X18D clock to output from its output register
    "setup": 0.1,
    "dsp_input": 3.5,      # into an unregistered MULT18X18D input: the multiply before its
                           # output register
}

_COMB_IN = {"A", "B", "C", "D", "M", "FCI", "FXA", "FXB", "F1"}
_MUX_IN = {"M", "FXA", "FXB", "F1"}
_CLOCKS = {"CLK", "WCK", "CLKA", "CLKB", "CLK0", "CLK1", "CLK2", "CLK3"}
_SOURCES = {"TRELLIS_FF": "ff", "DP16KD": "bram", "MULT18X18D": "dsp"}
_ENDPOINTS = {"TRELLIS_FF", "DP16KD", "MULT18X18D", "TRELLIS_COMB"}


class PlacedTiming:
    """The longest arrival at every register input of a placed netlist (a Yosys-style JSON
    dictionary with nextpnr's ``NEXTPNR_BEL`` placement attributes). ``arrivals``, if given,
    maps (cell, input port) to nextpnr's arrival time there (:func:`routed_arrivals`), which
    replaces the model's for the inputs it names."""

    def __init__(self, netlist, top="top", arrivals=None):
        module = netlist["modules"][top]
        self.arrivals = arrivals or {}
        self.cells = module["cells"]
        self.names = {}
        for name, net in module["netnames"].items():
            for bit in net["bits"]:
                if isinstance(bit, int) and (bit not in self.names
                                             or len(name) < len(self.names[bit])):
                    self.names[bit] = name
        self.driver = {}
        for name, cell in self.cells.items():
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) == "output":
                    for bit in bits:
                        if isinstance(bit, int):
                            self.driver[bit] = (name, port)
        self._arrival = {}

    def location(self, name):
        return cell_location(self.cells[name])

    def route(self, source, sink):
        a, b = self.location(source), self.location(sink)
        if a is None or b is None:
            return 0.0
        if a == b:
            return ROUTE_SAME_TILE
        return ROUTE_BASE + ROUTE_PER_TILE * (abs(a[0] - b[0]) + abs(a[1] - b[1]))

    def _timed(self, bit):
        # Constants (nextpnr's packer ties them to a LUT) and undriven inputs have no arrival.
        return (isinstance(bit, int) and bit in self.driver
                and not self.driver[bit][0].startswith("$PACKER"))

    def arrival(self, bit):
        """(time at the driver's output, the input it came through: (bit, cell, port) or
        None) for a net bit."""
        if bit in self._arrival:
            return self._arrival[bit]
        self._arrival[bit] = (0.0, None)        # a combinational loop ends here
        name, out_port = self.driver[bit]
        cell = self.cells[name]
        kind = cell["type"]
        if kind in _SOURCES:
            result = (CELL[_SOURCES[kind]], None)
        elif kind in ("TRELLIS_COMB", "TRELLIS_RAMW"):
            carry = cell["parameters"].get("MODE") == "CCU2"
            result = (0.0, None)
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) != "input":
                    continue
                if kind == "TRELLIS_COMB" and (port not in _COMB_IN or (
                        port in _MUX_IN and out_port != "OFX")):
                    continue        # a LUT's F and a carry's outputs come from A-D and FCI
                for in_bit in bits:
                    if not self._timed(in_bit):
                        continue
                    if port == "FCI":
                        wire = 0.0
                        delay = CELL["carry_step"] if out_port == "FCO" else CELL["carry_in"]
                    else:
                        wire = self.route(self.driver[in_bit][0], name)
                        delay = (CELL["ramw"] if kind == "TRELLIS_RAMW" else
                                 CELL["carry_first"] if carry else
                                 CELL["mux"] if port in _MUX_IN else CELL["lut"])
                    time = self._input_arrival(in_bit, name, port, wire) + delay
                    if time > result[0]:
                        result = (time, (in_bit, name, port))
        else:
            result = (0.0, None)
        self._arrival[bit] = result
        return result

    def _input_arrival(self, bit, cell, port, wire):
        if (cell, port) in self.arrivals:
            return self.arrivals[cell, port]
        return self.arrival(bit)[0] + wire

    def endpoints(self):
        """Every timed register input: (arrival incl. setup, net bit, cell, port), worst
        first."""
        ends = []
        for name, cell in self.cells.items():
            kind = cell["type"]
            if kind not in _ENDPOINTS:
                continue
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) != "input" or port in _CLOCKS:
                    continue
                if kind == "TRELLIS_COMB" and port in _COMB_IN:
                    continue        # a LUT's inputs; its LUT RAM write ports are endpoints
                setup = CELL["setup"]
                if (kind == "MULT18X18D" and port[0] in "AB" and port[1:].isdigit()
                        and cell["parameters"].get(f"REG_INPUT{port[0]}_CLK", "NONE")
                        == "NONE"):
                    setup = CELL["dsp_input"]
                for bit in bits:
                    if self._timed(bit):
                        wire = self.route(self.driver[bit][0], name)
                        time = self._input_arrival(bit, name, port, wire) + setup
                        ends.append((time, bit, name, port))
        ends.sort(key=lambda end: -end[0])
        return ends

    def path(self, bit):
        """The cells of the longest path into ``bit``: (arrival, cell, port, net, location),
        source first."""
        steps = []
        while bit is not None:
            name, port = self.driver[bit]
            time, through = self.arrival(bit)
            steps.append((time, name, port, self.names.get(bit, "?"), self.location(name)))
            bit = through[0] if through else None
        return steps[::-1]


def routed_arrivals(report):
    """``{(cell, input port): ns}``: nextpnr's latest arrival time at each cell input, from
    its JSON report written with ``--detailed-timing-report``."""
    if "detailed_net_timings" not in report:
        raise ValueError("the report has no per-net timing: nextpnr writes it with "
                         "--detailed-timing-report")
    return {(end["cell"], end["port"]): max(end["delay"])
            for net in report["detailed_net_timings"] for end in net["endpoints"]}


def cell_location(cell):
    """A placed cell's tile (X, Y), None if unplaced."""
    match = re.match(r"X(\d+)/Y(\d+)/", cell["attributes"].get("NEXTPNR_BEL", ""))
    return (int(match[1]), int(match[2])) if match else None


def pe_dsp_distances(netlist, top="top"):
    """``{pe: tiles}`` for each processing element whose multiplier is a placed MULT18X18D: the
    Manhattan distance from the DSP to the mean position of the PE's other placed cells (the
    cells named ``<...>.array.pe_<row>_<col>.<...>``; ``pe`` is that prefix)."""
    dsps, fabric = {}, defaultdict(list)
    for name, cell in netlist["modules"][top]["cells"].items():
        match = re.match(r"(.*\.array\.pe_\d+_\d+)\.", name)
        where = cell_location(cell)
        if match and where:
            if cell["type"] == "MULT18X18D":
                dsps[match[1]] = where
            else:
                fabric[match[1]].append(where)
    distances = {}
    for pe, (x, y) in dsps.items():
        if fabric[pe]:
            fx = sum(p[0] for p in fabric[pe]) / len(fabric[pe])
            fy = sum(p[1] for p in fabric[pe]) / len(fabric[pe])
            distances[pe] = abs(x - fx) + abs(y - fy)
    return distances


#: Where the suffixes begin that synthesis and packing add to a signal's name when they name
#: the cells made for it (``rd_line[5]_TRELLIS_FF_Q_3``, ``g1_picks3_LUT4_Z_1``).
MAPPING_SUFFIX = r"_(?:TRELLIS_|LUT4|CCU2C|PFUMX|L6MUX21)"


def _group(name, port):
    """A register group: the cell name up to the mapping's suffixes, and the port without
    its bit index."""
    return re.sub(rf"({MAPPING_SUFFIX}|\$).*", "", name), port.rstrip("0123456789")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m npu.synth.placed_timing",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("netlist", help="a placed netlist (top.placed.json of a --place-only "
                                        "build, or nextpnr's --write after routing)")
    parser.add_argument("-n", type=int, default=20, help="paths to print (default 20)")
    parser.add_argument("--match", default=None,
                        help="only endpoints whose cell name contains this")
    parser.add_argument("--routed", metavar="REPORT", default=None,
                        help="nextpnr's JSON report of the run that routed the netlist, "
                             "written with --detailed-timing-report: rank by its timing")
    parser.add_argument("--pe-dsps", action="store_true",
                        help="instead: how far each PE's DSP lies from the PE's other cells")
    args = parser.parse_args(argv)
    with open(args.netlist) as f:
        netlist = json.load(f)
    if args.pe_dsps:
        tiles = sorted(pe_dsp_distances(netlist).values())
        if not tiles:
            print("no PE multiplier is a placed DSP")
            return
        print(f"{len(tiles)} PE DSPs, tiles from each to its PE's other cells: median "
              f"{statistics.median(tiles):.1f}, 90th percentile {tiles[int(0.9 * len(tiles))]:.1f}, "
              f"max {tiles[-1]:.1f}")
        return
    arrivals = None
    if args.routed:
        with open(args.routed) as f:
            arrivals = routed_arrivals(json.load(f))
    timing = PlacedTiming(netlist, arrivals=arrivals)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))
    ends = timing.endpoints()
    shown = set()
    for time, bit, name, port in ends:
        if len(shown) >= args.n:
            break
        group = _group(name, port)
        if (args.match and args.match not in name) or group in shown:
            continue
        shown.add(group)
        print(f"{time:6.2f} ns  {name}.{port} at {timing.location(name)}")
        for at, cell, out, net, where in timing.path(bit):
            print(f"    {at:6.2f}  {cell}.{out} at {where}  ({net})")
    histogram = Counter(int(end[0]) for end in ends)
    print("endpoints per ns:", ", ".join(f"[{ns}, {ns + 1}): {count}"
                                        for ns, count in sorted(histogram.items())))


if __name__ == "__main__":
    main()
