"""Resource and timing reports of a board build, from nextpnr's ``--report`` JSON and Yosys' log.

nextpnr writes ``{"utilization": {bel_type: {"used", "available"}}, "fmax": {clock:
{"achieved", "constraint"}}, "critical_paths": [...]}`` (MHz, ns); Yosys' log (``top.rpt``)
has the cell counts after synthesis (on the iCE40 a logic cell is a LUT and a flip-flop
together, so LUTs and FFs are counted there).
"""

import json
import re
from pathlib import Path

__all__ = [
    "parse_critical_paths",
    "parse_fmax_log",
    "parse_nextpnr_report",
    "parse_utilisation_log",
    "parse_yosys_cells",
    "report_stem",
    "summarise",
    "write_reports",
]


def report_stem(board, config):
    lane = "_lane" if config.gather == "lane" else ""
    return f"{board}_{config.cores}x{config.rows}x{config.cols}{lane}"


def parse_nextpnr_report(text):
    """(utilization, fmax) from nextpnr's ``--report`` JSON text."""
    data = json.loads(text)
    utilization = {bel: {"used": int(v["used"]), "available": int(v["available"])}
                   for bel, v in data.get("utilization", {}).items()}
    fmax = {clock: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
            for clock, v in data.get("fmax", {}).items()}
    return utilization, fmax


_UTIL_LINE = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.MULTILINE)


_FMAX_LINE = re.compile(r"Max frequency for clock '([^']+)': ([0-9.]+) MHz \((?:PASS|FAIL) at "
                        r"([0-9.]+) MHz\)")


def parse_fmax_log(log_text):
    """Fmax per clock from nextpnr's log (the last estimate wins), for a run whose JSON
    report has none (placed, not routed)."""
    return {m.group(1): {"achieved": float(m.group(2)), "constraint": float(m.group(3))}
            for m in _FMAX_LINE.finditer(log_text)}


def parse_utilisation_log(log_text):
    """Bel use from nextpnr's log (``Device utilisation`` lines), for a run that stopped before
    its JSON report, e.g. because the design does not fit. The last table wins."""
    utilization = {}
    for match in _UTIL_LINE.finditer(log_text):
        utilization[match.group(1)] = {"used": int(match.group(2)),
                                       "available": int(match.group(3))}
    return utilization


def _short_source(src):
    # "/abs/path/rtl/units.py:190" -> "rtl/units.py:190"; toolchain library files are dropped.
    for top in ("rtl/", "synth/", "amaranth/"):
        if f"/{top}" in src:
            return top + src.split(f"/{top}", 1)[1]
    return None


def parse_critical_paths(text):
    """The critical path of each clock from nextpnr's ``--report`` JSON text.

    Returns ``{clock: {"from": cell, "to": cell, "delay_ns", "logic_ns", "routing_ns",
    "sources": [the project's source lines along the path, in order]}}``.
    """
    data = json.loads(text)
    paths = {}
    for entry in data.get("critical_paths", []):
        start, end = entry.get("from", ""), entry.get("to", "")
        if not start.startswith("posedge ") or start != end:
            continue    # only register-to-register paths within one clock
        clock = start.split(" ", 1)[1]
        steps = entry.get("path", [])
        logic = sum(s["delay"] for s in steps if s.get("type") != "routing")
        routing = sum(s["delay"] for s in steps if s.get("type") == "routing")
        sources = []
        for step in steps:
            for src in step.get("sources", []):
                short = _short_source(src)
                if short and short not in sources:
                    sources.append(short)
        paths[clock] = {
            "from": steps[0]["from"]["cell"] if steps else None,
            "to": steps[-1]["to"]["cell"] if steps else None,
            "delay_ns": round(logic + routing, 3),
            "logic_ns": round(logic, 3),
            "routing_ns": round(routing, 3),
            "sources": sources,
        }
    return paths


def parse_yosys_cells(rpt_text):
    """Cell counts (whole design) of the last ``stat`` in a Yosys log: ``{cell_type: count}``."""
    blocks = rpt_text.split("Printing statistics.")
    if len(blocks) < 2:
        return {}
    last = blocks[-1]
    if "=== design hierarchy ===" in last:
        last = last.split("=== design hierarchy ===", 1)[1]
    cells = {}
    for match in re.finditer(r"^\s+(\d+)\s+([A-Za-z_$][\w$]*)\s*$", last, re.MULTILINE):
        name = match.group(2)
        if name not in cells:    # the first count of a type is the whole design's
            cells[name] = int(match.group(1))
    return cells


def _pct(used, available):
    return f"{100 * used / available:.1f} %" if available else "-"


