"""Audio file reading/writing, resampling and every user-facing error."""
import shutil
import subprocess

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
