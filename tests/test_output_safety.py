"""Output that must not be lost or unreadable: file modes, writability, name collisions."""
import os
import stat
from pathlib import Path

import pytest

from d3net.errors import D3NetError
from d3net.utils import atomic_path, check_unique_outputs, check_writable

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
POSIX = os.name == "posix"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------- file modes

@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_0666_less_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out" / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "out" / "a.txt") == expected
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
@pytest.mark.parametrize("existing", [0o644, 0o664, 0o600, 0o444])
def test_replacing_a_file_keeps_its_mode(tmp_path, umask_022, existing):
    target = tmp_path / "a.txt"
    target.write_text("old")
    os.chmod(target, existing)
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert mode(target) == existing


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_writers_that_recreate_or_truncate_get_normal_modes(tmp_path, umask_022):
    """The writers the project uses through atomic_path (PNG, safetensors, torch.save,
    soundfile, JSON) all end up 0o644 under umask 022."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from d3net.audio import io

    with atomic_path(tmp_path / "a.png") as tmp:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp, format="PNG")
    with atomic_path(tmp_path / "b.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    with atomic_path(tmp_path / "c.ckpt") as tmp:
        torch.save({"x": 1}, tmp)
    io.save(tmp_path / "d.wav", torch.zeros(1, 100), 44100)
    for path in tmp_path.iterdir():
        assert mode(path) == 0o644, path.name


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_segment_outputs_are_readable_by_others(tmp_path, umask_022):
    """The issue's case: `d3net segment` output under umask 022 was 600."""
    import numpy as np

    from d3net.image import write_outputs

    labels = np.zeros((8, 8), np.uint8)
    paths = write_outputs(np.zeros((8, 8, 3), np.uint8), labels, tmp_path / "out", "img")
    for path in paths:
        assert mode(path) == 0o644, path.name
    os.chmod(paths[0], 0o640)  # the owner restricts a file: a rerun keeps that
    write_outputs(np.zeros((8, 8, 3), np.uint8), labels, tmp_path / "out", "img")
    assert mode(paths[0]) == 0o640


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# ---------------------------------------------------------------- writability

def test_check_writable_accepts_new_and_existing_folders(tmp_path):
    check_writable(tmp_path, tmp_path / "new" / "deeper", tmp_path / "new2")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # probes removed, nothing created


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(D3NetError, match=r"file\.txt is a file, not a folder"):
        check_writable(blocker / "x")
    with pytest.raises(D3NetError, match="is a file, not a folder"):
        check_writable(blocker)


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
@pytest.mark.skipif(IS_ROOT, reason="running as root: permission bits do not stop root "
                    "from writing (the path-under-a-file test covers the check)")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(D3NetError, match="cannot write into .*Permission denied"):
            check_writable(folder / "out")
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_writable_refuses_a_folder_where_files_cannot_be_created():
    # /proc refuses new files even for root: the probe, not permission bits, decides
    with pytest.raises(D3NetError, match="cannot write into /proc/d3net-out"):
        check_writable("/proc/d3net-out")


# ---------------------------------------------------------------- name collisions

def test_check_unique_outputs():
    check_unique_outputs([("a/song.wav", "song"), ("a/song.wav", "song"), ("b/x.wav", "x")])
    with pytest.raises(D3NetError, match=r"a/song.wav and b/song.wav would both be written"):
        check_unique_outputs([("a/song.wav", "song"), ("b/song.wav", "song")])
    with pytest.raises(D3NetError, match="Song and song .one name on case-insensitive"):
        check_unique_outputs([("Song.wav", "Song"), ("song.flac", "song")])


# ------------------------------------------------- every command checks its output first

