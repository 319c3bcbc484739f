"""Receptive-field analysis: input-gradient coverage maps, per-path blind spots (paper Fig. 3).

Fig. 3 asks which inputs *each convolution* sees, not the union over all paths (in a dense
block the path through every layer always fills the holes). A convolution that reads a skip
connection with too large a dilation samples its source more sparsely than the source's own
field is wide, so some input positions never reach it: a *blind spot*. The multidilated
convolution reads source ``i`` with dilation ``2**i`` so that never happens.

Connectivity is measured with gradients on a linearised copy of the network
(:func:`linearize`, positive input): no ReLU is ever off and nothing cancels, so the input
gradient of an output position is non-zero exactly where a path exists; :func:`_reachability`
keeps the numbers of order one so that float32 neither overflows nor underflows.

Numbering follows the paper: in a D2 block ``x_0`` is the block input and ``x_l`` the output
of layer ``l``; a path ``(layer l, source i)`` is the convolution that carries ``x_i`` into
layer ``l``. In :class:`d3net.nn.D2Block`'s order source 0 is read by ``block.initial`` and
source ``i >= 1`` by ``block.stages[i - 1]``; the path's output is that convolution's
channel group for layer ``l``.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import D3NetError
from .nn import D2Block, MultiDilationConv2d, check_dilation
from .utils import PathLike, atomic_path

__all__ = ["CoverageMap", "PathCoverage", "D2Report", "linearize", "receptive_field",
           "analyze_d2_block", "analyze_block", "analytic_field", "plot_coverage",
           "plot_format"]

# Above this window width the D2 analysis runs on a one-row strip instead of a square.
MAX_SQUARE_WINDOW = 140
# Empty positions kept around the expected field so that a field reaching the window's
# edge (i.e. a wrong size estimate) is detected instead of silently cut.
WINDOW_MARGIN = 2
# Paths analysed together are capped so that one activation holds about this many numbers.
BATCH_ELEMENTS = 2 ** 22

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
_WEIGHTED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


# ----------------------------------------------------------------------------- coverage maps

@dataclass
class CoverageMap:
    """Which input positions one output position depends on.

    ``gradient``: shape ``(H, W)`` of the input, positive where a path reaches the input
    position, zero where none does (its size carries no meaning). ``centre``: the input
    position ``(row, col)`` of the analysed output position; offsets are taken from it.
    """

    gradient: np.ndarray
    centre: Tuple[int, int]

    @property
    def covered(self) -> np.ndarray:
        """Boolean ``(H, W)``: input positions the output position sees."""
        return self.gradient > 0

    @property
    def bbox(self) -> Optional[Tuple[Tuple[int, int], Tuple[int, int]]]:
        """``((top, bottom), (left, right))``, inclusive input coordinates of the covered
        positions' bounding box; None when nothing is covered."""
        rows = np.flatnonzero(self.covered.any(axis=1))
        cols = np.flatnonzero(self.covered.any(axis=0))
        if rows.size == 0:
            return None
        return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))

    @property
    def extent(self) -> Tuple[int, int]:
        """``(height, width)`` of the bounding box (the 2-D receptive-field size)."""
        box = self.bbox
        if box is None:
            return 0, 0
        (top, bottom), (left, right) = box
        return bottom - top + 1, right - left + 1

    @property
    def blind_spots(self) -> int:
        """Positions inside the bounding box that the output position cannot see."""
        height, width = self.extent
        return height * width - int(self.covered.sum())

    @property
    def profile(self) -> np.ndarray:
        """The gradient along the centre row: the one-dimensional view of paper Fig. 3."""
        return self.gradient[self.centre[0]]

    @property
    def span(self) -> Optional[Tuple[int, int]]:
        """``(first, last)`` covered column offsets along the centre row, relative to the
        centre; None when the row is empty."""
        cols = np.flatnonzero(self.profile > 0)
        if cols.size == 0:
            return None
        return int(cols[0]) - self.centre[1], int(cols[-1]) - self.centre[1]

    @property
    def field(self) -> int:
        """One-dimensional receptive-field size along the centre row (paper Fig. 3)."""
        span = self.span
        return 0 if span is None else span[1] - span[0] + 1

    @property
    def blind_spots_1d(self) -> int:
        """Uncovered positions between the first and last covered one on the centre row."""
        return self.field - int((self.profile > 0).sum())


