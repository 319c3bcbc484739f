"""``d3net receptive-field``: per-convolution coverage of a D2 block (paper Fig. 3)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from ..errors import D3NetError
from ..nn import DILATION_MODES
from ..receptive_field import D2Report, analyze_d2_block, plot_coverage, plot_format
from ..utils import check_writable
from . import add_quiet

MAX_LAYERS = 12


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "receptive-field",
        help="blind spots and receptive field of a D2 block per dilation mode",
        description="For every convolution of one D2 block, which positions of the block "
                    "input its output sees (input gradients on a linearised copy); blind "
                    "spots are unseen positions inside its field (paper Fig. 3). Prints a "
                    "table per dilation mode and the block's overall receptive field.")
    parser.add_argument("--layers", type=int, default=4,
                        help=f"layers in the D2 block, 1..{MAX_LAYERS} (default 4)")
    parser.add_argument("--dilation", default="all", choices=DILATION_MODES + ("all",),
                        help="multi (the paper), standard (naive: every contribution to a "
                             "layer uses its largest dilation), none, or all (default)")
    parser.add_argument("--plot", metavar="FILE",
                        help="save a Fig. 3-like plot (format from the extension, e.g. .png)")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.layers <= MAX_LAYERS:
        raise D3NetError(f"--layers must be between 1 and {MAX_LAYERS}, got {args.layers}")
    if args.plot is not None:       # a bad extension or an unwritable folder fails
        plot_format(args.plot)      # before the analysis runs
        check_writable(Path(args.plot).parent)
    modes = DILATION_MODES if args.dilation == "all" else (args.dilation,)
    reports = [analyze_d2_block(args.layers, mode, progress=not args.quiet) for mode in modes]
    if not args.quiet:
        for report in reports:
            print(format_table(report))
            print()
    print(format_summary(reports))
    if args.plot:
        path = plot_coverage(reports, args.plot,
                             title=f"D2 block, {args.layers} layers, 3x3 kernels")
        if not args.quiet:
            print(f"plot saved to {path}")
    return 0


def format_table(report: D2Report) -> str:
    """One row per convolution: receiving layer, source, dilation, field, blind spots."""
    window = "2-D window" if report.two_d else "1-D strip"
    lines = [f"dilation={report.dilation}: D2 block of {report.num_layers} layers, "
             f"{report.kernel_size}x{report.kernel_size} kernels ({window})",
             f"{'layer':>5}  {'source':<8}  {'dilation':>8}  {'field':>5}  "
             f"{'blind spots':>11}" + ("  (2-D)" if report.two_d else "")]
    for path in report.paths:
        row = (f"{path.layer:>5}  {path.source_name:<8}  {path.dilation:>8}  {path.field:>5}  "
               f"{path.blind_spots:>11}")
        if report.two_d:
            row += f"  {path.blind_spots_2d:>5}"
        lines.append(row)
    lines.append(f"overall field {report.field} (analytic {report.expected_field}); "
                 f"{len(report.blind_paths)} of {len(report.paths)} convolutions have "
                 "blind spots")
    return "\n".join(lines)


def format_summary(reports: List[D2Report]) -> str:
    """One line per dilation mode: overall field and convolutions with blind spots."""
    lines = [f"{'dilation':<9}  {'layers':>6}  {'overall field':>13}  "
             "convolutions with blind spots"]
    for report in reports:
        lines.append(f"{report.dilation:<9}  {report.num_layers:>6}  {report.field:>13}  "
                     f"{len(report.blind_paths)}/{len(report.paths)}")
    return "\n".join(lines)
