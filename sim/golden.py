"""The golden model: what the NPU computes, instruction by instruction, with no timing.

This module is the executable specification of the instruction set (:mod:`npu.rtl.isa`). The
gateware is correct when it leaves memory and each core's state, error, pc and counters as
:class:`GoldenNPU` does for every program whose result does not depend on timing.

Cores
    ``run(programs, windows)`` starts core ``i`` at byte address ``programs[i]`` with the byte
    window ``windows[i] = (base, limit)``, ``[base, limit)`` (default: the whole memory). Each
    run starts every core afresh: accumulator (``acc_rows`` x ``cols`` int32), parameter slots
    and the four semaphores at zero. The scratchpad (``sp_lines`` x ``line_bytes``) and the
    weight bank also start at zero here, but the hardware does not promise that: a program must
    not read what it did not write.

Dispatch
    Instructions are fetched in program order, ``INSTR_BYTES`` each, and checked at dispatch in
    this order (the first failing check names the error):

    0. the start address is a multiple of ``INSTR_BYTES``, else MISALIGNED;
    1. ``[pc, pc + INSTR_BYTES)`` inside the window, else DMA_WINDOW;
    2. the opcode is an ``Opcode``, else ILLEGAL_OPCODE;
    3. the fields obey ``FIELD_LIMITS``, and the dependency flags name a neighbour of the unit
       (the load unit has no ``*_prev``, the store unit no ``*_next``, BARRIER and END take no
       flags), else ILLEGAL_FIELD;
    4. DMA addresses and strides (LOAD, LOADP, STORE) are multiples of ``bus_bytes``, else
       MISALIGNED;
    5. the DMA extent is inside the window, else DMA_WINDOW. Extents are rounded up to whole
       beats of ``B = bus_bytes``: LOAD row ``r`` touches ``[addr + r*stride, + ceil(row_bytes /
       B) * B)``, LOADP ``[addr, + ceil(param_slot_bytes(cols) / B) * B)``, STORE row ``r``
       ``[addr + r*stride, + ceil(n / B) * B)`` with ``n = cols`` bytes (int8) or ``4 * cols``
       (raw int32).

    Golden-model simplification: an access (fetch or DMA extent) inside the window but past the
    end of the memory array fails with BUS_ERROR at dispatch, after the checks above; the
    hardware reports the bus's answer when the access happens.

    The first failing check halts dispatch: the core reports state ERROR, that error code and
    ``pc`` = the failing instruction's address. The failing instruction accesses no memory
    (not even its own fetch when check 0 or 1 fails) and nothing after it runs. Instructions
    dispatched before it still run, as far as they can: once none of them can run any more
    (those left wait for tokens that only later instructions would have given), the rest are
    dropped and the core is in ERROR.

Units and tokens
    LOAD and LOADP go to the load unit, LOADW, MATMUL and NOP to the execute unit, STORE to the
    store unit; each unit runs its instructions in program order. The units form the chain
    load -> execute -> store, with one token semaphore per direction between neighbours
    (load->execute, execute->load, execute->store, store->execute). A ``pop_prev`` /
    ``pop_next`` flag waits until the semaphore from that neighbour is positive and decrements
    it before the instruction runs; ``push_prev`` / ``push_next`` increments the semaphore to
    that neighbour after it has completed. Semaphores are unbounded here.

    BARRIER waits until every earlier instruction of its core has completed (the core has then
    *arrived*), then until every core still running has arrived at a BARRIER; cores that are
    done, in error or halted by a dispatch error do not count. Then all arrived cores continue.
    END waits until every earlier instruction of its core has completed; the core is then DONE
    with ``pc`` = the END's address.

Instructions
    LOAD: for r < rows, line ``sp_addr + r`` <- ``memory[addr + r*stride :][:row_bytes]``, the
    rest of the line zero.

    LOADP: parameter slot ``slot`` <- the little-endian record at ``addr`` (see
    ``LoadParamsBody``; :func:`npu.firmware.asm.param_slot_dtype`).

    LOADW: weight row ``i`` <- the first ``cols`` bytes of line ``sp_addr + i``, as int8, for
    ``i < R`` (the array's rows), and gather index ``i`` <- byte ``i`` of line ``sp_addr + R``.

    MATMUL: with ``load_weights``, first LOADW ``w_sp_addr``. Then for r < rows, the vector
    ``x[i] = line(sp_addr + r)[gather[i]]`` as int8 (0 when ``gather[i] >= sparse_group * R``,
    and with ``config.gather == "lane"`` also when ``gather[i] % R != i``), and
    ``acc[acc_addr + r] = (acc[acc_addr + r] if accumulate else 0) + x @ W``, wrapping to
    int32. With ``accumulate``, row r is *skipped* (not issued) when every sub-block ``g``
    (bytes ``[g*R, (g+1)*R)`` of the line) that some gather index reads from is all zero,
    unless r is the last row and the MATMUL pushes a token.

    STORE: for r < rows, the first ``cols`` lanes of ``acc[acc_addr + r]`` go to ``addr +
    r*stride``: with ``raw`` as ``cols`` little-endian int32, else as ``cols`` int8 from
    :func:`npu.firmware.quant.requantize` with slot ``slot``'s first ``cols`` channels and
    ``config.rounding``. Only those bytes are written, rows in order. Parameters outside the
    requantiser's specified range (multiplier < 0, shift outside [-31, 30], act_min > act_max)
    have no specified result: the model raises :class:`GoldenUnspecified`.

    NOP: nothing (its flags still pop and push, on the execute unit).

Counters (exact integers here; the hardware registers wrap at 32 bits)
    ``macs``: array rows x array cols per issued MATMUL row. ``passes_skipped``: skipped rows.
    ``macs_skipped``: rows x cols per skipped row, plus per issued row ``sum_i (cols if x[i] == 0
    else zero weights in row i)``. ``dma_read_bytes``: beats x B read by LOAD
    and LOADP (instruction fetch is not counted). ``dma_write_bytes``: beats x B written by
    STORE, ``ceil(n / B)`` beats per row.

Scheduling
    A deterministic event loop: each round dispatches every core as far as it can, releases a
    barrier if every counted core has arrived, then runs at most one instruction on each unit
    of each core (cores in index order; units load, execute, store) whose pops are satisfied.
    With ``schedule_seed``, each unit instead gets a random speed in [0.05, 1] for the run and
    runs with that probability in each round where it could (and at least one unit runs), so a
    program missing a token or barrier gives different results across seeds.

    If no unit of any core can make progress while a core is neither DONE nor ERROR,
    :class:`GoldenDeadlock` is raised.
"""

