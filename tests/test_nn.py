"""D2/D3 blocks: data flow, dilation modes (inspected on the convolutions), gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d3net.errors import D3NetError
from d3net.nn import D2Block, D3Block, D3BlockBC, MultiDilationConv2d


def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


def _unit_dilations(unit):
    conv = unit.conv
    if isinstance(conv, MultiDilationConv2d):
        return [(c.out_channels, c.dilation[0]) for c in conv.convs]
    return [(conv.out_channels, conv.dilation[0])]


@pytest.mark.parametrize("layers", [2, 3, 4, 5])
def test_multi_dilation_one_conv_per_stage(layers):
    k = 3
    block = D2Block(5, k, layers, dilation="multi")
    assert _unit_dilations(block.initial) == [(k * layers, 1)]
    for i, stage in enumerate(block.stages):
        assert _unit_dilations(stage) == [(k * (layers - i - 1), 2 ** (i + 1))]
        assert stage.conv.padding[0] == 2 ** (i + 1)
    assert len(block.stages) == layers - 1


def test_standard_dilation_uses_the_receiving_layers_largest_dilation():
    k, layers = 2, 4
    block = D2Block(5, k, layers, dilation="standard")
    # layer j (0-based) reads every source with dilation 2**j
    assert _unit_dilations(block.initial) == [(k, 1), (k, 2), (k, 4), (k, 8)]
    assert _unit_dilations(block.stages[0]) == [(k, 2), (k, 4), (k, 8)]
    assert _unit_dilations(block.stages[1]) == [(k, 4), (k, 8)]
    assert _unit_dilations(block.stages[2]) == [(k, 8)]


def test_no_dilation_mode():
    block = D2Block(5, 2, 4, dilation="none")
    for unit in [block.initial, *block.stages]:
        assert all(d == 1 for _, d in _unit_dilations(unit))


def test_modes_have_equal_parameter_counts():
    counts = {mode: sum(p.numel() for p in D2Block(7, 3, 4, dilation=mode).parameters())
              for mode in ("multi", "standard", "none")}
    assert len(set(counts.values())) == 1


def test_bad_dilation_mode():
    with pytest.raises(D3NetError, match="dilation must be one of"):
        D2Block(4, 2, 3, dilation="exponential")


def _reference_d2(block: D2Block, x):
    """Paper Eq. (2) computed layer by layer from the block's own weights:
    layer j = initial(x)[slice j] + sum_{i<j} conv_i(psi_i(layer_i))[slice j-i-1]."""
    k, L = block.growth_rate, block.num_layers
    if block.bottleneck is not None:
        x = block.bottleneck(x)
    init = block.initial(x)
    outputs = []
    for j in range(L):
        value = init[:, j * k:(j + 1) * k]
        for i in range(j):
            contribution = block.stages[i](outputs[i])
            value = value + contribution[:, (j - i - 1) * k:(j - i) * k]
        outputs.append(value)
    out = torch.cat(outputs[L - block.out_layers:], dim=1)
    return block.compression(out) if block.compression is not None else out


@pytest.mark.parametrize("mode", ["multi", "standard", "none"])
def test_d2_block_matches_layerwise_reference(mode):
    torch.manual_seed(0)
    block = D2Block(6, 3, 4, dilation=mode, out_layers=2, bottleneck_channels=5,
                    compression=0.5).eval()
    _randomize_bn(block)
    x = torch.randn(2, 6, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_d2(block, x), rtol=1e-5, atol=1e-5)
    assert block(x).shape == (2, block.out_channels, 19, 23) == (2, 3, 19, 23)


def test_d3_nested_block_shapes_and_gradients():
    block = D3Block(4, growth_rate=3, num_layers=3, num_blocks=3)
    x = torch.randn(2, 4, 16, 20, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 3, 16, 20)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())
    assert [len(b.stages) for b in [block.initial, *block.blocks]] == [2, 2, 2]
    assert block.initial.initial.conv.out_channels == 3 * 3 * 3
    assert [b.growth_rate for b in block.blocks] == [6, 3]


def test_d3_bc_block_bottleneck_rule_and_no_grad_buffer_path():
    torch.manual_seed(1)
    block = D3BlockBC(10, growth_rate=2, num_layers=3, num_blocks=4, out_layers=3,
                      compression=0.5).eval()
    _randomize_bn(block)
    # bottleneck (to 4k = 8 channels) only where the input is wider than 4k
    assert [b.bottleneck is not None for b in block.blocks] == [True, True, True, True]
    narrow = D3BlockBC(6, growth_rate=2, num_layers=3, num_blocks=3, out_layers=3,
                       compression=0.5)
    assert [b.bottleneck is not None for b in narrow.blocks] == [False, True, True]
    assert block.out_channels == 10 + 4 * 3
    x = torch.randn(2, 10, 9, 11)
    with torch.enable_grad():
        expected = block(x)
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, expected)
    assert got.shape == (2, 22, 9, 11)


def test_gradients_reach_every_parameter_in_every_mode():
    for mode in ("multi", "standard", "none"):
        block = D2Block(4, 2, 4, dilation=mode)
        block(torch.randn(1, 4, 12, 12)).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters()), mode