def summarise(board, config, *, mem_bytes, clock_hz, pe_mult, utilization, fmax, paths,
              yosys_cells, seconds, command, error=None, routed=True):
    """The report dictionary: resources used / available, Fmax per clock, pass or fail."""
    def bel(name):
        return utilization.get(name, {"used": 0, "available": 0})

    if board.family == "ice40":
        luts = sum(v for k, v in yosys_cells.items() if k == "SB_LUT4")
        ffs = sum(v for k, v in yosys_cells.items() if k.startswith("SB_DFF"))
        lc = bel("ICESTORM_LC")
        resources = {
            "logic_cells": lc,
            "luts": {"used": luts, "available": lc["available"]},
            "ffs": {"used": ffs, "available": lc["available"]},
        }
    else:
        resources = {"luts": bel(board.lut_cell), "ffs": bel(board.ff_cell)}
    resources["dsps"] = dict(bel(board.dsp_cell), cell=board.dsp_cell)
    resources["rams"] = {name: bel(name) for name in board.ram_cells}

    clocks = {}
    for clock, f in fmax.items():
        clocks[clock] = {
            "achieved_mhz": round(f["achieved"], 2),
            "constraint_mhz": round(f["constraint"], 2),
            "pass": f["achieved"] >= f["constraint"],
            "critical_path": paths.get(clock, {}),
        }
    npu_fmax = min((c["achieved_mhz"] for c in clocks.values()), default=None)
    peak = (2 * config.macs_per_cycle * min(npu_fmax, clock_hz / 1e6) / 1e3
            if npu_fmax else None)
    return {
        "board": board.name,
        "device": f"{board.platform.device}",
        "config": {"cores": config.cores, "rows": config.rows, "cols": config.cols,
                   "macs": config.macs_per_cycle, "bus_width": config.bus_width,
                   "scratchpad_bytes": config.scratchpad_bytes, "acc_rows": config.acc_rows,
                   "param_slots": config.param_slots, "addr_width": config.addr_width,
                   "rounding": config.rounding, "sparse_group": config.sparse_group,
                   "gather": config.gather,
                   "fetch_depth": config.fetch_depth,
                   "unit_queue_depth": config.unit_queue_depth,
                   "load_queue_depth": config.load_queue_depth,
                   "store_queue_depth": config.store_queue_depth,
                   "zero_skip": config.zero_skip,
                   "zero_lookahead": config.zero_lookahead,
                   "counter_width": config.counter_width,
                   "requant_lanes": (None if config.requant_sequential
                                     else config.requant_lanes or config.cols),
                   "requant_sequential": config.requant_sequential,
                   "retime": config.retime,
                   "mem_bytes": mem_bytes, "pe_mult": pe_mult},
        "target_mhz": round(clock_hz / 1e6, 3),
        "resources": resources,
        "clocks": clocks,
        "fmax_mhz": npu_fmax,
        "fits": all(v["used"] <= v["available"] for v in utilization.values()),
        "routed": routed,
        "pass": (routed and error is None and bool(clocks)
                 and all(c["pass"] for c in clocks.values())),
        "error": error,
        "peak_gops_at_target": round(2 * config.macs_per_cycle * clock_hz / 1e9, 2),
        "peak_gops_at_fmax": round(peak, 2) if peak is not None else None,
        "build_seconds": round(seconds, 1),
        "command": command,
    }


def _markdown(report):
    cfg = report["config"]
    res = report["resources"]
    lines = [
        (f"# {report['board']} ({report['device']}): {cfg['cores']} core(s) x "
         f"{cfg['rows']}x{cfg['cols']} = {cfg['macs']} MACs"),
        "",
        f"Reproduce: `{report['command']}`",
        "",
        (f"Target clock {report['target_mhz']:g} MHz: "
         f"**{'PASS' if report['pass'] else 'FAIL'}** (Fmax {report['fmax_mhz']} MHz). Peak "
         f"{report['peak_gops_at_fmax']} GOPS at min(Fmax, target), "
         f"{report['peak_gops_at_target']} GOPS at the target clock (2 x MACs x f)."),
        "",
        *([f"The build stopped: `{report['error']}`", ""] if report["error"] else []),
        *([("Placed, not routed (`--place-only`): Fmax is nextpnr's estimate after placement, "
            "not a timing result."), ""] if not report.get("routed", True) else []),
        "| resource | used | available | % |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows = []
    if "logic_cells" in res:
        rows.append(("logic cells (LUT+FF)", res["logic_cells"]))
    rows += [("LUTs", res["luts"]), ("FFs", res["ffs"]),
             (f"DSPs ({res['dsps']['cell']})", res["dsps"])]
    rows += [(name, v) for name, v in res["rams"].items()]
    for name, v in rows:
        lines.append(f"| {name} | {v['used']} | {v['available']} | "
                     f"{_pct(v['used'], v['available'])} |")
    lines += ["", "| clock | Fmax (MHz) | constraint (MHz) | result | critical path |",
              "| --- | ---: | ---: | --- | --- |"]
    for clock, c in report["clocks"].items():
        cp = c["critical_path"]
        sources = f"; {', '.join(cp['sources'][:6])}" if cp and cp["sources"] else ""
        path = (f"`{cp['from']}` -> `{cp['to']}` ({cp['logic_ns']} ns logic, "
                f"{cp['routing_ns']} ns routing{sources})" if cp else "-")
        lines.append(f"| `{clock}` | {c['achieved_mhz']} | {c['constraint_mhz']} | "
                     f"{'pass' if c['pass'] else 'FAIL'} | {path} |")
    lines += ["", "Configuration: " + ", ".join(f"{k}={v}" for k, v in cfg.items()),
              f"Build time: {report['build_seconds']} s.", ""]
    return "\n".join(lines)


def write_reports(report, directory, stem):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(_markdown(report))
    return json_path, md_path
