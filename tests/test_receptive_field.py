"""Receptive-field analysis: per-convolution blind spots (paper Fig. 3) and field growth.

Expected values are derived by hand from the dilations, independently of the gradient
measurement: with 3x3 kernels, source ``x_i`` of a D2 block sees ``[-(2**i - 1), 2**i - 1]``
of the block input in "multi" and "standard" mode, and a convolution with dilation ``d``
reading it covers three copies of that interval shifted by ``-d, 0, d``.
"""
import argparse

import numpy as np
import pytest
import torch
from torch import nn

import d3net.receptive_field as rf
from d3net.cli import receptive_field as rf_cli
from d3net.configs import BranchConfig, MSSConfig
from d3net.errors import D3NetError
from d3net.models import create
from d3net.nn import D2Block
from d3net.receptive_field import (analytic_field, analyze_block, analyze_d2_block, linearize,
                                   plot_coverage, receptive_field)


def covered_offsets(path_or_map):
    cov = getattr(path_or_map, "coverage", path_or_map)
    return set((np.flatnonzero(cov.profile > 0) - cov.centre[1]).tolist())


# ----------------------------------------------------------------------------- D2 blocks

@pytest.mark.parametrize("num_layers", [3, 4, 5])
def test_multidilation_has_no_blind_spots(num_layers):
    report = analyze_d2_block(num_layers, "multi", two_d=num_layers <= 4)
    assert len(report.paths) == num_layers * (num_layers + 1) // 2
    for path in report.paths:
        # source i is read with dilation 2**i, whatever the receiving layer
        assert path.dilation == 2 ** path.source
        assert path.blind_spots == 0 and path.blind_spots_2d == 0, path
        reach = 2 ** path.source - 1 + 2 ** path.source
        assert covered_offsets(path) == set(range(-reach, reach + 1))
    assert report.blind_paths == []
    assert report.field == analytic_field(num_layers, "multi") == 2 ** (num_layers + 1) - 1


def test_standard_dilation_has_the_blind_spots_of_fig3a():
    report = analyze_d2_block(3, "standard", two_d=True)
    blind = {(p.layer, p.source): p for p in report.blind_paths}
    # every skip path (a source other than the previous layer) from layer 2 on
    assert set(blind) == {(2, 0), (3, 0), (3, 1)}
    # layer 3 reads the input with dilation 4: it sees -4, 0, 4 and nothing between
    assert covered_offsets(blind[3, 0]) == {-4, 0, 4}
    assert blind[3, 0].blind_spots == 6 and blind[3, 0].field == 9
    assert blind[3, 0].blind_spots_2d == 9 * 9 - 3 * 3
    # ... and layer 1's output ([-1, 1]) with dilation 4: holes at -2 and 2
    assert covered_offsets(blind[3, 1]) == set(range(-5, 6)) - {-2, 2}
    assert blind[3, 1].blind_spots == 2
    # the path through every layer is whole, and so is the union: it hides the holes
    assert [p for p in report.paths if p.layer == 3][-1].blind_spots == 0
    assert report.overall.blind_spots == 0 and report.field == 15


@pytest.mark.parametrize("num_layers", [5])
def test_standard_blind_spot_counts_match_the_dilations(num_layers):
    report = analyze_d2_block(num_layers, "standard", two_d=False)
    for path in report.paths:
        d = 2 ** (path.layer - 1)                   # the layer's largest dilation
        assert path.dilation == d
        source_reach = 2 ** path.source - 1
        assert path.field == 2 * (source_reach + d) + 1
        expected = 2 * (d - 2 * source_reach - 1) if path.source < path.layer - 1 else 0
        assert path.blind_spots == expected, path
    # every path except the L direct ones (source = previous layer)
    assert len(report.blind_paths) == num_layers * (num_layers + 1) // 2 - num_layers


def test_no_dilation_is_linear_and_whole():
    fields = []
    for num_layers in range(2, 7):
        report = analyze_d2_block(num_layers, "none", two_d=False)
        assert report.blind_paths == []
        assert all(p.dilation == 1 for p in report.paths)
        fields.append(report.field)
    assert fields == [2 * n + 1 for n in range(2, 7)]


def test_multidilated_field_grows_exponentially():
    fields = [analyze_d2_block(n, "multi", two_d=False).field for n in range(1, 8)]
    assert fields == [1 + 2 * (2 ** n - 1) for n in range(1, 8)]
    assert all(b == 2 * a + 1 for a, b in zip(fields, fields[1:]))   # doubling
    none_fields = [analyze_d2_block(n, "none", two_d=False).field for n in (2, 7)]
    assert none_fields[1] - none_fields[0] == 2 * 5                 # vs. linear growth


def test_square_and_strip_windows_agree():
    square = analyze_d2_block(4, "standard", two_d=True)
    strip = analyze_d2_block(4, "standard", two_d=False)
    assert square.overall.gradient.shape[0] > 1 and strip.overall.gradient.shape[0] == 1
    for a, b in zip(square.paths, strip.paths):
        assert (a.layer, a.source, a.field, a.blind_spots) == (b.layer, b.source, b.field,
                                                               b.blind_spots)


def test_bottleneck_compression_and_growth_do_not_change_connectivity():
    block = D2Block(6, 3, 3, "standard", out_layers=3, bottleneck_channels=5, compression=0.5)
    report = analyze_block(block, two_d=False)
    assert {(p.layer, p.source) for p in report.blind_paths} == {(2, 0), (3, 0), (3, 1)}
    assert report.field == 15


