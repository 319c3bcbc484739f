"""MUSDB18-HQ reading, validation errors, the training sampler and input statistics."""
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from d3net.audio.spectral import stft
from d3net.configs import TARGETS
from d3net.data import musdb
from d3net.data.synth_music import generate_dataset
from d3net.errors import D3NetError

SR = 8000
SECONDS = 3.0


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("musdb")
    generate_dataset(root, seconds=SECONDS, sample_rate=SR, seed=3,
                     subsets={"train": 3, "test": 1}, progress=False)
    return root


@pytest.fixture()
def copy_root(dataset_root, tmp_path):
    """A private copy to break."""
    target = tmp_path / "copy"
    shutil.copytree(dataset_root, target)
    return target


def test_list_tracks_and_partial_reads(dataset_root):
    train = musdb.list_tracks(dataset_root, "train")
    test = musdb.list_tracks(dataset_root, "test")
    assert [t.name for t in train] == ["synth-000", "synth-001", "synth-002"]
    assert [t.name for t in test] == ["synth-003"]
    track = train[1]
    assert (track.sample_rate, track.num_samples, track.channels) == (SR, int(SR * SECONDS), 2)
    full = track.load("vocals")
    assert full.shape == (2, track.num_samples) and full.dtype == np.float32
    part = track.load("vocals", start=1000, frames=500)
    np.testing.assert_array_equal(part, full[:, 1000:1500])
    stems = sum(track.load(s) for s in TARGETS)
    np.testing.assert_allclose(stems, track.load("mixture"), atol=1e-6)
    np.testing.assert_allclose(track.load("accompaniment"),
                               track.load("mixture") - track.load("vocals"), atol=1e-6)
    with pytest.raises(D3NetError, match="synth-001"):
        track.load("vocals", start=track.num_samples - 10, frames=20)
    with pytest.raises(D3NetError, match="unknown source"):
        track.load("guitar")


def test_validation_split(dataset_root):
    # synthetic names are not MUSDB18 validation tracks: the official split keeps all
    assert len(musdb.list_tracks(dataset_root, "train", split="train")) == 3
    assert musdb.list_tracks(dataset_root, "train", split="valid") == []
    assert len(musdb.VALIDATION_TRACKS) == 14
    valid = musdb.list_tracks(dataset_root, "train", split="valid", validation_tracks=["synth-001"])
    rest = musdb.list_tracks(dataset_root, "train", split="train", validation_tracks=["synth-001"])
    assert [t.name for t in valid] == ["synth-001"]
    assert [t.name for t in rest] == ["synth-000", "synth-002"]
    with pytest.raises(D3NetError, match="train subset"):
        musdb.list_tracks(dataset_root, "test", split="valid")


def test_missing_stem_names_track_and_stem(copy_root):
    (copy_root / "train" / "synth-001" / "bass.wav").unlink()
    with pytest.raises(D3NetError, match=r"synth-001.*bass\.wav"):
        musdb.list_tracks(copy_root, "train")


def test_stem_of_different_length(copy_root):
    path = copy_root / "train" / "synth-002" / "drums.wav"
    audio, rate = sf.read(str(path), dtype="int16")
    sf.write(str(path), audio[:-7], rate, subtype="PCM_16")
    with pytest.raises(D3NetError, match=r"synth-002.*drums\.wav.*samples"):
        musdb.list_tracks(copy_root, "train")


