"""Audio file reading/writing, resampling and every user-facing error."""
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from d3net.audio import io
from d3net.errors import D3NetError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def tone(channels=2, samples=4410, rate=44100, freq=440.0, amp=0.5):
    t = torch.arange(samples, dtype=torch.float64) / rate
    rows = [amp * torch.sin(2 * torch.pi * freq * (c + 1) * t) for c in range(channels)]
    return torch.stack(rows).float()


@pytest.mark.parametrize("suffix,bits,tol", [
    (".wav", 16, 1 / 2 ** 15), (".wav", 24, 1 / 2 ** 23), (".wav", 32, 0.0),
    (".flac", 16, 1 / 2 ** 15), (".flac", 24, 1 / 2 ** 23)])
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(tmp_path, suffix, bits, tol, channels):
    x = tone(channels)
    path = tmp_path / f"x{suffix}"
    io.save(path, x, 22050, bits=bits)
    y, rate = io.load(path)
    assert rate == 22050
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y - x).abs().max() <= tol
    info = soundfile.info(str(path))
    assert info.format == suffix[1:].upper()
    assert info.subtype == {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}[bits]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_pcm_is_clipped_float_is_not(tmp_path):
    x = torch.tensor([[2.0, -3.0, 0.25]])
    io.save(tmp_path / "a.wav", x, 8000, bits=16)
    io.save(tmp_path / "b.wav", x, 8000, bits=32)
    a, _ = io.load(tmp_path / "a.wav")
    b, _ = io.load(tmp_path / "b.wav")
    assert a.max() <= 1.0 and a.min() >= -1.0 and a[0, 0] > 0.99 and a[0, 1] < -0.99
    assert torch.equal(b, x)


def test_ogg_and_aiff(tmp_path):
    x = tone(2)
    soundfile.write(str(tmp_path / "x.aiff"), x.numpy().T, 44100, subtype="PCM_16")
    soundfile.write(str(tmp_path / "x.ogg"), x.numpy().T, 44100)
    y, _ = io.load(tmp_path / "x.aiff")
    assert (y - x).abs().max() < 1e-4
    z, rate = io.load(tmp_path / "x.ogg")
    assert rate == 44100 and z.shape[0] == 2 and abs(z.shape[1] - x.shape[1]) < 2048


def test_save_errors(tmp_path):
    x = tone(2)
    with pytest.raises(D3NetError, match="16 or 24 bits, not 32"):
        io.save(tmp_path / "x.flac", x, 44100, bits=32)
    with pytest.raises(D3NetError, match="not 8"):
        io.save(tmp_path / "x.wav", x, 44100, bits=8)
    with pytest.raises(D3NetError, match="cannot write '.mp3'"):
        io.save(tmp_path / "x.mp3", x, 44100)
    with pytest.raises(D3NetError, match="shape"):
        io.save(tmp_path / "x.wav", x[None], 44100)
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "x.wav"
    io.save(path, tone(2), 44100)
    io.save(path, tone(1, samples=100), 44100)
    assert io.load(path)[0].shape == (1, 100)


def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(D3NetError, match="no such file") as err:
        io.load(tmp_path / "nope.wav")
    assert "nope.wav" in _message(err)


def test_directory(tmp_path):
    with pytest.raises(D3NetError, match="directory"):
        io.load(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    with pytest.raises(D3NetError, match="empty file") as err:
        io.load(tmp_path / "e.wav")
    assert "e.wav" in _message(err)


@pytest.mark.parametrize("name", ["text.wav", "text.txt", "text.mp3"])
def test_not_audio(tmp_path, name):
    (tmp_path / name).write_text("this is not audio\n" * 50)
    with pytest.raises(D3NetError, match="not a readable audio file|needs ffmpeg") as err:
        io.load(tmp_path / name)
    assert name in _message(err)


def test_zero_length(tmp_path):
    soundfile.write(str(tmp_path / "z.wav"), np.zeros((0, 2), np.float32), 44100)
    with pytest.raises(D3NetError, match="zero length"):
        io.load(tmp_path / "z.wav")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = np.zeros((100, 2), np.float32)
    data[50, 1] = bad
    soundfile.write(str(tmp_path / "n.wav"), data, 44100, subtype="FLOAT")
    with pytest.raises(D3NetError, match="NaN or infinite"):
        io.load(tmp_path / "n.wav")


def test_ffmpeg_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "ffmpeg_available", lambda: False)
    (tmp_path / "song.m4a").write_bytes(b"\x00" * 100)
    with pytest.raises(D3NetError, match="needs ffmpeg") as err:
        io.load(tmp_path / "song.m4a")
    assert "song.m4a" in _message(err)


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@needs_ffmpeg
def test_mp3_through_ffmpeg(tmp_path):
    x = tone(2, samples=22050)
    io.save(tmp_path / "x.wav", x, 44100)
    _ffmpeg("-i", str(tmp_path / "x.wav"), "-b:a", "192k", str(tmp_path / "x.mp3"))
    y, rate = io.load(tmp_path / "x.mp3")
    assert rate == 44100 and y.shape[0] == 2
    assert abs(y.shape[1] - x.shape[1]) < 3000  # encoder padding
    assert 0.3 < y.abs().max() < 0.7


