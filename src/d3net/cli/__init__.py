"""Command-line interface: ``d3net <command> ...``.

Each subcommand lives in its own small module under ``d3net.cli`` exposing
``register(subparsers)``; the modules only parse arguments and call the library.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from ..errors import D3NetError

#: The environment variable that replaces ``--model`` (read in :func:`model_spec` only).
MODEL_ENV = "D3NET_MODEL"
#: task -> (what it is called, the forms ``--model`` takes for it)
_MODEL_FORMS = {
    "mss": ("music separation",
            "a weight name (official-mss, demo; see 'd3net weights list'), a separation model "
            "folder (<target>.safetensors files, e.g. a 'd3net train mss' run folder), one "
            "model file (.safetensors) or official .h5 file"),
    "seg": ("segmentation",
            "a weight name (official-d3net-s, official-d3net-l; see 'd3net weights list'), a "
            "model file (.safetensors), a folder holding model.safetensors (e.g. a 'd3net "
            "train seg' run folder) or an official .h5 file"),
}


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or informational output")


def add_device_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The one ``--device`` option; ``note`` adds to its help (e.g. how torchrun picks)."""
    parser.add_argument("--device", metavar="DEVICE",
                        help=f"cpu, cuda, cuda:N (default: cuda when available{note})")


def add_model_option(parser: argparse.ArgumentParser, task: str,
                     default: Optional[str] = None) -> None:
    """The one ``--model`` option (same wording in every command); read it with
    :func:`model_spec`. ``default`` is used when neither ``--model`` nor ``$D3NET_MODEL``
    is given (``None``: the option is required)."""
    kind, forms = _MODEL_FORMS[task]
    parser.add_argument("--model", metavar="M",
                        help=f"{kind} model: {forms} (default: ${MODEL_ENV}, else "
                             f"{default or 'none: required'})")
    parser.set_defaults(model_task=task, model_default=default)


def model_spec(args: argparse.Namespace) -> str:
    """``--model``, else ``$D3NET_MODEL``, else the command's default; checked now (cheaply:
    no download, no weights read) so that a wrong model fails before any work.

    Raises:
        D3NetError: no model given; the model does not exist or is of the other task (the
            sentence of :func:`d3net.models.wrong_task`, the same in every command).
    """
    task = args.model_task
    spec = args.model or os.environ.get(MODEL_ENV) or args.model_default
    if not spec:
        kind, forms = _MODEL_FORMS[task]
        raise D3NetError(f"no {kind} model given: pass --model M ({forms}) or set {MODEL_ENV}")
    from ..models import resolve  # imports torch: only once a command runs
    resolve(spec, task)
    return spec


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
    "weights",
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
    except (D3NetError, OSError) as exc:  # OSError: e.g. a disk that fills up mid-run
        print(f"d3net {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d3net {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
