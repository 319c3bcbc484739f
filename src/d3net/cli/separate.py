"""``d3net separate``: songs in, one audio file per estimated source out."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..errors import D3NetError
from . import add_device_option, add_model_option, add_quiet, model_spec

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)

#: What ``d3net separate`` uses without ``--model`` or ``$D3NET_MODEL``.
DEFAULT_MODEL = "official-mss"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "separate", help="separate songs into vocals, drums, bass and other",
        description="Separate audio files. Writes OUTDIR/<input name>/<target>.<format> at the "
                    "input's sample rate, length and channel count.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files (wav, flac, ogg; "
                   "mp3, m4a, .stem.mp4 with ffmpeg installed)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder")
    add_model_option(p, "mss", default=DEFAULT_MODEL)
    p.add_argument("--targets", help="comma-separated subset of the model's targets")
    add_device_option(p)
    p.add_argument("--wiener-iterations", type=int, default=1, metavar="N",
                   help="0 = no filter, 1 = the official filter (default), more = EM iterations")
    p.add_argument("--no-flip", action="store_true",
                   help="skip the channel-flip averaging (twice as fast, slightly worse)")
    p.add_argument("--compat", choices=["official"], default=None,
                   help="reproduce the official implementation's arithmetic (its overlap-add "
                   "normalisation, PyTorch's native float32 CPU kernels)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="network arithmetic: auto (default: bfloat16 on CPUs with AVX-512 BF16 "
                   "or AMX and on GPUs with native bfloat16, float32 elsewhere), float32, or "
                   "bfloat16 (~1e-3 relative change)")
    p.add_argument("--backend", choices=["auto", "torch", "openvino"], default="auto",
                   help="what runs the networks: auto (default: OpenVINO on CPU when installed, "
                   "else PyTorch), torch, or openvino (CPU; pip install 'd3net[openvino]')")
    p.add_argument("--fast", action="store_true",
                   help="fast mode: no channel flip, patches without overlap (about 4x fewer "
                   "network runs; slightly lower quality, see the README)")
    p.add_argument("--overlap", type=float, default=None, metavar="FRACTION",
                   help="fraction of a patch shared with the next one (default: 0.5, the "
                   "official half-patch shift; 0 with --fast); 0, 0.5 or 0.75")
    p.add_argument("--accompaniment", action="store_true",
                   help="also write accompaniment (drums+bass+other, or the residual)")
    p.add_argument("--format", choices=["wav", "flac"], default="wav")
    p.add_argument("--bits", type=int, choices=[16, 24, 32], default=16,
                   help="16/24-bit PCM, or 32 = 32-bit float WAV, which keeps any level "
                   "(FLAC: 16 or 24; default 16)")
    p.add_argument("--clip-mode", choices=["rescale", "clamp"], default="rescale",
                   help="stems above full scale in 16/24-bit output: rescale = one gain for "
                   "all stems of the song so the loudest fits (default; the stems still add "
                   "up), clamp = clip the samples; either way a warning names the stem")
    p.add_argument("--batch-size", type=int, default=None,
                   help="network inputs per call, flipped copies included (default: 1 on CPU, "
                   "where it is fastest, 16 on GPU)")
    add_quiet(p)
    p.set_defaults(func=run)


def output_name(path: Path) -> str:
    name = path.name
    for suffix in (".stem.mp4", ".stem.m4a"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_folders(inputs: list[Path], out_root: Path, fmt: str) -> dict[Path, Path]:
    """Each input's output folder ``OUTDIR/<name>``, refusing, before any work, two inputs
    that share a folder (``a/song.wav``, ``b/song.wav``, ``song.flac``) and an input that
    one of the stems written into a folder would overwrite (``out/x/vocals.wav -o out``)."""
    from ..configs import TARGETS
    from ..utils import check_unique_outputs

    check_unique_outputs(((path, str(out_root / output_name(path))) for path in inputs),
                         hint="rename one, or separate them with different -o folders")
    folders = {path: out_root / output_name(path) for path in inputs}
    stem_files = {f"{name}.{fmt}" for name in TARGETS + ("accompaniment",)}
    by_folder = {os.path.realpath(folder): path for path, folder in folders.items()}
    for other in inputs:
        if other.name in stem_files and os.path.realpath(other.parent) in by_folder:
            source = by_folder[os.path.realpath(other.parent)]
            raise D3NetError(f"{other}: separating {source} into {other.parent} would "
                             "overwrite this input; choose another -o folder")
    return folders


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..audio import io as audio_io
    from ..separate import OutputLevelWarning, Separator
    from ..utils import check_writable, resolve_device

    audio_io.check_output_format(args.format, args.bits, args.clip_mode)
    inputs = list(dict.fromkeys(Path(p) for p in args.inputs))
    for path in inputs:  # a typo should not cost a long run first
        if not path.is_file():
            raise D3NetError(f"{path}: no such file")
    out_root = Path(args.out)
    folders = output_folders(inputs, out_root, args.format)
    check_writable(out_root, *folders.values())
    count, failures = len(inputs), []

    def skip(message: str) -> None:
        if count == 1:
            raise D3NetError(message) from None
        failures.append(message)
        tqdm.write(f"d3net separate: skipped {message}", file=sys.stderr)

    for path in list(inputs):  # unreadable inputs are refused before the networks load
        try:
            audio_io.probe(path)
        except D3NetError as error:
            skip(str(error))
            inputs.remove(path)
    if not inputs:
        raise D3NetError(f"none of the {count} inputs is readable audio (see above)")
    model = model_spec(args)
    device = resolve_device(args.device)
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    separator = Separator.from_pretrained(
        model, device=device, targets=targets, wiener_iterations=args.wiener_iterations,
        channel_flip=False if args.no_flip else None, compat=args.compat,
        batch_size=args.batch_size, precision=args.precision, progress=not args.quiet,
        backend=args.backend, mode="fast" if args.fast else "default", overlap=args.overlap,
        download_progress=not args.quiet)

    for path in tqdm(inputs, desc="songs", unit="song", disable=args.quiet or len(inputs) == 1):
        folder = folders[path]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OutputLevelWarning)
                result = separator.separate_file(
                    path, folder, accompaniment=args.accompaniment, format=args.format,
                    bits=args.bits, clip_mode=args.clip_mode)
        except D3NetError as error:
            skip(str(error) if str(error).startswith(str(path)) else f"{path}: {error}")
            continue
        for warning in caught:  # said even with -q: the output is not what was computed
            if issubclass(warning.category, OutputLevelWarning):
                tqdm.write(f"d3net separate: warning: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno)
        if not args.quiet:
            tqdm.write(f"{path} -> {folder}/ ({', '.join(result.paths)})")
    if failures:
        raise D3NetError(f"{len(failures)} of {count} inputs failed (see above)")
    return 0
