"""npu: a multi-core INT8 neural processing unit in Amaranth HDL."""