@needs_ffmpeg
def test_stem_mp4_reads_first_stream(tmp_path):
    loud, quiet = tone(2, samples=22050, amp=0.5), tone(2, samples=22050, amp=0.01)
    io.save(tmp_path / "mix.wav", loud, 44100)
    io.save(tmp_path / "src.wav", quiet, 44100)
    stem = tmp_path / "song.stem.mp4"
    _ffmpeg("-i", str(tmp_path / "mix.wav"), "-i", str(tmp_path / "src.wav"),
            "-map", "0:a", "-map", "1:a", "-c:a", "aac", str(stem))
    y, rate = io.load(stem)
    assert rate == 44100 and y.shape[0] == 2
    assert y.abs().max() > 0.3  # the mixture (stream 0), not the quiet source


@pytest.mark.parametrize("rate", [8000, 96000])
def test_resample_round_trip(rate):
    x = tone(2, samples=rate // 2, rate=rate, freq=300.0)
    up = io.resample(x, rate, 44100)
    assert up.dtype == torch.float32
    assert abs(up.shape[1] - round(x.shape[1] * 44100 / rate)) <= 1
    back = io.resample(up, 44100, rate)
    assert abs(back.shape[1] - x.shape[1]) <= 1
    n = min(back.shape[1], x.shape[1])
    inner = slice(n // 10, n - n // 10)  # ignore filter edges
    assert (back[:, inner] - x[:, inner]).abs().max() < 1e-3


def test_resample_identity_and_bad_rate():
    x = tone(1)
    assert io.resample(x, 44100, 44100) is x
    with pytest.raises(D3NetError, match="sample rate"):
        io.resample(x, 0, 44100)


# ----------------------------------------------------------------------------- blocks

def test_reader_blocks_equal_load(tmp_path):
    x = tone(2, samples=10007)
    io.save(tmp_path / "x.wav", x, 22050, bits=32)
    with io.AudioReader(tmp_path / "x.wav") as reader:
        assert (reader.sample_rate, reader.channels, reader.frames) == (22050, 2, 10007)
        blocks = list(reader.blocks(1000))
    assert [b.shape[1] for b in blocks] == [1000] * 10 + [7]
    assert torch.equal(torch.cat(blocks, dim=1), io.load(tmp_path / "x.wav")[0])


def test_reader_finds_bad_samples_in_a_later_block(tmp_path):
    data = np.zeros((5000, 2), np.float32)
    data[4321, 0] = np.inf
    soundfile.write(str(tmp_path / "late.wav"), data, 44100, subtype="FLOAT")
    with io.AudioReader(tmp_path / "late.wav") as reader:
        blocks = reader.blocks(1000)
        next(blocks)
        with pytest.raises(D3NetError, match="late.wav: contains NaN or infinite"):
            list(blocks)


@needs_ffmpeg
def test_reader_decodes_mp3_to_a_temporary_wav_and_removes_it(tmp_path):
    io.save(tmp_path / "x.wav", tone(2, samples=22050), 44100)
    _ffmpeg("-i", str(tmp_path / "x.wav"), "-b:a", "192k", str(tmp_path / "x.mp3"))
    with io.AudioReader(tmp_path / "x.mp3") as reader:
        decoded = Path(reader._file.name)
        assert decoded.exists() and decoded.suffix == ".wav"
        blocks = list(reader.blocks(4096))
    assert not decoded.exists()
    assert torch.equal(torch.cat(blocks, dim=1), io.load(tmp_path / "x.mp3")[0])


@pytest.mark.parametrize("rates", [(8000, 44100), (96000, 44100), (44100, 48000),
                                   (44100, 44100)])
def test_resample_stream_equals_whole(rates):
    x = tone(2, samples=30011, rate=rates[0], freq=300.0)
    whole = io.resample(x, *rates)
    stream = io.ResampleStream(*rates, channels=2)
    parts = [stream.push(block) for block in x.split(4097, dim=1)] + [stream.finish()]
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape[1] == whole.shape[1] == io.resampled_length(30011, *rates)
    assert torch.equal(streamed, whole)


def test_resampled_length_matches_soxr():
    for samples in (1, 2, 3, 99, 1000, 12345):
        for rates in ((96000, 44100), (8000, 44100), (44100, 22050), (48000, 44100)):
            assert io.resampled_length(samples, *rates) == \
                io.resample(torch.zeros(1, samples), *rates).shape[1], (samples, rates)


def _write_stems(folder, stems, **kwargs):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with io.StemWriter(folder, list(stems), 8000, 2, **kwargs) as writer:
            for blocks in zip(*(s.split(700, dim=1) for s in stems.values())):
                writer.write(dict(zip(stems, blocks)))
    return writer


def loud_stems():
    loud = tone(2, samples=5000, amp=1.6)            # peaks at 1.6 = +4.1 dBFS
    quiet = tone(2, samples=5000, amp=0.4)
    return {"vocals": loud, "bass": quiet}


def test_stem_writer_rescales_every_stem_by_one_gain(tmp_path):
    stems = loud_stems()
    writer = _write_stems(tmp_path, stems, bits=24)
    levels = writer.levels
    assert levels.over == ["vocals"] and levels.gain == pytest.approx(1 / 1.6, rel=1e-4)
    assert "vocals peaks at +4.1 dBFS" in levels.message()
    assert "scaled by -4.1 dB" in levels.message()
    vocals, _ = io.load(tmp_path / "vocals.wav")
    bass, _ = io.load(tmp_path / "bass.wav")
    assert vocals.abs().max() <= 1.0 and vocals.abs().max() > 0.999
    # Balance kept: both stems got the same gain.
    assert (bass - stems["bass"] * levels.gain).abs().max() < 1e-5
    assert (vocals - stems["vocals"] * levels.gain).abs().max() < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bass.wav", "vocals.wav"]


def test_stem_writer_clamp_counts_clipped_samples(tmp_path):
    stems = loud_stems()
    writer = _write_stems(tmp_path, stems, bits=16, clip_mode="clamp")
    over = int((stems["vocals"].abs() > 1.0).sum())
    assert writer.levels.gain == 1.0 and writer.levels.clipped == {"vocals": over, "bass": 0}
    assert f"vocals {over:,} samples" in writer.levels.message()
    bass, _ = io.load(tmp_path / "bass.wav")
    assert (bass - stems["bass"]).abs().max() <= 1 / 2 ** 15


def test_stem_writer_float_output_keeps_the_level(tmp_path):
    stems = loud_stems()
    writer = _write_stems(tmp_path, stems, bits=32)
    assert writer.levels.over == ["vocals"] and writer.levels.message() is None
    vocals, _ = io.load(tmp_path / "vocals.wav")
    assert torch.equal(vocals, stems["vocals"])


def test_stem_writer_leaves_nothing_on_error(tmp_path):
    (tmp_path / "vocals.wav").write_bytes(b"old")
    for bits in (16, 32):
        with pytest.raises(KeyboardInterrupt):
            with io.StemWriter(tmp_path, ["vocals"], 8000, 1, bits=bits) as writer:
                writer.write({"vocals": torch.zeros(1, 100)})
                raise KeyboardInterrupt
        assert [p.name for p in tmp_path.iterdir()] == ["vocals.wav"]
        assert (tmp_path / "vocals.wav").read_bytes() == b"old"


@pytest.mark.parametrize("kwargs,match", [
    (dict(format="mp3"), "cannot write 'mp3'"),
    (dict(format="flac", bits=32), "FLAC supports 16 or 24 bits"),
    (dict(clip_mode="wrap"), "unknown clip mode"),
])
def test_stem_writer_bad_options(tmp_path, kwargs, match):
    with pytest.raises(D3NetError, match=match):
        io.StemWriter(tmp_path, ["vocals"], 8000, 1, **kwargs)
