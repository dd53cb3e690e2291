"""The host runtime: ``Device`` compiles INT8 workloads, runs them on a backend, reads back.

>>> dev = Device(backend="golden", cores=2)
>>> y = dev.gemm(a, b)                       # int8 [M, K] @ int8 [K, N] -> int32 [M, N]
>>> y = dev.gemm(a, b, multiplier=M, shift=s, out_zero_point=zp)   # -> int8, TFLite-exact
>>> dev.stats["cycles"], dev.stats["utilization"]
"""

import numbers

import numpy as np

from npu.rtl.config import NPUConfig
from npu.rtl.isa import CoreState, ErrorCode

from . import compiler
from .asm import disassemble

__all__ = ["BACKENDS", "Device", "GemmImage", "NPUError", "build_gemm_image"]

BACKENDS = ("golden", "amaranth", "verilator", "board")

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class NPUError(RuntimeError):
    """A core stopped with an error status.

    Attributes
    ----------
    cores : list of CoreResult
    """

    def __init__(self, cores):
        lines = ["NPU run failed:"]
        for i, c in enumerate(cores):
            lines.append(f"  core {i}: {CoreState(c.state).name} error={ErrorCode(c.error).name}"
                         f" pc=0x{c.pc:08x}")
        super().__init__("\n".join(lines))
        self.cores = cores


def _make_backend(name, config, *, port=None, serial=None, baud=115200, **timing):
    if name == "golden":
        from npu.sim.golden_backend import GoldenBackend
        return GoldenBackend(config)
    if name == "amaranth":
        from npu.sim.amaranth_backend import AmaranthBackend
        return AmaranthBackend(config, **timing)
    if name == "verilator":
        try:
            from npu.sim.verilator_backend import VerilatorBackend
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ValueError(f"backend 'verilator' is not available: {exc}") from exc
        return VerilatorBackend(config, **timing)
    if name == "board":
        from npu.sim.board_backend import BoardBackend
        return BoardBackend(config, port=port, serial=serial, baud=baud)
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {name!r}")


# ---------------------------------------------------------------------------------------------
# Argument checks. Every public entry point validates all of its arguments before anything runs.

def _check_int8_matrix(name, x, ndim=2):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(x).__name__}")
    if x.dtype != np.int8:
        raise TypeError(f"{name} must have dtype int8, not {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not {x.ndim}")
    if 0 in x.shape:
        raise ValueError(f"{name} must not be empty, but has shape {x.shape}")


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")
    return int(value)


