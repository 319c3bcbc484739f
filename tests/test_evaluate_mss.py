"""``evaluate_mss`` / ``d3net evaluate mss``: separate, score, per-track JSON, resume, table."""
from __future__ import annotations

import argparse
import json
import math
import shutil

import numpy as np
import pytest
import torch

from d3net import models
from d3net.data import musdb
from d3net.data.synth_music import generate_dataset
from d3net.errors import D3NetError
from d3net.evaluate import mss as evaluate_module
from d3net.evaluate import sdr
from d3net.evaluate.mss import evaluate_mss
from d3net.evaluate.sdr import resolve_scorer
from d3net.train.mss import xavier_init_

from conftest import TINY_MSS as TINY


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth-musdb")
    generate_dataset(root, subsets={"train": 1, "test": 2}, seconds=1.5, seed=11, progress=False)
    return root


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    """Untrained tiny vocals and drums models (official init, real input statistics)."""
    folder = tmp_path_factory.mktemp("models")
    mean, scale = musdb.compute_input_stats(musdb.list_tracks(data, "train"), progress=False)
    torch.manual_seed(0)
    for target in ("vocals", "drums"):
        model = xavier_init_(models.create(dict(TINY, target=target)))
        model.set_input_stats(mean, scale)
        models.save(model, folder / f"{target}.safetensors")
    return folder


@pytest.fixture(scope="module")
def scored(data, model_dir, tmp_path_factory):
    """One evaluation of the test subset with the own scorer, shared by the tests."""
    out = tmp_path_factory.mktemp("scores")
    lines = []
    result = evaluate_mss(data, model_dir, out_dir=out, scorer="own", progress=False,
                          log=lines.append)
    return out, result, lines


def test_scores_every_track_writes_json_and_summarises(data, scored):
    out, result, lines = scored
    assert lines == ["scoring with own"]
    names = [t.name for t in musdb.list_tracks(data, "test")]
    assert list(result.tracks) == names and result.skipped == [] and result.scorer == "own"
    for name in names:
        scores = sdr.load_track_json(out / "test" / f"{name}.json")
        assert scores["scorer"] == "own"
        assert set(scores["frames"]) == {"vocals", "drums", "accompaniment"}
        assert len(scores["frames"]["vocals"]["SDR"]) == 1  # 1.5 s: one 1 s frame
    table = result.table
    for column in ("vocals", "drums", "accompaniment", "average"):
        assert math.isfinite(table["SDR"][column]), column
    assert math.isnan(table["SDR"]["bass"]) and math.isnan(table["SDR"]["other"])
    assert table["SDR"]["average"] == pytest.approx(
        (table["SDR"]["vocals"] + table["SDR"]["drums"]) / 2)
    text = result.format()
    for header in ("Vocals", "Drums", "Bass", "Other", "Acco.", "Avg."):
        assert header in text
    assert "scorer: own" in text and "SIR" not in text
    # median over tracks of the per-track medians
    per_track = [result.tracks[n]["median"]["vocals"]["SDR"] for n in names]
    assert table["SDR"]["vocals"] == pytest.approx(float(np.median(per_track)))


def test_resumes_and_skips_tracks_already_scored(data, model_dir, scored, tmp_path,
                                                 monkeypatch):
    out = tmp_path / "scores"
    shutil.copytree(scored[0], out)
    first = scored[1]
    names = list(first.tracks)

    # everything scored by the same models and options: nothing is separated
    def no_separation(*args, **kwargs):
        raise AssertionError("nothing should be separated")

    monkeypatch.setattr(evaluate_module, "_score_track", no_separation)
    again = evaluate_mss(data, model_dir, out_dir=out, scorer="own", progress=False)
    assert again.skipped == names
    # read back from the JSON files, rounded to 5 decimals as museval writes them
    assert again.table.values["SDR"] == pytest.approx(first.table.values["SDR"], abs=1e-4,
                                                      nan_ok=True)
    monkeypatch.undo()

    # one file lost (interrupted run): only that track is separated again
    (out / "test" / f"{names[1]}.json").unlink()
    calls = []
    real = evaluate_module._score_track
    monkeypatch.setattr(evaluate_module, "_score_track",
                        lambda sep, track, *a: calls.append(track.name) or real(sep, track, *a))
    third = evaluate_mss(data, model_dir, out_dir=out, scorer="own", progress=False)
    assert calls == [names[1]] and third.skipped == [names[0]]
    assert (out / "test" / f"{names[1]}.json").is_file()


def test_auto_scorer_falls_back_and_says_so(monkeypatch):
    monkeypatch.setattr(sdr, "museval_problem", lambda: "museval cannot be imported (no ffmpeg)")
    scorer, note = resolve_scorer("auto")
    assert scorer == "own" and "no ffmpeg" in note and "own SDR" in note
    with pytest.raises(D3NetError, match="no ffmpeg"):
        resolve_scorer("museval")
    with pytest.raises(D3NetError, match="scorer must be"):
        resolve_scorer("bsseval")


def test_museval_scores_when_available(data, model_dir, tmp_path):
    if sdr.museval_problem():
        pytest.skip(f"museval unusable here: {sdr.museval_problem()}")
    name = musdb.list_tracks(data, "test")[0].name
    result = evaluate_mss(data, model_dir, out_dir=tmp_path, scorer="auto", progress=False,
                          track_names=[name])
    assert result.scorer == "museval"
    scores = sdr.load_track_json(tmp_path / "test" / f"{name}.json")
    assert scores["scorer"] == "museval"
    assert math.isfinite(scores["median"]["vocals"]["SIR"])  # museval fills all four metrics
    assert "SIR" in result.format()


