"""npu.rtl"""