def _commands(tmp, out):
    """(argv, function that must not run) for every command that writes, with ``out``
    as its output location."""
    import h5py
    import numpy as np

    import soundfile

    weights = tmp / "weights.h5"
    with h5py.File(weights, "w") as f:
        f["x"] = np.zeros(1)
    track = tmp / "test" / "song"  # a one-track MUSDB18-HQ layout
    track.mkdir(parents=True)
    for source in ("mixture", "vocals", "drums", "bass", "other"):
        soundfile.write(str(track / f"{source}.wav"), np.zeros((4410, 2)), 44100)
    return {
        "train mss": (["train", "mss", "--root", str(tmp), "--target", "vocals", "--out",
                       str(out)], ("d3net.train.mss", "train_mss")),
        "train seg": (["train", "seg", "--root", str(tmp), "--out", str(out)],
                      ("d3net.train.seg", "train_seg")),
        "convert": (["convert", "nnabla", str(weights), "-o", str(out / "m.safetensors")],
                    ("d3net.convert", "load_nnabla")),
        "convert folder": (["convert", "nnabla", str(tmp), "-o", str(out)],
                           ("d3net.convert", "load_nnabla")),
        "synth-musdb": (["data", "synth-musdb", "--out", str(out), "--tracks", "2"],
                        ("d3net.data.synth_music", "_render_song")),
        "synth-cityscapes": (["data", "synth-cityscapes", "--out", str(out), "--images", "1"],
                             ("d3net.data.synth_scenes", "split_sizes")),
        "demo": (["demo", "-o", str(out)], ("d3net.data.synth_music", "generate_song")),
        "receptive-field": (["receptive-field", "--plot", str(out / "rf.png")],
                            ("d3net.cli.receptive_field", "analyze_d2_block")),
        "evaluate mss": (["evaluate", "mss", "--root", str(tmp), "--model", "demo", "--out",
                          str(out)], ("d3net.models", "load")),
        "export": (["export", "onnx", "demo", "-o", str(out)],
                   ("d3net.export", "export_onnx")),
    }


@pytest.mark.parametrize("command", ["train mss", "train seg", "convert", "convert folder",
                                     "synth-musdb", "synth-cityscapes", "demo",
                                     "receptive-field", "evaluate mss", "export"])
def test_every_command_refuses_an_unwritable_output_before_working(tmp_path, capsys,
                                                                   monkeypatch, command):
    import importlib

    from d3net.cli import main

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv, (module, name) = _commands(tmp_path, blocker / "out")[command]
    monkeypatch.setattr(importlib.import_module(module), name,
                        lambda *a, **k: pytest.fail(f"{name} ran before the output check"))
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.txt is a file, not a folder" in err, err


def test_a_write_failing_mid_run_is_one_line(tmp_path, capsys, monkeypatch):
    """The last line of defence: a disk that fills up after the checks passed."""
    import errno

    import numpy as np
    import soundfile

    from d3net.audio import io
    from d3net.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    song = tmp_path / "song.wav"
    soundfile.write(str(song), np.zeros((2000, 2)), 44100)
    monkeypatch.setattr(io.StemWriter, "write", full)
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "demo",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"d3net separate: error: [Errno 28] No space left on device: " \
                  f"'{tmp_path / 'out'}'"


@pytest.mark.parametrize("bits", [16, 32])
def test_a_disk_filling_up_in_a_writer_is_one_line_naming_the_file(tmp_path, capsys,
                                                                  monkeypatch, bits):
    """libsndfile reports a full disk as "System error." from deep inside soundfile: the
    user gets one line naming the file and the cause, and no partial output."""
    import shutil
    from collections import namedtuple

    import numpy as np
    import soundfile

    from d3net.cli import main

    song = tmp_path / "song.wav"
    soundfile.write(str(song), np.zeros((2000, 2)), 44100)

    def system_error(self, data):
        raise soundfile.LibsndfileError(2, "")  # what libsndfile says on ENOSPC

    monkeypatch.setattr(soundfile.SoundFile, "write", system_error)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 0))
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "demo",
                 "--bits", str(bits), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"cannot write {tmp_path / 'out' / 'song'}" in err, err
    assert "no space left on the device" in err, err
    assert not (tmp_path / "out").exists()  # not even the folders it created


def test_atomic_path_names_the_file_when_a_write_fails(tmp_path):
    import errno

    from d3net.errors import D3NetError
    from d3net.utils import atomic_path

    target = tmp_path / "model.safetensors"
    with pytest.raises(D3NetError, match=f"cannot write {target}: No space left on device"):
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):  # not a write failure: a bug stays a bug
        with atomic_path(target):
            raise ValueError("unrelated")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not POSIX, reason="POSIX permission bits")
def test_generated_datasets_are_readable_by_others(tmp_path, umask_022):
    """Every file of a command's output tree gets the usual mode (was 600)."""
    from d3net.cli import main

    assert main(["data", "synth-cityscapes", "--out", str(tmp_path / "city"), "--images", "2",
                 "--size", "32x64", "-q"]) == 0
    assert main(["data", "synth-musdb", "--out", str(tmp_path / "musdb"), "--tracks", "2",
                 "--seconds", "0.3", "-q"]) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10
    assert {p.name: oct(mode(p)) for p in files if mode(p) != 0o644} == {}
