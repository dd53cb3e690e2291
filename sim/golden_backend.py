"""The golden model behind the same interface as the cycle-exact backends."""

from .backend import RunResult, check_run_arguments
from .golden import GoldenNPU

__all__ = ["GoldenBackend"]


class GoldenBackend:
    """ISA-level execution in numpy: exact results and data counters, no timing."""

    name = "golden"

    def __init__(self, config, **_timing):
        self.config = config

    def run(self, memory, programs, windows=None, *, max_cycles=None, progress=None):
        programs, windows = check_run_arguments(self.config, memory, programs, windows)
        mem = memory.copy()
        cores = GoldenNPU(self.config, mem).run(programs, windows)
        return RunResult(memory=mem, cores=cores, cycles=None)
