"""D3Net semantic segmentation: backbone (D3Net-S / D3Net-L), FCN head and OCR head.

Follows Sony's official NNabla model (sony/ai-research-code,
``d3net/semantic-segmentation``): a stride-4 stem, four DenseNet-BC style D3 blocks with
transitions between them, a 1x1 feature layer per scale, and an FCN head that resizes
every scale to the first one, concatenates and classifies.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import SegConfig
from ..nn import D3BlockBC, set_recompute


class Stem(nn.Sequential):
    """conv3x3/2 (no bias) -> BN -> ReLU -> conv3x3/2 (no bias): output stride 4.

    The second convolution has no BN/ReLU of its own: the first D2 block's
    pre-activation follows it directly, as in the official model.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)


class ConvBNReLU(nn.Sequential):
    """Post-activation 1x1 conv (with bias) -> BN -> ReLU: the per-scale feature layer."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.norm = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class Transition(nn.Sequential):
    """BN -> ReLU -> conv1x1 (no bias) to ``out_channels`` -> 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)


class D3NetBackbone(nn.Module):
    """Stem, four D3 blocks (strides 4, 8, 16, 32) and a feature layer per scale.

    Shapes: ``(N, 3, H, W) -> [(N, feature_channels[s], H/2^(s+2), W/2^(s+2)) for s in 0..3]``
    (sizes rounded as strided convs and floor pooling give them).
    """

    def __init__(self, config: SegConfig):
        super().__init__()
        c = config
        self.stem = Stem(c.num_init_features)
        channels = c.num_init_features
        self.blocks = nn.ModuleList()
        self.features = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for s in range(4):
            block = D3BlockBC(channels, c.growth_rate[s], c.num_layers[s], c.num_blocks[s],
                              c.out_layers[s], c.compression[s], c.dilation)
            self.blocks.append(block)
            self.features.append(ConvBNReLU(block.out_channels, c.feature_channels[s]))
            channels = block.out_channels
            if s < 3:
                self.transitions.append(Transition(channels, channels // c.transition_factor))
                channels //= c.transition_factor
        self.out_channels = list(c.feature_channels)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        features = []
        for s, block in enumerate(self.blocks):
            x = block(x)
            features.append(self.features[s](x))
            if s < 3:
                x = self.transitions[s](x)
        return features


def _resize(x: Tensor, size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNHead(nn.Module):
    """Resize all scales to the first (half-pixel bilinear), concat, conv1x1-BN-ReLU, classify.

    Shapes: features as the backbone returns them -> logits ``(N, num_classes, H/4, W/4)``.
    """

    def __init__(self, in_channels: List[int], channels: int, num_classes: int):
        super().__init__()
        self.fuse = ConvBNReLU(sum(in_channels), channels, bias=False)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def fused(self, features: List[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        return self.fuse(torch.cat([_resize(f, size) for f in features], dim=1))

    def forward(self, features: List[Tensor]) -> Tensor:
        return self.classifier(self.fused(features))


class OCRHead(nn.Module):
    """Object-contextual representations head (Yuan et al., ECCV 2020) on D3Net features.

    The fused multi-scale features feed (a) an auxiliary FCN classifier giving soft object
    regions, (b) a 3x3 conv to ``mid_channels``; pixel features attend to the object region
    representations (key/query/value with ``key_channels``), and the context is fused back
    with the pixel features before the final classifier. ``forward`` returns the final
    logits; ``forward_with_aux`` also returns the auxiliary logits for the OCR training loss.
    """

    def __init__(self, in_channels: List[int], channels: int, num_classes: int,
                 mid_channels: int = 512, key_channels: int = 256):
        super().__init__()
        self.fcn = FCNHead(in_channels, channels, num_classes)  # fused features + aux classifier
        self.pixel = nn.Sequential(nn.Conv2d(channels, mid_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))

        def proj(cin, cout, depth=2):
            layers = []
            for i in range(depth):
                layers += [nn.Conv2d(cin if i == 0 else cout, cout, 1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.query = proj(mid_channels, key_channels)
        self.key = proj(mid_channels, key_channels)
        self.value = proj(mid_channels, key_channels, depth=1)
        self.out = proj(key_channels, mid_channels, depth=1)
        self.fuse = nn.Sequential(nn.Conv2d(2 * mid_channels, mid_channels, 1, bias=False),
                                  nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        self.key_channels = key_channels

    def forward_with_aux(self, features: List[Tensor]):
        fused = self.fcn.fused(features)
        aux = self.fcn.classifier(fused)                          # (N, K, h, w)
        pixels = self.pixel(fused)                                # (N, C, h, w)
        n, c, h, w = pixels.shape
        regions = torch.softmax(aux.flatten(2), dim=2)            # (N, K, hw)
        objects = torch.bmm(regions, pixels.flatten(2).transpose(1, 2))  # (N, K, C)
        objects = objects.transpose(1, 2).unsqueeze(3)            # (N, C, K, 1)
        query = self.query(pixels).flatten(2).transpose(1, 2)     # (N, hw, Ck)
        key = self.key(objects).flatten(2)                        # (N, Ck, K)
        value = self.value(objects).flatten(2).transpose(1, 2)    # (N, K, Ck)
        attention = torch.softmax(torch.bmm(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.bmm(attention, value).transpose(1, 2).reshape(n, -1, h, w)
        context = self.out(context)
        logits = self.classifier(self.fuse(torch.cat([context, pixels], dim=1)))
        return logits, aux

    def forward(self, features: List[Tensor]) -> Tensor:
        return self.forward_with_aux(features)[0]


class D3NetSegmentation(nn.Module):
    """D3Net backbone + FCN (or OCR) head.

    Input: ``(N, 3, H, W)`` images normalised with ``config.mean``/``config.std`` (0-255
    units). Output: logits ``(N, num_classes, H, W)`` at the input size, for any H, W.
    The official model returns the softmax in test mode; we return logits (softmax them
    for probabilities). ``recompute``: see :func:`d3net.nn.set_recompute`.
    """

    def __init__(self, config: Optional[SegConfig] = None,
                 recompute: Union[bool, str, None] = False):
        super().__init__()
        self.config = config or SegConfig()
        self.backbone = D3NetBackbone(self.config)
        args = (self.backbone.out_channels, self.config.head_channels, self.config.num_classes)
        if self.config.head == "ocr":
            self.head: nn.Module = OCRHead(*args, mid_channels=self.config.ocr_mid_channels,
                                           key_channels=self.config.ocr_key_channels)
        else:
            self.head = FCNHead(*args)
        set_recompute(self, recompute)

    def forward(self, x: Tensor) -> Tensor:
        return _resize(self.head(self.backbone(x)), x.shape[-2:])

    def forward_train(self, x: Tensor):
        """Logits at input size, plus auxiliary logits for the OCR head (else None)."""
        features = self.backbone(x)
        if isinstance(self.head, OCRHead):
            logits, aux = self.head.forward_with_aux(features)
            return _resize(logits, x.shape[-2:]), _resize(aux, x.shape[-2:])
        return _resize(self.head(features), x.shape[-2:]), None
