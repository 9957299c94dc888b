"""Which CUDA ordinal an actor selects from what Ray assigned it."""

from __future__ import annotations

import pytest

from gdpo_megatron.orchestration.devices import DeviceError, visible_device_index


def test_the_ordinal_is_the_position_of_the_assigned_gpu_among_the_visible_ones():
    assert visible_device_index(["3"], "3") == 0            # Ray's usual restriction: only its own GPU
    assert visible_device_index(["5"], "4,5,6,7") == 1       # the node's GPUs visible: position, not id
    assert visible_device_index([6, 7], "7, 6") == 1         # first assigned id, listed order counts
    assert visible_device_index(["2"], None) == 2            # unrestricted: ids are ordinals
    assert visible_device_index(["2"], "") == 2


def test_an_unlisted_or_missing_gpu_is_an_error_naming_the_variable():
    with pytest.raises(DeviceError, match=r"CUDA_VISIBLE_DEVICES='0,1'"):
        visible_device_index(["3"], "0,1")
    with pytest.raises(DeviceError, match="no GPU"):
        visible_device_index([], "0")
