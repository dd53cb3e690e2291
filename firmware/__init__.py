"""npu.firmware"""
