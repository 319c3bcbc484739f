"""Multi-band multi-scale D3Net for music source separation (one network per target).

Structure of the official ``D3NetMSS`` (Sony's NNabla code and configs,
sony/ai-research-code, ``d3net/music-source-separation``): the normalised magnitude is
cut into frequency bands, each band and the full band (bins below ``valid_bins``) go
through their own encoder-decoder of nested D3 blocks, band outputs are concatenated
along frequency and with the full-band output along channels, then a final D2 block, a
gated 1x1 output layer, per-bin output scale/bias and a ReLU. Bins from ``valid_bins`` up
are copied from the input.

Where the paper's Table 5 and the official configs differ (depth of the bands, 1x1 output
gate instead of 3x3), we follow the official configs so that the released weights load.
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import BranchConfig, MSSConfig
from ..nn import D2Block, D3Block, set_recompute


class Upsample(nn.Sequential):
    """BN -> 2x2 stride-2 transposed convolution (with bias); no ReLU, as the official."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)


class EncoderDecoder(nn.Module):
    """One branch: conv3x3 stem, D3 blocks with 2x2 average pooling down, transposed
    convolutions up, skip concatenations (official ``md3_block_ds``).

    Shapes: ``(batch, audio_channels, frames, bins) -> (batch, growth_rate[-1], frames, bins)``;
    frames and bins must be divisible by ``2**levels``.
    """

    def __init__(self, in_channels: int, cfg: BranchConfig, dilation: str):
        super().__init__()
        levels = cfg.levels
        self.stem = nn.Conv2d(in_channels, cfg.init_features, 3, padding=1)
        self.down = nn.ModuleList()
        channels = cfg.init_features
        skips = []
        for i in range(levels):
            block = D3Block(channels, cfg.growth_rate[i], cfg.num_layers[i], cfg.num_blocks[i],
                            dilation)
            self.down.append(block)
            channels = block.out_channels
            skips.append(channels)
        self.bottleneck = D3Block(channels, cfg.growth_rate[levels], cfg.num_layers[levels],
                                  cfg.num_blocks[levels], dilation)
        channels = self.bottleneck.out_channels
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for j in range(levels):
            up_channels = math.ceil(cfg.up_rate(j) * channels)
            self.up.append(Upsample(channels, up_channels))
            i = levels + 1 + j
            block = D3Block(up_channels + skips[levels - 1 - j], cfg.growth_rate[i],
                            cfg.num_layers[i], cfg.num_blocks[i], dilation)
            self.up_blocks.append(block)
            channels = block.out_channels
        self.out_channels = channels
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block in zip(self.up, self.up_blocks):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return x


class MatchChannels(nn.Sequential):
    """BN -> conv1x1 (with bias), widening a narrow band's output (official match_fm_conv)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1)


class GatedOutput(nn.Module):
    """BN, then ``sigmoid(conv1x1(h)) * conv1x1(h)`` (official ``bnc_gate`` with 1x1 kernels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.gate = nn.Conv2d(in_channels, out_channels, 1)
        self.filt = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        return torch.sigmoid(self.gate(h)) * self.filt(h)


class D3NetMSS(nn.Module):
    """D3Net music separation network for one target.

    ``forward`` takes a magnitude spectrogram ``(batch, audio_channels, bins, frames)``
    (bins = ``fft_size // 2 + 1``) and returns the target's magnitude in the same shape.
    Any number of frames works: the frame axis is zero-padded to a multiple of
    ``config.frame_multiple`` internally and cropped back.

    Internally the network runs on ``(batch, channels, frames, bins)`` like the official
    code, so official kernels map without transposition. ``recompute``: see
    :func:`d3net.nn.set_recompute`.
    """

    def __init__(self, config: Optional[MSSConfig] = None,
                 recompute: Union[bool, str, None] = False):
        super().__init__()
        self.config = c = config or MSSConfig()
        bins = c.num_bins
        # (x - in_offset) / in_scale per bin, out * decode_scale + decode_bias per bin
        self.in_offset = nn.Parameter(torch.zeros(bins))
        self.in_scale = nn.Parameter(torch.ones(bins))
        self.decode_scale = nn.Parameter(torch.ones(c.valid_bins))
        self.decode_bias = nn.Parameter(torch.zeros(c.valid_bins))

        self.bands = nn.ModuleList(EncoderDecoder(c.audio_channels, b, c.dilation)
                                   for b in c.bands)
        widest = max(b.growth_rate[-1] for b in c.bands)
        self.match = nn.ModuleDict({
            str(i): MatchChannels(branch.out_channels, widest)
            for i, branch in enumerate(self.bands) if branch.out_channels < widest})
        self.full = EncoderDecoder(c.audio_channels, c.full, c.dilation)
        self.final = D2Block(widest + self.full.out_channels, c.final_growth_rate,
                             c.final_num_layers, c.dilation)
        self.output = GatedOutput(self.final.out_channels, c.audio_channels)
        set_recompute(self, recompute)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.audio_channels or \
                x.shape[2] != self.config.num_bins:
            raise ValueError(f"expected a magnitude (batch, {self.config.audio_channels}, "
                             f"{self.config.num_bins}, frames), got {tuple(x.shape)}")
        frames = x.shape[-1]
        pad = -frames % self.config.frame_multiple
        x = x.transpose(2, 3)                                   # (batch, ch, frames, bins)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        out = self.forward_official_layout(x)
        return out[:, :, :frames].transpose(2, 3)

    def forward_official_layout(self, x: Tensor) -> Tensor:
        """``(batch, channels, frames, bins) -> same``; frames a multiple of frame_multiple."""
        c = self.config
        valid = c.valid_bins
        scaled = (x - self.in_offset) / self.in_scale
        edges = c.band_edges
        band_outs: List[Tensor] = []
        for i, branch in enumerate(self.bands):
            h = branch(scaled[..., edges[i]:edges[i + 1]])
            if str(i) in self.match:
                h = self.match[str(i)](h)
            band_outs.append(h)
        full = self.full(scaled[..., :valid])
        h = torch.cat([torch.cat(band_outs, dim=3), full], dim=1)
        h = self.output(self.final(h))
        h = torch.relu(h * self.decode_scale + self.decode_bias)
        return torch.cat([h, x[..., valid:]], dim=3)

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor, scale: Tensor) -> None:
        """Initialise the input normalisation from training-set statistics, shape (bins,)."""
        self.in_offset.copy_(torch.as_tensor(mean).reshape(-1))
        self.in_scale.copy_(torch.as_tensor(scale).reshape(-1))
