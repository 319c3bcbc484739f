"""D3Net building blocks: the multidilated dense block (D2 block) and the D3 blocks.

Naming follows what the code does rather than the paper's letters (the paper's Cityscapes
section swaps M and L): ``num_layers`` is the number of layers in one D2 block and
``num_blocks`` the number of D2 blocks in one D3 block.

The D2 block is computed in the order of Sony's official NNabla implementation
(sony/ai-research-code, ``d3net/``), which is mathematically the paper's Eq. (2) with one
BatchNorm per source instead of one per (layer, source) pair:

1. an initial BN-ReLU-conv3x3 (dilation 1) maps the input to ``growth_rate * num_layers``
   channels, viewed as ``num_layers`` slices; slice ``j`` is the input's contribution to
   layer ``j``;
2. for stage ``i = 0 .. num_layers - 2`` slice ``i`` is complete (it is layer ``i``'s
   output), and one BN-ReLU-conv3x3 with dilation ``2**(i+1)`` computes its contributions to
   all later layers at once, which are added onto slices ``i+1 ..``.

So a layer reading source ``i`` (0 = block input) always does so with dilation ``2**i``:
the multidilated convolution, with one convolution per source rather than one per
(layer, source) pair. Memory-efficient training: :func:`set_recompute`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .errors import D3NetError

DILATION_MODES = ("multi", "standard", "none")
RECOMPUTE_MODES = ("none", "unit", "d2", "d3")
DEFAULT_RECOMPUTE = "unit"


def check_dilation(dilation: str, owner: str = "") -> str:
    """``dilation`` if it is one of :data:`DILATION_MODES`, else a :class:`D3NetError` whose
    message starts with ``owner`` (e.g. the config's name)."""
    if dilation not in DILATION_MODES:
        raise D3NetError(f"{owner}dilation must be one of {DILATION_MODES}, got {dilation!r}")
    return dilation


# ----------------------------------------------------------------------------- recompute

@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in ``module`` normalise with the batch's statistics but leave their
    running statistics as they are: a recomputation runs under this, so that they are
    updated once per step, not twice.

    The layers still receive their running statistics (the checkpoint checks that the
    recomputation saves the same tensors), with ``momentum = 0`` (the new value is exactly
    the old one); the count is set back afterwards. Works for ``SyncBatchNorm`` too.
    """
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats]
    saved = [(norm.momentum, None if norm.num_batches_tracked is None
              else norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)


class Recomputable(nn.Module):
    """A module whose training forward can be recomputed in the backward pass.

    Subclasses implement :meth:`run`; :meth:`forward` checkpoints it when
    ``self.recomputed`` is set (:func:`set_recompute`) in a training pass, and calls it
    directly otherwise. The recomputation gives the same values as the first run: BatchNorm
    uses the same batch statistics (:func:`_running_stats_frozen`), the checkpoint restores
    autocast and the RNG state, and no block holds dropout.
    """

    recomputed: bool = False

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.recomputed and _in_training_pass(self):
            return _recomputed(self.run, self, *inputs)
        return self.run(*inputs)

    def run(self, *inputs: Tensor) -> Tensor:
        raise NotImplementedError


def _in_training_pass(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled()


def _recomputed(function, module: nn.Module, *inputs: Tensor) -> Tensor:
    """``function(*inputs)``, keeping only ``inputs`` for the backward pass, which computes
    the rest again with the BatchNorm layers of ``module`` not updating their statistics.

    Non-reentrant checkpointing stops the recomputation as soon as every tensor that the
    backward pass needs is back: a final convolution, whose input is all it needs, is not
    run again.
    """
    return checkpoint(function, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(),
                                          _running_stats_frozen(module)))


def _keeps_inputs(module: nn.Module) -> bool:
    """Whether ``module`` or a unit in it is recomputed in this forward pass, and so keeps
    its inputs for the backward pass rather than what it computes from them."""
    if not _in_training_pass(module):
        return False
    return any(m.recomputed for m in module.modules() if isinstance(m, Recomputable))


def _concat(inputs: Tuple[Tensor, ...]) -> Tensor:
    return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class MultiDilationConv2d(nn.Module):
    """A convolution whose output channel groups use different dilations.

    One ``nn.Conv2d`` per group, outputs concatenated. Used only by the ``"standard"``
    dilation ablation, where each receiving layer reads every source with its own
    (largest) dilation.

    Shapes: ``(batch, in_channels, H, W) -> (batch, sum of group channels, H, W)``.
    """

    def __init__(self, in_channels: int, groups_dilations: Sequence[Tuple[int, int]],
                 kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, c, kernel_size, padding=d * (kernel_size // 2), dilation=d,
                      bias=bias)
            for c, d in groups_dilations)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class BNReLUConv(Recomputable):
    """Pre-activation unit: BatchNorm -> ReLU -> convolution (the official ``bn_conv_block``).

    ``groups_dilations`` (list of ``(channels, dilation)``) splits the convolution into one
    convolution per output group with its own dilation (``"standard"`` ablation); otherwise
    a single convolution with ``dilation`` is used. Several inputs are concatenated along
    channels first (inside the recomputed region when the unit is recomputed).

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True,
                 groups_dilations: Optional[Sequence[tuple]] = None):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        if groups_dilations is not None and len({d for _, d in groups_dilations}) > 1:
            self.conv: nn.Module = MultiDilationConv2d(in_channels, groups_dilations,
                                                       kernel_size, bias)
        else:
            if groups_dilations is not None:
                dilation = groups_dilations[0][1]
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                                  padding=dilation * (kernel_size // 2), dilation=dilation,
                                  bias=bias)

    def run(self, *inputs: Tensor) -> Tensor:
        return self.conv(self.relu(self.norm(_concat(inputs))))