def test_a_too_small_window_is_detected(monkeypatch):
    monkeypatch.setattr(rf, "_max_reach", lambda block: 3)
    with pytest.raises(RuntimeError, match="edge of the analysis window"):
        analyze_d2_block(4, "multi", two_d=False)


# ----------------------------------------------------------------------------- linearize

def test_linearize_ignores_learned_values_and_leaves_the_original_alone():
    block = D2Block(2, 2, 3, "multi")
    with torch.no_grad():
        for p in block.parameters():
            p.fill_(-1.0)            # would kill every ReLU of the original
    before = {k: v.clone() for k, v in block.state_dict().items()}
    copy = linearize(block)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert all(not m.inplace for m in copy.modules() if isinstance(m, nn.ReLU))
    convs = [m for m in copy.modules() if isinstance(m, nn.Conv2d)]
    assert all((m.weight > 0).all() and (m.bias == 0).all() for m in convs)
    for key, value in block.state_dict().items():
        assert torch.equal(value, before[key]), key
    cov = receptive_field(block, (1, 2, 21, 21))
    assert cov.extent == (15, 15) and cov.blind_spots == 0


def test_deep_networks_do_not_underflow_into_fake_blind_spots():
    # 60 stacked 3x3 convolutions on a one-row strip: the edge of the field is reached by
    # one path of weight (1/9)**60 ~ 1e-57, below float32's range (a plain gradient sees
    # only 99 positions); the field must still be 121 wide.
    depth = 60
    chain = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(depth)])
    cov = receptive_field(chain, (1, 1, 1, 2 * depth + 11))
    assert cov.field == 2 * depth + 1 and cov.blind_spots_1d == 0


# ----------------------------------------------------------------------------- any model

def tiny_mss():
    low = BranchConfig(4, (2, 2, 2), (4, 4, 4), (2, 2, 2))
    high = BranchConfig(2, (1, 1, 1), (2, 2, 2), (1, 1, 1))
    full = BranchConfig(4, (2, 3, 2), (4, 4, 4), (2, 2, 2))
    config = MSSConfig(name="tiny", fft_size=256, valid_bins=96, band_split=(32,),
                       bands=(low, high), full=full, final_growth_rate=4, final_num_layers=2)
    return create(config)


def test_receptive_field_of_a_music_model():
    model = tiny_mss()
    cov = receptive_field(model, (1, 2, 129, 16))          # (batch, channels, bins, frames)
    assert cov.gradient.shape == (129, 16)
    assert cov.centre == (64, 8) and cov.covered[64, 8]
    (top, bottom), _ = cov.bbox
    assert top > 0 and bottom == 95                      # nothing above the modelled bins
    assert not cov.covered[96:].any()
    assert cov.blind_spots == 0
    # a bin above valid_bins is copied from the input: it sees itself only
    copied = receptive_field(model, (1, 2, 129, 16), position=(110, 5))
    assert np.flatnonzero(copied.covered).tolist() == [110 * 16 + 5]


def test_receptive_field_of_a_d2_block_matches_the_analysis():
    cov = receptive_field(D2Block(1, 1, 4, "standard"), (1, 1, 40, 40), position=(20, 19))
    assert cov.centre == (20, 19)
    assert cov.extent == (31, 31) and cov.field == 31 and cov.blind_spots == 0
    assert cov.bbox == ((5, 35), (4, 34))


def test_receptive_field_rejects_bad_requests():
    block = D2Block(1, 1, 2)
    with pytest.raises(D3NetError, match="outside the output"):
        receptive_field(block, (1, 1, 8, 8), position=(8, 0))
    with pytest.raises(D3NetError, match="input shape"):
        receptive_field(block, (1, 8, 8))
    with pytest.raises(D3NetError, match="cannot run"):
        receptive_field(tiny_mss(), (1, 2, 100, 16))


# ----------------------------------------------------------------------------- plot and CLI

def test_plot_is_written_atomically(tmp_path):
    reports = [analyze_d2_block(3, mode, two_d=False) for mode in ("multi", "standard")]
    target = tmp_path / "fig3.png"
    assert plot_coverage(reports, target) == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig3.png"]
    with pytest.raises(D3NetError, match="cannot save a plot"):
        plot_coverage(reports, tmp_path / "fig3.xyz")
    assert not (tmp_path / "fig3.xyz").exists()


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="d3net")
    rf_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["receptive-field", *argv])
    return args.func(args)


def test_cli_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    plot = tmp_path / "rf.png"
    assert run_cli(["--layers", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "dilation=standard: D2 block of 3 layers" in out
    standard = lines.index(next(l for l in lines if l.startswith("dilation=standard")))
    assert lines[standard + 5].split() == ["3", "input", "4", "9", "6", "72"]
    summary = {l.split()[0]: l.split() for l in lines if l.split()[:1] in (["multi"],
                                                                          ["standard"],
                                                                          ["none"])}
    assert summary["multi"][1:] == ["3", "15", "0/6"]
    assert summary["standard"][1:] == ["3", "15", "3/6"]
    assert summary["none"][1:] == ["3", "7", "0/6"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_quiet_single_mode(capsys):
    assert run_cli(["--layers", "5", "--dilation", "multi", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split() == ["multi", "5", "63", "0/15"]


@pytest.mark.parametrize("argv, message", [(["--layers", "0"], "--layers"),
                                           (["--layers", "2", "--plot", "x.nope"], "plot")])
def test_cli_rejects_bad_options(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(D3NetError, match=message):
        run_cli(argv)
