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

    from d3net.segment import write_outputs

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
