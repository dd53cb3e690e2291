"""Build a board top with the open toolchain from PyPI (YoWASP) and write its report.

``python -m npu.synth.build --board ulx3s-85f --cores 1 --rows 8 --cols 8`` elaborates the top,
runs Yosys, nextpnr and ecppack / icepack in ``build/synth/<board>_<c>x<r>x<c>/`` and writes
``synth/reports/<board>_<c>x<r>x<c>.json`` and ``.md``.

Tools are found in one place (:func:`find_toolchain`): an environment variable (``YOSYS``,
``NEXTPNR_ECP5``, ``ECPPACK``, ``NEXTPNR_ICE40``, ``ICEPACK``) wins, then the ``yowasp-*``
executable beside this Python, then on ``PATH``. No system toolchain is needed.
"""

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from npu.rtl.config import GATHER_MODES
from npu.rtl.ecp5 import DSP_PARTIAL_PRODUCTS, DSP_PRODUCTS, DSP_SPAN
from npu.rtl.stage import REPLICA_ATTR

from .boards import BOARDS, BoardTop, board_config
from .floorplan import PE_MODULE, pe_dsp_sites, pin_script
from .report import (
    parse_critical_paths,
    parse_fmax_log,
    parse_nextpnr_report,
    parse_utilisation_log,
    parse_yosys_cells,
    report_stem,
    summarise,
    write_reports,
)

__all__ = ["TOOLS", "build", "find_toolchain", "main", "missing_tools", "pe_dsp_count",
           "pe_mult_choice", "pins_pe_dsps"]

#: Tools of each family, by the name Amaranth's build script gives them.
TOOLS = {
    "ecp5": ("yosys", "nextpnr-ecp5", "ecppack"),
    "ice40": ("yosys", "nextpnr-ice40", "icepack"),
}

REPORTS_DIR = Path(__file__).with_name("reports")

#: Multipliers of the requantiser per output lane (four 17x17 partial products).
REQUANT_MULTS_PER_LANE = 4


def _env_var(tool):
    return tool.upper().replace("-", "_")


def find_toolchain(family):
    """``{ENV_VAR: executable}`` for ``family``; a value is None when the tool is not found."""
    here = Path(sys.executable).parent
    found = {}
    for tool in TOOLS[family]:
        var = _env_var(tool)
        exe = os.environ.get(var)
        if not exe:
            for candidate in (here / f"yowasp-{tool}", shutil.which(f"yowasp-{tool}")):
                if candidate and Path(candidate).exists():
                    exe = str(candidate)
                    break
        found[var] = exe
    return found


def missing_tools(family):
    """Names of the tools of ``family`` that cannot be found (empty when all are there)."""
    return [var for var, exe in find_toolchain(family).items()
            if exe is None or shutil.which(exe) is None]


def pe_mult_choice(board, config, pe_mult="auto"):
    """Where the processing elements' multipliers go: ``"dsp"``, ``"lut"`` or ``"mixed"``.

    ``auto`` puts them on DSPs if they fit beside the requantisers' multipliers (which need
    the DSP width, 17x17, more than an 8x8 product does) and one per core for the dispatch
    check; if not all fit, as many as do (``"mixed"``, see :func:`pe_dsp_count`), the rest
    in LUTs.
    """
    if pe_mult not in ("auto", "dsp", "lut", "mixed"):
        raise ValueError(
            f"pe_mult must be 'auto', 'dsp', 'lut' or 'mixed', not {pe_mult!r}")
    if pe_mult != "auto":
        return pe_mult
    per_core = _pe_dsp_budget(board, config)
    if per_core >= config.rows * config.cols:
        return "dsp"
    return "mixed" if per_core > 0 else "lut"