@dataclass
class PathCoverage:
    """Coverage of one convolution of a D2 block: receiving ``layer`` (1-based), ``source``
    (0 = block input), its ``dilation`` and kernel ``taps`` (column offsets, the paper's red
    dots)."""

    layer: int
    source: int
    dilation: int
    coverage: CoverageMap
    taps: Tuple[int, ...] = ()

    @property
    def field(self) -> int:
        return self.coverage.field

    @property
    def blind_spots(self) -> int:
        """Blind spots along the centre row (the count of paper Fig. 3)."""
        return self.coverage.blind_spots_1d

    @property
    def blind_spots_2d(self) -> int:
        return self.coverage.blind_spots

    @property
    def source_name(self) -> str:
        return "input" if self.source == 0 else f"layer {self.source}"


@dataclass
class D2Report:
    """Per-convolution coverage of one D2 block: ``paths`` sorted by layer then source;
    ``overall`` the coverage of the block's output (the union over every path)."""

    num_layers: int
    dilation: str
    kernel_size: int
    paths: List[PathCoverage]
    overall: CoverageMap
    two_d: bool = True

    @property
    def expected_field(self) -> int:
        return analytic_field(self.num_layers, self.dilation, self.kernel_size)

    @property
    def field(self) -> int:
        """Overall one-dimensional receptive-field size of the block."""
        return self.overall.field

    @property
    def blind_paths(self) -> List[PathCoverage]:
        """The convolutions that have blind spots."""
        return [p for p in self.paths if p.blind_spots or p.blind_spots_2d]


def analytic_field(num_layers: int, dilation: str, kernel_size: int = 3) -> int:
    """Closed-form one-dimensional receptive field of a D2 block's last layer:
    ``1 + 2 r (2**L - 1)`` for ``"multi"`` and ``"standard"`` (dilations 1, 2, .., 2**(L-1)
    along the path through every layer), ``1 + 2 r L`` for ``"none"`` (``r = kernel_size //
    2``)."""
    check_dilation(dilation)
    r = kernel_size // 2
    if dilation == "none":
        return 1 + 2 * r * num_layers
    return 1 + 2 * r * (2 ** num_layers - 1)


# ----------------------------------------------------------------------------- linearisation

