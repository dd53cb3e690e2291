"""npu.sim"""