def test_cli_prints_the_table(data, model_dir, tmp_path, capsys, monkeypatch):
    from d3net.cli import evaluate as evaluate_cli

    parser = argparse.ArgumentParser(prog="d3net")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    name = musdb.list_tracks(data, "test")[0].name
    args = parser.parse_args(["evaluate", "mss", "--root", str(data), "--model", str(model_dir),
                              "--out", str(tmp_path / "s"), "--scorer", "own", "--tracks", name,
                              "-q"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| Metric (dB)" in printed and "Vocals" in printed and "scorer: own" in printed
    assert "over 1 track;" in printed and (tmp_path / "s" / "test" / f"{name}.json").is_file()

    args = parser.parse_args(["evaluate", "mss", "--root", str(data), "--scorer", "own"])
    with pytest.raises(D3NetError, match="no music separation model given"):
        args.func(args)
    args = parser.parse_args(["evaluate", "mss", "--root", str(data), "--model",
                              str(tmp_path / "nothing"), "--scorer", "own", "-q"])
    with pytest.raises(D3NetError, match="model not found"):
        args.func(args)
    args = parser.parse_args(["evaluate", "mss", "--root", str(data), "--model", str(model_dir),
                              "--tracks", "no-such-song", "-q"])
    with pytest.raises(D3NetError, match="no track.*no-such-song"):
        args.func(args)


# --------------------------------------- reused results must come from the same models (issue 12)

def test_results_of_other_models_or_options_are_never_reused(data, tmp_path, capsys):
    """The issue's case: evaluate with the demo model, then with a folder holding only
    its vocals model into the same --out: the demo's drums, bass and other scores were
    printed for a model that has none. Now refused in one line, or recomputed with
    --overwrite; a copy of the same model elsewhere is still reused."""
    from d3net.cli import main
    from d3net.demo import bundled_model_dir

    name = musdb.list_tracks(data, "test")[0].name
    out = tmp_path / "scores"
    vocals_only = tmp_path / "vocals-only"
    vocals_only.mkdir()
    shutil.copy(bundled_model_dir() / "vocals.safetensors", vocals_only)
    common = ["evaluate", "mss", "--root", str(data), "--out", str(out), "--scorer", "own",
              "--tracks", name, "-q"]

    assert main(common + ["--model", "demo"]) == 0
    capsys.readouterr()
    json_path = out / "test" / f"{name}.json"
    before = json_path.read_bytes()
    assert main(common + ["--model", str(vocals_only)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{json_path}: not reused because it was produced by other models (targets " \
           "bass+drums+other+vocals then, vocals now); pass --overwrite" in err
    assert json_path.read_bytes() == before

    assert main(common + ["--model", str(vocals_only), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    row = [c.strip() for c in printed.splitlines()[2].split("|")[1:-1]]
    assert row[0] == "SDR" and row[1] != "-" and row[2:5] == ["-", "-", "-"]  # no drums/bass/other
    assert "vocals+accompaniment for Vocals, Acco." in printed
    stored = sdr.load_track_json(json_path)
    assert set(stored["frames"]) == {"vocals", "accompaniment"}
    assert list(stored["provenance"]["models"]) == ["vocals"]

    # the same weights in another folder: same fingerprint, reused
    copy = tmp_path / "copy"
    shutil.copytree(vocals_only, copy)
    reused = evaluate_mss(data, copy, out_dir=out, scorer="own", progress=False,
                          track_names=[name])
    assert reused.skipped == [name] and reused.recomputed == []

    # other options are refused too
    with pytest.raises(D3NetError, match="other options .wiener_iterations 1 then, 0 now"):
        evaluate_mss(data, copy, out_dir=out, scorer="own", progress=False,
                     track_names=[name], wiener_iterations=0)


def test_results_without_a_record_are_not_reused(data, model_dir, scored, tmp_path):
    """Another member: a museval JSON (or one from an older d3net) says nothing about the
    model that produced it."""
    out = tmp_path / "scores"
    shutil.copytree(scored[0], out)
    name = list(scored[1].tracks)[0]
    path = out / "test" / f"{name}.json"
    document = json.loads(path.read_text())
    assert document["provenance"]["separation"]["wiener_iterations"] == 1
    del document["provenance"]
    path.write_text(json.dumps(document))
    with pytest.raises(D3NetError, match="holds no record of the model and options"):
        evaluate_mss(data, model_dir, out_dir=out, scorer="own", progress=False)
    result = evaluate_mss(data, model_dir, out_dir=out, scorer="own", progress=False,
                          overwrite=True)
    assert result.recomputed == [name] and result.skipped == list(scored[1].tracks)[1:]


def test_unwritable_out_is_refused_before_separating(data, model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(evaluate_module, "_score_track",
                        lambda *a: pytest.fail("separated before checking --out"))
    with pytest.raises(D3NetError, match="file.txt is a file, not a folder"):
        evaluate_mss(data, model_dir, out_dir=blocker / "scores", scorer="own", progress=False)


def test_tracks_sharing_a_result_file_are_refused(data, model_dir, tmp_path):
    """Another member of 'results silently lost': two tracks whose per-track JSON is one
    file ('Song' and 'song' on a case-insensitive disk; a folder 'X' next to 'X.stem.mp4')
    would overwrite each other's scores."""
    root = tmp_path / "data"
    first = musdb.list_tracks(data, "test")[0]
    for name in ("Song", "song"):
        shutil.copytree(first.paths["mixture"].parent, root / "test" / name)
    with pytest.raises(D3NetError, match="would both be written as .*one name on "
                                         "case-insensitive file systems"):
        evaluate_mss(root, model_dir, out_dir=tmp_path / "scores", scorer="own",
                     progress=False)
    assert not (tmp_path / "scores").exists()
