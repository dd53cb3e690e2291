import dataclasses

import pytest

from npu.rtl.config import NPUConfig


def test_defaults_describe_an_8x8_single_core_npu():
    c = NPUConfig()
    assert (c.rows, c.cols, c.cores, c.bus_width, c.rounding) == (8, 8, 1, 64, "double")
    assert c.macs_per_cycle == 64
    # A line holds sparse_group (4) sub-blocks of 8 activations: 32 bytes.
    assert c.sparse_group == 4 and c.gather_bytes == 32 and c.gather == "crossbar"
    assert c.line_bytes == 32 and c.bus_bytes == 8
    assert c.sp_lines == c.scratchpad_bytes // 32


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NPUConfig().rows = 4


def test_config_takes_keywords_only():
    with pytest.raises(TypeError):
        NPUConfig(8, 8)


@pytest.mark.parametrize("kwargs,exc,message", [
    ({"rows": 0}, ValueError, "Array rows must be a positive integer, not 0"),
    ({"rows": 65}, ValueError, "Array rows must be at most 64, not 65"),
    ({"rows": 2.0}, TypeError, "Array rows must be a positive integer, not 2.0"),
    ({"rows": True}, TypeError, "Array rows must be a positive integer, not True"),
    ({"cols": -1}, ValueError, "Array columns must be a positive integer, not -1"),
    ({"cores": 9}, ValueError, "Core count must be at most 8, not 9"),
    ({"cores": 0}, ValueError, "Core count must be a positive integer, not 0"),
    ({"scratchpad_bytes": 1000}, ValueError,
     "Scratchpad size must be a power of two, not 1000"),
    ({"scratchpad_bytes": 256}, ValueError,
     "Scratchpad size must hold at least 16 lines of 32 bytes, not 256"),
    ({"sparse_group": 17}, ValueError, "Sparse group must be at most 16, not 17"),
    ({"rows": 64, "sparse_group": 4}, ValueError,
     "Sparse group x array rows must be at most 128, not 4 x 64"),
    ({"gather": "any"}, ValueError, "Gather must be 'crossbar' or 'lane', not 'any'"),
    ({"acc_rows": 100}, ValueError, "Accumulator rows must be a power of two, not 100"),
    ({"acc_rows": 4}, ValueError, "Accumulator rows must be at least the array rows (8), not 4"),
    ({"bus_width": 48}, ValueError, "Bus width must be one of 32, 64, 128 bits, not 48"),
    ({"addr_width": 12}, ValueError, "Address width must be at least 16, not 12"),
    ({"rounding": "nearest"}, ValueError,
     "Rounding mode must be 'double' or 'single', not 'nearest'"),
    ({"param_slots": 0}, ValueError, "Parameter slots must be a positive integer, not 0"),
    ({"fetch_depth": 0}, ValueError, "Fetch depth must be a positive integer, not 0"),
    ({"fetch_depth": 65}, ValueError, "Fetch depth must be at most 64, not 65"),
    ({"unit_queue_depth": 0}, ValueError,
     "Unit queue depth must be a positive integer, not 0"),
    ({"requant_lanes": 0}, ValueError, "Requantiser lanes must be a positive integer, not 0"),
    ({"requant_lanes": 3}, ValueError,
     "Requantiser lanes must divide the array columns (8), not 3"),
    ({"requant_lanes": 2.0}, TypeError,
     "Requantiser lanes must be a positive integer, not 2.0"),
])
def test_bad_values_raise_exact_messages(kwargs, exc, message):
    with pytest.raises(exc) as info:
        NPUConfig(**kwargs)
    assert str(info.value) == message


def test_non_square_and_tiny_arrays_are_valid():
    assert NPUConfig(rows=2, cols=3).line_bytes == 8
    assert NPUConfig(rows=2, cols=3, sparse_group=1).line_bytes == 3
    assert NPUConfig(rows=1, cols=1).macs_per_cycle == 1


def test_requantiser_lanes_default_to_one_row_per_cycle():
    assert NPUConfig().requant_lanes is None and NPUConfig().requant_groups == 1
    assert NPUConfig(cols=8, requant_lanes=2).requant_groups == 4
    assert NPUConfig(cols=8, requant_lanes=8).requant_groups == 1


@pytest.mark.parametrize("kwargs,exc,message", [
    ({"load_queue_depth": 0}, ValueError, "Load queue depth must be a positive integer, not 0"),
    ({"store_queue_depth": 0}, ValueError,
     "Store queue depth must be a positive integer, not 0"),
    ({"store_queue_depth": 65}, ValueError, "Store queue depth must be at most 64, not 65"),
    ({"zero_lookahead": 0}, ValueError, "Zero lookahead must be a positive integer, not 0"),
    ({"zero_lookahead": 9}, ValueError, "Zero lookahead must be at most 8, not 9"),
    ({"counter_width": 33}, ValueError, "Counter width must be at most 32, not 33"),
    ({"counter_width": 16.0}, TypeError, "Counter width must be a positive integer, not 16.0"),
    ({"zero_skip": "no"}, TypeError, "Zero skipping must be True or False, not 'no'"),
    ({"retime": 1}, TypeError, "Retiming must be True or False, not 1"),
    ({"requant_sequential": 1}, TypeError, "Sequential requantiser must be True or False, not 1"),
    ({"requant_sequential": True, "requant_lanes": 2}, ValueError,
     "A sequential requantiser has no lanes: requant_lanes must be None, not 2"),
])
def test_small_fpga_options_raise_exact_messages(kwargs, exc, message):
    with pytest.raises(exc) as info:
        NPUConfig(**kwargs)
    assert str(info.value) == message
