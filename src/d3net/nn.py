"""D3Net building blocks: the multidilated dense block (D2 block) and the D3 blocks.

Naming follows what the code does rather than the paper's letters (the paper's Cityscapes
section swaps M and L): ``num_layers`` is the number of layers in one D2 block and
``num_blocks`` the number of D2 blocks in one D3 block.

The D2 block is computed in the official implementation's order (see NOTES.md), which is
mathematically the paper's Eq. (2) with one BatchNorm per source instead of one per
(layer, source) pair:

1. an initial BN-ReLU-conv3x3 (dilation 1) maps the input to ``growth_rate * num_layers``
   channels, viewed as ``num_layers`` slices; slice ``j`` is the input's contribution to
   layer ``j``;
2. for stage ``i = 0 .. num_layers - 2`` slice ``i`` is complete (it is layer ``i``'s
   output), and one BN-ReLU-conv3x3 with dilation ``2**(i+1)`` computes its contributions to
   all later layers at once, which are added onto slices ``i+1 ..``.

So a layer reading source ``i`` (0 = block input) always does so with dilation ``2**i``:
the multidilated convolution, with one convolution per source rather than one per
(layer, source) pair.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

DILATION_MODES = ("multi", "standard", "none")


def check_dilation(dilation: str) -> str:
    if dilation not in DILATION_MODES:
        raise ValueError(f"dilation must be one of {DILATION_MODES}, got {dilation!r}")
    return dilation


class MultiDilationConv2d(nn.Module):
    """A convolution whose output channel groups use different dilations.

    One ``nn.Conv2d`` per group, outputs concatenated. Used only by the ``"standard"``
    dilation ablation, where each receiving layer reads every source with its own
    (largest) dilation.

    Shapes: ``(batch, in_channels, H, W) -> (batch, sum(group_channels), H, W)``.
    """

    def __init__(self, in_channels: int, group_channels: Sequence[int], dilations: Sequence[int],
                 kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if len(group_channels) != len(dilations):
            raise ValueError("one dilation per output group is needed")
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, c, kernel_size, padding=d * (kernel_size // 2), dilation=d,
                      bias=bias)
            for c, d in zip(group_channels, dilations))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class BNReLUConv(nn.Module):
    """Pre-activation unit: BatchNorm -> ReLU -> convolution (the official ``bn_conv_block``).

    ``groups_dilations`` (list of ``(channels, dilation)``) splits the convolution into one
    convolution per output group with its own dilation (``"standard"`` ablation); otherwise
    a single convolution with ``dilation`` is used.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True,
                 groups_dilations: Optional[Sequence[tuple]] = None):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        if groups_dilations is not None and len({d for _, d in groups_dilations}) > 1:
            self.conv: nn.Module = MultiDilationConv2d(
                in_channels, [c for c, _ in groups_dilations], [d for _, d in groups_dilations],
                kernel_size, bias)
        else:
            if groups_dilations is not None:
                dilation = groups_dilations[0][1]
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                                  padding=dilation * (kernel_size // 2), dilation=dilation,
                                  bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.relu(self.norm(x)))


def _split_and_add(pending: Tensor, growth: int, stages: Sequence[nn.Module],
                   keep: int) -> List[Tensor]:
    """The dense split-and-add pattern shared by the D2 block and the nested D3 block.

    ``pending`` holds ``len(stages) + 1`` slices of ``growth`` channels. Slice ``i`` is
    complete once every earlier stage has added into it; stage ``i`` maps it to the
    contributions for all later slices. Returns the last ``keep`` completed slices.

    New tensors are made for every addition (``pending[:, growth:] + y``) rather than
    adding in place into one shared buffer: BatchNorm saves its input for backward, and an
    in-place write into any view of that buffer would invalidate it.
    """
    done: List[Tensor] = []
    first_kept = len(stages) + 1 - keep
    for i, stage in enumerate(stages):
        head = pending[:, :growth]
        if i >= first_kept:
            done.append(head)
        pending = pending[:, growth:] + stage(head)
    done.append(pending)
    return done


def _layer_dilation(layer: int, dilation: str) -> int:
    """Largest dilation layer ``layer`` (0-based) reads with: ``2**layer``, or 1."""
    return 1 if dilation == "none" else 2 ** layer