def _split_and_add(pending: Tensor, growth: int, stages: Sequence[nn.Module],
                   keep: int) -> List[Tensor]:
    """The dense split-and-add pattern shared by the D2 block and the nested D3 block.

    ``pending`` holds ``len(stages) + 1`` slices of ``growth`` channels. Slice ``i`` is
    complete once every earlier stage has added into it; stage ``i`` maps it to the
    contributions for all later slices. Returns the last ``keep`` completed slices.

    New tensors are made for every addition (``pending[:, growth:] + y``) rather than
    adding in place into one shared buffer: BatchNorm saves its input for backward, and an
    in-place write into any view of that buffer would invalidate it.

    When the stages are recomputed in a training pass, each completed slice is copied out
    of ``pending``: a recomputed stage keeps its input for the backward pass, and a view
    would keep all of ``pending`` alive with it, though only the slice is needed.
    """
    done: List[Tensor] = []
    first_kept = len(stages) + 1 - keep
    copy = bool(stages) and _keeps_inputs(stages[0])
    for i, stage in enumerate(stages):
        head = pending[:, :growth]
        if copy:
            head = head.clone()
        if i >= first_kept:
            done.append(head)
        pending = pending[:, growth:] + stage(head)
    done.append(pending)
    return done


class D2Block(Recomputable):
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
        recompute: memory-efficient training, see :func:`set_recompute` (``"unit"`` or
            ``"d2"`` here; not saved with the model).

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)``. Several inputs
    whose channels add up to ``in_channels`` may be given instead of one; they are
    concatenated along channels by the first unit (DenseNet-BC's dense connectivity), so
    that a recomputed block does not store the concatenation (Pleiss et al., 2017).
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int,
                 dilation: str = "multi", out_layers: int = 1,
                 bottleneck_channels: Optional[int] = None,
                 compression: Optional[float] = None, kernel_size: int = 3,
                 recompute: Union[bool, str, None] = False):
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
            if dilation == "standard":  # layer j's largest dilation for every source
                return [(k, 2 ** j) for j in receivers]
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
        set_recompute(self, recompute)

    def run(self, *inputs: Tensor) -> Tensor:
        if self.bottleneck is None:
            first = self.initial(*inputs)
        elif self.bottleneck.recomputed and self.initial.recomputed and \
                _in_training_pass(self):
            # Per-unit recompute: the 1x1 bottleneck is recomputed with the unit it feeds,
            # so that its output (4 * growth_rate channels) is not stored either.
            first = _recomputed(self._bottleneck_initial, self, *inputs)
        else:
            first = self.initial(self.bottleneck(*inputs))
        slices = _split_and_add(first, self.growth_rate, self.stages, self.out_layers)
        if self.compression is not None:
            return self.compression(*slices)  # concatenated inside (not stored if recomputed)
        return _concat(tuple(slices))

    def _bottleneck_initial(self, *inputs: Tensor) -> Tensor:
        return self.initial.run(self.bottleneck.run(*inputs))


