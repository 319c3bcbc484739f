"""Evaluate a separation model on a MUSDB18(-HQ)-layout subset, as SiSEC / Table 4.

Every track is separated with :class:`d3net.separate.Separator` (the official inference),
scored with :func:`d3net.evaluate.sdr.score_track` and summarised as the median over 1 s
frames, then over tracks. Per-track scores are stored with a record of what produced them
(:func:`provenance`), so an interrupted evaluation resumes only with the same models,
options and scorer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import musdb
from ..errors import D3NetError
from ..models import fingerprint, resolve
from ..separate import Separator
from ..utils import PathLike, check_unique_outputs, check_writable, resolve_device
from . import sdr

#: The Separator settings that change the estimates, recorded with every result.
SEPARATION_OPTIONS = ("wiener_iterations", "channel_flip", "compat", "precision", "backend")


@dataclass
class MSSEvaluation:
    """What :func:`evaluate_mss` returns.

    Attributes:
        table: the Table-4 summary (``str(table)`` is a Markdown table).
        tracks: track name -> scores (:func:`d3net.evaluate.sdr.score_track`'s form).
        scorer: ``"museval"`` or ``"own"``.
        skipped: tracks whose scores were read back from ``out_dir`` instead of computed.
        recomputed: tracks whose file in ``out_dir`` came from other models or options and
            was replaced (``overwrite=True``).
    """

    table: sdr.ScoreTable
    tracks: Dict[str, dict]
    scorer: str
    skipped: List[str] = field(default_factory=list)
    recomputed: List[str] = field(default_factory=list)

    def format(self) -> str:
        """The summary table: SDR only with the own scorer, all four metrics with museval."""
        metrics = sdr.METRICS if self.scorer == "museval" else ("SDR",)
        return sdr.format_table(self.table, metrics=metrics)


def provenance(separator, scorer: str) -> dict:
    """What produces a track's scores: ``{"models": {target: fingerprint}, "separation":
    {option: value}, "scorer", "scorer_version", "d3net_version"}`` (JSON-ready).

    ``fingerprint`` is :func:`d3net.models.fingerprint` (config and weights, wherever the
    file came from); ``separation`` holds the :data:`SEPARATION_OPTIONS` the separator has.
    """
    options = {}
    for name in SEPARATION_OPTIONS:
        value = getattr(separator, name, None)
        options[name] = value if value is None or isinstance(value, (bool, int, float, str)) \
            else str(value)
    return {"models": {target: fingerprint(model) for target, model in separator.models.items()},
            "separation": options, "scorer": scorer,
            "scorer_version": sdr.scorer_version(scorer), "d3net_version": __version__}


def _difference(recorded: Optional[dict], current: dict) -> Optional[str]:
    """``None`` when a stored record equals the current one, else what differs (words)."""
    if not recorded:
        return "it holds no record of the model and options that produced it"
    if recorded.get("models") != current["models"]:
        old, new = recorded.get("models") or {}, current["models"]
        if set(old) != set(new):
            return (f"it was produced by other models (targets {'+'.join(sorted(old))} then, "
                    f"{'+'.join(sorted(new))} now)")
        changed = sorted(t for t in new if old[t] != new[t])
        return f"it was produced by other models ({', '.join(changed)}: other weights)"
    for key in ("separation", "scorer", "scorer_version", "d3net_version"):
        if recorded.get(key) != current[key]:
            old, new = recorded.get(key), current[key]
            if isinstance(new, dict) and isinstance(old, dict):
                names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                return "it was produced with other options (" + ", ".join(
                    f"{k} {old.get(k)!r} then, {new.get(k)!r} now" for k in names) + ")"
            what = key.replace("_", " ")
            return f"it was produced with another {what} ({old!r} then, {new!r} now)"
    return None


def evaluate_mss(root: PathLike, model: PathLike, subset: str = "test",
                 out_dir: Optional[PathLike] = None, scorer: str = "auto",
                 progress: bool = True, device: Union[str, torch.device, None] = None,
                 wiener_iterations: int = 1, track_names: Optional[Sequence[str]] = None,
                 log: Optional[Callable[[str], None]] = None,
                 overwrite: bool = False) -> MSSEvaluation:
    """Separate and score every track of ``root/<subset>``.

    Args:
        root: dataset root (MUSDB18-HQ layout, MUSDB18 stem files, or synthetic songs).
        model: a separation model spec: a weight name (``official-mss``, ``demo``), a
            separation model folder (``<target>.safetensors`` for any of the four targets;
            e.g. a training run folder), one model file or official ``.h5`` (see
            :mod:`d3net.models.loading`).
        subset: ``"test"`` (default) or ``"train"``.
        out_dir: where the per-track museval JSON files go (``out_dir/<subset>/``);
            ``None`` writes nothing (and resumes nothing). Files already there are reused
            when their record of what produced them (:func:`provenance`) matches.
        scorer: ``"auto"`` (museval when importable, else own), ``"museval"`` or ``"own"``.
        progress: tqdm bars over tracks and patches.
        device: where the networks run (default: CUDA when available).
        wiener_iterations: 0 = mixture phase only, 1 = the official filter.
        track_names: evaluate only these tracks.
        log: receives informational lines (e.g. which scorer is used); default: none.
        overwrite: recompute and replace the files in ``out_dir`` produced by other models,
            options or scorers instead of refusing them.

    Returns:
        An :class:`MSSEvaluation`.

    Raises:
        D3NetError: a missing model, track or dataset; ``out_dir`` cannot be written; a
            file in ``out_dir`` for one of the tracks was produced by other models or
            options (and ``overwrite`` is false): nothing is separated then.
    """
    say = log or (lambda message: None)
    resolve(model, task="mss")  # a wrong model fails now, before the dataset is read
    tracks = musdb.list_tracks(root, subset)
    if track_names is not None:
        missing = sorted(set(track_names) - {t.name for t in tracks})
        if missing:
            raise D3NetError(f"no track(s) {', '.join(missing)} in {Path(root) / subset}")
        tracks = [t for t in tracks if t.name in set(track_names)]
    used, note = sdr.resolve_scorer(scorer)
    if out_dir is not None:
        # e.g. a folder 'X' next to 'X.stem.mp4', or 'X' and 'x': one JSON file for two tracks
        check_unique_outputs(
            ((t.paths["mixture"], str(sdr.track_json_path(out_dir, t.name, subset)))
             for t in tracks), hint="keep one of them in the dataset")
        check_writable(Path(out_dir) / subset)
    separator = Separator.from_pretrained(model, device=resolve_device(device),
                                          wiener_iterations=wiener_iterations,
                                          download_progress=progress)
    record = provenance(separator, used)
    say(note or f"scoring with {used}")

    done: Dict[str, dict] = {}
    recomputed: List[str] = []
    if out_dir is not None:
        stored = sdr.load_results(Path(out_dir) / subset)
        for track in tracks:
            if track.name not in stored:
                continue
            problem = _difference(stored[track.name].get("provenance"), record)
            if problem is None:
                done[track.name] = stored[track.name]
            elif overwrite:
                recomputed.append(track.name)
            else:
                path = sdr.track_json_path(out_dir, track.name, subset)
                raise D3NetError(f"{path}: not reused because {problem}; pass --overwrite "
                                 "to recompute and replace it, or use another --out folder")
    pending = [t for t in tracks if t.name not in done]
    skipped = list(done)
    if skipped:
        say(f"{len(skipped)} of {len(tracks)} track(s) already scored in {out_dir} by the "
            "same models and options: reused")
    if recomputed:
        say(f"{len(recomputed)} track(s) in {out_dir} were scored by other models or options: "
            "recomputing them")

    results = dict(done)
    for track in tqdm(pending, desc=f"evaluating {subset}", unit="track", disable=not progress):
        results[track.name] = _score_track(separator, track, used, progress, say)
        results[track.name]["provenance"] = record
        if out_dir is not None:
            sdr.save_track_json(sdr.track_json_path(out_dir, track.name, subset),
                                track.name, results[track.name])
    ordered = {t.name: results[t.name] for t in tracks}
    return MSSEvaluation(sdr.summarize(ordered), ordered, used, skipped, recomputed)


def _score_track(separator, track: musdb.MUSDBTrack, scorer: str, progress: bool,
                 say: Callable[[str], None]) -> dict:
    """Separate one track and score the targets the separator estimates."""
    mixture = track.load("mixture")
    separator.progress = progress
    with_accompaniment = "vocals" in separator.targets
    estimates = separator.separate(torch.from_numpy(mixture), track.sample_rate,
                                   accompaniment=with_accompaniment)
    references: Dict[str, np.ndarray] = {}
    for name in estimates:
        reference = track.load(name)
        if not np.any(reference):
            # BSSEval is undefined for a silent source: leave it out of this track's scores
            say(f"track '{track.name}': the {name} reference is silent; not scored")
            continue
        references[name] = reference
    if not references:
        raise D3NetError(f"track '{track.name}': every estimated target is silent in the "
                         "reference; nothing to score")
    estimates_np = {name: estimates[name].cpu().numpy() for name in references}
    return sdr.score_track(references, estimates_np, track.sample_rate, scorer=scorer,
                           accompaniment=False)


__all__ = ["MSSEvaluation", "SEPARATION_OPTIONS", "evaluate_mss", "provenance"]
