"""MUSDB18 / MUSDB18-HQ tracks, the official training sampler and input statistics.

Layouts:

* **MUSDB18-HQ** (and :mod:`d3net.data.synth_music` output):
  ``ROOT/{train,test}/<track>/{mixture,vocals,drums,bass,other}.wav``, read directly
  with soundfile, excerpts by partial reads (the dataset is never loaded whole).
* **MUSDB18**: ``ROOT/{train,test}/<track>.stem.mp4``, read through the optional
  ``musdb`` package (``pip install 'd3net[musdb]'``), which decodes with ffmpeg: an
  ``ffmpeg`` binary must be on the PATH.

Validation split (:func:`list_tracks`): MUSDB18 sets aside 14 of its 100 train tracks
(``validation_tracks`` in musdb's ``mus.yaml``, copied to :data:`VALIDATION_TRACKS`). Other
names (e.g. synthetic songs) are never validation tracks unless ``validation_tracks`` names
them, so ``split="valid"`` is empty on such datasets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from d3net.audio.spectral import stft
from d3net.configs import ACCOMPANIMENT, TARGETS
from d3net.errors import D3NetError
from d3net.utils import PathLike, atomic_path

DATASET_TARGETS = TARGETS + ("accompaniment",)
"""What a dataset item can give as its target: one of the four sources
(:data:`d3net.configs.TARGETS`, whose order the mixture of a sample sums them in), or
``accompaniment`` = drums + bass + other."""
STEM_FILES = ("mixture",) + TARGETS
"""The five files of a MUSDB18-HQ track folder (``<name>.wav``)."""
STEM_IDS = {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4}
"""Substream index of each source in a MUSDB18 ``.stem.mp4`` file."""

VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
"""MUSDB18's official validation tracks (all from the train subset)."""


@dataclass
class MUSDBTrack:
    """One multitrack song whose sources are read on demand.

    Attributes:
        name: track name (folder name, or file name without ``.stem.mp4``).
        subset: ``"train"`` or ``"test"``.
        paths: file of each of ``mixture, vocals, drums, bass, other`` (for a
            ``.stem.mp4`` track all five are the same file).
        sample_rate: Hz, the same for all stems.
        num_samples: length in samples, the same for all stems.
        channels: audio channels, the same for all stems.
    """

    name: str
    subset: str
    paths: dict[str, Path]
    sample_rate: int
    num_samples: int
    channels: int
    stem_file: bool = field(default=False, repr=False)

    def load(self, source: str = "mixture", start: int = 0,
             frames: int | None = None) -> np.ndarray:
        """Read ``frames`` samples of one source from sample ``start`` (partial read).

        Args:
            source: ``mixture``, one of :data:`~d3net.configs.TARGETS`, or ``accompaniment``
                (drums + bass + other).
            start: first sample.
            frames: number of samples; ``None`` reads to the end of the track.

        Returns:
            float32 ``(channels, frames)``.
        """
        if source == "accompaniment":
            return sum(self.load(s, start, frames) for s in ACCOMPANIMENT)
        if source not in self.paths:
            raise D3NetError(f"unknown source {source!r} for track '{self.name}': "
                             f"use mixture, {', '.join(TARGETS)} or accompaniment")
        if frames is None:
            frames = self.num_samples - start
        if start < 0 or frames < 0 or start + frames > self.num_samples:
            raise D3NetError(f"track '{self.name}': cannot read samples [{start}, {start + frames})"
                             f" of a {self.num_samples}-sample track")
        if frames == 0:
            return np.zeros((self.channels, 0), dtype=np.float32)
        if self.stem_file:
            audio = _read_stem_mp4(self, source, start, frames)
        else:
            try:
                audio = sf.read(str(self.paths[source]), start=start, frames=frames,
                                dtype="float32", always_2d=True)[0].T
            except (sf.LibsndfileError, RuntimeError) as error:
                raise D3NetError(f"track '{self.name}': cannot read {self.paths[source]}: "
                                 f"{error}") from None
        if audio.shape[1] != frames:
            raise D3NetError(f"track '{self.name}': {self.paths[source].name} gave "
                             f"{audio.shape[1]} samples where {frames} were expected "
                             "(file changed since the dataset was listed?)")
        return np.ascontiguousarray(audio)


