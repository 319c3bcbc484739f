"""Source separation scores (museval's BSSEval v4 or a plain numpy SDR) and Table-4 summaries.

Two scorers (:func:`score_track`):

* ``"museval"``: BSSEval v4 (``museval.evaluate``, "images" metrics), the metric MUSDB18
  results are reported in. As in the official D3Net evaluation (``museval.eval_mus_track``
  on the four estimates) the sources are scored together, and ``accompaniment`` together
  with ``vocals`` (museval's vocals/accompaniment scenario). A vocals estimate alone (a
  vocals-only model) has no interferer (no SIR), so it takes its scores from that pair.
  Results record who was scored with whom (``"scenarios"``); :func:`format_table` says so.
  museval imports ``stempeg``, which raises when no ``ffmpeg`` binary is on the PATH:
  :func:`museval_problem` says why museval cannot be used.
* ``"own"``: per frame ``10 log10(||s||^2 / ||s - s_hat||^2)`` summed over channels (a tiny
  ``eps`` keeps a perfect estimate finite). BSSEval v4's "images" SDR is exactly this ratio
  (its distortion filters only split the error into spatial, interference and artifact
  parts), so both scorers give the same SDR up to rounding; SIR, ISR and SAR are NaN. It
  is fast, where museval solves a ``(sources x channels x 512)``-square system per source.

Frames follow museval: ``floor((samples - win) / hop) + 1`` full windows (one window when
the track is shorter than ``win``). A frame is NaN for all sources scored together when
any of their references or estimates is silent in it; medians ignore NaN frames. A target
silent over the whole track (BSSEval refuses it; an untrained model may output zeros) is
scored alone with the own SDR (0 dB for a silent estimate).

Caveat: on band-limited, noise-free synthetic references museval's least-squares filters
are ill-conditioned, so its SIR / ISR / SAR can be meaningless there while its SDR stays
exact.

Per-track files are museval's JSON format (values rounded to 5 decimals, NaN for undefined
frames) with extra top-level keys (``scorer``, ``track``, ``sample_rate``, ...); museval's
``EvalStore`` and :func:`load_track_json` both read them.
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from d3net import __version__
from d3net.configs import ACCOMPANIMENT, TARGETS
from d3net.errors import D3NetError
from d3net.utils import PathLike, atomic_path

METRICS = ("SDR", "SIR", "ISR", "SAR")
COLUMNS = TARGETS + ("accompaniment", "average")
"""Summary columns; ``average`` is the mean of the four sources' medians (paper Table 4)."""
_HEADERS = {"vocals": "Vocals", "drums": "Drums", "bass": "Bass", "other": "Other",
            "accompaniment": "Acco.", "average": "Avg."}
_OWN_EPS = 1e-10


@functools.lru_cache(maxsize=1)
def museval_problem() -> str | None:
    """``None`` when museval imports, else one line saying why not and what to do."""
    try:
        import museval  # noqa: F401
    except ImportError as error:
        return (f"museval is not installed ({error}): pip install 'd3net[eval]' "
                "(it also needs an ffmpeg binary)")
    except Exception as error:  # stempeg raises at import time when ffmpeg is missing
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (f"museval cannot be imported ({type(error).__name__}: {first}); it needs an "
                "ffmpeg binary on the PATH (e.g. apt-get install ffmpeg)")
    return None


def _museval_version() -> str:
    try:
        return version("museval")
    except Exception:  # not installed: the JSON still says which scorer was used
        return "n/a"


def scorer_version(scorer: str) -> str:
    """The version of the code behind a scorer: museval's for ``"museval"``, d3net's for
    ``"own"`` (recorded with per-track results so that they are reused only alike)."""
    if scorer == "museval":
        return f"museval {_museval_version()}"
    return f"d3net {__version__}"


