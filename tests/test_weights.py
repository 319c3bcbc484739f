"""Named weights fetched, verified, converted and cached on first use (d3net.models.hub).

A local HTTP server on 127.0.0.1 (conftest.py's ``server`` fixture) serves archives and
files built from the official fixtures (``../shared/fixtures/official/``: the four music ``.h5`` zipped
as ``d3net-mss.zip``, ``seg/d3net_s.h5`` as ``D3Net-S.h5``, and a backbone-only file made
from it); ``D3NET_WEIGHTS_MIRROR`` points the registry at it and the music archive's
published SHA-1 is patched to the zip's. Nothing here reaches beyond 127.0.0.1 (conftest
points every other test at an address where nothing listens).
"""
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from d3net import models
from d3net.cli import main
from d3net.configs import TARGETS
from d3net.convert import convert_nnabla, load_nnabla
from d3net.errors import D3NetError
from d3net.models import hub
from d3net.models import weights as registry
from d3net.utils import cache_home

from conftest import same_weights


def cache_entries():
    """What the weights cache holds, lock files aside."""
    root = hub.weights_dir()
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) \
        if root.is_dir() else []


def one_line_error(name, match):
    with pytest.raises(D3NetError) as caught:
        hub.fetch(name, progress=False)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for part in match:
        assert part in message, message
    return message


# ----------------------------------------------------------------------------- first use

@pytest.mark.slow
def test_separate_fetches_official_mss_once_and_matches_hand_conversion(
        server, served, official, tmp_path):
    t = np.arange(44100) / 44100
    song = tmp_path / "song.wav"
    soundfile.write(str(song), np.stack([0.3 * np.sin(2 * np.pi * 220 * t),
                                         0.2 * np.sin(2 * np.pi * 330 * t)], 1), 44100,
                    subtype="FLOAT")
    # PyTorch float32: equal weights give equal samples (OpenVINO's bfloat16 need not)
    options = ["--targets", "vocals", "--no-flip", "--bits", "32", "--backend", "torch",
               "--precision", "float32", "-q"]

    # first use, no --model: the default official-mss is fetched, verified, converted
    assert main(["separate", str(song), "-o", str(tmp_path / "first"), *options]) == 0
    assert server.requests == ["/mss/d3net-mss.zip"]
    folder = hub.weights_dir() / "official-mss"
    assert sorted(p.name for p in folder.iterdir()) == \
        sorted([f"{t}.safetensors" for t in TARGETS] + ["source.json"])
    assert cache_entries() == ["official-mss"]  # no temporary leftovers
    record = json.loads((folder / "source.json").read_text())
    archive = served["/mss/d3net-mss.zip"].read_bytes()
    assert record["url"] == server.url + "/mss/d3net-mss.zip"
    assert record["official_url"] == registry.OFFICIAL_PREFIX + "mss/d3net-mss.zip"
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()
    assert record["published_sha1"] == hashlib.sha1(archive).hexdigest()
    assert record["bytes"] == len(archive) and record["d3net_version"]
    assert record["files"]["bass.safetensors"] == {"config": "mss-bass", "from": "bass.h5"}

    # the same as converting the official files by hand
    convert_nnabla(official / "mss", tmp_path / "by-hand")
    for target in TARGETS:
        assert same_weights(models.load(folder / f"{target}.safetensors"),
                            models.load(tmp_path / "by-hand" / f"{target}.safetensors"))
    assert main(["separate", str(song), "-o", str(tmp_path / "hand"), "--model",
                 str(tmp_path / "by-hand"), *options]) == 0
    def audio(folder):  # samples, not bytes: float WAVs carry a timestamped PEAK chunk
        return soundfile.read(str(tmp_path / folder / "song" / "vocals.wav"))[0]

    first = audio("first")
    assert np.abs(first).max() > 0 and np.array_equal(first, audio("hand"))

    # second use touches no network: the server is gone
    server.stop()
    from d3net.separate import Separator
    again = Separator.from_pretrained(targets=["vocals"])  # the Python default: official-mss
    assert same_weights(again.models["vocals"],
                        models.load(tmp_path / "by-hand" / "vocals.safetensors"))
    assert server.requests == ["/mss/d3net-mss.zip"]


