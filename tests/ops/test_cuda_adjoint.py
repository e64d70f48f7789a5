"""The identity the CUDA backend's ConvTranspose2d rests on (checked on the CPU, in
float64): a transposed convolution is the convolution of the spread-out input with the
adjoint weights and padding, and so is its update footprint."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deltaconvert.backends.cuda.conv_transpose import (
    adjoint_padding,
    adjoint_weight,
    spread,
)
from deltaconvert.delta import Delta
from deltaconvert.ops import reference as ref


@pytest.mark.parametrize("conv", [
    nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1),
    nn.ConvTranspose2d(8, 4, 2, stride=2),
    nn.ConvTranspose2d(6, 9, 3, padding=2, dilation=2, groups=3),
    nn.ConvTranspose2d(4, 6, 3, stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2),
], ids=["s2_output_padding", "k2s2", "grouped_dilated", "asym_stride"])
def test_transposed_conv_is_the_adjoint_conv_of_the_spread_input(conv):
    conv = conv.double()
    x = torch.randn(2, conv.in_channels, 7, 9, dtype=torch.float64)
    mask = torch.rand(2, 1, 7, 9) < 0.4
    output_padding = tuple(conv._output_padding(x, None, conv.stride, conv.padding,
                                                conv.kernel_size, 2, conv.dilation))
    expected = F.conv_transpose2d(x * mask, conv.weight, None, conv.stride, conv.padding,
                                  output_padding, conv.groups, conv.dilation)
    pads = adjoint_padding(conv, output_padding)
    spread_out = spread(Delta(x, mask), conv.stride)
    values = spread_out.masked_values()
    got = F.conv2d(F.pad(values, pads), adjoint_weight(conv.weight, conv.groups), None, 1, 0,
                   conv.dilation, conv.groups)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    footprint = ref.window_mask(spread_out.mask, conv.kernel_size, (1, 1), conv.dilation, pads)
    assert torch.equal(footprint, ref.transposed_window_mask(
        mask, conv.kernel_size, conv.stride, conv.padding, output_padding, conv.dilation))


def test_padding_beyond_the_kernel_has_no_adjoint():
    assert adjoint_padding(nn.ConvTranspose2d(2, 2, 3, padding=3), (0, 0)) is None
