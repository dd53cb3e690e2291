"""Run programs on the NPU's Verilog in Verilator, through cocotb 1.8's runner.

The harness that Verilator compiles is the NPU with :class:`~npu.sim.axi_mem_hdl.AXI4MemoryHDL`
as its external memory and a clock generated inside the simulation (Verilator ``--timing``), so
once the cores are started no Python runs until the interrupt. The host side is the cocotb test
``npu.sim.cocotb_npu.run_job``: it loads the memory image through the memory's backdoor (one
bus word per cycle, with the NPU held in reset), then drives the AXI4-Lite registers in exactly
the order and with exactly the timing of :class:`~npu.sim.amaranth_backend.AmaranthBackend`,
so the cores' counters match the Amaranth simulation cycle for cycle, and reads the written
part of the memory back through the backdoor.

Each (configuration, latency, bytes per cycle, memory capacity) is exported to Verilog and
built once into ``build/verilator/<key>/`` (``NPU_BUILD_DIR`` moves ``build``). A build is
reused, across sessions too, while the Python sources that generate it, the tool versions and
the build arguments are unchanged (``stamp.json`` records their hash). The image and the
results pass between this process and the simulator process as ``.npy`` and ``.json`` files.

``WAVES=1`` (or ``NPU_VCD=1``) builds a variant with FST tracing and writes
``build/waves/verilator_<key>.fst`` for each run.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from npu.rtl.bus import AXI4LiteSignature
from npu.rtl.control import COUNTERS, CounterLayout
from npu.rtl.csr import ControlRegisters
from npu.rtl.isa import CoreState, ErrorCode
from npu.rtl.top import NPU

from .amaranth_sim import waves_requested
from .axi_mem_hdl import AXI4MemoryHDL
from .backend import CoreResult, NPUTimeout, RunResult, TimedMemoryBackend, check_run_arguments

__all__ = [
    "NPUHarness",
    "VerilatorBackend",
    "build_harness",
    "build_info",
    "build_top",
    "decode_core",
    "long_program",
    "measure_speed",
    "run_cocotb",
    "verilator_available",
]

#: Clock period inside the simulation; only cycle counts matter.
PERIOD_NS = 10
#: Smallest memory a harness is built with. A larger image gets a build of the next power of two.
MIN_CAPACITY = 1 << 18
HARNESS = "npu_harness"
TOPLEVEL = "npu_tb"
TEST_MODULE = "npu.sim.cocotb_npu"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _get_runner():
    # cocotb 1.8 warns on import that its runner is experimental; this is the supported pair.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from cocotb.runner import get_runner
    return get_runner("verilator")


def verilator_available():
    return shutil.which("verilator") is not None


def build_root():
    return Path(os.environ.get("NPU_BUILD_DIR", _PACKAGE_ROOT / "build")) / "verilator"


class CoreProbeSignature(wiring.Signature):
    """A core's state, pc and counters, brought out of the harness so that a run stopped by
    its cycle budget can report them as of that cycle."""

    def __init__(self):
        super().__init__({
            "state": Out(CoreState), "error": Out(ErrorCode), "pc": Out(32),
            "counters": Out(CounterLayout),
        })


class NPUHarness(wiring.Component):
    """``NPU(config)`` with an :class:`AXI4MemoryHDL` on its memory port: the top Verilator runs.

    Ports (flattened by :func:`npu.synth.export.port_names`): ``s_axil_*`` (the NPU's
    registers), ``irq``, ``mem_size``, ``mem_bd_*``, ``mem_written*``,
    ``mem_protocol_error`` (the memory's ports of the same names) and ``cores_<i>_*``
    (:class:`CoreProbeSignature`).
    """

    def __init__(self, config, *, capacity, latency=8, bytes_per_cycle=8):
        self.config = config
        self.npu = NPU(config)
        self.mem = AXI4MemoryHDL(addr_width=config.addr_width, data_width=config.bus_width,
                                 id_width=self.npu.id_width, capacity=capacity,
                                 latency=latency, bytes_per_cycle=bytes_per_cycle)
        mem_ports = {f"mem_{name}": member for name, member in self.mem.signature.members.items()
                     if name != "axi"}
        super().__init__({
            "csr": In(AXI4LiteSignature(addr_width=ControlRegisters.ADDR_WIDTH)),
            "irq": Out(1),
            **mem_ports,
            "cores": Out(CoreProbeSignature()).array(config.cores),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.npu = npu = self.npu
        m.submodules.mem = mem = self.mem
        wiring.connect(m, npu.axi, mem.axi)
        wiring.connect(m, wiring.flipped(self.csr), npu.csr)
        m.d.comb += self.irq.eq(npu.irq)
        for name, member in mem.signature.members.items():
            if name == "axi":
                continue
            outer, inner = getattr(self, f"mem_{name}"), getattr(mem, name)
            m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
        for probe, core in zip(self.cores, npu.cores):
            ctrl = core.ctrl
            m.d.comb += [probe.state.eq(ctrl.state), probe.error.eq(ctrl.error),
                         probe.pc.eq(ctrl.pc), probe.counters.eq(ctrl.counters)]
        return m


# ---------------------------------------------------------------------------------------------
# Building


def _harness_ports(harness):
    """Flat port names (as :func:`npu.synth.export.port_names` gives them) with their flows."""
    from npu.synth.export import port_names

    prefixes = {"csr": "s_axil"}
    ports = port_names(harness, prefixes=prefixes)
    flows = [member.flow for _path, member, _value in harness.signature.flatten(harness)]
    return ports, dict(zip(ports, flows, strict=True))


#: What cocotb reaches through VPI: the testbench's ports and clock. Everything else stays
#: private (``--no-public-flat-rw`` undoes the runner's ``--public-flat-rw``), so Verilator
#: may optimise the design as a whole; that is most of the simulation speed.
_PUBLIC = "/*verilator public_flat_rw*/"


def _testbench_verilog(ports, flows):
    """The Verilator top: the harness's ports except the clock, which toggles inside the
    simulation so that no Python runs per cycle."""
    names = sorted(ports)
    decls, conns = [], []
    for name in names:
        width = len(ports[name][0])
        rng = f"[{width - 1}:0] " if width > 1 else ""
        decls.append(f"  {'input' if flows[name] == In else 'output'} wire {rng}{name} {_PUBLIC};")
        conns.append(f"    .{name}({name})")
    return "\n".join([
        "// Generated by npu.sim.verilator_backend: the harness with a free-running clock.",
        f"module {TOPLEVEL}(rst, {', '.join(names)});",
        f"  input wire rst {_PUBLIC};",
        *decls,
        f"  reg clk {_PUBLIC} = 1'b0;",
        f"  always #{PERIOD_NS // 2} clk = ~clk;",
        f"  {HARNESS} harness (",
        "    .clk(clk),",
        "    .rst(rst),",
        ",\n".join(conns),
        "  );",
        "endmodule",
        "",
    ])


_ZERO_WORD = re.compile(r"\s*\\?[\w$.]+ ?\[\d+\] = \d+'h0+;")


def _strip_zero_init(text, words):
    """Drop the ``initial`` block that zeroes the memory array word by word.

    Amaranth writes one ``mem[i] = 0;`` line per word; for a 1 MiB memory that is 131072
    statements that Verilator would compile into one function. Verilator starts a variable
    without an initialiser at zero (``--x-initial 0``), so the block changes nothing.
    """
    lines = text.split("\n")
    out = []
    stripped = 0
    i = 0
    while i < len(lines):
        if (lines[i].strip() == "initial begin" and i + 1 + words < len(lines)
                and lines[i + 1 + words].strip() == "end"
                and all(_ZERO_WORD.fullmatch(line) for line in lines[i + 1:i + 1 + words])):
            stripped += 1
            i += words + 2
            continue
        out.append(lines[i])
        i += 1
    if stripped != 1:
        raise RuntimeError(f"expected one zero-initialisation block of {words} words in the "
                           f"harness Verilog, found {stripped}")
    return "\n".join(out)


def _source_hash(extra):
    h = hashlib.sha256()
    files = sorted((_PACKAGE_ROOT / "rtl").glob("*.py")) + [
        _PACKAGE_ROOT / "sim" / name for name in ("axi_mem.py", "axi_mem_hdl.py",
                                                  "verilator_backend.py")
    ] + [_PACKAGE_ROOT / "synth" / name for name in ("export.py", "lint.vlt")]
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def _tool_versions():
    import amaranth
    import cocotb

    verilator = subprocess.run(["verilator", "--version"], capture_output=True,
                               text=True, check=False).stdout.strip()
    return {"amaranth": amaranth.__version__, "cocotb": cocotb.__version__,
            "verilator": verilator, "makeflags": _MAKEFLAGS}


def _build_args(waves):
    from npu.synth.export import LINT_WAIVERS

    # Lint is checked on its own (``verilator --lint-only -Wall`` with LINT_WAIVERS, in the
    # tests); the simulation build keeps the waivers but lets no lint-class warning stop it, so
    # a finding in new RTL shows up as a failing lint test, not as a backend that cannot run.
    args = ["--timing", "--timescale", "1ns/1ps", "--x-initial", "0", "-Wno-lint",
            "--no-public-flat-rw", str(LINT_WAIVERS)]
    if waves:
        args += ["--trace-fst", "--trace-structs"]
    return args


def _key(config, capacity, latency, bytes_per_cycle, waves):
    digest = hashlib.sha256(repr((config, capacity, latency, bytes_per_cycle)).encode())
    return (f"{config.cores}c{config.rows}x{config.cols}-lat{latency}-bpc{bytes_per_cycle}"
            f"-{capacity >> 10}k-{digest.hexdigest()[:8]}{'-waves' if waves else ''}")


_BUILT = {}  # key -> build directory, checked once per process


#: The runner calls plain ``make``; variables in MAKEFLAGS reach it as command-line
#: definitions. -O2 rather than Verilator's default -Os for the per-cycle code roughly halves
#: the time per cycle for a little more compile time.
_MAKEFLAGS = f"-j{os.cpu_count() or 1} OPT_FAST=-O2"


@contextlib.contextmanager
def _environ(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet(log_path):
    """Send this process's stdout and stderr (file descriptors, so child processes too) to
    ``log_path`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _cached_build(key, toplevel, args, write_sources, describe):
    """Build ``toplevel`` into ``build_root() / key`` unless the stamp there matches.

    ``write_sources(build_dir)`` exports the Verilog and returns the files; ``describe`` (any
    JSON) enters the stamp with the generating sources, the tool versions and ``args``.
    """
    if key in _BUILT:
        return _BUILT[key]
    build_dir = build_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp = _source_hash({"describe": describe, "args": args, "tools": _tool_versions()})
    stamp_path = build_dir / "stamp.json"
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per directory, even across processes
        current = (json.loads(stamp_path.read_text()).get("hash") if stamp_path.exists()
                   else None)
        if current != stamp or not (build_dir / toplevel).exists():
            stamp_path.unlink(missing_ok=True)
            started = time.monotonic()
            sources = write_sources(build_dir)
            exported = time.monotonic()
            log = build_dir / "build.log"
            log.unlink(missing_ok=True)
            runner = _get_runner()
            try:
                with _quiet(log), _environ(MAKEFLAGS=_MAKEFLAGS):
                    runner.build(verilog_sources=sources, hdl_toplevel=toplevel,
                                 build_args=args, build_dir=build_dir, always=True)
            except SystemExit as exc:
                raise RuntimeError(f"Verilator build failed ({exc}); see {log}:\n"
                                   f"{_tail(log)}") from None
            finished = time.monotonic()
            stamp_path.write_text(json.dumps({
                "hash": stamp, "export_seconds": round(exported - started, 1),
                "build_seconds": round(finished - exported, 1),
            }))
    _BUILT[key] = build_dir
    return build_dir


def build_harness(config, *, latency=8, bytes_per_cycle=8, capacity=MIN_CAPACITY,
                  waves=False):
    """Export and build the harness for these parameters unless an up-to-date build exists.

    Returns
    -------
    pathlib.Path
        The build directory (it holds the simulator executable ``npu_tb``).
    """
    def write_sources(build_dir):
        from npu.synth.export import to_verilog

        harness = NPUHarness(config, capacity=capacity, latency=latency,
                             bytes_per_cycle=bytes_per_cycle)
        ports, flows = _harness_ports(harness)
        text = to_verilog(harness, HARNESS, ports=ports)
        (build_dir / "harness.v").write_text(_strip_zero_init(text, harness.mem.words))
        (build_dir / "tb.sv").write_text(_testbench_verilog(ports, flows))
        return [build_dir / "harness.v", build_dir / "tb.sv"]

    return _cached_build(
        _key(config, capacity, latency, bytes_per_cycle, waves), TOPLEVEL, _build_args(waves),
        write_sources, {"config": repr(config), "capacity": capacity, "latency": latency,
                        "bytes_per_cycle": bytes_per_cycle})


def build_top(config, name="npu"):
    """Build the plain NPU top (``npu.synth.export.write_top``: AXI-convention port names,
    ``clk`` and ``rst`` ports) for cocotb tests that bring their own bus models and clock.

    Returns
    -------
    pathlib.Path
        The build directory: ``npu.v`` and the simulator executable ``npu``.
    """
    from npu.synth.export import LINT_WAIVERS, write_top

    def write_sources(build_dir):
        return [write_top(config, build_dir / f"{name}.v", name)]

    digest = hashlib.sha256(repr(config).encode()).hexdigest()[:8]
    key = f"top-{config.cores}c{config.rows}x{config.cols}-{digest}"
    args = ["--timescale", "1ns/1ps", "-Wno-lint", str(LINT_WAIVERS)]
    return _cached_build(key, name, args, write_sources, {"config": repr(config),
                                                          "top": name})


def build_info(build_dir):
    """``stamp.json`` of a build: its hash and how long export and compilation took."""
    return json.loads((Path(build_dir) / "stamp.json").read_text())


# ---------------------------------------------------------------------------------------------
# Running


def _next_pow2(n):
    return 1 << max(0, (n - 1).bit_length())


def run_cocotb(build_dir, toplevel, testcase, job, *, workdir=None):
    """Run one cocotb test of :mod:`npu.sim.cocotb_npu` on a built simulator.

    ``job`` (a dict) is written to ``job.json`` in a fresh directory, whose path the test finds
    in ``NPU_JOB``; the test writes ``result.json`` (and any other files) next to it. Returns
    the directory and the parsed result.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir or build_dir))
    (run_dir / "job.json").write_text(json.dumps(job))
    log = run_dir / "sim.log"
    runner = _get_runner()
    env = {"NPU_JOB": str(run_dir / "job.json"),
           "COCOTB_LOG_LEVEL": os.environ.get("NPU_COCOTB_LOG_LEVEL", "WARNING"),
           "COCOTB_REDUCED_LOG_FMT": "1"}
    try:
        with _quiet(log):
            runner.test(test_module=TEST_MODULE, hdl_toplevel=toplevel, testcase=testcase,
                        hdl_toplevel_lang="verilog",
                        build_dir=build_dir, test_dir=run_dir, extra_env=env)
    except SystemExit:
        pass  # the result file (or its absence) says what happened
    result_path = run_dir / "result.json"
    if not result_path.exists():
        raise RuntimeError(f"the cocotb test {testcase} did not finish; see {log}:\n"
                           f"{_tail(log)}")
    result = json.loads(result_path.read_text())
    if "error" in result:
        raise RuntimeError(f"the cocotb test {testcase} failed: {result['error']}")
    return run_dir, result


def decode_core(state, error, pc, counters):
    """A core's probe / register values as the dict that NPUTimeout and CoreResult take."""
    fields = CounterLayout.from_bits(counters)
    return {"state": CoreState(state), "error": ErrorCode(error), "pc": pc,
            "counters": {name: int(getattr(fields, name)) for name in COUNTERS}}


class VerilatorBackend(TimedMemoryBackend):
    """Cycle-exact runs of ``NPU(config)``'s Verilog in Verilator; the same interface and the
    same cycle counts as :class:`~npu.sim.amaranth_backend.AmaranthBackend`.

    Parameters
    ----------
    config, latency, bytes_per_cycle
        As :class:`~npu.sim.backend.TimedMemoryBackend`.
    capacity : int
        Memory the harness is built with, in bytes (at least :data:`MIN_CAPACITY`); a larger
        image gets a build of the next power of two.
    """

    name = "verilator"

    def __init__(self, config, *, latency=8, bytes_per_cycle=8, capacity=MIN_CAPACITY):
        if not verilator_available():
            raise FileNotFoundError("verilator is not installed (make setup installs it)")
        super().__init__(config, latency=latency, bytes_per_cycle=bytes_per_cycle)
        self.capacity = max(MIN_CAPACITY, _next_pow2(capacity))
        #: Wall-clock seconds of the last run's phases: "load", "run", "readback", "total",
        #: and the cycles the run took ("cycles", from the first register write to the last
        #: register read).
        self.last_timing = {}

    def build(self, capacity=None):
        """Build (or find) the harness; returns its directory."""
        return build_harness(self.config, latency=self.latency,
                             bytes_per_cycle=self.bytes_per_cycle,
                             capacity=capacity or self.capacity, waves=waves_requested())

    def run(self, memory, programs, windows=None, *, max_cycles=1_000_000, progress=None):
        programs, windows = check_run_arguments(self.config, memory, programs, windows)
        if len(memory) > 1 << self.config.addr_width:
            raise ValueError(f"memory of {len(memory)} bytes does not fit the "
                             f"{self.config.addr_width}-bit address space")
        bb = self.config.bus_bytes
        capacity = max(self.capacity, _next_pow2(-(-len(memory) // bb) * bb))
        build_dir = self.build(capacity)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="npu-verilator-") as tmp:
            np.save(Path(tmp) / "image.npy", memory)
            job = {
                "image": str(Path(tmp) / "image.npy"),
                "memory_out": str(Path(tmp) / "memory.npy"),
                "programs": [int(p) for p in programs],
                "windows": [[int(b), int(lim)] for b, lim in windows],
                "max_cycles": int(max_cycles),
                "period_ns": PERIOD_NS,
                "bus_bytes": bb,
            }
            run_dir, result = run_cocotb(build_dir, TOPLEVEL, "run_job", job, workdir=tmp)
            out = np.load(job["memory_out"]) if "cores" in result else None
            if waves_requested() and (run_dir / "dump.fst").exists():
                waves = _PACKAGE_ROOT / "build" / "waves"
                waves.mkdir(parents=True, exist_ok=True)
                shutil.move(run_dir / "dump.fst", waves / f"verilator_{build_dir.name}.fst")
        self.last_timing = dict(result.get("timing", {}), total=time.monotonic() - started)
        if "timeout" in result:
            raise NPUTimeout(max_cycles, [decode_core(**c) for c in result["timeout"]])
        if progress is not None:
            for finished in result["finished"]:
                progress(finished, len(programs))
        cores = [CoreResult(**decode_core(**c)) for c in result["cores"]]
        return RunResult(memory=out, cores=cores,
                         cycles=max(c.counters["cycles"] for c in cores))


# ---------------------------------------------------------------------------------------------
# Speed


def long_program(config, repeats, *, size=64, seed=0):
    """A one-core program that runs the firmware compiler's raw ``size``-cube GEMM ``repeats``
    times over (the same result each time). Returns (memory, program address, GemmImage, a,
    b); ``image.read_output(memory)`` is ``a @ b`` after the run."""
    from npu.firmware.asm import Program
    from npu.firmware.device import build_gemm_image

    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (size, size)).astype(np.int8)
    b = rng.integers(-128, 128, (size, size)).astype(np.int8)
    image = build_gemm_image(config, a, b, raw=True, cores=1)
    body = image.programs[0].words[:-1]  # without its END
    code = np.frombuffer(Program(body * repeats).end().to_bytes(), np.uint8)
    base = -(-len(image.memory) // 4096) * 4096
    memory = np.zeros(base + len(code), np.uint8)
    memory[:len(image.memory)] = image.memory
    memory[base:] = code
    return memory, base, image, a, b


def measure_speed(config=None, *, repeats=(2, 100), amaranth=True, verbose=True):
    """Cycles per second of the Amaranth and the Verilator backend on the same program.

    The program (:func:`long_program`: a compiled 64x64x64 GEMM, repeated) runs ``repeats[0]``
    times on the Amaranth backend and ``repeats[1]`` times on Verilator: the rate is what is
    compared, and each backend gets a run long enough for its fixed costs not to dominate.
    Verilator's rate counts the run (register writes to the last register read; the backdoor
    load and read-back are reported apart); Amaranth's is its whole ``run`` call, elaboration
    included (about a second, small next to the run).

    Returns
    -------
    dict
        ``amaranth_cps``, ``verilator_cps``, ``speedup`` and the details.
    """
    from npu.rtl.config import NPUConfig

    from .amaranth_backend import AmaranthBackend

    config = config or NPUConfig()
    report = {}
    vb = VerilatorBackend(config)
    t0 = time.monotonic()
    vb.build()
    report["verilator_build_seconds"] = round(time.monotonic() - t0, 1)
    memory, prog, image, a, b = long_program(config, repeats[1])
    result = vb.run(memory, [prog], max_cycles=100_000_000)
    if not np.array_equal(image.read_output(result.memory), a.astype(np.int32) @ b):
        raise AssertionError("the Verilator run computed a wrong result")
    timing = vb.last_timing
    report.update(verilator_cycles=result.cycles, verilator_run_seconds=timing["run"],
                  verilator_load_seconds=timing["load"],
                  verilator_readback_seconds=timing["readback"],
                  verilator_total_seconds=timing["total"],
                  verilator_cps=timing["cycles"] / timing["run"])
    if amaranth:
        memory, prog, *_ = long_program(config, repeats[0])
        t0 = time.monotonic()
        result = AmaranthBackend(config).run(memory, [prog], max_cycles=100_000_000)
        seconds = time.monotonic() - t0
        report.update(amaranth_cycles=result.cycles, amaranth_seconds=seconds,
                      amaranth_cps=result.cycles / seconds)
        report["speedup"] = report["verilator_cps"] / report["amaranth_cps"]
    if verbose:
        print(f"configuration: {config.cores} core(s), {config.rows}x{config.cols} array")
        if amaranth:
            print(f"amaranth : {report['amaranth_cycles']:>10} cycles in "
                  f"{report['amaranth_seconds']:8.2f} s = {report['amaranth_cps']:>12,.0f} "
                  f"cycles/s")
        print(f"verilator: {report['verilator_cycles']:>10} cycles in "
              f"{report['verilator_run_seconds']:8.2f} s = {report['verilator_cps']:>12,.0f} "
              f"cycles/s (load {report['verilator_load_seconds']:.2f} s, read-back "
              f"{report['verilator_readback_seconds']:.2f} s, whole call "
              f"{report['verilator_total_seconds']:.2f} s)")
        if amaranth:
            print(f"speed-up : {report['speedup']:,.0f}x")
    return report


if __name__ == "__main__":
    measure_speed()
