"""Command-line interface: ``d3net <command> ...``.

Each subcommand lives in its own small module under ``d3net.cli`` exposing
``register(subparsers)``; the modules only parse arguments and call the library.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import D3NetError


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or informational output")

# module name under d3net.cli -> registers one or more subcommands
COMMAND_MODULES = [
    "summary",
    "convert",
    "export",
    "separate",
    "segment",
    "train",
    "evaluate",
    "data",
    "demo",
    "receptive_field",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d3net",
        description="D3Net: music source separation and semantic segmentation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except D3NetError as exc:
        print(f"d3net {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk that fills up or goes away mid-run: one line, no traceback
        print(f"d3net {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"d3net {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