def _per_channel(name, value, n, lo, hi, default=None):
    """A scalar or a length-n vector of integers in [lo, hi] -> int64 array of length n."""
    if value is None:
        if default is None:
            raise ValueError(f"{name} is required")
        value = default
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, not dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n, int(arr), np.int64)
    elif arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), not {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr[(arr < lo) | (arr > hi)][0]
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {bad}")
    return arr


class GemmImage:
    """A GEMM laid out in memory: the image, each core's program address, and where the
    output is."""

    def __init__(self, config, memory, starts, programs, out_addr, out_bytes, M, N, raw,
                 layout):
        self.config = config
        self.memory = memory
        self.starts = starts
        self.programs = programs
        self.out_addr = out_addr
        self.out_bytes = out_bytes
        self.M, self.N, self.raw = M, N, raw
        self.layout = layout

    def read_output(self, memory):
        out = memory[self.out_addr:self.out_addr + self.out_bytes]
        return compiler.unpack_out(self.config, out, self.M, self.N, self.raw)


def build_gemm_image(config, a, b, *, raw, params=None, split="auto", cores=None,
                     sparse=True, barrier_after=False):
    """Compile ``a @ b`` and lay out the memory image: programs first (one 4 KB-aligned area
    per core), then the activations, the packed weight tiles, parameter records and the
    output. With ``barrier_after`` every core's program ends with a BARRIER before its END
    (the first core to finish waits for the others)."""
    M, K = a.shape
    N = b.shape[1]
    plan = compiler.plan_gemm(config, M, K, N, raw=raw, split=split, cores=cores)
    sizes = compiler.layout_sizes(config, M, K, N, raw)
    a_blk = compiler.pack_a(config, a)
    weights = compiler.pack_weights(config, b, sparse=sparse)
    p_blk = (compiler.pack_params(config, params["bias"], params["multiplier"],
                                  params["shift"], params["zero_point"], params["act_min"],
                                  params["act_max"])
             if not raw else np.zeros(0, np.uint8))
    # The program length depends only on the plan and the tiles: compile once with
    # placeholder addresses to size the program area, then with the real layout.
    pitches = (sizes["a_pitch"], sizes["w_pitch"], sizes["o_pitch"], sizes["param_pitch"])
    draft = compiler.compile_gemm(config, plan, compiler.GemmLayout(0, 0, 0, 0, *pitches),
                                  weights, barrier_after=barrier_after)
    prog_area = compiler.roundup(max(len(p) + 1 for p in draft) * 16, 4096)
    addr = len(draft) * prog_area
    bases = []
    for blob in (a_blk, weights.blob, p_blk):
        bases.append(addr)
        addr = compiler.roundup(addr + len(blob), 4096)
    o_addr = addr
    size = compiler.roundup(addr + sizes["o_bytes"], 4096)
    if size > (1 << config.addr_width):
        raise ValueError(f"the workload needs {size} bytes of memory, more than the "
                         f"{config.addr_width}-bit address space")
    layout = compiler.GemmLayout(bases[0], bases[1], o_addr, bases[2], *pitches)
    programs = compiler.compile_gemm(config, plan, layout, weights, barrier_after=barrier_after)
    memory = np.zeros(size, np.uint8)
    starts = []
    for i, prog in enumerate(programs):
        prog.end()
        code = np.frombuffer(prog.to_bytes(), np.uint8)
        memory[i * prog_area:i * prog_area + len(code)] = code
        starts.append(i * prog_area)
    for base, blob in zip(bases, (a_blk, weights.blob, p_blk)):
        memory[base:base + len(blob)] = blob
    # Array passes the packing saved: each band runs every tile once per row.
    saved = sum((m1 - m0) * (sum(weights.dense_per_block[nb0:nb1])
                             - sum(len(t) for t in weights.per_block[nb0:nb1]))
                for m0, m1, nb0, nb1 in plan.bands)
    image = GemmImage(config, memory, starts, programs, o_addr, sizes["o_bytes"], M, N, raw,
                      layout)
    image.plan, image.weights, image.structured_passes_skipped = plan, weights, saved
    return image


class Device:
    """An NPU and the host runtime that drives it.

    Parameters
    ----------
    backend : str
        ``"golden"`` (ISA-level numpy model, no timing), ``"amaranth"`` (the gateware in the
        Amaranth simulator, cycle-exact), ``"verilator"`` (the Verilog in Verilator) or
        ``"board"`` (an FPGA board running a ``synth/`` top, over its UART bridge).
    port, serial, baud
        For ``"board"``: the serial device, or an open serial-like object (for example
        ``npu.sim.board_backend.SimulatedSerial``), and the baud rate.
    config : NPUConfig, optional
        The configuration; or give its fields as keywords (``cores=2, rows=8, ...``).
    memory_latency, bytes_per_cycle : int
        The simulated external memory (cycle-exact backends).
    max_cycles : int
        Cycle budget of one run; past it the run raises ``NPUTimeout`` with the cores' state.
    progress : bool
        Print a progress line while a cycle-exact simulation runs.
    """

    def __init__(self, *, backend="golden", config=None, memory_latency=8, bytes_per_cycle=8,
                 max_cycles=20_000_000, progress=False, port=None, serial=None, baud=115200,
                 **config_fields):
        if config is not None and config_fields:
            raise TypeError("give either config= or configuration keywords, not both "
                            f"(got {', '.join(sorted(config_fields))})")
        if config is None:
            config = NPUConfig(**config_fields)
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        if backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {backend!r}")
        _check_int("memory_latency", memory_latency, 1, 1 << 16)
        _check_int("bytes_per_cycle", bytes_per_cycle, 1, 1 << 16)
        _check_int("max_cycles", max_cycles, 1, 1 << 40)
        self.config = config
        self.backend_name = backend
        self.max_cycles = max_cycles
        self.progress = progress
        if backend == "board" and port is None and serial is None:
            raise ValueError("backend 'board' needs port= (a serial device such as "
                             "/dev/ttyUSB0) or serial= (an open serial-like object)")
        self._backend = _make_backend(backend, config, latency=memory_latency,
                                      bytes_per_cycle=bytes_per_cycle, port=port,
                                      serial=serial, baud=baud)
        self.stats = {}
        self.last_programs = []
        self._pending = None

    # -- GEMM -------------------------------------------------------------------------------

    def gemm(self, a, b, *, bias=None, multiplier=None, shift=None, out_zero_point=0,
             in_zero_point=0, relu=False, sparse=None):
        """``a @ b`` on the NPU.

        Without ``multiplier`` the result is the exact int32 product. With ``multiplier`` and
        ``shift`` (per tensor or per output channel) the int32 accumulator gets ``bias`` (minus
        ``in_zero_point`` times the column sums of ``b``), is requantised by TFLite's
        MultiplyByQuantizedMultiplier, offset by ``out_zero_point`` and clamped (at
        ``out_zero_point`` from below with ``relu``): the result is int8.
        """
        _check_int8_matrix("a", a)
        _check_int8_matrix("b", b)
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"a has {a.shape[1]} columns but b has {b.shape[0]} rows; "
                             "gemm needs a [M, K] and b [K, N]")
        N = b.shape[1]
        quantised = multiplier is not None or shift is not None
        if not quantised:
            for name, value, default in (("bias", bias, None), ("out_zero_point",
                                         out_zero_point, 0), ("in_zero_point", in_zero_point,
                                         0), ("relu", relu, False)):
                if value is not default and not (value == default):
                    raise ValueError(f"{name} needs multiplier and shift (a requantised "
                                     "gemm); without them the result is raw int32")
            return self._run_gemm(a, b, raw=True, sparse=sparse is not False)
        params = self._requant_params(b, N, bias, multiplier, shift, out_zero_point,
                                      in_zero_point, relu)
        return self._run_gemm(a, b, raw=False, params=params, sparse=sparse is not False)

    def _requant_params(self, b, N, bias, multiplier, shift, out_zero_point, in_zero_point,
                        relu):
        if multiplier is None or shift is None:
            raise ValueError("multiplier and shift must be given together")
        mult = _per_channel("multiplier", multiplier, N, 0, INT32_MAX)
        sh = _per_channel("shift", shift, N, -31, 30)
        bias_v = _per_channel("bias", bias, N, INT32_MIN, INT32_MAX, default=0)
        zp_out = _check_int("out_zero_point", out_zero_point, -128, 127)
        zp_in = _check_int("in_zero_point", in_zero_point, -128, 127)
        if not isinstance(relu, (bool, np.bool_)):
            raise TypeError(f"relu must be a bool, not {relu!r}")
        # sum_k w * (x - zp) = sum_k w * x - zp * sum_k w: the zero-point term folds into the
        # bias, in int32 like the accumulator.
        folded = bias_v - zp_in * b.astype(np.int64).sum(axis=0)
        folded = ((folded - INT32_MIN) % (1 << 32)) + INT32_MIN
        act_min = max(-128, zp_out) if relu else -128
        return dict(bias=folded.astype(np.int64), multiplier=mult, shift=sh,
                    zero_point=zp_out, act_min=act_min, act_max=127)

    def _run_gemm(self, a, b, *, raw, params=None, sparse=True):
        image = build_gemm_image(self.config, a, b, raw=raw, params=params, sparse=sparse)
        self.last_programs = list(zip(image.starts, image.programs))
        result = self.run(image.memory, image.starts,
                          structured_passes_skipped=image.structured_passes_skipped)
        return image.read_output(result.memory)

    # -- layers -------------------------------------------------------------------------------

    def linear(self, x, w, *, bias=None, multiplier=None, shift=None, out_zero_point=0,
               in_zero_point=0, relu=False, sparse=None):
        """Fully connected: ``x [batch, in] @ w[out, in].T`` (TFLite's weight layout), with
        the quantisation arguments of :meth:`gemm`. A 1-D ``x`` is one sample."""
        _check_int8_matrix("w", w)
        if isinstance(x, np.ndarray) and x.ndim == 1:
            return self.linear(x[None, :], w, bias=bias, multiplier=multiplier, shift=shift,
                               out_zero_point=out_zero_point, in_zero_point=in_zero_point,
                               relu=relu, sparse=sparse)[0]
        _check_int8_matrix("x", x)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[1]} "
                             "(w is [out, in])")
        return self.gemm(x, np.ascontiguousarray(w.T), bias=bias, multiplier=multiplier,
                         shift=shift, out_zero_point=out_zero_point,
                         in_zero_point=in_zero_point, relu=relu, sparse=sparse)

    def conv2d(self, x, w, *, bias=None, multiplier=None, shift=None, stride=1,
               padding="valid", in_zero_point=0, out_zero_point=0, relu=False,
               depthwise=False, sparse=None):
        """2-D convolution of NHWC int8 ``x`` with HWIO int8 ``w`` ([KH, KW, Cin, Cout]).

        The host unfolds the input (im2col, padding with ``in_zero_point``) and the NPU runs
        the GEMM. ``depthwise=True`` takes ``w`` as [KH, KW, C, 1] and maps groups of ``cols``
        channels onto the array as block-diagonal weights (one GEMM per group). Quantisation
        arguments as in :meth:`gemm`, per output channel.
        """
        from .ops import im2col, resolve_padding
        _check_int8_matrix("x", x, ndim=4)
        _check_int8_matrix("w", w, ndim=4)
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"stride must be a positive integer, not {stride!r}")
        kh, kw, cin, cout = w.shape
        n, h, wd, c = x.shape
        if depthwise:
            if cout != 1 or cin != c:
                raise ValueError(f"depthwise w must have shape (KH, KW, {c}, 1), "
                                 f"not {w.shape}")
        elif cin != c:
            raise ValueError(f"x has {c} channels but w expects {cin} (w is [KH, KW, Cin, "
                             "Cout])")
        pad = resolve_padding(padding, kh, kw)
        if h + sum(pad[0]) < kh or wd + sum(pad[1]) < kw:
            raise ValueError(f"the {kh}x{kw} kernel does not fit the padded {h}x{wd} input")
        zp_in = _check_int("in_zero_point", in_zero_point, -128, 127)
        patches, (n, oh, ow) = im2col(x, kh, kw, stride, pad, zp_in)
        quant = dict(bias=bias, multiplier=multiplier, shift=shift,
                     out_zero_point=out_zero_point, in_zero_point=in_zero_point, relu=relu,
                     sparse=sparse)
        if not depthwise:
            y = self.gemm(patches, w.reshape(kh * kw * cin, cout), **quant)
            return y.reshape(n, oh, ow, cout)
        return self._depthwise(patches, w, c, (n, oh, ow), quant)

    def _depthwise(self, patches, w, c, out_shape, quant):
        kh, kw = w.shape[:2]
        g = self.config.cols
        taps = patches.reshape(-1, kh * kw, c)
        outs = []

        def channel_slice(value, sl):
            if value is None:
                return None
            arr = np.asarray(value)
            return arr if arr.ndim == 0 else arr[sl]

        with self._batch():
            for c0 in range(0, c, g):
                sl = slice(c0, min(c0 + g, c))
                cg = sl.stop - sl.start
                # Block-diagonal weights: tap t of channel j feeds only output j.
                wbd = np.zeros((kh * kw, cg, cg), np.int8)
                for j in range(cg):
                    wbd[:, j, j] = w[:, :, c0 + j, 0].reshape(-1)
                part = dict(quant)
                for key in ("bias", "multiplier", "shift"):  # per channel: this group's
                    part[key] = channel_slice(quant[key], sl)
                outs.append(self.gemm(np.ascontiguousarray(taps[:, :, sl].reshape(-1, kh * kw * cg)),
                                      wbd.reshape(kh * kw * cg, cg), **part))
        return np.concatenate(outs, axis=1).reshape(*out_shape, c)

    def maxpool2d(self, x, size=2, stride=None):
        """Max pooling of NHWC int8 on the host (the NPU has no pooling unit)."""
        from .ops import maxpool2d
        _check_int8_matrix("x", x, ndim=4)
        _check_int("size", size, 1, min(x.shape[1], x.shape[2]))
        if stride is not None:
            _check_int("stride", stride, 1, 1 << 16)
        self.stats = {"runs": 0, "cycles": 0, "macs": 0, "on": "host"}
        return maxpool2d(x, size, stride)

    def add(self, x1, x2, **params):
        """Residual add with requantisation: TFLite's int8 ADD, on the host
        (see ``ops.quantized_add`` for the parameters)."""
        from .ops import quantized_add
        _check_int8_matrix("x1", x1, ndim=x1.ndim if isinstance(x1, np.ndarray) else 1)
        _check_int8_matrix("x2", x2, ndim=x2.ndim if isinstance(x2, np.ndarray) else 1)
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, not {x1.shape} and "
                             f"{x2.shape}")
        for name in ("zero_point1", "zero_point2", "out_zero_point"):
            _check_int(name, params[name], -128, 127)
        for name in ("multiplier1", "multiplier2", "out_multiplier"):
            _check_int(name, params[name], 0, INT32_MAX)
        for name in ("shift1", "shift2", "out_shift"):
            _check_int(name, params[name], -31, 30)
        self.stats = {"runs": 0, "cycles": 0, "macs": 0, "on": "host"}
        return quantized_add(x1, x2, **params)

    # -- running ------------------------------------------------------------------------------

    def run(self, memory, programs, windows=None, *, structured_passes_skipped=0):
        """Run a memory image (programs at the given addresses) and update ``stats``;
        ``structured_passes_skipped`` is what the compiler's weight packing saved."""
        progress = _ProgressLine(self.max_cycles) if self.progress else None
        result = self._backend.run(memory, programs, windows, max_cycles=self.max_cycles,
                                   progress=progress)
        if progress is not None:
            progress.close()
        if any(c.state != CoreState.DONE for c in result.cores):
            raise NPUError(result.cores)
        result.structured_passes_skipped = structured_passes_skipped
        if self._pending is not None:
            self._pending.append(result)
        else:
            self._update_stats([result])
        return result

    def _batch(self):
        """Context manager: the runs inside one operation add up to one ``stats``."""
        return _StatsBatch(self)

    def _update_stats(self, results):
        cfg = self.config
        per_core = [dict() for _ in range(max((len(r.cores) for r in results), default=0))]
        for r in results:
            for i, c in enumerate(r.cores):
                for k, v in c.counters.items():
                    per_core[i][k] = per_core[i].get(k, 0) + v
        total = {k: sum(c.get(k, 0) for c in per_core)
                 for k in ("macs", "dma_read_bytes", "dma_write_bytes")}
        timed = all(r.cycles is not None for r in results) and results
        cycles = sum(r.cycles for r in results) if timed else None
        cfg_macs = cfg.rows * cfg.cols
        structured = sum(r.structured_passes_skipped for r in results)
        hw_passes = sum(c.get("passes_skipped", 0) for c in per_core)
        hw_macs = sum(c.get("macs_skipped", 0) for c in per_core)
        self.stats = {
            "runs": len(results),
            # Array passes (vectors) not run: packed-away zero weight rows (compiler) plus
            # zero activation vectors (hardware); MACs likewise, plus gated zero operands.
            "passes_skipped": structured + hw_passes,
            "macs_skipped": structured * cfg_macs + hw_macs,
            "cycles": cycles,
            "macs": total["macs"],
            "utilization": (total["macs"] / (cycles * cfg.macs_per_cycle)
                            if cycles else None),
            "dma_read_bytes": total["dma_read_bytes"],
            "dma_write_bytes": total["dma_write_bytes"],
            "stall_memory_cycles": (sum(c.get("stall_memory", 0) for c in per_core)
                                    if cycles is not None else None),
            "stall_dependency_cycles": (sum(c.get("stall_dependency", 0) for c in per_core)
                                        if cycles is not None else None),
            "per_core": per_core,
            "backend": self.backend_name,
        }

    def disassemble(self):
        """Disassembly of the programs of the last call, one section per core."""
        parts = []
        for i, (start, prog) in enumerate(self.last_programs):
            parts.append(f"; core {i}\n" + disassemble(prog.to_bytes(), base=start))
        return "\n".join(parts)


class _StatsBatch:
    def __init__(self, dev):
        self.dev = dev

    def __enter__(self):
        self.dev._pending = []

    def __exit__(self, *exc):
        results, self.dev._pending = self.dev._pending, None
        if exc[0] is None:
            self.dev._update_stats(results)


class _ProgressLine:
    """A one-line progress bar on stderr, shown once a simulation takes more than a moment."""

    def __init__(self, budget):
        import time
        self._time = time.monotonic
        self.start = self._time()
        self.budget = budget
        self.shown = False

    def __call__(self, cycles):
        elapsed = self._time() - self.start
        if elapsed < 1.0:
            return
        import sys
        self.shown = True
        rate = cycles / elapsed
        # The run's length is unknown until it ends: the bar fills towards the budget.
        fill = min(20, max(1, int(20 * cycles / self.budget)))
        sys.stderr.write(f"\r  simulating [{'#' * fill:<20}] {cycles:>9} cycles  "
                         f"{rate:8.0f} cycles/s")
        sys.stderr.flush()

    def close(self):
        if self.shown:
            import sys
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()