import random
from collections import deque
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from npu.firmware.asm import DEP_FLAGS, decode, unpack_param_slot
from npu.firmware.quant import requantize
from npu.rtl.config import NPUConfig
from npu.rtl.isa import (
    INSTR_BYTES,
    UNIT_OF,
    CoreState,
    ErrorCode,
    Opcode,
    Unit,
    param_slot_bytes,
)

__all__ = ["CoreResult", "GoldenDeadlock", "GoldenNPU", "GoldenUnspecified"]

#: The units that hold instruction queues, in chain order (load -> execute -> store).
_CHAIN = tuple(sorted((u for u in Unit if u is not Unit.CONTROL), key=lambda u: u.value))


class GoldenDeadlock(RuntimeError):
    """No unit of any core can make progress, yet some core is neither done nor in error.

    Attributes
    ----------
    cores : list of dict
        Per core: ``pc`` (dispatch address), ``phase``, ``semaphores`` (name -> count) and
        ``waiting`` (unit name -> ``(pc, opcode, missing pop flags)`` of its head instruction).
    """

    def __init__(self, message, cores):
        super().__init__(message)
        self.cores = cores


class GoldenUnspecified(ValueError):
    """The program asks for something whose result the specification leaves open."""


@dataclass
class CoreResult:
    """How one core finished.

    Attributes
    ----------
    state : CoreState
        DONE or ERROR.
    error : ErrorCode
    pc : int
        Address of the failing instruction (ERROR) or of the END (DONE).
    counters : dict of str -> int
        ``macs``, ``dma_read_bytes``, ``dma_write_bytes``.
    """
    state: CoreState
    error: ErrorCode
    pc: int
    counters: dict = field(default_factory=dict)


class _Fault(Exception):
    def __init__(self, code):
        self.code = code


