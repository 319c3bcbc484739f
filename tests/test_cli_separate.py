"""``d3net separate`` as a user runs it: files in, stem files out, bad input, atomic output.

A tiny four-target model (random weights) keeps every run fast; the end-to-end parity run
through the CLI is in tests/test_separate_parity.py.
"""
import os

import numpy as np
import pytest
import soundfile
import torch

from conftest import TINY_MSS, TINY_SEG
from d3net import models
from d3net.cli import main
from d3net.configs import TARGETS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    for target in TARGETS:
        models.save(models.create(dict(TINY_MSS, target=target)),
                    folder / f"{target}.safetensors")
    return folder


def write(path, data, rate, subtype="FLOAT"):
    """``data`` (samples, channels)."""
    soundfile.write(str(path), data, rate, subtype=subtype)
    return path


def tone(seconds, rate, channels):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)], 1)


def separate(*args):
    return main(["separate", *map(str, args), "-q"])


def test_stems_keep_the_inputs_rate_length_and_channels(model_dir, tmp_path):
    mono = write(tmp_path / "mono8k.wav", tone(0.7, 8000, 1), 8000)
    hires = write(tmp_path / "song.96k.flac", tone(0.4, 96000, 2), 96000, "PCM_24")
    out = tmp_path / "out"
    assert separate(mono, hires, "-o", out, "--model", model_dir, "--accompaniment",
                    "--format", "flac", "--bits", "24") == 0
    for stem, (rate, frames, channels) in {"mono8k": (8000, 5600, 1),
                                           "song.96k": (96000, 38400, 2)}.items():
        for name in TARGETS + ("accompaniment",):
            info = soundfile.info(str(out / stem / f"{name}.flac"))
            assert (info.samplerate, info.frames, info.channels) == (rate, frames, channels)
            assert info.subtype == "PCM_24"
    assert not list(out.rglob("*.part"))


def test_targets_subset_and_float_output(model_dir, tmp_path):
    song = write(tmp_path / "song.wav", tone(0.5, 44100, 2), 44100)
    assert separate(song, "-o", tmp_path / "out", "--model", model_dir, "--targets",
                    "vocals,bass", "--bits", "32", "--wiener-iterations", "2") == 0
    written = sorted(p.name for p in (tmp_path / "out" / "song").iterdir())
    assert written == ["bass.wav", "vocals.wav"]
    data, rate = soundfile.read(str(tmp_path / "out" / "song" / "vocals.wav"))
    assert rate == 44100 and data.shape == (22050, 2) and np.isfinite(data).all()
    assert soundfile.info(str(tmp_path / "out" / "song" / "vocals.wav")).subtype == "FLOAT"