def test_segment_fetches_official_d3net_s_and_matches_the_h5(server, official, tmp_path,
                                                            capsys):
    image = tmp_path / "street.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(image)

    assert main(["segment", str(image), "-o", str(tmp_path / "first")]) == 0  # default
    err = capsys.readouterr().err
    assert f"downloading official-d3net-s (about 41 MB) from {server.url}" in err
    assert server.requests == ["/semantic-segmentation/D3Net-S.h5"]
    cached = hub.weights_dir() / "official-d3net-s" / "model.safetensors"
    assert hub.model_path("official-d3net-s") == cached and hub.is_cached("official-d3net-s")
    record = json.loads((cached.parent / hub.RECORD).read_text())
    assert record["published_sha1"] is None and "strict conversion" in record["verified_by"]
    assert record["sha256"] == hashlib.sha256(
        (official / "seg" / "d3net_s.h5").read_bytes()).hexdigest()
    assert models.read_metadata(cached)["weights"] == "official-d3net-s"

    # the official file given by hand gives the same labels
    assert main(["segment", str(image), "-o", str(tmp_path / "hand"), "-q", "--model",
                 str(official / "seg" / "d3net_s.h5")]) == 0
    for name in ("street_labelIds.png", "street_overlay.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "first" / name)),
                              np.asarray(Image.open(tmp_path / "hand" / name)))

    server.stop()  # second use: no network
    assert main(["segment", str(image), "-o", str(tmp_path / "second"), "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "second" / "street_labelIds.png")),
                          np.asarray(Image.open(tmp_path / "first" / "street_labelIds.png")))
    from d3net.segment import Segmenter
    assert same_weights(Segmenter.from_pretrained().model,  # the Python default, cached
                        load_nnabla(official / "seg" / "d3net_s.h5"))
    assert server.requests == ["/semantic-segmentation/D3Net-S.h5"]


def test_backbone_by_name_for_fine_tuning(server, official):
    torch.manual_seed(0)
    model = models.d3net_s(num_classes=5, weights_backbone="official-d3net-s-backbone",
                           progress=False)
    reference = load_nnabla(official / "seg" / "d3net_s.h5")
    assert same_weights(model.backbone, reference.backbone)
    assert model.head.classifier.out_channels == 5
    cached = hub.model_path("official-d3net-s-backbone")
    assert models.read_metadata(cached)["backbone_only"] == "true"
    with pytest.raises(D3NetError, match="ImageNet backbone"):
        models.load("official-d3net-s-backbone")
    with pytest.raises(D3NetError, match="ImageNet backbone"):
        models.load(cached)
    assert server.requests == ["/semantic-segmentation/D3Net-S-pretrained-backbone.h5"]


# ----------------------------------------------------------------------------- failures

def test_wrong_hash_fails_in_one_line_and_caches_nothing(server, monkeypatch):
    monkeypatch.setitem(registry.WEIGHTS, "official-mss", dataclasses.replace(
        registry.WEIGHTS["official-mss"], sha1="0" * 40))
    one_line_error("official-mss", [server.url + "/mss/d3net-mss.zip", "SHA-1",
                                    "not the published " + "0" * 40, "nothing was cached"])
    assert cache_entries() == [] and not hub.is_cached("official-mss")


def test_truncated_download_fails_in_one_line_and_caches_nothing(server):
    server.set("truncated")
    # with a published hash: the hash catches it
    one_line_error("official-mss", ["SHA-1", "truncated or altered", "nothing was cached"])
    # without one: the strict conversion catches it
    message = one_line_error("official-d3net-s", [
        server.url + "/semantic-segmentation/D3Net-S.h5",
        "not the expected official-d3net-s weights", "nothing was cached"])
    assert "D3Net-S.h5" in message and str(hub.weights_dir()) not in message
    assert cache_entries() == []
    assert len(server.requests) == 2


def test_corrupt_archive_fails_in_one_line(server, served, tmp_path, monkeypatch):
    bad = tmp_path / "d3net-mss.zip"
    bad.write_bytes(b"PK\x03\x04" + bytes(1000))
    monkeypatch.setitem(server.httpd.files, "/mss/d3net-mss.zip", bad)
    monkeypatch.setitem(registry.WEIGHTS, "official-mss", dataclasses.replace(
        registry.WEIGHTS["official-mss"], sha1=None))  # only the archive check is left
    one_line_error("official-mss", ["not a complete zip archive", "nothing was cached"])
    assert cache_entries() == []


def test_unreachable_server_names_the_url_and_the_manual_route():
    # conftest's mirror: a port on 127.0.0.1 where nothing listens
    one_line_error("official-d3net-l", [
        "cannot fetch official-d3net-l from http://127.0.0.1:9/semantic-segmentation/D3Net-L.h5",
        "d3net convert nnabla D3Net-L.h5 -o DIR", "--model DIR"])
    one_line_error("official-mss", ["d3net convert nnabla d3net-mss.zip -o DIR"])
    one_line_error("official-d3net-l-backbone", ["--pretrained-backbone DIR"])
    assert cache_entries() == []


def test_missing_file_on_the_server(server):
    one_line_error("official-d3net-l", ["HTTP 404", "d3net convert nnabla D3Net-L.h5"])
    assert cache_entries() == []


def test_unwritable_cache_is_one_line(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("D3NET_HOME", str(blocker / "home"))
    one_line_error("official-d3net-s", ["cannot write the weights cache", "D3NET_HOME"])


def test_leftovers_of_a_killed_fetch_are_cleaned(server):
    root = hub.weights_dir()
    (root / ".official-d3net-s.dead.tmp").mkdir(parents=True)
    (root / "official-d3net-s").mkdir()  # incomplete: no record
    (root / "official-d3net-s" / "model.safetensors").write_bytes(b"half")
    assert not hub.is_cached("official-d3net-s")
    hub.fetch("official-d3net-s", progress=False)
    assert cache_entries() == ["official-d3net-s"] and hub.is_cached("official-d3net-s")
    models.load("official-d3net-s")


# ----------------------------------------------------------------------------- races

def test_two_processes_fetching_at_once_both_succeed_with_one_copy(server, official, tmp_path):
    gate = threading.Event()
    server.set(gate=gate)  # the first download hangs until the second process waits
    script = textwrap.dedent("""
        from d3net.models import hub
        print(hub.fetch("official-d3net-s"))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = [tmp_path / "first.err", tmp_path / "second.err"]

    def start(log):
        return subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=open(log, "w"))

    def wait_for(condition, what):
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    first = start(logs[0])
    try:
        wait_for(lambda: server.requests, "the first download to start")
        second = start(logs[1])
        try:
            wait_for(lambda: "waiting for another process" in logs[1].read_text(),
                     "the second process to wait for the lock")
            gate.set()
            outputs = [first.communicate(timeout=180)[0], second.communicate(timeout=180)[0]]
        finally:
            second.kill()
    finally:
        gate.set()
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, \
        [log.read_text() for log in logs]
    path = str(hub.model_path("official-d3net-s"))
    assert [out.strip() for out in outputs] == [path, path]
    assert server.requests == ["/semantic-segmentation/D3Net-S.h5"]  # one download
    assert cache_entries() == ["official-d3net-s"]
    assert sorted(p.name for p in (hub.weights_dir() / "official-d3net-s").iterdir()) == \
        ["model.safetensors", "source.json"]
    assert same_weights(models.load("official-d3net-s"),
                        load_nnabla(official / "seg" / "d3net_s.h5"))


# ----------------------------------------------------------------------------- settings

def test_cache_location_follows_torch_hub_conventions(monkeypatch, tmp_path):
    """One cache root for everything d3net caches (weights, OpenVINO conversions)."""
    monkeypatch.setenv("D3NET_HOME", str(tmp_path / "home"))
    assert hub.weights_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv("D3NET_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "d3net"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_home() == tmp_path / "user" / ".cache" / "d3net"


def test_mirror_replaces_the_official_prefix(monkeypatch):
    monkeypatch.delenv("D3NET_WEIGHTS_MIRROR")
    assert hub.download_url("official-mss") == \
        "https://nnabla.org/pretrained-models/ai-research-code/d3net/mss/d3net-mss.zip"
    monkeypatch.setenv("D3NET_WEIGHTS_MIRROR", "https://models.example.org/d3net/")
    assert hub.download_url("official-d3net-l-backbone") == \
        "https://models.example.org/d3net/semantic-segmentation/D3Net-L-pretrained-backbone.h5"
    assert hub.download_url("demo") is None


def test_registry_entries():
    names = ["official-mss", "official-d3net-s", "official-d3net-l",
             "official-d3net-s-backbone", "official-d3net-l-backbone", "demo"]
    assert list(registry.WEIGHTS) == names
    mss = registry.get_weights("official-mss")
    assert mss.sha1 == "ada6858b467628f2f57489f0e862982aeb87942c" and mss.archive == "zip"
    assert [m.source for m in mss.members] == [f"{t}.h5" for t in TARGETS]
    assert "6.03 dB" in mss.released and "6.01" in mss.released
    assert "79.9" in registry.get_weights("official-d3net-s").released
    assert "81.0" in registry.get_weights("official-d3net-l").released
    for weights in registry.WEIGHTS.values():
        assert weights.task in ("mss", "seg") and weights.licence and weights.source
        assert (weights.url is None) == (weights.bundled is not None)
    assert hub.is_cached("demo") and hub.fetch("demo") == hub.folder("demo")


# ----------------------------------------------------------------------------- CLI

def test_weights_cli_list_fetch_path(server, capsys):
    assert main(["weights", "path", "official-d3net-s"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d3net weights fetch official-d3net-s" in err

    assert main(["weights", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(registry.WEIGHTS) <= set(rows)
    assert "not cached" in rows["official-d3net-s"] and "~41 MB" in rows["official-d3net-s"]
    assert server.url + "/semantic-segmentation/D3Net-S.h5" in rows["official-d3net-s"]
    assert "bundled" in rows["demo"] and "79.9 mIoU" in rows["official-d3net-s"]
    assert main(["weights", "list", "-v"]) == 0
    verbose = capsys.readouterr().out
    assert "licence: published by Sony" in verbose and "paper Table 2: 80.6" in verbose

    assert main(["weights", "fetch", "official-d3net-s", "demo", "-q"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(hub.model_path("official-d3net-s")), str(hub.folder("demo"))]
    assert main(["weights", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert re.search(r" cached +39 MB ", rows["official-d3net-s"])  # the converted file
    assert main(["weights", "path", "official-d3net-s"]) == 0
    assert capsys.readouterr().out.strip() == str(hub.model_path("official-d3net-s"))

    assert main(["weights", "fetch", "official-xl"]) == 2
    assert "unknown weights 'official-xl'" in capsys.readouterr().err