def resolve_scorer(scorer: str = "auto") -> tuple[str, str | None]:
    """``(scorer, note)``: the scorer to use and, when ``auto`` falls back to the own SDR,
    one line saying why.

    Raises:
        D3NetError: an unknown scorer, or ``"museval"`` when museval cannot be imported.
    """
    if scorer not in ("auto", "museval", "own"):
        raise D3NetError(f"scorer must be 'auto', 'museval' or 'own', got {scorer!r}")
    problem = museval_problem() if scorer != "own" else None
    if scorer == "museval" and problem:
        raise D3NetError(problem)
    if scorer == "auto":
        if problem:
            return "own", (f"{problem}; scoring with d3net's own SDR instead (SIR, ISR and SAR "
                           "are not computed; figures are close to, not equal to, museval's)")
        return "museval", None
    return scorer, None


def _frames(samples: int, win: int, hop: int) -> list[slice]:
    if win >= samples:
        return [slice(0, samples)]
    count = (samples - win) // hop + 1
    return [slice(i * hop, i * hop + win) for i in range(count)]


def own_sdr(reference: np.ndarray, estimate: np.ndarray, win: int, hop: int) -> np.ndarray:
    """Framewise SDR in dB of one ``(channels, samples)`` estimate; NaN where the
    reference frame is silent.

    The estimate is padded with zeros or cut to the reference's length (as in
    :func:`score_track`); ``win`` and ``hop`` are in samples.

    Raises:
        D3NetError: arrays that are not ``(channels, samples)``, different channel counts.
    """
    reference = _audio(reference, "reference")
    estimate = _fit(_audio(estimate, "estimate"), reference, "estimate")
    values = []
    for frame in _frames(reference.shape[-1], win, hop):  # both float64 (_audio)
        energy = float(np.sum(reference[:, frame] ** 2))
        error = float(np.sum((reference[:, frame] - estimate[:, frame]) ** 2))
        values.append(math.nan if energy == 0.0 else
                      10.0 * math.log10((energy + _OWN_EPS) / (error + _OWN_EPS)))
    return np.array(values)


def _audio(value, what: str) -> np.ndarray:
    """A float64 ``(channels, samples)`` array (1-D = mono), or a D3NetError."""
    array = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if array.ndim != 2:
        raise D3NetError(f"{what}: expected a (channels, samples) array, got shape {array.shape}")
    return array


def _fit(estimate: np.ndarray, reference: np.ndarray, what: str) -> np.ndarray:
    """``estimate`` padded with zeros or cut to the reference's length."""
    if estimate.shape[0] != reference.shape[0]:
        raise D3NetError(f"{what} has {estimate.shape[0]} channels, the reference "
                         f"{reference.shape[0]}")
    length = reference.shape[1]
    if estimate.shape[1] < length:
        return np.pad(estimate, ((0, 0), (0, length - estimate.shape[1])))
    return estimate[:, :length]


def _prepare(references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray],
             accompaniment: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Matching float64 ``(channels, samples)`` arrays for the targets present in both:
    estimates padded / cut to the reference length first, then the accompaniment derived
    from drums + bass + other where it is missing."""
    refs = {k: _audio(v, f"{k} reference") for k, v in references.items()}
    lengths = {v.shape[1] for v in refs.values()}
    if len(lengths) > 1:
        raise D3NetError("references have different lengths " + ", ".join(
            f"{k} {v.shape[1]}" for k, v in refs.items()))
    ests = {}
    for name, value in estimates.items():
        estimate = _audio(value, f"{name} estimate")
        ests[name] = _fit(estimate, refs[name], f"the {name} estimate") if name in refs \
            else estimate
    if accompaniment:
        for what, store in (("references", refs), ("estimates", ests)):
            if "accompaniment" not in store and all(p in store for p in ACCOMPANIMENT):
                shapes = {store[p].shape for p in ACCOMPANIMENT}
                if len(shapes) > 1:
                    raise D3NetError(f"cannot sum drums, bass and other {what} of shapes "
                                     f"{sorted(shapes)} into the accompaniment")
                store["accompaniment"] = sum(store[p] for p in ACCOMPANIMENT)
    targets = [t for t in ests if t in refs]
    if not targets:
        raise D3NetError(f"no target to score: estimates {sorted(ests)} and references "
                         f"{sorted(refs)} have no name in common")
    return {t: refs[t] for t in targets}, {t: _fit(ests[t], refs[t], f"the {t} estimate")
                                           for t in targets}


def _own_group(refs: dict[str, np.ndarray], ests: dict[str, np.ndarray], names: list[str],
               win: int, hop: int, whole_silence: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Own SDR of sources scored together: as museval, a frame is NaN for all of them
    when any of their references or estimates is silent in it (with ``whole_silence``
    false, only a silent reference frame makes that target's frame NaN)."""
    windows = _frames(next(iter(refs.values())).shape[-1], win, hop)
    silent = np.array([whole_silence and any(not np.any(audio[:, w]) for n in names
                                             for audio in (refs[n], ests[n]))
                       for w in windows], dtype=bool)
    out = {}
    for name in names:
        sdr = own_sdr(refs[name], ests[name], win, hop)
        sdr[silent] = np.nan
        nan = np.full_like(sdr, np.nan)
        out[name] = {"SDR": sdr, "SIR": nan, "ISR": nan, "SAR": nan}
    return out


