"""Scoring: own SDR by hand, museval agreement, JSON files, Table-4 summaries."""
import json
import math

import numpy as np
import pytest

from d3net.configs import TARGETS
from d3net.errors import D3NetError
from d3net.evaluate import sdr

SR = 8000


def _song(seconds=3.0, channels=2, seed=0):
    """Four smooth random 'sources' (low-passed noise plus a tone), non-silent."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = {}
    for i, name in enumerate(TARGETS):
        noise = np.cumsum(rng.standard_normal((channels, n)), axis=1)
        noise -= noise.mean(axis=1, keepdims=True)
        tone = np.sin(2 * np.pi * (110 * (i + 1)) * t)
        out[name] = (0.5 * noise / np.abs(noise).max() + 0.3 * tone).astype(np.float32)
    return out


def test_own_sdr_matches_hand_computation():
    ref = np.array([[1.0, 2.0, 0.0, 0.0, 3.0, -1.0, 0.5]])
    est = np.array([[1.5, 2.0, 1.0, 0.0, 2.0, -1.0, 9.0]])
    values = sdr.own_sdr(ref, est, win=2, hop=2)
    # frames [0,2), [2,4), [4,6); the partial frame [6,7) is dropped as museval does
    assert values.shape == (3,)
    assert values[0] == pytest.approx(10 * math.log10(5.0 / 0.25), abs=1e-6)
    assert math.isnan(values[1])  # silent reference frame
    assert values[2] == pytest.approx(10 * math.log10(10.0 / 1.0), abs=1e-6)
    # a window longer than the signal gives one frame over everything
    whole = sdr.own_sdr(ref, est, win=100, hop=100)
    expected = 10 * math.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2))
    assert whole == pytest.approx([expected], abs=1e-6)


def test_perfect_estimate_scores_high_and_mixture_low():
    refs = _song()
    mixture = sum(refs.values())
    rng = np.random.default_rng(1)
    noisy = {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in refs.items()}
    perfect = sdr.score_track(refs, refs, SR, scorer="own")
    good = sdr.score_track(refs, noisy, SR, scorer="own")
    trivial = sdr.score_track(refs, {k: mixture for k in refs}, SR, scorer="own")
    assert perfect["scorer"] == "own"
    for target in list(TARGETS) + ["accompaniment"]:
        assert perfect["median"][target]["SDR"] > 60
        assert good["median"][target]["SDR"] > trivial["median"][target]["SDR"] + 5
        assert len(perfect["frames"][target]["SDR"]) == 3
        assert math.isnan(perfect["median"][target]["SIR"])  # own scorer: SDR only
    assert trivial["median"]["vocals"]["SDR"] < 3


def test_silent_frame_is_nan_for_every_source_scored_together():
    refs = _song()
    refs["bass"][:, SR:2 * SR] = 0.0  # the bass rests during the second frame
    scores = sdr.score_track(refs, {k: v * 0.9 for k, v in refs.items()}, SR, scorer="own")
    for target in TARGETS:
        frames = scores["frames"][target]["SDR"]
        assert math.isnan(frames[1]) and not math.isnan(frames[0]) and not math.isnan(frames[2])
    # vocals + accompaniment are a separate group: bass silence does not silence it
    assert not math.isnan(scores["frames"]["accompaniment"]["SDR"][1])


def test_estimates_are_padded_or_cut_and_bad_inputs_raise():
    refs = _song()
    short = {k: v[:, :-100] for k, v in refs.items()}
    scores = sdr.score_track(refs, short, SR, scorer="own")
    assert len(scores["frames"]["vocals"]["SDR"]) == 3
    with pytest.raises(D3NetError, match="channels"):
        sdr.score_track({"vocals": refs["vocals"]}, {"vocals": refs["vocals"][:1]}, SR, scorer="own")
    with pytest.raises(D3NetError, match="no target"):
        sdr.score_track({"vocals": refs["vocals"]}, {"drums": refs["drums"]}, SR, scorer="own")
    with pytest.raises(D3NetError, match="scorer"):
        sdr.score_track(refs, refs, SR, scorer="bsseval")


def test_auto_falls_back_to_own_when_museval_is_missing(monkeypatch):
    refs = _song(seconds=2.0)
    monkeypatch.setattr(sdr, "museval_problem", lambda: "museval cannot be imported (no ffmpeg)")
    assert sdr.score_track(refs, refs, SR, scorer="auto")["scorer"] == "own"
    with pytest.raises(D3NetError, match="ffmpeg"):
        sdr.score_track(refs, refs, SR, scorer="museval")


@pytest.mark.skipif(sdr.museval_problem(), reason=f"museval unusable: {sdr.museval_problem()}")
def test_museval_scorer_agrees_with_own_sdr():
    # two mono sources keep museval's least-squares system small (2 x 512 unknowns)
    refs = {k: v[:1] for k, v in _song(seconds=3.0).items() if k in ("vocals", "bass")}
    rng = np.random.default_rng(2)
    ests = {"vocals": refs["vocals"] + 0.3 * refs["bass"] + 0.02 * rng.standard_normal(refs["vocals"].shape),
            "bass": refs["bass"] + 0.1 * refs["vocals"]}
    museval_scores = sdr.score_track(refs, ests, SR, scorer="museval")
    own_scores = sdr.score_track(refs, ests, SR, scorer="own")
    assert museval_scores["scorer"] == "museval"
    for target in ("vocals", "bass"):
        np.testing.assert_allclose(museval_scores["frames"][target]["SDR"],
                                   own_scores["frames"][target]["SDR"], atol=1e-6)
        assert math.isfinite(museval_scores["median"][target]["SIR"])
    # the bass leaks less into vocals than vocals into bass: SIR orders accordingly
    assert museval_scores["median"]["bass"]["SIR"] > museval_scores["median"]["vocals"]["SIR"]


def test_json_round_trip_and_resume(tmp_path):
    refs = _song()
    refs["bass"][:, SR:2 * SR] = 0.0
    scores = sdr.score_track(refs, {k: v * 0.8 for k, v in refs.items()}, SR, scorer="own")
    path = sdr.track_json_path(tmp_path, "Artist - Song", subset="test")
    assert path == tmp_path / "test" / "Artist - Song.json"
    sdr.save_track_json(path, "Artist - Song", scores)
    document = json.loads(path.read_text())
    assert document["scorer"] == "own" and document["museval_version"]
    names = [t["name"] for t in document["targets"]]
    assert names == ["vocals", "drums", "bass", "other", "accompaniment"]
    frame = document["targets"][0]["frames"][2]
    assert frame["time"] == 2.0 and frame["duration"] == 1.0
    assert set(frame["metrics"]) == {"SDR", "SIR", "SAR", "ISR"}
    assert "NaN" in path.read_text()  # undefined frames are written as museval writes them

    back = sdr.load_track_json(path)
    assert back["scorer"] == "own" and back["track"] == "Artist - Song"
    for target in names:
        assert back["median"][target]["SDR"] == pytest.approx(scores["median"][target]["SDR"], abs=1e-4)
    assert math.isnan(back["frames"]["vocals"]["SDR"][1])

    (tmp_path / "test" / "broken.json").write_text("{not json")
    assert list(sdr.load_results(tmp_path)) == ["Artist - Song"]  # the broken file skipped
    assert sdr.load_results(tmp_path / "missing") == {}
    assert not list((tmp_path / "test").glob(".*part"))  # atomic write left no temp file

    if sdr.museval_problem() is None:  # museval's own reader understands the file
        from museval.aggregate import json2df
        df = json2df(json.loads(path.read_text()), "Artist - Song")
        assert set(df["target"]) == set(names)


def _fake_scores(medians: dict, scorer="museval"):
    return {"scorer": scorer, "frames": {},
            "median": {t: {"SDR": v, "SIR": v + 1, "ISR": v + 2, "SAR": v + 3}
                       for t, v in medians.items()}}


def test_summarize_median_over_tracks_and_average():
    tracks = {
        "a": _fake_scores({"vocals": 1.0, "drums": 2.0, "bass": 3.0, "other": 4.0, "accompaniment": 10.0}),
        "b": _fake_scores({"vocals": 3.0, "drums": 4.0, "bass": 5.0, "other": 6.0, "accompaniment": 12.0}),
        "c": _fake_scores({"vocals": 8.0, "drums": 0.0, "bass": 4.0, "other": math.nan, "accompaniment": 11.0}),
    }
    table = sdr.summarize(tracks)
    assert table.num_tracks == 3 and table.scorers == ["museval"]
    sdr_row = table["SDR"]
    assert sdr_row["vocals"] == 3.0 and sdr_row["drums"] == 2.0 and sdr_row["bass"] == 4.0
    assert sdr_row["other"] == 5.0  # NaN track ignored
    assert sdr_row["accompaniment"] == 11.0
    assert sdr_row["average"] == pytest.approx((3 + 2 + 4 + 5) / 4)
    assert table["SAR"]["vocals"] == 6.0


def test_format_table_like_table_4():
    table = sdr.summarize([_fake_scores({"vocals": 7.244, "drums": 7.01, "bass": 5.25, "other": 4.53})])
    text = sdr.format_table(table, metrics=("SDR", "SIR"))
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Metric (dB)", "Vocals", "Drums", "Bass", "Other", "Acco.", "Avg."]
    assert set(lines[1]) <= {"|", "-"}
    sdr_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert sdr_cells == ["SDR", "7.24", "7.01", "5.25", "4.53", "-", "6.01"]
    assert lines[3].split("|")[1].strip() == "SIR"
    assert "1 track;" in text and "museval" in text


@pytest.mark.parametrize("scorer", ["own", "museval"])
def test_silent_estimate_is_scored_alone(scorer):
    if scorer == "museval" and sdr.museval_problem():
        pytest.skip(f"museval unusable: {sdr.museval_problem()}")
    refs = {k: v[:1] for k, v in _song(seconds=3.0).items() if k in ("vocals", "bass", "drums")}
    ests = {"vocals": refs["vocals"] * 0.9, "bass": np.zeros_like(refs["bass"]),
            "drums": refs["drums"] * 0.5}
    scores = sdr.score_track(refs, ests, SR, scorer=scorer)
    assert scores["median"]["bass"]["SDR"] == pytest.approx(0.0, abs=1e-6)  # ||s||^2 / ||s||^2
    assert scores["median"]["vocals"]["SDR"] == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.01)
    assert scores["median"]["drums"]["SDR"] == pytest.approx(20 * math.log10(2), abs=1e-3)


# ------------------------------------------ length rule of every scoring entry point (issue 12)

def _fit(array, length):
    return np.pad(array, ((0, 0), (0, max(0, length - array.shape[1]))))[:, :length]


@pytest.mark.parametrize("scorer", ["own", "museval"])
@pytest.mark.parametrize("change", [+300, -300, "mixed"])
def test_score_track_pads_or_cuts_estimates_before_the_accompaniment(scorer, change):
    """The issue's case: estimates of another length than the references raised a numpy
    broadcasting error once the accompaniment was summed. Longer, shorter and mixed
    lengths must score exactly like estimates padded / cut by hand."""
    if scorer == "museval" and sdr.museval_problem():
        pytest.skip(f"museval unusable: {sdr.museval_problem()}")
    refs = {k: v[:1] for k, v in _song(seconds=2.0).items()}  # mono keeps museval quick
    n = refs["vocals"].shape[1]
    rng = np.random.default_rng(3)
    noisy = {k: v + 0.05 * rng.standard_normal((1, n + 300)).astype(np.float32)[:, :n]
             for k, v in refs.items()}
    offsets = dict(zip(TARGETS, (+300, -300, +7, -1))) if change == "mixed" else \
        {k: change for k in refs}
    lengths = {k: n + offsets[k] for k in refs}
    ests = {k: _fit(np.pad(v, ((0, 0), (0, 300))), lengths[k]) for k, v in noisy.items()}
    by_hand = {k: _fit(v, n) for k, v in ests.items()}
    scores = sdr.score_track(refs, ests, SR, scorer=scorer)
    expected = sdr.score_track(refs, by_hand, SR, scorer=scorer)
    assert set(scores["median"]) == set(TARGETS) | {"accompaniment"}
    for target in scores["frames"]:
        np.testing.assert_allclose(scores["frames"][target]["SDR"],
                                   expected["frames"][target]["SDR"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("change", [+50, -50])
def test_own_sdr_pads_or_cuts_the_estimate(change):
    """Another public entry point: own_sdr broadcast-failed on a shorter estimate and
    silently ignored the tail of a longer one without saying so."""
    ref = _song(seconds=1.0)["vocals"]
    est = _fit(0.8 * ref, ref.shape[1] + change)
    np.testing.assert_allclose(sdr.own_sdr(ref, est, SR // 4, SR // 4),
                               sdr.own_sdr(ref, _fit(est, ref.shape[1]), SR // 4, SR // 4))
    with pytest.raises(D3NetError, match="channels"):
        sdr.own_sdr(ref, est[:1], SR, SR)


def test_mismatched_references_and_channels_raise_one_d3net_error():
    refs = _song(seconds=1.0)
    uneven = dict(refs, bass=refs["bass"][:, :-10])
    with pytest.raises(D3NetError, match="references have different lengths.*bass"):
        sdr.score_track(uneven, refs, SR, scorer="own")
    mono_bass = dict(refs, bass=refs["bass"][:1])
    with pytest.raises(D3NetError, match="bass estimate has 2 channels"):
        sdr.score_track(mono_bass, refs, SR, scorer="own")
    with pytest.raises(D3NetError, match=r"expected a \(channels, samples\) array"):
        sdr.score_track(refs, dict(refs, vocals=refs["vocals"][None]), SR, scorer="own")


# ------------------------------------------------ vocals-only: the vocals/accompaniment scenario

@pytest.mark.parametrize("scorer", ["own", "museval"])
def test_vocals_alone_are_scored_against_the_accompaniment(scorer):
    """The issue's case: a vocals-only model got vocals SIR "-" (vocals scored with no
    interferer). They are scored in museval's vocals/accompaniment scenario instead, and
    the table's footer says so."""
    if scorer == "museval" and sdr.museval_problem():
        pytest.skip(f"museval unusable: {sdr.museval_problem()}")
    song = {k: v[:1] for k, v in _song(seconds=3.0).items()}
    accompaniment = song["drums"] + song["bass"] + song["other"]
    refs = {"vocals": song["vocals"], "accompaniment": accompaniment}
    ests = {"vocals": song["vocals"] + 0.2 * accompaniment,
            "accompaniment": 0.9 * accompaniment + 0.1 * song["vocals"]}
    scores = sdr.score_track(refs, ests, SR, scorer=scorer, accompaniment=False)
    assert scores["scenarios"] == {"vocals": "vocals+accompaniment",
                                   "accompaniment": "vocals+accompaniment"}
    if scorer == "museval":
        assert math.isfinite(scores["median"]["vocals"]["SIR"])
        pair = sdr.score_track(refs, ests, SR, scorer="museval")
        assert scores["frames"]["vocals"]["SIR"] == pair["frames"]["vocals"]["SIR"]
    text = sdr.format_table(sdr.summarize([scores]), metrics=sdr.METRICS)
    assert "scored together: vocals+accompaniment for Vocals, Acco." in text
    assert "vocals/accompaniment scenario" in text
    if scorer == "museval":
        assert [c.strip() for c in text.splitlines()[3].split("|")][2] != "-"  # vocals SIR

    # with all four sources, vocals keep the four-source scores (the official evaluation)
    four = sdr.score_track(song, {k: 0.9 * v for k, v in song.items()}, SR, scorer="own")
    assert four["scenarios"]["vocals"] == "vocals+drums+bass+other"
    assert four["scenarios"]["accompaniment"] == "vocals+accompaniment"
    note = sdr.scenario_note(sdr.summarize([four]))
    assert note == ("scored together: vocals+drums+bass+other for Vocals, Drums, Bass, Other; "
                    "vocals+accompaniment for Acco.")
