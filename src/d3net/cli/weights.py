"""``d3net weights list|fetch|path``: the named pretrained weights and their cache."""
from __future__ import annotations

import argparse

from ..errors import D3NetError
from . import add_quiet

# The library is imported when a command runs (start-up time: 'd3net --help' builds all parsers)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "weights", help="list, pre-fetch or locate the named pretrained weights",
        description="Named weights (official-mss, official-d3net-s, ...) are fetched, "
                    "verified, converted and cached on first use; these commands show and "
                    "manage that cache ($D3NET_HOME/weights, default ~/.cache/d3net/weights; "
                    "$D3NET_WEIGHTS_MIRROR replaces the official download location).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    listing = sub.add_parser("list", help="every name with its task, status, size and source",
                             description="Show every weight name: task, whether it is cached, "
                                         "its size, the released figure and where it comes "
                                         "from.")
    listing.add_argument("-v", "--verbose", action="store_true",
                         help="also each entry's description, dataset, released figure, "
                              "licence note and where it is cached")
    add_quiet(listing)
    listing.set_defaults(func=run_list)

    fetch = sub.add_parser("fetch", help="download, verify, convert and cache now (for "
                                         "machines that go offline later)",
                           description="Fetch the named weights now, so that later runs need "
                                       "no network. Prints where each one lives.")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="weight names")
    add_quiet(fetch)
    fetch.set_defaults(func=run_fetch)

    path = sub.add_parser("path", help="print where a fetched weight set lives",
                          description="Print what to pass as --model: the folder of a "
                                      "separation set, the model file of a segmentation "
                                      "model. Fails when it has not been fetched yet.")
    path.add_argument("name", metavar="NAME", help="weight name")
    add_quiet(path)
    path.set_defaults(func=run_path)


def run_list(args: argparse.Namespace) -> int:
    from ..models import hub
    from ..models.weights import WEIGHTS

    rows = [("NAME", "TASK", "STATUS", "SIZE", "RELEASED", "SOURCE")]
    for weights in WEIGHTS.values():
        status = ("bundled" if weights.bundled is not None
                  else "cached" if hub.is_cached(weights) else "not cached")
        if status == "not cached":
            size = f"~{weights.download_mb:.0f} MB" if weights.download_mb else "?"
        else:
            nbytes = sum(f.stat().st_size for f in hub.folder(weights).iterdir() if f.is_file())
            size = f"{nbytes / 1e6:.0f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.0f} kB"
        source = hub.download_url(weights) or weights.source
        released = weights.released.split(" (")[0]
        rows.append((weights.name, weights.task, status, size, released, source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if args.verbose:
        for weights in WEIGHTS.values():
            print(f"\n{weights.name}: {weights.description}\n"
                  f"  task: {weights.task}; dataset: {weights.dataset}\n"
                  f"  released: {weights.released}\n"
                  f"  licence: {weights.licence}\n"
                  f"  source: {weights.source}\n"
                  f"  location: {hub.folder(weights)}")
    if not args.quiet:
        print(f"cache: {hub.weights_dir()}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..models import hub
    from ..models.weights import get_weights

    entries = [get_weights(name) for name in args.names]  # unknown names fail first
    for weights in entries:
        print(hub.fetch(weights, progress=not args.quiet))
    return 0


def run_path(args: argparse.Namespace) -> int:
    from ..models import hub
    from ..models.weights import get_weights

    weights = get_weights(args.name)
    if not hub.is_cached(weights):
        raise D3NetError(f"{weights.name} is not fetched yet (it would live in "
                         f"{hub.model_path(weights)}); run 'd3net weights fetch {weights.name}'")
    print(hub.model_path(weights))
    return 0