def _museval_group(refs: dict[str, np.ndarray], ests: dict[str, np.ndarray], names: list[str],
                   win: int, hop: int) -> dict[str, dict[str, np.ndarray]]:
    """BSSEval v4 of sources scored together (none silent everywhere)."""
    import museval  # optional dependency (extra "eval"; needs ffmpeg at import time)

    reference = np.stack([refs[n].T for n in names])   # (sources, samples, channels)
    estimate = np.stack([ests[n].T for n in names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sdr, isr, sir, sar = museval.evaluate(reference, estimate, win=win, hop=hop)
    return {n: {"SDR": sdr[i], "SIR": sir[i], "ISR": isr[i], "SAR": sar[i]}
            for i, n in enumerate(names)}


def score_track(references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray],
                sample_rate: int = 44100, scorer: str = "auto", accompaniment: bool = True,
                win_seconds: float = 1.0, hop_seconds: float = 1.0) -> dict:
    """Score the estimates of one track (see the module docstring).

    Args:
        references: target name -> true ``(channels, samples)`` audio (1-D = mono), all of
            one length.
        estimates: target name -> estimated audio of any length: padded with zeros or cut
            to the reference length before anything else. Targets present in both are
            scored.
        sample_rate: Hz (sets the 1 s window).
        scorer: ``"museval"``, ``"own"`` or ``"auto"`` (museval when it imports, else own).
        accompaniment: derive ``accompaniment = drums + bass + other`` (reference and
            estimate) when it is not given and the three are.
        win_seconds, hop_seconds: frame window and hop (museval's defaults: 1 s, 1 s).

    Returns:
        ``{"scorer": "museval" | "own", "sample_rate", "win", "hop",
        "frames": {target: {metric: list of per-frame dB}},
        "median": {target: {metric: dB}},
        "scenarios": {target: the targets it was scored together with, "+"-joined}}``
        (NaN where undefined).

    Raises:
        D3NetError: an unknown scorer or museval unusable; arrays that are not
            ``(channels, samples)``; references of different lengths; an estimate with
            another channel count than its reference; no target in common.
    """
    scorer, _ = resolve_scorer(scorer)
    refs, ests = _prepare(references, estimates, accompaniment)
    win, hop = int(round(win_seconds * sample_rate)), int(round(hop_seconds * sample_rate))
    if win < 1 or hop < 1:
        raise D3NetError(f"window and hop must be at least one sample, got {win} and {hop}")

    # the sources are scored together; accompaniment together with vocals (museval's
    # vocals/accompaniment scenario). Vocals keep the sources' scores, unless they are
    # the only source: alone they have no interferer, so they take the pair's scores.
    group = [n for n in TARGETS if n in refs] + [
        n for n in refs if n not in TARGETS and n != "accompaniment"]
    pair = ((["vocals"] if "vocals" in refs else []) + ["accompaniment"]
            if "accompaniment" in refs else [])
    if group == ["vocals"] and pair:
        group = []
    groups = [(group, group)] if group else []
    if pair:
        groups.append((pair, [n for n in pair if n not in group]))
    frames: dict[str, dict[str, np.ndarray]] = {}
    scenarios: dict[str, str] = {}
    for members, keep in groups:
        # BSSEval refuses a reference or estimate that is silent everywhere (an untrained
        # model may output zeros): such a target is scored alone with the own SDR
        alone = [n for n in members if not np.any(refs[n]) or not np.any(ests[n])]
        together = [n for n in members if n not in alone]
        scored = {n: _own_group(refs, ests, [n], win, hop, whole_silence=False)[n] for n in alone}
        if together and scorer == "museval":
            scored.update(_museval_group(refs, ests, together, win, hop))
        elif together:
            scored.update(_own_group(refs, ests, together, win, hop))
        frames.update({n: scored[n] for n in keep})
        scenarios.update({n: "+".join(members) for n in keep})

    order = [n for n in COLUMNS if n in frames] + [n for n in frames if n not in COLUMNS]
    result = {"scorer": scorer, "sample_rate": int(sample_rate), "win": win_seconds,
              "hop": hop_seconds, "frames": {}, "median": {},
              "scenarios": {n: scenarios[n] for n in order}}
    for name in order:
        per_metric = {m: np.where(np.isinf(frames[name][m]), np.nan, frames[name][m])
                      for m in METRICS}
        result["frames"][name] = {m: [float(v) for v in per_metric[m]] for m in METRICS}
        result["median"][name] = {m: _nanmedian(per_metric[m]) for m in METRICS}
    return result


def _nanmedian(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else math.nan


def _q(value: float) -> float:
    return round(float(value), 5) if math.isfinite(value) else math.nan


def track_json_path(out_dir: PathLike, track_name: str, subset: str = "test") -> Path:
    """Where museval puts a track's scores: ``out_dir/<subset>/<track>.json``."""
    return Path(out_dir) / subset / f"{track_name}.json"


def save_track_json(path: PathLike, track_name: str, scores: dict) -> Path:
    """Write the result of :func:`score_track` atomically in museval's per-track format."""
    targets = []
    for name, metrics in scores["frames"].items():
        count = len(metrics["SDR"])
        targets.append({"name": name, "frames": [
            {"time": i * scores["hop"], "duration": scores["win"],
             "metrics": {m: _q(metrics[m][i]) for m in ("SDR", "SIR", "SAR", "ISR")}}
            for i in range(count)]})
    document = {"targets": targets, "museval_version": _museval_version(),
                "scorer": scores["scorer"], "track": track_name,
                "sample_rate": scores.get("sample_rate")}
    for key in ("scenarios", "provenance"):  # which sources were scored together; what
        if scores.get(key):                  # produced the estimates (models, options)
            document[key] = scores[key]
    text = json.dumps(document, indent=2)  # undefined frames are written NaN, as museval does
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def load_track_json(path: PathLike) -> dict:
    """Read a per-track JSON (ours or museval's) back into :func:`score_track`'s form."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        frames = {}
        hop = win = 1.0
        for target in document["targets"]:
            rows = target["frames"]
            frames[target["name"]] = {
                m: [math.nan if r["metrics"].get(m) is None else float(r["metrics"][m])
                    for r in rows] for m in METRICS}
            if len(rows) > 1:
                hop = float(rows[1]["time"] - rows[0]["time"])
            if rows:
                win = float(rows[0]["duration"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise D3NetError(f"cannot read scores from {path}: {error}") from None
    return {"scorer": document.get("scorer", "museval"), "track": document.get("track", path.stem),
            "sample_rate": document.get("sample_rate"), "win": win, "hop": hop,
            "frames": frames,
            "median": {t: {m: _nanmedian(v[m]) for m in METRICS} for t, v in frames.items()},
            "scenarios": dict(document.get("scenarios") or {}),
            "provenance": document.get("provenance")}


def load_results(out_dir: PathLike) -> dict[str, dict]:
    """All readable per-track JSON files under ``out_dir``: track name -> scores."""
    results = {}
    for path in sorted(Path(out_dir).rglob("*.json")):
        try:
            results[path.stem] = load_track_json(path)
        except D3NetError:
            continue
    return results


@dataclass
class ScoreTable:
    """Median over frames, then median over tracks, per metric and column.

    ``values[metric][column]`` in dB (NaN where no track has the target); columns are
    :data:`COLUMNS`. ``scenarios[column]``: the sources its target was scored together
    with (``"vocals+accompaniment"``, ...), over the tracks that record it.
    """

    values: dict[str, dict[str, float]]
    num_tracks: int
    scorers: list[str] = field(default_factory=list)
    scenarios: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, metric: str) -> dict[str, float]:
        return self.values[metric]

    def __str__(self) -> str:
        return format_table(self)


def summarize(per_track_scores: Mapping[str, dict] | Iterable[dict]) -> ScoreTable:
    """Aggregate :func:`score_track` results like SiSEC / the paper's Table 4.

    For every target and metric: the median over the frames of a track, then the median
    over the tracks that have the target. ``average`` is the mean of the four sources'
    values (vocals, drums, bass, other; over those present).
    """
    scores = list(per_track_scores.values()) if isinstance(per_track_scores, Mapping) \
        else list(per_track_scores)
    values: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        row = {}
        for column in COLUMNS[:-1]:
            medians = [s["median"][column][metric] for s in scores if column in s["median"]]
            row[column] = _nanmedian(medians)
        present = [row[c] for c in TARGETS if not math.isnan(row[c])]
        row["average"] = float(np.mean(present)) if present else math.nan
        values[metric] = row
    scenarios = {column: sorted({s["scenarios"][column] for s in scores
                                 if column in s.get("scenarios", {})})
                 for column in COLUMNS[:-1]}
    return ScoreTable(values, len(scores), sorted({s.get("scorer", "?") for s in scores}),
                      {column: found for column, found in scenarios.items() if found})


def _cell(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def format_table(table: ScoreTable, metrics: Iterable[str] = ("SDR",)) -> str:
    """A Markdown table like the paper's Table 4: one row per metric (dB)."""
    header = ["Metric (dB)"] + [_HEADERS[c] for c in COLUMNS]
    rows = [[m] + [_cell(table.values[m][c]) for c in COLUMNS] for m in metrics]
    note = (f"median over 1 s frames, then over {table.num_tracks} track"
            f"{'s' if table.num_tracks != 1 else ''}; scorer: {', '.join(table.scorers) or '-'}")
    scenarios = scenario_note(table)
    return _markdown(header, rows) + "\n" + note + ("\n" + scenarios if scenarios else "")


def scenario_note(table: ScoreTable) -> str:
    """One line saying which sources each column was scored together with, e.g.
    ``scored together: vocals+drums+bass+other for Vocals, Drums, Bass, Other;
    vocals+accompaniment for Acco.``; empty when the results do not record it."""
    by_scenario: dict[str, list[str]] = {}
    for column in COLUMNS[:-1]:
        for scenario in table.scenarios.get(column, ()):
            by_scenario.setdefault(scenario, []).append(_HEADERS[column])
    if not by_scenario:
        return ""
    note = "scored together: " + "; ".join(
        f"{scenario} for {', '.join(columns)}" for scenario, columns in by_scenario.items())
    if "vocals+accompaniment" in table.scenarios.get("vocals", ()):
        note += (" (vocals without the other three sources are scored against the "
                 "accompaniment: museval's vocals/accompaniment scenario)")
    return note


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *[line(r) for r in rows]])


__all__ = [
    "METRICS", "COLUMNS", "museval_problem", "own_sdr", "score_track",
    "track_json_path", "save_track_json", "load_track_json", "load_results",
    "ScoreTable", "summarize", "format_table", "scenario_note",
    "scorer_version", "resolve_scorer",
]