def linearize(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (eval mode, frozen) that measures connectivity.

    Every convolution / linear weight is ``1 / fan_in`` (each output is a mean of its
    inputs), every bias zero, every normalisation layer an identity, nothing in place (the
    analysis differentiates with respect to a leaf input). Other parameters are 0 when
    named as an offset or bias, else 1 (e.g. the music model's per-bin scales).
    """
    model = copy.deepcopy(module)
    _replace_norms(model)
    handled = set()
    for sub in model.modules():
        if isinstance(sub, _WEIGHTED_TYPES):
            weight = sub.weight
            if getattr(sub, "transposed", False):  # weight (in, out / groups, *kernel)
                fan_in = weight.shape[0] * weight[0, 0].numel()
            else:                                   # weight (out, in / groups, *kernel)
                fan_in = weight[0].numel()
            with torch.no_grad():
                weight.fill_(1.0 / fan_in)
                if sub.bias is not None:
                    sub.bias.zero_()
            handled.update(id(p) for p in (weight, sub.bias) if p is not None)
        if getattr(sub, "inplace", False):
            sub.inplace = False
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in handled:
                continue
            leaf = name.rsplit(".", 1)[-1].lower()
            param.fill_(0.0 if ("bias" in leaf or "offset" in leaf) else 1.0)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _replace_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _NORM_TYPES):
            setattr(module, name, nn.Identity())
        else:
            _replace_norms(child)


# ----------------------------------------------------------------------------- any model

def receptive_field(module: nn.Module, input_shape: Sequence[int],
                    position: Optional[Tuple[int, int]] = None,
                    output_index: int = -1) -> CoverageMap:
    """Coverage map of one output position of ``module`` over its input.

    Args:
        module: any network mapping ``(batch, channels, H, W)`` to ``(batch, C', H', W')``
            (or a list/tuple of such maps, of which ``output_index`` is analysed). It is
            not modified: the analysis runs on :func:`linearize`'s copy.
        input_shape: ``(batch, channels, H, W)``.
        position: ``(row, col)`` in the output; the centre by default.

    Returns: the :class:`CoverageMap` over the input ``(H, W)`` (all channels summed), its
    ``centre`` the input position proportional to ``position``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise D3NetError(f"input shape must be (batch, channels, height, width), got {shape}")
    model = linearize(module).float()
    x = torch.ones(shape, requires_grad=True)
    try:
        with _reachability(model):
            out = model(x)
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise D3NetError(f"the model cannot run on input shape {shape}: {first_line}") from None
    if isinstance(out, (list, tuple)):
        out = out[output_index]
    if not isinstance(out, Tensor) or out.dim() != 4:
        raise D3NetError("receptive_field needs an output of shape (batch, channels, H, W)")
    out_h, out_w = out.shape[-2:]
    if position is None:
        position = (out_h // 2, out_w // 2)
    row, col = (int(p) for p in position)
    if not (0 <= row < out_h and 0 <= col < out_w):
        raise D3NetError(f"output position {(row, col)} is outside the output of size "
                         f"{(out_h, out_w)}")
    (grad,) = torch.autograd.grad(out[:, :, row, col].sum(), x)
    centre = (_proportional(row, out_h, shape[2]), _proportional(col, out_w, shape[3]))
    return CoverageMap(grad.abs().sum(dim=(0, 1)).numpy(), centre)


@contextlib.contextmanager
def _reachability(model: nn.Module) -> Iterator[None]:
    """Keep a linearised network's numbers of order one without changing which input
    positions reach which outputs.

    Every leaf module's output is divided by its own (detached) maximum in the forward pass
    and its gradient replaced by ``gradient != 0`` in the backward pass: positive
    rescalings, so the zero pattern is kept, while dense sums cannot overflow (the music
    model reaches 1e13 otherwise) nor products of many ``1/fan_in`` weights underflow.
    """
    def binarise(grad: Tensor) -> Tensor:
        return (grad != 0).to(grad.dtype)

    def hook(_module, _inputs, output):
        if not (isinstance(output, Tensor) and output.requires_grad
                and output.is_floating_point()):
            return None
        output = output / output.detach().abs().amax().clamp_min(1e-30)
        output.register_hook(binarise)
        return output

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if next(m.children(), None) is None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _proportional(index: int, out_size: int, in_size: int) -> int:
    """Input index whose pixel centre lies where output pixel ``index``'s centre does."""
    return min(in_size - 1, max(0, int(round((index + 0.5) * in_size / out_size - 0.5))))


# ----------------------------------------------------------------------------- D2 blocks

def analyze_d2_block(num_layers: int, dilation: str = "multi", growth_rate: int = 1,
                     in_channels: int = 1, kernel_size: int = 3, two_d: Optional[bool] = None,
                     progress: bool = False) -> D2Report:
    """Per-convolution coverage of a fresh ``D2Block(in_channels, growth_rate, num_layers,
    dilation)``; see :func:`analyze_block`."""
    if num_layers < 1:
        raise D3NetError(f"a D2 block needs at least one layer, got {num_layers}")
    block = D2Block(in_channels, growth_rate, num_layers, dilation, kernel_size=kernel_size)
    return analyze_block(block, two_d=two_d, progress=progress)


def analyze_block(block: D2Block, two_d: Optional[bool] = None,
                  progress: bool = False) -> D2Report:
    """Coverage of the block input seen by every (layer, source) convolution of ``block``.

    A path's coverage is the gradient of its channel group at the centre position with
    respect to the block input; paths are analysed as a batch (one input copy each, one
    backward pass per chunk), plus one entry for the block's output (the overall field).
    The window is sized from the block's dilations plus a margin, and the measured fields
    are checked not to reach its edge. ``two_d=None`` analyses a square window when it is
    at most ``MAX_SQUARE_WINDOW`` wide, else a one-row strip (the 1-D setting of Fig. 3).
    """
    width = 2 * (_max_reach(block) + WINDOW_MARGIN) + 1
    if two_d is None:
        two_d = width <= MAX_SQUARE_WINDOW
    height = width if two_d else 1
    centre = (height // 2, width // 2)
    model = linearize(block).float()

    k = block.growth_rate
    r = _kernel_radius(block)
    # (layer, source, dilation, first channel); source None = the block output
    jobs = [(layer, source, dil, group * k) for layer, source, dil, group in _paths(block)]
    jobs.append((block.num_layers, None, 0, 0))

    widest = max(block.in_channels, k * block.num_layers, block.out_channels)
    per_chunk = max(1, BATCH_ELEMENTS // (widest * height * width))
    chunks = [jobs[i:i + per_chunk] for i in range(0, len(jobs), per_chunk)]
    gradients: List[np.ndarray] = []
    for chunk in tqdm(chunks, desc="receptive field", unit="chunk", disable=not progress,
                      leave=False):
        gradients.extend(_chunk_coverage(model, chunk, block.in_channels, height, width,
                                         centre))

    maps = [CoverageMap(g, centre) for g in gradients]
    for cov in maps:
        _check_inside_window(cov)
    paths = [PathCoverage(layer, source, dil, cov, taps=tuple(j * dil for j in range(-r, r + 1)))
             for (layer, source, dil, _), cov in zip(jobs[:-1], maps[:-1])]
    return D2Report(block.num_layers, block.dilation, 2 * r + 1, paths, maps[-1], two_d)


def _chunk_coverage(model: D2Block, chunk, in_channels: int, height: int, width: int,
                    centre: Tuple[int, int]) -> List[np.ndarray]:
    """Batch entry ``b`` of the input carries job ``b``'s gradient only: the entries never
    mix, so one backward pass gives every job's coverage."""
    captured: List[Tensor] = []
    hooks = [unit.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for unit in block_units(model)]
    x = torch.ones(len(chunk), in_channels, height, width, requires_grad=True)
    try:
        with _reachability(model):
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    k = model.growth_rate
    row, col = centre
    # One "seed" per tensor (each unit's output and the block output), so that the
    # backward pass costs the same however many jobs the chunk holds.
    outputs = captured + [out]
    seeds = [torch.zeros_like(t) for t in outputs]
    for b, (_, source, _, first) in enumerate(chunk):
        if source is None:
            seeds[-1][b, :, row, col] = 1
        else:
            seeds[source][b, first:first + k, row, col] = 1
    used = [i for i, seed in enumerate(seeds) if seed.any()]
    (grad,) = torch.autograd.grad([outputs[i] for i in used], x,
                                  grad_outputs=[seeds[i] for i in used])
    return list(grad.abs().sum(dim=1).numpy())


def block_units(block: D2Block) -> List[nn.Module]:
    """The convolution units of a D2 block in source order: unit ``i`` reads ``x_i``."""
    return [block.initial, *block.stages]


def _unit_convs(unit: nn.Module) -> List[nn.Conv2d]:
    """The ``nn.Conv2d`` modules of a BN-ReLU-conv unit (several in ``"standard"`` mode)."""
    conv = unit.conv
    return list(conv.convs) if isinstance(conv, MultiDilationConv2d) else [conv]


def _kernel_radius(block: D2Block) -> int:
    return _unit_convs(block.initial)[0].kernel_size[1] // 2


def _paths(block: D2Block) -> List[Tuple[int, int, int, int]]:
    """``(layer, source, dilation, channel group)`` of every path, sorted by layer, source."""
    paths = []
    for source, unit in enumerate(block_units(block)):
        receivers = range(source + 1, block.num_layers + 1)
        for group, (layer, dil) in enumerate(zip(receivers,
                                                 _group_dilations(unit, len(receivers)))):
            paths.append((layer, source, dil, group))
    return sorted(paths)


def _group_dilations(unit: nn.Module, groups: int) -> List[int]:
    """Dilation of each receiving layer's channel group of a BN-ReLU-conv unit."""
    convs = _unit_convs(unit)
    if len(convs) == 1:
        return [convs[0].dilation[1]] * groups
    if len(convs) != groups:
        raise RuntimeError(f"expected {groups} convolutions, found {len(convs)}")
    return [c.dilation[1] for c in convs]


def _max_reach(block: D2Block) -> int:
    """Field radius of the block's last layer: ``reach[l] = max over sources i of reach[i] +
    r * dilation(i -> l)``, ``reach[0] = 0``. Only sizes the analysis window."""
    r = _kernel_radius(block)
    reach = [0] * (block.num_layers + 1)
    for layer, source, dil, _ in _paths(block):  # sources are complete before their layer
        reach[layer] = max(reach[layer], reach[source] + r * dil)
    return reach[-1]


def _check_inside_window(coverage: CoverageMap) -> None:
    covered = coverage.covered
    height, width = covered.shape
    if covered[:, 0].any() or covered[:, -1].any() or \
            (height > 1 and (covered[0].any() or covered[-1].any())):
        raise RuntimeError("the receptive field reaches the edge of the analysis window; "
                           "the window size estimate is wrong")


# ----------------------------------------------------------------------------- plotting
# matplotlib is imported by the plotting functions only (start-up time: 'd3net --help'
# imports this module).

def plot_format(path: PathLike) -> str:
    """The image format ``path``'s extension names; D3NetError when matplotlib cannot write it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = Path(path).suffix.lower().lstrip(".")
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise D3NetError(f"cannot save a plot as {Path(path).name!r}: use one of "
                         f"{', '.join('.' + f for f in sorted(supported))}")
    return fmt


def plot_coverage(reports: Union[D2Report, Sequence[D2Report]], path: PathLike,
                  title: Optional[str] = None) -> Path:
    """Draw the per-convolution coverage like paper Fig. 3 and save it atomically.

    One panel per report (side by side, e.g. one per dilation mode), one row per
    (layer, source) convolution plus a last row for the block's overall field. Along the
    centre row of the input: covered positions shaded, blind spots in red, the
    convolution's kernel taps as black dots. The format follows ``path``'s extension
    (png, pdf, svg, ...).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    reports = [reports] if isinstance(reports, D2Report) else list(reports)
    if not reports:
        raise D3NetError("nothing to plot: no report given")
    path = Path(path)
    fmt = plot_format(path)
    reach = max(max(abs(s) for s in (r.overall.span or (0, 0))) for r in reports) + 1
    rows = max(len(r.paths) for r in reports) + 1
    fig = Figure(figsize=(max(4.0, 5.0 * len(reports)), 1.3 + 0.32 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(reports), squeeze=False)[0]
    # 0 outside the field, 1 covered, 2 blind spot
    colours = ListedColormap(["white", "#9ecae1", "#d62728"])
    for ax, report in zip(axes, reports):
        entries = [(f"layer {p.layer} \u2190 {p.source_name} (d={p.dilation})", p.coverage,
                    p.taps) for p in report.paths]
        entries.append((f"layer {report.num_layers}: overall", report.overall, ()))
        image = np.zeros((len(entries), 2 * reach + 1))
        for row, (_, cov, taps) in enumerate(entries):
            span = cov.span
            if span is None:
                continue
            offsets = np.arange(-reach, reach + 1)
            columns = offsets + cov.centre[1]
            valid = (columns >= 0) & (columns < cov.profile.size)
            profile = np.zeros(offsets.size, dtype=bool)
            profile[valid] = cov.profile[columns[valid]] > 0
            inside = (offsets >= span[0]) & (offsets <= span[1])
            image[row] = np.where(profile, 1, np.where(inside, 2, 0))
        ax.imshow(image, cmap=colours, vmin=0, vmax=2, aspect="auto", interpolation="nearest",
                  extent=(-reach - 0.5, reach + 0.5, len(entries) - 0.5, -0.5))
        for row, (_, _, taps) in enumerate(entries):
            if taps:
                ax.scatter(taps, [row] * len(taps), s=10, c="black", zorder=3)
        ax.axhline(len(entries) - 1.5, color="black", linewidth=0.8)
        ax.set_yticks(range(len(entries)))
        ax.set_yticklabels([label for label, _, _ in entries], fontsize=7)
        ax.set_xlabel("input offset")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        blind = len(report.blind_paths)
        ax.set_title(f"dilation={report.dilation}: field {report.field}, "
                     f"{blind} of {len(report.paths)} convolutions with blind spots", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.legend(handles=[Patch(color=colours(1), label="seen"),
                        Patch(color=colours(2), label="blind spot"),
                        Line2D([], [], marker="o", color="black", linestyle="none",
                               markersize=3, label="kernel taps")],
               loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150)
    return path