def test_stem_of_different_sample_rate(copy_root):
    path = copy_root / "test" / "synth-003" / "other.wav"
    audio, _ = sf.read(str(path), dtype="int16")
    sf.write(str(path), audio, 16000, subtype="PCM_16")
    with pytest.raises(D3NetError, match=r"synth-003.*other\.wav.*16000 Hz"):
        musdb.list_tracks(copy_root, "test")


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(D3NetError, match="not found"):
        musdb.list_tracks(tmp_path / "nowhere")
    with pytest.raises(D3NetError, match="no 'train' folder"):
        musdb.list_tracks(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(D3NetError, match="no tracks"):
        musdb.list_tracks(tmp_path)


def test_sampler_shapes_and_length(dataset_root):
    tracks = musdb.list_tracks(dataset_root)
    data = musdb.ExcerptDataset(tracks, "vocals", excerpt_seconds=1.0, samples_per_track=4)
    assert len(data) == 12
    mixture, target = data[5]
    assert mixture.shape == target.shape == (2, SR)
    assert mixture.dtype == target.dtype == torch.float32
    with pytest.raises(IndexError):
        data[12]
    with pytest.raises(D3NetError, match="unknown target"):
        musdb.ExcerptDataset(tracks, "piano")


def test_sampler_is_deterministic_per_seed_epoch_and_index(dataset_root):
    tracks = musdb.list_tracks(dataset_root)
    def make(seed=0):
        return musdb.ExcerptDataset(tracks, "drums", excerpt_seconds=0.5, samples_per_track=2, seed=seed)
    a, b = make(), make()
    torch.testing.assert_close(a[3], b[3], rtol=0, atol=0)
    b.set_epoch(1)
    assert not torch.equal(a[3][0], b[3][0])
    a.set_epoch(1)
    torch.testing.assert_close(a[3], b[3], rtol=0, atol=0)  # a resumed run sees the same data
    assert not torch.equal(make(seed=1)[3][0], make()[3][0])
    # worker-safe: the items do not depend on how a DataLoader splits the work
    serial = list(torch.utils.data.DataLoader(a, batch_size=2, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(a, batch_size=2, num_workers=2))
    for (m0, t0), (m1, t1) in zip(serial, parallel):
        assert torch.equal(m0, m1) and torch.equal(t0, t1)


def test_no_augmentation_gives_the_tracks_own_excerpt(dataset_root):
    tracks = musdb.list_tracks(dataset_root)
    data = musdb.ExcerptDataset(tracks, "bass", excerpt_seconds=1.0, samples_per_track=3,
                                gain_range=None, channel_swap=False, random_tracks=False)
    length = data.excerpt_samples
    for index in range(len(data)):
        draws = data.draw(index)
        assert {d.track for d in draws} == {index // 3}
        assert len({d.offset for d in draws}) == 1
        track, offset = tracks[index // 3], draws[0].offset
        mixture, target = data[index]
        np.testing.assert_allclose(mixture.numpy(), track.load("mixture", offset, length), atol=1e-6)
        np.testing.assert_array_equal(target.numpy(), track.load("bass", offset, length))


def test_each_augmentation_switch(dataset_root):
    tracks = musdb.list_tracks(dataset_root)
    data = musdb.ExcerptDataset(tracks, "vocals", excerpt_seconds=1.0, samples_per_track=8, seed=5)
    gains, swaps, sources_tracks, offsets = [], [], set(), set()
    for index in range(len(data)):
        draws = data.draw(index)
        gains += [d.gain for d in draws]
        swaps += [d.swap for d in draws]
        sources_tracks.add(tuple(d.track for d in draws))
        offsets |= {d.offset for d in draws}
        vocals = next(d for d in draws if d.source == "vocals")
        excerpt = tracks[vocals.track].load("vocals", vocals.offset, data.excerpt_samples)
        if vocals.swap:
            excerpt = excerpt[::-1]
        mixture, target = data[index]
        np.testing.assert_allclose(target.numpy(), excerpt * np.float32(vocals.gain), atol=1e-6)
        others = sum(tracks[d.track].load(d.source, d.offset, data.excerpt_samples)[::(-1 if d.swap else 1)]
                     * np.float32(d.gain) for d in draws)
        np.testing.assert_allclose(mixture.numpy(), others, atol=1e-5)
    assert 0.75 <= min(gains) < 0.85 and 1.15 < max(gains) <= 1.25
    assert 0.3 < np.mean(swaps) < 0.7
    assert len(sources_tracks) > 10  # sources are mixed across random tracks
    assert len(offsets) > 20

    # switching gain off does not change the other random choices
    plain = musdb.ExcerptDataset(tracks, "vocals", excerpt_seconds=1.0, samples_per_track=8,
                                 seed=5, gain_range=None)
    for a, b in zip(data.draw(7), plain.draw(7)):
        assert (a.track, a.offset, a.swap) == (b.track, b.offset, b.swap) and b.gain == 1.0
    mono_swap = musdb.ExcerptDataset(tracks, "vocals", samples_per_track=8, seed=5, channel_swap=False)
    assert not any(d.swap for i in range(len(mono_swap)) for d in mono_swap.draw(i))


def test_accompaniment_target_and_short_tracks(dataset_root):
    tracks = musdb.list_tracks(dataset_root)
    data = musdb.ExcerptDataset(tracks, "accompaniment", excerpt_seconds=1.0, samples_per_track=2)
    mixture, target = data[1]
    draws = {d.source: d for d in data.draw(1)}
    vocals = tracks[draws["vocals"].track].load("vocals", draws["vocals"].offset, data.excerpt_samples)
    if draws["vocals"].swap:
        vocals = vocals[::-1]
    np.testing.assert_allclose((mixture - target).numpy(), vocals * np.float32(draws["vocals"].gain),
                               atol=1e-5)
    # an excerpt longer than the tracks is zero-padded at the end
    long = musdb.ExcerptDataset(tracks, "drums", excerpt_seconds=4.0, samples_per_track=1,
                                gain_range=None, channel_swap=False, random_tracks=False)
    mixture, target = long[0]
    assert mixture.shape == (2, 4 * SR)
    assert torch.all(mixture[:, int(SECONDS * SR):] == 0)
    assert torch.any(mixture[:, : int(SECONDS * SR)] != 0)


def test_full_track_dataset(dataset_root):
    tracks = musdb.list_tracks(dataset_root, "test")
    data = musdb.FullTrackDataset(tracks, "other")
    assert len(data) == 1
    mixture, target = data[0]
    assert mixture.shape == target.shape == (2, int(SR * SECONDS))
    np.testing.assert_array_equal(mixture.numpy(), tracks[0].load("mixture"))
    np.testing.assert_array_equal(target.numpy(), tracks[0].load("other"))
    again = data[0]
    assert torch.equal(again[0], mixture)


def test_input_statistics_match_a_direct_computation(dataset_root, tmp_path):
    tracks = musdb.list_tracks(dataset_root)
    mags = [stft(torch.from_numpy(t.load("mixture"))).abs().double().mean(0).T for t in tracks]
    pooled = torch.cat(mags)  # (frames of all tracks, bins)
    mean, scale = musdb.compute_input_stats(tracks, progress=False)
    assert mean.shape == scale.shape == (2049,)
    torch.testing.assert_close(mean, pooled.mean(0).float(), rtol=1e-5, atol=1e-7)
    expected_scale = torch.clamp(pooled.std(0, unbiased=False), min=1e-4 * pooled.std(0, unbiased=False).max())
    torch.testing.assert_close(scale, expected_scale.float(), rtol=1e-5, atol=1e-7)
    # chunked STFTs give the same frames as one STFT per track
    chunked = musdb.compute_input_stats(tracks, progress=False, chunk_frames=5)
    torch.testing.assert_close(chunked[0], mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked[1], scale, rtol=1e-5, atol=1e-7)
    # bins above the content are silent at 8 kHz... scale is still clamped above zero
    assert torch.all(scale >= 1e-4 * scale.max())
    limited = musdb.compute_input_stats(tracks, max_seconds_per_track=1.0, progress=False)
    assert not torch.allclose(limited[0], mean)

    for name in ("stats.npz", "stats.safetensors"):
        path = musdb.save_stats(tmp_path / name, mean, scale)
        loaded = musdb.load_stats(path)
        assert torch.equal(loaded[0], mean) and torch.equal(loaded[1], scale)
    assert not list(tmp_path.glob(".*part"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(D3NetError, match="bad.npz"):
        musdb.load_stats(tmp_path / "bad.npz")
    with pytest.raises(D3NetError, match="not found"):
        musdb.load_stats(tmp_path / "missing.npz")


def _stem_writer_problem():
    import shutil
    import subprocess
    try:
        import musdb as _musdb  # noqa: F401  (the optional reader under test)
        import stempeg  # noqa: F401
    except Exception as error:  # not installed, or no ffmpeg binary at import time
        return f"musdb/stempeg unusable: {error}"
    if shutil.which("ffmpeg") is None:
        return "no ffmpeg binary"
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True,
                              text=True).stdout
    if not any(line.split()[1:2] == ["aac"] for line in encoders.splitlines() if line.strip()):
        return "ffmpeg has no aac encoder"
    return None


_STEM_PROBLEM = _stem_writer_problem()


@pytest.mark.skipif(_STEM_PROBLEM is not None, reason=f"cannot write .stem.mp4: {_STEM_PROBLEM}")
def test_musdb18_stem_mp4_through_musdb(tmp_path):
    import stempeg
    from d3net.data.synth_music import generate_song

    song = generate_song(11, seconds=2.0, sample_rate=44100)
    mixture = sum(song[s] for s in TARGETS)
    by_id = sorted(musdb.STEM_IDS, key=musdb.STEM_IDS.get)  # mixture, drums, bass, other, vocals
    streams = np.stack([(mixture if name == "mixture" else song[name]).T for name in by_id])
    (tmp_path / "test").mkdir()
    stempeg.write_stems(str(tmp_path / "test" / "Artist - Title.stem.mp4"), streams,
                        sample_rate=44100, writer=stempeg.StreamsWriter(codec="aac", bitrate=256000))
    (track,) = musdb.list_tracks(tmp_path, "test")
    assert (track.name, track.sample_rate, track.channels) == ("Artist - Title", 44100, 2)
    assert abs(track.num_samples - 88200) < 2048
    start, frames = 30000, 20000
    for source in ("vocals", "bass"):
        part = track.load(source, start, frames)
        assert part.shape == (2, frames)
        reference = song[source][:, start:start + frames]
        correlation = np.corrcoef(part.ravel(), reference.ravel())[0, 1]
        assert correlation > 0.98, (source, correlation)  # lossy AAC, but aligned
