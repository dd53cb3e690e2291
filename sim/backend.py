"""What every backend (golden, Amaranth, Verilator) returns, and how a run fails.

A backend takes a memory image (1-D uint8 numpy array, byte address = index), the program
address of each core and each core's DMA window; it runs the cores and hands back the memory
and how each core finished.
"""

from dataclasses import dataclass, field

import numpy as np

from npu.rtl.control import COUNTERS
from npu.rtl.isa import CoreState

from .golden import CoreResult

__all__ = ["CoreResult", "NPUTimeout", "RunResult", "TimedMemoryBackend", "check_run_arguments"]


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes
    ----------
    memory : numpy.ndarray
        Memory after the run (uint8).
    cores : list of CoreResult
        One per program, in order.
    cycles : int or None
        Cycles of the longest-running core (its ``cycles`` counter); None for the golden model,
        which has no timing.
    """
    memory: np.ndarray
    cores: list = field(default_factory=list)
    cycles: int | None = None


class NPUTimeout(RuntimeError):
    """A run did not finish within its cycle budget.

    Attributes
    ----------
    cores : list of dict
        Each core's state, error, pc and counters when the budget ran out.
    """

    def __init__(self, budget, cores):
        lines = [f"NPU did not finish within {budget} cycles:"]
        for i, c in enumerate(cores):
            counters = ", ".join(f"{k}={c['counters'][k]}" for k in COUNTERS
                                 if k in c["counters"])
            lines.append(f"  core {i}: {CoreState(c['state']).name} pc=0x{c['pc']:08x} "
                         f"error={c['error'].name}; {counters}")
        super().__init__("\n".join(lines))
        self.budget = budget
        self.cores = cores


class TimedMemoryBackend:
    """What the cycle-exact backends share: ``NPU(config)`` on a memory of ``latency`` cycles
    (address handshake to first data beat) and ``bytes_per_cycle`` per direction."""

    def __init__(self, config, *, latency=8, bytes_per_cycle=8):
        self.config = config
        self.latency = latency
        self.bytes_per_cycle = bytes_per_cycle


def check_run_arguments(config, memory, programs, windows):
    """Validate what a backend is asked to run; return (programs, windows) as lists."""
    if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
        raise TypeError("memory must be a 1-D numpy uint8 array")
    programs = list(programs)
    if not 1 <= len(programs) <= config.cores:
        raise ValueError(
            f"programs must name 1..{config.cores} program addresses, not {len(programs)}")
    if windows is None:
        windows = [(0, len(memory))] * len(programs)
    windows = list(windows)
    if len(windows) != len(programs):
        raise ValueError(f"windows must have one (base, limit) per program, "
                         f"not {len(windows)} for {len(programs)}")
    return programs, windows
