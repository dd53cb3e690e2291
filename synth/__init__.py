"""npu.synth"""