class D2Block(nn.Module):
    """Multidilated dense block (paper Sec. 3), in the official implementation's order.

    Args:
        in_channels: input channels.
        growth_rate: ``k``, channels per layer.
        num_layers: layers in the block (``L``).
        dilation: ``"multi"`` (the paper: source ``i`` read with dilation ``2**i``),
            ``"standard"`` (every contribution to layer ``l`` uses that layer's largest
            dilation ``2**l``: the naive combination the paper's ablation criticises), or
            ``"none"`` (dilation 1 everywhere).
        out_layers: how many of the last layers' outputs the block returns.
        bottleneck_channels: if given, a BN-ReLU-conv1x1 to this many channels first
            (DenseNet-BC bottleneck; the caller decides whether it is needed).
        compression: if given and < 1, a final BN-ReLU-conv1x1 (no bias) to
            ``int(growth_rate * out_layers * compression)`` channels.

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int,
                 dilation: str = "multi", out_layers: int = 1,
                 bottleneck_channels: Optional[int] = None,
                 compression: Optional[float] = None, kernel_size: int = 3):
        super().__init__()
        check_dilation(dilation)
        if not 1 <= out_layers <= num_layers:
            raise ValueError(f"out_layers must be in [1, {num_layers}], got {out_layers}")
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.num_layers = num_layers
        self.dilation = dilation
        self.out_layers = out_layers
        k = growth_rate

        self.bottleneck = (BNReLUConv(in_channels, bottleneck_channels, kernel_size=1)
                           if bottleneck_channels is not None else None)
        width = bottleneck_channels if bottleneck_channels is not None else in_channels

        def groups(receivers: range, source_dilation: int):
            if dilation == "standard":
                return [(k, _layer_dilation(j, dilation)) for j in receivers]
            return [(k * len(receivers), 1 if dilation == "none" else source_dilation)]

        self.initial = BNReLUConv(width, k * num_layers, kernel_size,
                                  groups_dilations=groups(range(num_layers), 1))
        self.stages = nn.ModuleList(
            BNReLUConv(k, k * (num_layers - i - 1), kernel_size,
                       groups_dilations=groups(range(i + 1, num_layers), 2 ** (i + 1)))
            for i in range(num_layers - 1))

        raw_out = k * out_layers
        if compression is not None and compression < 1:
            self.out_channels = int(raw_out * compression)
            self.compression: Optional[BNReLUConv] = BNReLUConv(
                raw_out, self.out_channels, kernel_size=1, bias=False)
        else:
            self.out_channels = raw_out
            self.compression = None

    def forward(self, x: Tensor) -> Tensor:
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        slices = _split_and_add(self.initial(x), self.growth_rate, self.stages, self.out_layers)
        out = slices[0] if len(slices) == 1 else torch.cat(slices, dim=1)
        if self.compression is not None:
            out = self.compression(out)
        return out


class D3Block(nn.Module):
    """Nested D3 block of the music model (paper Fig. 4, official ``d3_block``).

    The split-and-add pattern of the D2 block one level up: an initial D2 block produces
    ``growth_rate * num_blocks`` channels viewed as ``num_blocks`` slices; slice ``i`` is
    refined by D2 block ``i`` into contributions to all later slices. Returns the last
    slice (``growth_rate`` channels), as the official code does.

    Shapes: ``(batch, in_channels, H, W) -> (batch, growth_rate, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_blocks: int,
                 dilation: str = "multi", kernel_size: int = 3):
        super().__init__()
        self.growth_rate = growth_rate
        self.out_channels = growth_rate
        self.initial = D2Block(in_channels, growth_rate * num_blocks, num_layers, dilation,
                               kernel_size=kernel_size)
        self.blocks = nn.ModuleList(
            D2Block(growth_rate, growth_rate * (num_blocks - i - 1), num_layers, dilation,
                    kernel_size=kernel_size)
            for i in range(num_blocks - 1))

    def forward(self, x: Tensor) -> Tensor:
        return _split_and_add(self.initial(x), self.growth_rate, self.blocks, 1)[0]


class D3BlockBC(nn.Module):
    """DenseNet-BC form of the D3 block (segmentation backbone, official ``d3_block``).

    ``num_blocks`` D2 blocks; each reads the concatenation of the block input and all
    earlier D2 outputs and its (compressed) output is concatenated on. A D2 block gets a
    1x1 bottleneck to ``4 * growth_rate`` channels only when its input is wider than that.

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)`` with
    ``out_channels = in_channels + num_blocks * int(growth_rate * out_layers * compression)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_blocks: int,
                 out_layers: int, compression: float, dilation: str = "multi",
                 kernel_size: int = 3):
        super().__init__()
        blocks = []
        channels = in_channels
        for _ in range(num_blocks):
            bottleneck = 4 * growth_rate if 4 * growth_rate < channels else None
            block = D2Block(channels, growth_rate, num_layers, dilation, out_layers=out_layers,
                            bottleneck_channels=bottleneck, compression=compression,
                            kernel_size=kernel_size)
            blocks.append(block)
            channels += block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.in_channels = in_channels
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            for block in self.blocks:
                x = torch.cat([x, block(x)], dim=1)
            return x
        # Inference: no tensor is saved for backward, so every block can write into one
        # preallocated buffer instead of re-copying the growing concatenation each time.
        out = x.new_empty(x.shape[0], self.out_channels, *x.shape[2:])
        channels = x.shape[1]
        out[:, :channels] = x
        for block in self.blocks:
            out[:, channels:channels + block.out_channels] = block(out[:, :channels])
            channels += block.out_channels
        return out