def _read_stem_mp4(track: MUSDBTrack, source: str, start: int, frames: int) -> np.ndarray:
    """Decode part of one substream of a ``.stem.mp4`` through stempeg (ffmpeg)."""
    import stempeg  # installed with musdb; list_tracks has checked it imports

    try:
        audio, _ = stempeg.read_stems(
            str(track.paths[source]), start=start / track.sample_rate,
            duration=frames / track.sample_rate, stem_id=STEM_IDS[source], dtype=np.float32,
            sample_rate=track.sample_rate)
    except Exception as error:  # ffmpeg failures surface as Warning / RuntimeError / ...
        raise D3NetError(f"track '{track.name}': cannot decode {source} from "
                         f"{track.paths[source]}: {error}") from None
    audio = np.asarray(audio, dtype=np.float32).reshape(-1, track.channels).T
    # seeking is by time in ffmpeg: make the length exact
    if audio.shape[1] < frames:
        audio = np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))
    return audio[:, :frames]


def _wav_track(folder: Path, subset: str) -> MUSDBTrack:
    name = folder.name
    paths: dict[str, Path] = {}
    infos = {}
    for stem in STEM_FILES:
        path = folder / f"{stem}.wav"
        if not path.is_file():
            raise D3NetError(f"track '{name}': missing stem '{stem}.wav' in {folder}")
        try:
            infos[stem] = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as error:
            raise D3NetError(f"track '{name}': cannot read stem '{stem}.wav': {error}") from None
        paths[stem] = path
    ref = infos["mixture"]
    for stem in TARGETS:
        info = infos[stem]
        for what, got, want in (("sample rate {} Hz", info.samplerate, ref.samplerate),
                                ("{} samples", info.frames, ref.frames),
                                ("{} channels", info.channels, ref.channels)):
            if got != want:
                raise D3NetError(f"track '{name}': stem '{stem}.wav' has {what.format(got)} "
                                 f"but mixture.wav has {what.format(want)}")
    if ref.frames == 0:
        raise D3NetError(f"track '{name}': mixture.wav is empty")
    return MUSDBTrack(name, subset, paths, int(ref.samplerate), int(ref.frames), int(ref.channels))


def _import_musdb():
    try:
        import musdb  # noqa: F401  (pulls stempeg, which needs ffmpeg at import time)
        import stempeg  # noqa: F401
    except ImportError:
        raise D3NetError("reading MUSDB18 .stem.mp4 files needs the 'musdb' package: "
                         "pip install 'd3net[musdb]' (and an ffmpeg binary), or use the "
                         "MUSDB18-HQ wav folders") from None
    except Exception as error:  # stempeg raises at import when ffmpeg is missing
        raise D3NetError(f"reading MUSDB18 .stem.mp4 files needs an ffmpeg binary on the "
                         f"PATH ({type(error).__name__}: {error})") from None


def _stem_track(path: Path, subset: str) -> MUSDBTrack:
    import stempeg  # optional dependency (extra "musdb")

    name = path.name[: -len(".stem.mp4")]
    try:
        info = stempeg.Info(str(path))
    except Exception as error:  # ffprobe failures come as several exception types
        raise D3NetError(f"track '{name}': cannot read {path}: {error}") from None
    if info.nb_audio_streams < len(STEM_IDS):
        raise D3NetError(f"track '{name}': {path.name} has {info.nb_audio_streams} audio "
                         f"streams, a MUSDB18 stem file has {len(STEM_IDS)}")
    rates = {info.sample_rate(i) for i in STEM_IDS.values()}
    if len(rates) != 1:
        raise D3NetError(f"track '{name}': the streams of {path.name} have different sample "
                         f"rates {sorted(rates)}")
    samples = min(info.samples(i) for i in STEM_IDS.values())
    return MUSDBTrack(name, subset, {s: path for s in STEM_IDS}, rates.pop(), int(samples),
                      int(info.channels(0)), stem_file=True)


