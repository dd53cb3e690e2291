"""npu.firmware: what the host runs to drive the NPU."""

from .device import Device, NPUError

__all__ = ["Device", "NPUError"]