def _pe_dsp_budget(board, config):
    spare = BOARDS[board].dsp_count - _requant_dsps(config) - config.cores
    return max(0, spare // config.cores)


def pe_dsp_count(board, config, pe_mult="auto"):
    """Processing elements per core whose multiplier is a DSP: the first ones in row-major
    order (``pe_<row>_<col>``); the others are Booth-encoded into LUTs."""
    choice = pe_mult_choice(board, config, pe_mult)
    pes = config.rows * config.cols
    return {"dsp": pes, "lut": 0}.get(choice, min(pes, _pe_dsp_budget(board, config)))


def board_platform(board, config, pe_mult="auto"):
    """The platform of ``board`` for ``config``. On the ECP5 a retimed array's PEs on DSPs
    (:func:`pe_dsp_count`) are DSP instances whose output register is the product register
    (see ``npu.rtl.ecp5.DSP_PRODUCTS``), the others' products are inferred; so are the
    requantisers' partial products, registered in their DSPs
    (``npu.rtl.ecp5.DSP_PARTIAL_PRODUCTS``), and each dispatch's rows x stride product
    (``npu.rtl.ecp5.DSP_SPAN``, the one DSP per core the PE budget leaves)."""
    platform = BOARDS[board].platform()
    if BOARDS[board].family == "ecp5" and config.retime:
        setattr(platform, DSP_PRODUCTS, pe_dsp_count(board, config, pe_mult))
        setattr(platform, DSP_PARTIAL_PRODUCTS, True)
        setattr(platform, DSP_SPAN, True)
    return platform


def pins_pe_dsps(board, config, pe_mult="auto", pin_dsps=False):
    """Whether the build pins the PEs' DSPs to sites (``synth.floorplan``): only when asked
    (``pin_dsps``), since nextpnr's estimates of the pinned builds are lower (see
    docs/architecture.md); a ValueError where it cannot, since only DSP instances can be
    pinned (a retimed ECP5 array's) and only on a board whose DSP sites are known."""
    if pin_dsps and not (BOARDS[board].dsp_sites and config.retime
                         and pe_dsp_count(board, config, pe_mult) > 0):
        raise ValueError(f"{board} cannot pin PE DSPs for this configuration (needs a retimed "
                         "array with PEs on DSPs, on a board with known DSP sites)")
    return bool(pin_dsps)


def _requant_dsps(config):
    if config.requant_sequential:
        return 0             # it shifts and adds
    lanes = config.cols if config.requant_lanes is None else config.requant_lanes
    return REQUANT_MULTS_PER_LANE * lanes * config.cores


#: The scratchpad's read ports and the store unit's accumulator read port never read a row in
#: the cycle it is written (tokens order every LOAD before the LOADW / MATMUL that reads its
#: lines, and every MATMUL before the STORE that reads its rows; see docs/architecture.md), so
#: what such a read returns is left to the RAM: block RAM then needs no logic that emulates
#: read-before-write (on the ECP5 that logic also sits between the RAM and the gather).
#: (The execute unit's transparent read-modify-write port keeps its bypass.)
_NO_COLLISION = (
    "setparam -set COLLISION_X_MASK 1"
    " top.system.npu.core[0-9]/r:MEMID=\\scratchpad"
    " top.system.npu.core[0-9]/r:MEMID=\\accumulator %u"
    " top.system.npu.core[0-9]/r:TRANSPARENCY_MASK=1'0 %i"
    " top.system.npu.core[0-9]/t:$memrd_v2 %i"
)


#: Registers that drive a replica (``rtl.stage.replica``, a wire marked ``keep``) are kept
#: too, so that Yosys does not merge equal copies into one register with all their loads.
_KEEP_REPLICAS = f"setattr -set keep 1 a:{REPLICA_ATTR} %ci1 t:$dff %i"


def _overrides(board, config, pe_mult, seed, place_only=False, router=None, pin_dsps=False,
               placer=None):
    family = BOARDS[board].family
    booth = []
    on_dsp = pe_dsp_count(board, config, pe_mult)
    if on_dsp == 0:
        # Booth-encode the PE products into LUTs before synthesis maps the rest to DSPs.
        booth += [PE_MODULE.format(core="*", row="*", col="*")]
    else:
        booth += [PE_MODULE.format(core="*", row=n // config.cols, col=n % config.cols)
                  for n in range(on_dsp, config.rows * config.cols)]
    # The DSPs are for the requantisers and PEs (see pe_mult_choice); the burst generators'
    # small products are shift-and-adds in the gateware already.
    if family == "ice40":
        # The dispatch check's rows x stride product goes to LUTs too unless a DSP per core
        # is left over (in LUTs it costs ~350 cells).
        used = _requant_dsps(config) + on_dsp * config.cores
        if BOARDS[board].dsp_count - used < config.cores:
            booth += ["top.system.npu.core[0-9]"]
    script = ["hierarchy -top top", "proc", *([f"booth {' '.join(booth)}"] if booth else []),
              _NO_COLLISION, _KEEP_REPLICAS]
    if pin_dsps:
        script += pin_script(pe_dsp_sites(BOARDS[board].dsp_sites, cores=config.cores,
                                          rows=config.rows, cols=config.cols, on_dsp=on_dsp))
    synth = []
    if family == "ice40":
        synth += ["-dsp"]
    return {
        "script_after_read": "\n".join(script),
        "synth_opts": synth,
        # Always finish, so that a failing clock still gets its report.
        "nextpnr_opts": ["--report", "top.report.json", "--timing-allow-fail",
                         "--seed", str(seed),
                         # The placed netlist (placed only) or the routed one with the
                         # arrival time at every cell input, for ``synth.placed_timing``.
                         *(["--no-route", "--write", "top.placed.json"] if place_only else
                           ["--write", "top.routed.json", "--detailed-timing-report"]),
                         *(["--placer", placer] if placer else []),
                         *(["--router", router] if router else [])],
    }


def build(board, config, *, mem_bytes, clock_hz=None, pe_mult="auto", seed=1,
          build_dir=None, reports_dir=REPORTS_DIR, command=None, log=print, place_only=False,
          router=None, pin_dsps=False, placer=None):
    """Build ``config`` for ``board``; return the report dictionary (also written to disk).

    With ``place_only`` nextpnr stops after placement (``--no-route``): the report gives the
    resources and nextpnr's Fmax estimate from placement, marked as an estimate, never a pass;
    for designs whose routing takes too long to iterate on. Its files end in ``_placed``, and
    the build directory keeps the placed netlist (``top.placed.json``), which
    ``python -m npu.synth.placed_timing`` ranks the paths of. A routed build keeps the routed
    netlist (``top.routed.json``) and nextpnr's arrival times in ``top.report.json``, from which
    ``python -m npu.synth.placed_timing --routed`` lists every failing endpoint.
    ``placer`` and ``router`` pick nextpnr's placer (``heap``, its default, or ``static``) and
    router (``router1``, its default, or ``router2``).
    ``pin_dsps`` pins the PEs' DSPs to sites (``synth.floorplan``, :func:`pins_pe_dsps`).
    """
    spec = BOARDS[board]
    family = spec.family
    pe_mult = pe_mult_choice(board, config, pe_mult)
    pin_dsps = pins_pe_dsps(board, config, pe_mult, pin_dsps)
    missing = missing_tools(family)
    if missing:
        raise FileNotFoundError(
            f"FPGA tools not found: {', '.join(missing)} (pip install '.[synth]' installs "
            "the YoWASP ones)")
    env = dict(os.environ)
    env.update(find_toolchain(family))
    env.setdefault("OPENFPGALOADER", "true")   # ULX3S lists it as required even unprogrammed

    stem = report_stem(board, config) + ("_placed" if place_only else "")
    build_dir = Path(build_dir or Path("build/synth") / stem)
    top = BoardTop(board, config, mem_bytes=mem_bytes, clock_hz=clock_hz)
    log(f"{stem}: {config.macs_per_cycle} MACs, {pe_dsp_count(board, config, pe_mult)} of "
        f"{config.rows * config.cols} PE multipliers per core on DSPs"
        f"{' (pinned)' if pin_dsps else ''}, "
        f"target {top.clock_hz / 1e6:g} MHz, memory {mem_bytes // 1024} KiB -> {build_dir}")
    plan = board_platform(board, config, pe_mult).build(
        top, name="top", do_build=False,
        **_overrides(board, config, pe_mult, seed, place_only=place_only, router=router,
                     pin_dsps=pin_dsps, placer=placer))
    plan.extract(str(build_dir))
    start = time.monotonic()
    with open(build_dir / "build.log", "w") as out:
        returncode = run_tools(["sh", f"{plan.script}.sh"], cwd=build_dir, env=env, out=out)
    seconds = time.monotonic() - start
    report_json = build_dir / "top.report.json"
    nextpnr_log = build_dir / "top.tim"
    error = None
    if returncode != 0 and not (place_only and report_json.exists()):
        # (Placed only, packing the unrouted design into a bitstream may fail: no matter.)
        lines = (build_dir / "build.log").read_text().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]
        error = errors[0] if errors else f"exit {returncode}"
        if not nextpnr_log.exists():
            # Synthesis itself failed: nothing to report on.
            raise RuntimeError(f"the build failed after {seconds:.0f} s: {error}; see "
                               f"{build_dir}/build.log")
    if report_json.exists() and error is None:
        utilization, fmax = parse_nextpnr_report(report_json.read_text())
        paths = parse_critical_paths(report_json.read_text())
        if place_only and not fmax:
            fmax = parse_fmax_log(nextpnr_log.read_text())
    else:
        # Place and route stopped (typically: the design does not fit): report what it used.
        utilization, fmax, paths = parse_utilisation_log(nextpnr_log.read_text()), {}, {}
    cells = parse_yosys_cells((build_dir / "top.rpt").read_text())
    report = summarise(spec, config, mem_bytes=mem_bytes, clock_hz=top.clock_hz,
                       pe_mult=pe_mult, utilization=utilization, fmax=fmax, paths=paths,
                       yosys_cells=cells, seconds=seconds, command=command or "", error=error,
                       routed=not place_only)
    report["config"]["pe_dsp_per_core"] = pe_dsp_count(board, config, pe_mult)
    report["config"]["pe_dsp_pinned"] = pin_dsps
    json_path, md_path = write_reports(report, reports_dir, stem)
    verdict = "PASS" if report["pass"] else "FAIL"
    log(f"{stem}: Fmax {report['fmax_mhz']} MHz vs {report['target_mhz']} MHz target: "
        f"{verdict}{f' ({error})' if error else ''} after {seconds:.0f} s; wrote {json_path}, "
        f"{md_path}")
    return report


def run_tools(args, *, cwd, env, out):
    """Run a build script in a process group of its own and return its exit code. If this
    process is stopped meanwhile (Ctrl-C, or SIGTERM under ``main``), the whole group is
    stopped with it: Yosys and nextpnr are not left running without their build."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):     # (the group may be gone already)
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise


#: The options that say only where files go, not what is built: a parent of ``main``'s parser,
#: and left out of a report's reproducing command (``_what_to_build``).
_WHERE = argparse.ArgumentParser(add_help=False)
_WHERE.add_argument("--build-dir", default=None)
_WHERE.add_argument("--reports-dir", default=str(REPORTS_DIR))


def _what_to_build(argv):
    """The command line without the ``_WHERE`` options: the report's reproducing command."""
    return _WHERE.parse_known_args(argv)[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[_WHERE])
    parser.add_argument("--board", required=True, choices=sorted(BOARDS))
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="NPU clock (default: the board's target)")
    parser.add_argument("--mem-kib", type=int, default=None,
                        help="on-chip memory for programs and data, KiB")
    parser.add_argument("--scratchpad-bytes", type=int, default=None)
    parser.add_argument("--acc-rows", type=int, default=None)
    parser.add_argument("--bus-width", type=int, default=None)
    parser.add_argument("--param-slots", type=int, default=None)
    parser.add_argument("--rounding", choices=("double", "single"), default=None)
    parser.add_argument("--requant-lanes", type=int, default=None,
                        help="requantiser lanes (divides COLS; fewer lanes, fewer multipliers)")
    parser.add_argument("--sparse-group", type=int, default=None)
    parser.add_argument("--gather", choices=GATHER_MODES, default=None,
                        help="the sparse unit's gather: any byte of a line (crossbar, the "
                             "default) or each row's own byte of one sub-block (lane)")
    parser.add_argument("--pe-mult", choices=("auto", "dsp", "lut", "mixed"), default="auto",
                        help="where the PE multipliers go (auto: DSPs if they all fit, else "
                             "mixed: as many as fit)")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr placer seed")
    parser.add_argument("--place-only", action="store_true",
                        help="stop after placement: resources and an Fmax estimate")
    parser.add_argument("--placer", choices=("heap", "static"), default=None,
                        help="nextpnr's placer (default: nextpnr's, heap)")
    parser.add_argument("--router", choices=("router1", "router2"), default=None,
                        help="nextpnr's router (default: nextpnr's, router1)")
    parser.add_argument("--pin-dsps", action="store_true",
                        help="pin the PEs' DSPs to sites in the array's shape (ECP5)")
    args = parser.parse_args(argv)

    try:
        config, mem_bytes = board_config(
            args.board, cores=args.cores, rows=args.rows, cols=args.cols,
            mem_bytes=args.mem_kib * 1024 if args.mem_kib else None,
            scratchpad_bytes=args.scratchpad_bytes, acc_rows=args.acc_rows,
            bus_width=args.bus_width, param_slots=args.param_slots, rounding=args.rounding,
            requant_lanes=args.requant_lanes, sparse_group=args.sparse_group,
            gather=args.gather)
        pins_pe_dsps(args.board, config, args.pe_mult, args.pin_dsps)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    command = "python -m npu.synth.build " + shlex.join(
        _what_to_build(argv if argv is not None else sys.argv[1:]))
    # A stopped build stops its tools (run_tools): SIGTERM unwinds like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        report = build(args.board, config, mem_bytes=mem_bytes,
              clock_hz=args.clock_mhz * 1e6 if args.clock_mhz else None,
              pe_mult=args.pe_mult, seed=args.seed, build_dir=args.build_dir,
              place_only=args.place_only, router=args.router, pin_dsps=args.pin_dsps,
              placer=args.placer,
              reports_dir=args.reports_dir, command=command)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if report["pass"] else 2


if __name__ == "__main__":
    sys.exit(main())