def list_tracks(root: PathLike, subset: str = "train", split: str | None = None,
                validation_tracks: Iterable[str] | None = None) -> list[MUSDBTrack]:
    """List and validate the tracks of one subset, sorted by name.

    Args:
        root: dataset root holding ``train/`` and ``test/``.
        subset: ``"train"`` or ``"test"``.
        split: for the train subset, ``"train"`` (without the validation tracks),
            ``"valid"`` (only them) or ``None`` (all).
        validation_tracks: names of the validation tracks; default
            :data:`VALIDATION_TRACKS` (MUSDB18's official list).

    Raises:
        D3NetError: missing or empty folder; a track with a missing stem, or a stem whose
            length, sample rate or channel count differs from the mixture's (the message
            names the track and the stem); tracks of different sample rates.
    """
    root = Path(root)
    if subset not in ("train", "test"):
        raise D3NetError(f"subset must be 'train' or 'test', got {subset!r}")
    if split not in (None, "train", "valid"):
        raise D3NetError(f"split must be 'train', 'valid' or None, got {split!r}")
    if split is not None and subset != "train":
        raise D3NetError(f"split={split!r} applies to the train subset only, not {subset!r}")
    if not root.is_dir():
        raise D3NetError(f"dataset folder not found: {root}")
    folder = root / subset
    if not folder.is_dir():
        raise D3NetError(f"no '{subset}' folder in {root} (expected the MUSDB18-HQ layout "
                         f"{root}/{{train,test}}/<track>/{{{','.join(STEM_FILES)}}}.wav)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    track_dirs = [p for p in entries if p.is_dir()]
    stem_files = [p for p in entries if p.is_file() and p.name.endswith(".stem.mp4")]
    if not track_dirs and not stem_files:
        raise D3NetError(f"no tracks in {folder}: expected <track>/mixture.wav folders "
                         "(MUSDB18-HQ) or <track>.stem.mp4 files (MUSDB18)")
    tracks = [_wav_track(p, subset) for p in track_dirs]
    if stem_files:
        _import_musdb()
        tracks += [_stem_track(p, subset) for p in stem_files]
    tracks.sort(key=lambda t: t.name)
    rates = {t.sample_rate for t in tracks}
    if len(rates) > 1:
        first = {r: next(t.name for t in tracks if t.sample_rate == r) for r in sorted(rates)}
        detail = ", ".join(f"'{n}' {r} Hz" for r, n in first.items())
        raise D3NetError(f"tracks in {folder} have different sample rates ({detail})")
    if split is not None:
        valid = set(VALIDATION_TRACKS if validation_tracks is None else validation_tracks)
        tracks = [t for t in tracks if (t.name in valid) == (split == "valid")]
    return tracks


def _check_target(target: str) -> None:
    if target not in DATASET_TARGETS:
        raise D3NetError(f"unknown target {target!r}: use one of {', '.join(DATASET_TARGETS)}")


@dataclass(frozen=True)
class ExcerptDraw:
    """The random choices for one source of one :class:`ExcerptDataset` item."""

    source: str
    track: int      # index into ``dataset.tracks``
    offset: int     # first sample of the excerpt
    gain: float     # 1.0 when gain augmentation is off
    swap: bool      # left and right exchanged


class ExcerptDataset(torch.utils.data.Dataset):
    """The official D3Net / Open-Unmix training sampler: random excerpts, remixed.

    Item ``index`` of an epoch draws, for each source in :data:`~d3net.configs.TARGETS`
    order, a track (``tracks[index // samples_per_track]``, or with ``random_tracks`` an
    independently random track per source, as the official ``random_track_mix``), an
    excerpt offset, a gain in ``gain_range`` and a channel swap with probability 1/2. The
    mixture is the sum of the augmented sources; the target is one of them (or drums +
    bass + other for ``accompaniment``).

    Differs from the official code, which draws an offset per source even when the sources
    come from one track: here ``independent_offsets`` (default ``random_tracks``) decides.
    Tracks shorter than the excerpt are zero-padded at the end.

    Randomness: item ``index`` of epoch ``e`` uses ``numpy.random.default_rng((seed, e,
    index))`` only, so the items do not depend on workers, DDP rank or iteration order, and
    a resumed run sees the same data (call :meth:`set_epoch` at every epoch). All random
    numbers are drawn whether or not an augmentation is on, so switching one off does not
    change the others.

    Args:
        tracks: training tracks (same sample rate and channel count).
        target: one of :data:`DATASET_TARGETS`.
        excerpt_seconds: excerpt length (official: 6 s).
        samples_per_track: items per track per epoch (official: 64).
        gain_range: ``(low, high)`` random gain per source, or ``None`` for no gain.
        channel_swap: swap left/right per source with probability 1/2.
        random_tracks, independent_offsets, seed: see above; ``seed`` is the base seed.

    Items: ``(mixture, target)`` float32 tensors ``(channels, samples)``;
    :meth:`draw` tells which tracks, offsets, gains and swaps an item used.
    """

    def __init__(self, tracks: Sequence[MUSDBTrack], target: str, excerpt_seconds: float = 6.0,
                 samples_per_track: int = 64,
                 gain_range: tuple[float, float] | None = (0.75, 1.25),
                 channel_swap: bool = True, random_tracks: bool = True, seed: int = 0,
                 independent_offsets: bool | None = None):
        _check_target(target)
        self.tracks = list(tracks)
        if not tracks:
            raise D3NetError("ExcerptDataset: no tracks")
        rates, channels = {t.sample_rate for t in tracks}, {t.channels for t in tracks}
        if len(rates) > 1:
            raise D3NetError(f"ExcerptDataset: tracks have different sample rates {sorted(rates)}")
        if len(channels) > 1:
            raise D3NetError("ExcerptDataset: tracks have different channel counts "
                             f"{sorted(channels)}")
        self.sample_rate, self.channels = rates.pop(), channels.pop()
        if excerpt_seconds <= 0 or samples_per_track < 1:
            raise D3NetError("excerpt_seconds must be > 0 and samples_per_track >= 1, got "
                             f"{excerpt_seconds} and {samples_per_track}")
        if gain_range is not None and not 0 <= gain_range[0] <= gain_range[1]:
            raise D3NetError("gain_range must be (low, high) with 0 <= low <= high, "
                             f"got {gain_range}")
        self.target = target
        self.excerpt_samples = int(round(excerpt_seconds * self.sample_rate))
        self.samples_per_track = int(samples_per_track)
        self.gain_range = gain_range
        self.channel_swap = channel_swap
        self.random_tracks = random_tracks
        self.independent_offsets = (random_tracks if independent_offsets is None
                                    else independent_offsets)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose items are drawn (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def draw(self, index: int) -> list[ExcerptDraw]:
        """The random choices behind item ``index`` of the current epoch, one per source."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        base = index // self.samples_per_track
        shared_offset = rng.random()
        draws = []
        for source in TARGETS:
            random_track = int(rng.integers(len(self.tracks)))
            offset_draw, gain_draw, swap_draw = rng.random(3)
            track = random_track if self.random_tracks else base
            span = max(self.tracks[track].num_samples - self.excerpt_samples, 0)
            draw = offset_draw if self.independent_offsets else shared_offset
            gain = 1.0
            if self.gain_range is not None:
                low, high = self.gain_range
                gain = low + (high - low) * float(gain_draw)
            draws.append(ExcerptDraw(
                source=source, track=track, offset=min(int(draw * (span + 1)), span), gain=gain,
                swap=bool(self.channel_swap and self.channels == 2 and swap_draw < 0.5)))
        return draws

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sources = {}
        for d in self.draw(index):
            track = self.tracks[d.track]
            frames = min(self.excerpt_samples, track.num_samples - d.offset)
            audio = track.load(d.source, d.offset, frames)
            if frames < self.excerpt_samples:  # a track shorter than the excerpt
                audio = np.pad(audio, ((0, 0), (0, self.excerpt_samples - frames)))
            if d.gain != 1.0:
                audio = audio * np.float32(d.gain)
            sources[d.source] = audio[::-1] if d.swap else audio
        mixture = sum(sources[s] for s in TARGETS)
        if self.target == "accompaniment":
            target = sum(sources[s] for s in ACCOMPANIMENT)
        else:
            target = sources[self.target]
        return (torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)))


class FullTrackDataset(torch.utils.data.Dataset):
    """Whole tracks, in order, for validation and test: the stored mixture and the target.

    Items: ``(mixture, target)`` float32 tensors ``(channels, samples)`` (lengths differ
    between tracks: use ``batch_size=1``). ``dataset.tracks[i].name`` names item ``i``.
    """

    def __init__(self, tracks: Sequence[MUSDBTrack], target: str):
        _check_target(target)
        self.tracks = list(tracks)
        self.target = target

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        track = self.tracks[index]
        return (torch.from_numpy(track.load("mixture")), torch.from_numpy(track.load(self.target)))


def _mono_magnitudes(track: MUSDBTrack, start: int, stop: int, n_fft: int, hop: int,
                     chunk_frames: int) -> Iterable[np.ndarray]:
    """Yield ``(frames, bins)`` float64 blocks of the channel-averaged STFT magnitude of
    the mixture samples ``[start, stop)``: the frames of one :func:`stft` of that excerpt,
    computed ``chunk_frames`` frames at a time to bound memory on long tracks."""
    half = n_fft // 2
    length = stop - start
    total = length // hop + 1
    if total <= chunk_frames or half % hop != 0:  # chunking needs whole hops in half a window
        spec = stft(torch.from_numpy(track.load("mixture", start, length)), n_fft, hop)
        yield spec.abs().double().mean(0).T.numpy()
        return
    lead = half // hop
    for first in range(0, total, chunk_frames):
        last = min(first + chunk_frames, total)  # frames [first, last)
        lo, hi = first * hop - half, (last - 1) * hop + half  # samples these frames see
        read_lo, read_hi = max(lo, 0), min(hi, length)
        audio = track.load("mixture", start + read_lo, read_hi - read_lo)
        audio = np.pad(audio, ((0, 0), (read_lo - lo, hi - read_hi)))
        spec = stft(torch.from_numpy(audio), n_fft, hop)[..., lead:lead + last - first]
        yield spec.abs().double().mean(0).T.numpy()


def compute_input_stats(tracks: Sequence[MUSDBTrack], max_seconds_per_track: float | None = None,
                        progress: bool = True, n_fft: int = 4096, hop: int = 1024,
                        chunk_frames: int = 2048) -> tuple[Tensor, Tensor]:
    """Per-frequency-bin mean and standard deviation of the training mixtures' magnitudes.

    As the official training (``get_statistics`` in its ``util.py``): the magnitude STFT
    of every training mixture, averaged over the channels, pooled over all frames of all
    tracks; ``mean`` and population standard deviation per bin (scikit-learn's
    ``StandardScaler``), the deviation clamped from below at ``1e-4`` times its largest
    value. The model starts with ``in_offset = mean`` and ``in_scale = scale`` and
    computes ``(x - in_offset) / in_scale``. One difference: the official training STFT
    pads reflectively, :func:`d3net.audio.spectral.stft` with zeros (the official
    inference's padding), which changes only the first and last two frames of a track.

    Args:
        tracks: the training tracks.
        max_seconds_per_track: use only this many seconds from the middle of each track
            (``None``: whole tracks, as the official code).
        progress: show a tqdm bar.
        n_fft, hop: STFT parameters (official: 4096, 1024).
        chunk_frames: frames per STFT chunk (bounds memory; results do not depend on it).

    Returns:
        ``(mean, scale)``, float32 tensors ``(bins,)`` with ``bins = n_fft // 2 + 1``.
    """
    if not tracks:
        raise D3NetError("compute_input_stats: no tracks")
    bins = n_fft // 2 + 1
    count = 0
    mean = np.zeros(bins)
    m2 = np.zeros(bins)  # sum of squared deviations (Chan et al.'s parallel update)
    for track in tqdm(tracks, desc="input statistics", unit="track", disable=not progress):
        start, stop = 0, track.num_samples
        if max_seconds_per_track is not None:
            keep = min(int(max_seconds_per_track * track.sample_rate), track.num_samples)
            start = (track.num_samples - keep) // 2
            stop = start + keep
        for block in _mono_magnitudes(track, start, stop, n_fft, hop, chunk_frames):
            n_b = block.shape[0]
            mean_b = block.mean(0)
            m2_b = ((block - mean_b) ** 2).sum(0)
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * n_b / total
            m2 = m2 + m2_b + delta ** 2 * count * n_b / total
            count = total
    scale = np.sqrt(m2 / count)
    scale = np.maximum(scale, max(1e-4 * scale.max(), 1e-8))
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32))


def save_stats(path: PathLike, mean: Tensor, scale: Tensor) -> Path:
    """Write input statistics atomically: ``.safetensors`` by suffix, else ``.npz``."""
    path = Path(path)
    mean = torch.as_tensor(mean, dtype=torch.float32).detach().cpu().contiguous()
    scale = torch.as_tensor(scale, dtype=torch.float32).detach().cpu().contiguous()
    if mean.shape != scale.shape or mean.ndim != 1:
        raise D3NetError(f"statistics must be two (bins,) vectors, got {tuple(mean.shape)} "
                         f"and {tuple(scale.shape)}")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file({"mean": mean, "scale": scale}, str(tmp))
        else:
            with open(tmp, "wb") as file:
                np.savez(file, mean=mean.numpy(), scale=scale.numpy())
    return path


def load_stats(path: PathLike) -> tuple[Tensor, Tensor]:
    """Read statistics written by :func:`save_stats`: ``(mean, scale)`` float32 ``(bins,)``."""
    path = Path(path)
    if not path.is_file():
        raise D3NetError(f"statistics file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            data = {k: v.numpy() for k, v in load_file(str(path)).items()}
        else:
            with np.load(path) as npz:
                data = {k: npz[k] for k in npz.files}
    except Exception as error:  # corrupt file: numpy / safetensors raise various types
        raise D3NetError(f"cannot read statistics file {path}: {error}") from None
    if set(data) != {"mean", "scale"}:
        raise D3NetError(f"{path} is not a statistics file (keys {sorted(data)}, "
                         "expected mean and scale)")
    mean, scale = data["mean"], data["scale"]
    if mean.ndim != 1 or mean.shape != scale.shape:
        raise D3NetError(f"{path}: mean and scale must be (bins,) vectors, got "
                         f"{mean.shape} and {scale.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise D3NetError(f"{path}: statistics must be finite with positive scale")
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32))


__all__ = [
    "DATASET_TARGETS", "STEM_FILES", "VALIDATION_TRACKS", "MUSDBTrack", "list_tracks",
    "ExcerptDataset", "ExcerptDraw", "FullTrackDataset", "compute_input_stats", "save_stats",
    "load_stats",
]