class D3Block(Recomputable):
    """Nested D3 block of the music model (paper Fig. 4, official ``d3_block``).

    The split-and-add pattern of the D2 block one level up: an initial D2 block produces
    ``growth_rate * num_blocks`` channels viewed as ``num_blocks`` slices; slice ``i`` is
    refined by D2 block ``i`` into contributions to all later slices. Returns the last
    slice (``growth_rate`` channels), as the official code does. ``recompute``: see
    :func:`set_recompute` (not saved with the model).

    Shapes: ``(batch, in_channels, H, W) -> (batch, growth_rate, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_blocks: int,
                 dilation: str = "multi", kernel_size: int = 3,
                 recompute: Union[bool, str, None] = False):
        super().__init__()
        self.growth_rate = growth_rate
        self.out_channels = growth_rate
        self.initial = D2Block(in_channels, growth_rate * num_blocks, num_layers, dilation,
                               kernel_size=kernel_size)
        self.blocks = nn.ModuleList(
            D2Block(growth_rate, growth_rate * (num_blocks - i - 1), num_layers, dilation,
                    kernel_size=kernel_size)
            for i in range(num_blocks - 1))
        set_recompute(self, recompute)

    def run(self, x: Tensor) -> Tensor:
        return _split_and_add(self.initial(x), self.growth_rate, self.blocks, 1)[0]


class D3BlockBC(Recomputable):
    """DenseNet-BC form of the D3 block (segmentation backbone, official ``d3_block``).

    ``num_blocks`` D2 blocks; each reads the concatenation of the block input and all
    earlier D2 outputs and its (compressed) output is concatenated on. A D2 block gets a
    1x1 bottleneck to ``4 * growth_rate`` channels only when its input is wider than that.
    ``recompute``: see :func:`set_recompute` (not saved with the model).

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H, W)`` with
    ``out_channels = in_channels + num_blocks * int(growth_rate * out_layers * compression)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_blocks: int,
                 out_layers: int, compression: float, dilation: str = "multi",
                 kernel_size: int = 3, recompute: Union[bool, str, None] = False):
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
        set_recompute(self, recompute)

    def run(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            # Each D2 block gets the list of earlier outputs and concatenates it itself:
            # a recomputed block then keeps only these (narrow) outputs, not the growing
            # concatenations (Pleiss et al., 2017).
            features = [x]
            for block in self.blocks:
                features.append(block(*features))
            return torch.cat(features, dim=1)
        # Inference: no tensor is saved for backward, so every block can write into one
        # preallocated buffer instead of re-copying the growing concatenation each time.
        out = x.new_empty(x.shape[0], self.out_channels, *x.shape[2:])
        channels = x.shape[1]
        out[:, :channels] = x
        for block in self.blocks:
            out[:, channels:channels + block.out_channels] = block(out[:, :channels])
            channels += block.out_channels
        return out


def _recompute_level(module: nn.Module) -> int:
    """1 for a BN-ReLU-conv unit, 2 for a D2 block, 3 for a D3 block, 0 for anything else."""
    if isinstance(module, (D3Block, D3BlockBC)):
        return 3
    if isinstance(module, D2Block):
        return 2
    return 1 if isinstance(module, BNReLUConv) else 0


def set_recompute(module: nn.Module, mode: Union[bool, str, None] = True) -> nn.Module:
    """Switch memory-efficient training on or off for every dense block in ``module``.

    In a training forward pass (training mode, gradients enabled) the chosen blocks keep
    only their inputs and recompute everything inside them when the backward pass reaches
    them (``torch.utils.checkpoint``, non-reentrant: DDP-safe); gradients and BatchNorm
    running statistics are those of the ordinary pass. Eval mode and ``torch.no_grad()``
    are unaffected. A runtime setting, not part of the config or the model file.

    This is the technique of Pleiss et al., "Memory-Efficient Implementation of DenseNets"
    (2017), and the official D3Net training scripts' ``--recompute`` option (Sony's README:
    D3Net-S 18 -> 16 GB, D3Net-L 35 -> 32 GB of GPU memory at crop 512x1024, batch 8).

    Args:
        module: any module containing D2/D3 blocks: a whole model (also one wrapped in
            ``DistributedDataParallel``), a backbone or a single block.
        mode: the granularity; the outermost blocks of that kind are recomputed:
            ``"unit"`` (each BN-ReLU-conv unit, a 1x1 bottleneck together with the unit
            it feeds; what ``True`` means), ``"d2"`` (each D2 block), ``"d3"`` (each D3
            block, and D2 blocks outside D3 blocks), or ``"none"`` / ``False`` (off).
            ``"unit"`` is Pleiss et al.'s scheme: the backward pass computes only the
            BatchNorms, ReLUs, concatenations (and bottlenecks) again, not the 3x3
            convolutions; ``"d2"`` and ``"d3"`` also recompute those, for less memory
            and more time. The measured trade of each is in benchmarks/RESULTS.md.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: an unknown mode, or a mode other than ``"none"`` for a module without
            any block to recompute.
    """
    if mode is None or mode is False:
        mode = "none"
    elif mode is True:
        mode = DEFAULT_RECOMPUTE
    elif mode not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES} (or True/False), "
                         f"got {mode!r}")
    level = RECOMPUTE_MODES.index(mode)
    marked = 0

    def visit(m: nn.Module, covered: bool) -> None:
        nonlocal marked
        own = _recompute_level(m)
        if own:
            m.recomputed = not covered and own <= level
            marked += m.recomputed
            covered = covered or m.recomputed
        for child in m.children():
            visit(child, covered)

    visit(module, False)
    if level and not marked:
        raise ValueError(f"recompute={mode!r}: {type(module).__name__} has no dense block to "
                         "recompute")
    return module


def recompute_mode(module: nn.Module) -> str:
    """The granularity :func:`set_recompute` last set on ``module``: one of
    :data:`RECOMPUTE_MODES`."""
    levels = [_recompute_level(m) for m in module.modules()
              if isinstance(m, Recomputable) and m.recomputed]
    return RECOMPUTE_MODES[max(levels, default=0)]