@dataclass
class _Instr:
    pc: int
    op: Opcode
    deps: frozenset
    fields: dict


def _ceil_div(a, b):
    return -(-a // b)


def _neighbour(unit, direction):
    """The unit before / after ``unit`` in the chain, or None."""
    if unit not in _CHAIN:
        return None
    index = _CHAIN.index(unit) + (-1 if direction == "prev" else 1)
    return _CHAIN[index] if 0 <= index < len(_CHAIN) else None


def _semaphore(unit, flag):
    """The (from, to) semaphore that ``flag`` (e.g. ``pop_prev``) on ``unit`` uses."""
    action, direction = flag.split("_")
    other = _neighbour(unit, direction)
    if other is None:
        return None
    return (other, unit) if action == "pop" else (unit, other)


def _semaphore_name(key):
    return f"{key[0].name.lower()}->{key[1].name.lower()}"


def _wrap_int32(x):
    return ((x.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


class _Core:
    def __init__(self, npu, index, start, window):
        cfg = npu.config
        self.npu, self.cfg, self.memory = npu, cfg, npu.memory
        self.index = index
        self.window = window
        self.pc = start
        self.phase = "dispatch"  # dispatch, barrier, end, draining, done, error
        self.error = ErrorCode.NONE
        self.counters = {"macs": 0, "dma_read_bytes": 0, "dma_write_bytes": 0,
                         "macs_skipped": 0, "passes_skipped": 0}
        self.sp = np.zeros((cfg.sp_lines, cfg.line_bytes), dtype=np.uint8)
        self.acc = np.zeros((cfg.acc_rows, cfg.cols), dtype=np.int32)
        self.weights = np.zeros((cfg.rows, cfg.cols), dtype=np.int8)
        self.gather = np.zeros(cfg.rows, dtype=np.int64)
        zero_slot = unpack_param_slot(cfg.cols, bytes(param_slot_bytes(cfg.cols)))
        self.params = [zero_slot] * cfg.param_slots
        self.sem = {}
        for a, b in pairwise(_CHAIN):
            self.sem[(a, b)] = 0
            self.sem[(b, a)] = 0
        self.queues = {unit: deque() for unit in _CHAIN}

    # Dispatch ---------------------------------------------------------------------------

    @property
    def bus_bytes(self):
        return self.cfg.bus_bytes

    def _check_extent(self, start, end):
        base, limit = self.window
        if start < base or end > limit:
            raise _Fault(ErrorCode.DMA_WINDOW)
        if end > self.memory.size:
            raise _Fault(ErrorCode.BUS_ERROR)

    def _beat_bytes(self, n):
        return _ceil_div(n, self.bus_bytes) * self.bus_bytes

    def _check_fields(self, op, f):
        cfg = self.cfg
        if op is Opcode.LOAD:
            ok = (f["rows"] >= 1 and f["sp_addr"] + f["rows"] <= cfg.sp_lines
                  and 1 <= f["row_bytes"] <= cfg.line_bytes)
        elif op is Opcode.LOADP:
            ok = f["slot"] < cfg.param_slots
        elif op is Opcode.LOADW:
            ok = f["sp_addr"] + cfg.rows + 1 <= cfg.sp_lines
        elif op is Opcode.MATMUL:
            ok = (f["rows"] >= 1 and f["sp_addr"] + f["rows"] <= cfg.sp_lines
                  and f["acc_addr"] + f["rows"] <= cfg.acc_rows
                  and (not f["load_weights"] or f["w_sp_addr"] + cfg.rows + 1 <= cfg.sp_lines))
        elif op is Opcode.STORE:
            ok = (f["rows"] >= 1 and f["acc_addr"] + f["rows"] <= cfg.acc_rows
                  and 1 <= f["cols"] <= cfg.cols and f["slot"] < cfg.param_slots)
        else:
            ok = True
        if not ok:
            raise _Fault(ErrorCode.ILLEGAL_FIELD)

    def _store_row_bytes(self, f):
        lane_bits = self.cfg.acc_width if f["raw"] else self.cfg.in_width
        return f["cols"] * lane_bits // 8

    def _dma_extent(self, op, f):
        """(first byte, end) of the beat-rounded extent, or None for no DMA."""
        if op is Opcode.LOAD:
            row = self._beat_bytes(f["row_bytes"])
        elif op is Opcode.LOADP:
            return f["addr"], f["addr"] + self._beat_bytes(param_slot_bytes(self.cfg.cols))
        elif op is Opcode.STORE:
            row = self._beat_bytes(self._store_row_bytes(f))
        else:
            return None
        # Strides are unsigned, so the last row ends the extent.
        return f["addr"], f["addr"] + (f["rows"] - 1) * f["stride"] + row

    def _fetch(self):
        pc = self.pc
        if pc % INSTR_BYTES:
            raise _Fault(ErrorCode.MISALIGNED)
        self._check_extent(pc, pc + INSTR_BYTES)
        word = int.from_bytes(self.memory[pc:pc + INSTR_BYTES].tobytes(), "little")
        fields = decode(word)
        op = fields.pop("op")
        deps = frozenset(fields.pop("deps"))
        if not isinstance(op, Opcode):
            raise _Fault(ErrorCode.ILLEGAL_OPCODE)
        unit = UNIT_OF[op]
        if any(_semaphore(unit, flag) is None for flag in deps):
            raise _Fault(ErrorCode.ILLEGAL_FIELD)
        self._check_fields(op, fields)
        extent = self._dma_extent(op, fields)
        if extent is not None:
            if fields["addr"] % self.bus_bytes or fields.get("stride", 0) % self.bus_bytes:
                raise _Fault(ErrorCode.MISALIGNED)
            self._check_extent(*extent)
        return _Instr(pc, op, deps, fields)

    def dispatch(self):
        progressed = False
        while self.phase == "dispatch":
            try:
                instr = self._fetch()
            except _Fault as fault:
                self.error = fault.code
                self.phase = "draining"
                return True
            progressed = True
            if instr.op is Opcode.BARRIER:
                self.phase = "barrier"
            elif instr.op is Opcode.END:
                self.phase = "end"
            else:
                self.queues[UNIT_OF[instr.op]].append(instr)
                self.pc += INSTR_BYTES
        return progressed

    # Units ------------------------------------------------------------------------------

    def idle(self):
        return not any(self.queues.values())

    def _missing_pops(self, unit):
        instr = self.queues[unit][0]
        return [flag for flag in DEP_FLAGS if flag in instr.deps and flag.startswith("pop")
                and self.sem[_semaphore(unit, flag)] == 0]

    def runnable(self, unit):
        return bool(self.queues[unit]) and not self._missing_pops(unit)

    def step(self, unit):
        instr = self.queues[unit].popleft()
        pushes = []
        for flag in DEP_FLAGS:
            if flag in instr.deps:
                if flag.startswith("pop"):
                    self.sem[_semaphore(unit, flag)] -= 1
                else:
                    pushes.append(_semaphore(unit, flag))
        getattr(self, f"_exec_{instr.op.name.lower()}")(instr)
        for key in pushes:
            self.sem[key] += 1

    def settle(self):
        """Finish END and drained errors; returns whether the phase changed."""
        if self.phase == "end" and self.idle():
            self.phase = "done"
            return True
        if self.phase == "draining" and not any(self.runnable(u) for u in _CHAIN):
            for queue in self.queues.values():
                queue.clear()
            self.phase = "error"
            return True
        return False

    # Instructions -----------------------------------------------------------------------

    def _exec_nop(self, instr):
        pass

    def _exec_load(self, instr):
        f = instr.fields
        n = f["row_bytes"]
        for r in range(f["rows"]):
            start = f["addr"] + r * f["stride"]
            line = self.sp[f["sp_addr"] + r]
            line[:] = 0
            line[:n] = self.memory[start:start + n]
        self.counters["dma_read_bytes"] += f["rows"] * self._beat_bytes(n)

    def _exec_loadp(self, instr):
        f = instr.fields
        n = param_slot_bytes(self.cfg.cols)
        self.params[f["slot"]] = unpack_param_slot(
            self.cfg.cols, self.memory[f["addr"]:f["addr"] + n].tobytes())
        self.counters["dma_read_bytes"] += self._beat_bytes(n)

    def _exec_loadw(self, instr, sp_addr=None):
        sp_addr = instr.fields["sp_addr"] if sp_addr is None else sp_addr
        R = self.cfg.rows
        self.weights = self.sp[sp_addr:sp_addr + R, :self.cfg.cols].view(np.int8).copy()
        self.gather = self.sp[sp_addr + R, :R].astype(np.int64)

    def _exec_matmul(self, instr):
        f = instr.fields
        cfg = self.cfg
        if f["load_weights"]:
            self._exec_loadw(instr, f["w_sp_addr"])
        R, C = cfg.rows, cfg.cols
        rows, sp_addr, acc_addr = f["rows"], f["sp_addr"], f["acc_addr"]
        lines = self.sp[sp_addr:sp_addr + rows].view(np.int8).astype(np.int64)
        valid = self.gather < cfg.gather_bytes
        if cfg.gather == "lane":
            valid &= self.gather % R == np.arange(R)
        x = np.where(valid, lines[:, np.minimum(self.gather, cfg.line_bytes - 1)], 0)
        # Skipping: with accumulate, a row whose used sub-blocks are all zero adds nothing.
        used = sorted({int(g) // R for g in self.gather[valid]})
        zero_blocks = np.ones(rows, bool)
        for g in used:
            zero_blocks &= ~lines[:, g * R:(g + 1) * R].any(axis=1)
        skipped = zero_blocks & (bool(f["accumulate"]) and cfg.zero_skip)
        if instr.deps & {"push_prev", "push_next"}:
            skipped[-1] = False
        product = x @ self.weights.astype(np.int64)
        if f["accumulate"]:
            product += self.acc[acc_addr:acc_addr + rows]
        self.acc[acc_addr:acc_addr + rows] = _wrap_int32(product)
        issued = x[~skipped]
        zero_weights = (self.weights == 0).sum(axis=1)
        gated = np.where(issued == 0, C, zero_weights[None, :]).sum()
        n_skipped = int(skipped.sum())
        self.counters["macs"] += (rows - n_skipped) * R * C
        self.counters["passes_skipped"] += n_skipped
        self.counters["macs_skipped"] += n_skipped * R * C + int(gated)

    def _exec_store(self, instr):
        f = instr.fields
        cols = f["cols"]
        acc = self.acc[f["acc_addr"]:f["acc_addr"] + f["rows"], :cols]
        if f["raw"]:
            out = acc.astype("<i4").view(np.uint8)
        else:
            p = self.params[f["slot"]]
            try:
                out = requantize(acc, p["bias"][:cols], p["multiplier"][:cols],
                                 p["shift"][:cols], p["zero_point"], p["act_min"],
                                 p["act_max"], rounding=self.cfg.rounding)
            except ValueError as error:
                raise GoldenUnspecified(
                    f"Core {self.index}: STORE at {instr.pc:#x} uses parameter slot "
                    f"{f['slot']}, which is outside the requantiser's specified range: "
                    f"{error}") from None
            out = out.view(np.uint8)
        n = out.shape[1]
        for r in range(f["rows"]):
            start = f["addr"] + r * f["stride"]
            self.memory[start:start + n] = out[r]
        self.counters["dma_write_bytes"] += f["rows"] * self._beat_bytes(n)

    # Reporting --------------------------------------------------------------------------

    def result(self):
        state = CoreState.DONE if self.phase == "done" else CoreState.ERROR
        # The counters wrap at the configured width, as the gateware's do.
        mask = (1 << self.cfg.counter_width) - 1
        return CoreResult(state=state, error=self.error, pc=self.pc,
                          counters={k: v & mask for k, v in self.counters.items()})

    def describe(self):
        waiting = {}
        for unit in _CHAIN:
            if self.queues[unit]:
                head = self.queues[unit][0]
                waiting[unit.name.lower()] = (head.pc, head.op, self._missing_pops(unit))
        return {
            "pc": self.pc, "phase": self.phase,
            "semaphores": {_semaphore_name(k): v for k, v in self.sem.items()},
            "waiting": waiting,
        }


class GoldenNPU:
    """ISA-level model of an NPU: all cores, sharing one memory.

    Parameters
    ----------
    config : NPUConfig
    memory : numpy.ndarray
        1-D, ``uint8``, writable: the external memory, byte 0 at address 0. Modified in place.
    schedule_seed : int or None
        None for the fixed round-robin schedule; an int for a seeded random interleaving of the
        units (see the module docstring, "Scheduling").
    """

    def __init__(self, config, memory, *, schedule_seed=None):
        if not isinstance(config, NPUConfig):
            raise TypeError(f"config must be an NPUConfig, not {config!r}")
        if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
            raise TypeError("memory must be a one-dimensional numpy uint8 array")
        if not memory.flags.writeable:
            raise ValueError("memory must be writable")
        self.config = config
        self.memory = memory
        self.schedule_seed = schedule_seed

    def _windows(self, count, windows):
        top = 1 << self.config.addr_width
        if windows is None:
            return [(0, min(self.memory.size, top))] * count
        windows = list(windows)
        if len(windows) != count:
            raise ValueError(f"Expected {count} windows (one per program), not {len(windows)}")
        for index, (base, limit) in enumerate(windows):
            if not 0 <= base <= limit <= top:
                raise ValueError(
                    f"Window {index} must satisfy 0 <= base <= limit <= {top:#x}, "
                    f"not ({base:#x}, {limit:#x})")
        return [(int(b), int(lim)) for b, lim in windows]

    def run(self, programs, windows=None):
        """Run one program per core until every core is DONE or ERROR.

        Parameters
        ----------
        programs : list of int
            Start address of core ``i``'s program; ``1 <= len(programs) <= config.cores``.
        windows : list of (int, int) or None
            ``(base, limit)`` per core; None for the whole memory.

        Returns
        -------
        list of CoreResult, one per program.

        Raises
        ------
        GoldenDeadlock
            When no unit can make progress and a core is not finished.
        GoldenUnspecified
            When a STORE requantises with out-of-range parameters.
        """
        programs = list(programs)
        if not 1 <= len(programs) <= self.config.cores:
            raise ValueError(
                f"Expected 1 to {self.config.cores} programs, not {len(programs)}")
        top = 1 << self.config.addr_width
        for index, start in enumerate(programs):
            if not 0 <= start < top:
                raise ValueError(f"Program {index} start must be in [0, {top:#x}), not {start}")
        windows = self._windows(len(programs), windows)
        cores = [_Core(self, i, int(start), window)
                 for i, (start, window) in enumerate(zip(programs, windows))]
        rng = None if self.schedule_seed is None else random.Random(self.schedule_seed)
        if rng is not None:
            # Very unequal speeds, so that a missing token or barrier shows up as a wrong result.
            rates = {(core.index, unit): rng.uniform(0.05, 1.0)
                     for core in cores for unit in _CHAIN}

        while True:
            progress = False
            for core in cores:
                progress |= core.dispatch()
            progress |= self._release_barrier(cores)
            runnable = [(core, unit) for core in cores for unit in _CHAIN
                        if core.runnable(unit)]
            if rng is not None and runnable:
                chosen = [cu for cu in runnable if rng.random() < rates[cu[0].index, cu[1]]]
                runnable = chosen or [rng.choice(runnable)]
            for core, unit in runnable:
                core.step(unit)
                progress = True
            for core in cores:
                progress |= core.settle()
            if not progress:
                break

        if any(core.phase not in ("done", "error") for core in cores):
            described = [core.describe() for core in cores]
            raise GoldenDeadlock(_deadlock_message(described), described)
        return [core.result() for core in cores]

    @staticmethod
    def _release_barrier(cores):
        counted = [c for c in cores if c.phase not in ("done", "error", "draining")]
        if not counted or not all(c.phase == "barrier" and c.idle() for c in counted):
            return False
        for core in counted:
            core.phase = "dispatch"
            core.pc += INSTR_BYTES
        return True


def _deadlock_message(described):
    lines = ["No unit can make progress:"]
    for index, core in enumerate(described):
        sems = ", ".join(f"{name}={count}" for name, count in core["semaphores"].items())
        lines.append(f"  core {index}: pc={core['pc']:#x} ({core['phase']}); {sems}")
        for unit, (pc, op, missing) in core["waiting"].items():
            lines.append(f"    {unit} unit: {op.name} at {pc:#x} waits for "
                         f"{', '.join(missing) or 'nothing'}")
    return "\n".join(lines)