def test_silent_and_very_short_input(model_dir, tmp_path):
    silent = write(tmp_path / "silent.wav", np.zeros((30000, 2)), 44100)
    short = write(tmp_path / "short.wav", tone(0.002, 44100, 2), 44100)  # 88 < 4096 samples
    assert separate(silent, short, "-o", tmp_path / "out", "--model", model_dir) == 0
    for name in TARGETS:
        data, _ = soundfile.read(str(tmp_path / "out" / "silent" / f"{name}.wav"))
        assert data.shape == (30000, 2) and not data.any()
        data, _ = soundfile.read(str(tmp_path / "out" / "short" / f"{name}.wav"))
        assert data.shape == (88, 2) and np.isfinite(data).all()


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("this is not audio"), "not a readable audio file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: write(p, np.zeros((0, 2)), 44100), "no audio samples"),
    (lambda p: write(p, np.full((1000, 2), np.nan), 44100), "NaN or infinite"),
    (lambda p: write(p, tone(0.1, 44100, 6), 44100), "6 channels"),
])
def test_bad_input_is_one_line_naming_the_file(model_dir, tmp_path, capsys, make, message):
    bad = tmp_path / "bad.wav"
    make(bad)
    assert separate(bad, "-o", tmp_path / "out", "--model", model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and message in err, err
    assert not (tmp_path / "out" / "bad").exists()


def test_a_bad_file_does_not_stop_the_others(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    good = write(tmp_path / "good.wav", tone(0.3, 44100, 2), 44100)
    assert separate(bad, good, "-o", tmp_path / "out", "--model", model_dir) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not a readable audio file" in err and "1 of 2 inputs failed" in err
    assert sorted(p.name for p in (tmp_path / "out" / "good").iterdir()) == \
        sorted(f"{t}.wav" for t in TARGETS)


def test_unreadable_inputs_are_refused_before_the_networks_load(tmp_path, capsys,
                                                                monkeypatch):
    from d3net.separate import Separator

    def no_loading(*args, **kwargs):
        raise AssertionError("the networks were loaded for unreadable input")

    monkeypatch.setattr(Separator, "from_pretrained", no_loading)
    bad, other = tmp_path / "bad.wav", tmp_path / "other.mp3"
    bad.write_text("not audio")
    other.write_bytes(b"\xff\xfb" + bytes(500))  # an mp3 frame header, then nothing
    assert separate(bad, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: not a readable audio file" in err, err
    assert separate(bad, other, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and f"skipped {other}" in err
    assert "none of the 2 inputs is readable audio" in err
    assert not (tmp_path / "out").exists()


def test_missing_input_fails_before_any_work(model_dir, tmp_path, capsys):
    good = write(tmp_path / "good.wav", tone(0.3, 44100, 2), 44100)
    assert separate(good, tmp_path / "missing.wav", "-o", tmp_path / "out",
                    "--model", model_dir) == 2
    assert "missing.wav: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_option_errors(model_dir, tmp_path, capsys, monkeypatch):
    song = write(tmp_path / "song.wav", tone(0.2, 44100, 2), 44100)
    not_a_model = tmp_path / "vocals.safetensors"
    not_a_model.write_text("garbage")
    seg_model = tmp_path / "seg.safetensors"
    models.save(models.create(TINY_SEG), seg_model)
    cases = [((), "cannot fetch official-mss from http://127.0.0.1:9/mss/d3net-mss.zip"),
             ((), "d3net convert nnabla d3net-mss.zip -o DIR"),
             (("--model", tmp_path / "nowhere"), "model not found: " + str(tmp_path / "nowhere")),
             (("--model", tmp_path), "vocals.safetensors"),
             (("--model", seg_model), "not a music separation model"),
             (("--model", model_dir, "--targets", "piano"), "no model for target(s) piano")]
    for extra, message in cases:
        assert separate(song, "-o", tmp_path / "out", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)


@pytest.mark.parametrize("bits", [16, 32])
def test_interrupted_write_leaves_the_existing_output_intact(model_dir, tmp_path, capsys,
                                                             monkeypatch, bits):
    song = write(tmp_path / "song.wav", tone(0.3, 44100, 2), 44100)
    out = tmp_path / "out"
    assert separate(song, "-o", out, "--model", model_dir, "--bits", bits) == 0
    before = {p.name: p.read_bytes() for p in (out / "song").iterdir()}

    real_write = soundfile.SoundFile.write
    calls = []

    def count(self, data):
        calls.append(len(data))
        return real_write(self, data)

    (tmp_path / "louder").mkdir()
    louder = write(tmp_path / "louder" / "song.wav", 2 * tone(0.3, 44100, 2), 44100)
    monkeypatch.setattr(soundfile.SoundFile, "write", count)
    assert separate(louder, "-o", tmp_path / "counted", "--model", model_dir,
                    "--bits", bits) == 0

    def die_at_last_write(self, data):  # the last stem's last block: all others written
        calls.append(None)
        if len(calls) == total:
            real_write(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_write(self, data)

    total, calls[:] = len(calls), []
    monkeypatch.setattr(soundfile.SoundFile, "write", die_at_last_write)
    assert separate(louder, "-o", out, "--model", model_dir, "--bits", bits) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "song").iterdir()} == before


# ------------------------------------------------- results that must not be lost (issue 12)

def test_inputs_sharing_an_output_folder_are_refused_before_any_work(model_dir, tmp_path,
                                                                     capsys):
    """The issue's case: a/song.wav b/song.wav song.flac all map to OUTDIR/song."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "song.wav", tone(0.2, 44100, 2), 44100)
    flac = write(tmp_path / "song.flac", tone(0.2, 44100, 2), 44100, "PCM_16")
    out = tmp_path / "out"
    assert separate(tmp_path / "a" / "song.wav", tmp_path / "b" / "song.wav", flac,
                    "-o", out, "--model", model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'a' / 'song.wav'} and {tmp_path / 'b' / 'song.wav'} would both be " \
           f"written as {out / 'song'}" in err
    assert not out.exists()  # refused before the model was even loaded


def test_inputs_differing_only_in_case_are_refused(model_dir, tmp_path, capsys):
    """Another member: Song.wav and song.wav are one folder on macOS and Windows."""
    upper = write(tmp_path / "Song.wav", tone(0.2, 44100, 2), 44100)
    (tmp_path / "x").mkdir()
    lower = write(tmp_path / "x" / "song.wav", tone(0.2, 44100, 2), 44100)
    assert separate(upper, lower, "-o", tmp_path / "out", "--model", model_dir) == 2
    assert "case-insensitive file systems" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_input_a_stem_would_overwrite_is_refused(model_dir, tmp_path, capsys):
    """Another member: separating out/song/vocals.wav into -o out writes out/vocals/*,
    but separating out/vocals/vocals.wav would replace the input by its own stem."""
    out = tmp_path / "out"
    (out / "vocals").mkdir(parents=True)
    song = write(out / "vocals" / "vocals.wav", tone(0.2, 44100, 2), 44100)
    before = song.read_bytes()
    assert separate(song, "-o", out, "--model", model_dir) == 2
    err = capsys.readouterr().err
    assert "would overwrite this input" in err
    assert song.read_bytes() == before


def test_the_same_input_twice_is_separated_once(model_dir, tmp_path, capsys):
    song = write(tmp_path / "song.wav", tone(0.2, 44100, 2), 44100)
    assert main(["separate", str(song), str(tmp_path / "." / "song.wav"), "-o",
                 str(tmp_path / "out"), "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out.count("song.wav ->") == 1


@pytest.mark.parametrize("where", ["read-only folder", "under a file", "/proc"])
def test_an_unwritable_output_is_reported_before_separating(model_dir, tmp_path, capsys,
                                                            monkeypatch, where):
    """The issue's case (-o on a read-only file system): one line before any work, not a
    traceback after it. Root ignores permission bits, so the folder is also made
    unwritable in ways that stop root: a path under a regular file, or /proc."""
    from d3net import separate as separate_module
    if where == "/proc" and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    if where == "read-only folder" and (os.name != "posix" or os.geteuid() == 0):
        pytest.skip("permission bits do not stop root (or non-POSIX systems) from writing; "
                    "the other two cases stop root too")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    out = {"read-only folder": read_only / "out", "under a file": blocker / "out",
           "/proc": "/proc/d3net-out"}[where]
    calls = []
    monkeypatch.setattr(separate_module.Separator, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a)))
    song = write(tmp_path / "song.wav", tone(0.2, 44100, 2), 44100)
    assert separate(song, song, "-o", out, "--model", model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write into {out}" in err, err
    assert not calls  # the model was never loaded
