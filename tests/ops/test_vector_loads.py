"""Which launches may load vectors: conv_gemm's 16-byte input loads (``gemm_mode``) and
the per-pixel kernels' 4-channel vectors (``channel_vectors``) and 8- or 4-channel ones
(``channel_width``, pw_linear's); decided on the host."""
from __future__ import annotations

import pytest
import torch

from deltaconvert.backends.cuda.constants import ConvMode
from deltaconvert.backends.cuda.conv import gemm_mode, pack_weight
from deltaconvert.backends.cuda.tensors import channel_vectors, channel_width


def vector_a(cin: int, cout: int, k: int, dtype: torch.dtype) -> bool:
    values = torch.zeros(2, cin, 9, 11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = pack_weight(torch.zeros(cout, cin, k, k, dtype=dtype), 1, False)
    return bool(gemm_mode(values, weight, cin, cout) & ConvMode.VECTOR_A)


@pytest.mark.parametrize("cin, k, dtype, expected", [
    (16, 1, torch.float16, True),    # K = 16 < the 32-wide chunk: vectors past K read nothing
    (24, 1, torch.float16, True),
    (144, 1, torch.float16, True),
    (8, 3, torch.float16, True),     # one vector per tap
    (12, 1, torch.float16, False),   # not a multiple of 8 halves
    (12, 3, torch.float32, True),    # a multiple of 4 floats
    (3, 3, torch.float32, False),
])
def test_vector_loads_need_cin_g_a_multiple_of_the_vector_width(cin, k, dtype, expected):
    assert vector_a(cin, 32, k, dtype) is expected


def test_nchw_values_get_no_vector_loads():
    values = torch.zeros(2, 16, 9, 11, dtype=torch.float16)
    weight = pack_weight(torch.zeros(32, 16, 1, 1, dtype=torch.float16), 1, False)
    assert not gemm_mode(values, weight, 16, 32) & ConvMode.VECTOR_A


def nhwc(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


def test_channel_vectors_need_nhwc_tensors_and_channels_in_fours():
    shape = (2, 40, 9, 11)
    assert channel_vectors(shape, nhwc(*shape), nhwc(*shape, dtype=torch.float16), None)
    assert channel_vectors((3, 40), torch.zeros(3, 40))                 # (N, C): one pixel
    assert channel_vectors(shape, nhwc(2, 40, 1, 1))                   # broadcast pixels
    assert not channel_vectors((2, 37, 9, 11), nhwc(2, 37, 9, 11))     # C not a multiple of 4
    assert not channel_vectors(shape, nhwc(*shape), torch.zeros(shape))  # one NCHW tensor
    assert not channel_vectors(shape, nhwc(2, 1, 9, 11).expand(shape))  # broadcast channels
    offset = torch.zeros(2 * 40 * 9 * 11 + 1)[1:].view(2, 9, 11, 40).permute(0, 3, 1, 2)
    assert not channel_vectors(shape, offset)                          # misaligned address


def test_depthwise_vectors_need_one_output_channel_per_input_channel():
    from deltaconvert.backends.cuda.conv import depthwise_mode
    values = nhwc(2, 40, 9, 11, dtype=torch.float16)
    assert depthwise_mode(values, 40, 40) & ConvMode.VECTOR_A
    assert not depthwise_mode(values, 40, 80) & ConvMode.VECTOR_A  # channel multiplier 2
    assert not depthwise_mode(nhwc(2, 36, 9, 11, dtype=torch.float16), 36, 36)  # 36 % 8
    assert depthwise_mode(nhwc(2, 36, 9, 11), 36, 36) & ConvMode.VECTOR_A  # fp32: 36 % 4 == 0


@pytest.mark.parametrize("channels, dtype, offset, expected", [
    (16, torch.float16, 0, 8),   # 16-byte vectors of halves
    (12, torch.float16, 0, 4),   # not a multiple of 8
    (16, torch.float16, 4, 4),   # pixels 8-byte aligned only
    (6, torch.float16, 0, 1),
    (16, torch.float32, 0, 8),   # two 16-byte loads of floats
])
def test_channel_width_is_the_widest_vector_every_tensor_allows(channels, dtype, offset, expected):
    storage = torch.zeros(2 * channels * 9 * 11 + offset, dtype=dtype)
    t = storage[offset:].view(2, 9, 11, channels).permute(0, 3, 1, 2)  # NHWC, shifted by offset
    nchw = torch.zeros(2, channels, 9, 11, dtype=dtype)
    assert channel_width(t.shape, t) == expected
    assert channel_width(t.shape, t, None) == expected  # absent tensors do not count
    assert channel_width(t.shape, t, nchw) == 1  # channels 99 elements apart
