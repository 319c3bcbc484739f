"""``d3net train``'s recipe options are generated from the hyper-parameter dataclasses:
every field has its option with its default in the help, the options of earlier releases
keep their names, and text values are read (or refused in one line) as before."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from d3net.cli import train as train_cli
from d3net.errors import D3NetError
from d3net.train.hparams import option
from d3net.train.mss import MSSHyperParams
from d3net.train.seg import SegHyperParams

OPTIONS = {  # every recipe option `d3net train` had before they were generated
    "mss": ["--epochs", "--batch-size", "--lr", "--lr-milestones", "--lr-gamma",
            "--weight-decay", "--no-lr-scaling", "--excerpt-seconds", "--patch-frames",
            "--samples-per-track", "--gain", "--no-channel-swap", "--no-random-tracks",
            "--valid-tracks", "--stats-seconds", "--no-official-init", "--amp", "--seed"],
    "seg": ["--iters", "--batch-size", "--crop", "--scale-range", "--no-flip", "--lr",
            "--min-lr", "--power", "--momentum", "--weight-decay", "--no-lr-scaling",
            "--aux-weight", "--no-amp", "--val-interval", "--val-mode",
            "--checkpoint-interval", "--seed"],
}
HPARAMS = {"mss": MSSHyperParams, "seg": SegHyperParams}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3net")
    train_cli.register(parser.add_subparsers(dest="command"))
    return parser


def _task_parser(task: str) -> argparse.ArgumentParser:
    train = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    tasks = next(a for a in train.choices["train"]._actions
                 if isinstance(a, argparse._SubParsersAction))
    return tasks.choices[task]


@pytest.mark.parametrize("task", ["mss", "seg"])
def test_every_field_is_an_option_with_its_default(task):
    parser = _task_parser(task)
    flags = {flag: action for action in parser._actions for flag in action.option_strings}
    assert set(OPTIONS[task]) <= set(flags)
    for field in dataclasses.fields(HPARAMS[task]):
        action = next(a for a in parser._actions if a.dest == field.name)
        assert action.default is None  # left out: the default, or the resumed run's value
        assert "(default: " in action.help, field.name
    text = parser.format_help()
    assert "(default: 0.001)" in text or "(default: 0.01)" in text


def test_values_are_read_as_before():
    base = ["train", "mss", "--root", "r", "--target", "vocals", "--out", "o"]
    args = _parser().parse_args(base + ["--lr-milestones", "10,20", "--gain", "none",
                                        "--valid-tracks", "a, b", "--no-lr-scaling", "--amp",
                                        "--epochs", "3"])
    values = train_cli.hparams_from_args(args, MSSHyperParams)
    assert values["lr_milestones"] == (10, 20) and values["gain_range"] == (1.0, 1.0)
    assert values["validation"] == ("a", "b") and values["lr_scaling"] is False
    assert values["amp"] is True and values["epochs"] == 3 and values["lr"] is None
    assert MSSHyperParams.from_overrides(values).epochs == 3

    args = _parser().parse_args(base + ["--lr-milestones", "x"])
    with pytest.raises(D3NetError, match="--lr-milestones must be comma-separated numbers"):
        train_cli.hparams_from_args(args, MSSHyperParams)
    args = _parser().parse_args(["train", "seg", "--root", "r", "--out", "o", "--crop",
                                 "64x96", "--scale-range", "0.5,1.5", "--no-amp"])
    values = train_cli.hparams_from_args(args, SegHyperParams)
    assert values["crop"] == (64, 96) and values["scale_range"] == (0.5, 1.5)
    assert values["amp"] is False


@pytest.mark.parametrize("task", ["mss", "seg"])
def test_recompute_option(task):
    base = (["train", "mss", "--root", "r", "--target", "vocals", "--out", "o"] if task == "mss"
            else ["train", "seg", "--root", "r", "--out", "o"])
    hparams = HPARAMS[task]
    assert _parser().parse_args(base).recompute is None  # the recipe's default: off
    assert hparams().recompute == "none"
    assert _parser().parse_args(base + ["--recompute"]).recompute == "unit"
    assert _parser().parse_args(base + ["--recompute", "d2", "--amp"]).recompute == "d2"
    with pytest.raises(SystemExit):
        _parser().parse_args(base + ["--recompute", "everything"])
    assert "recompute" in hparams.resumable()  # the same gradients: a resumed run may change it


def test_a_new_hyper_parameter_is_one_line():
    @dataclass
    class Extended(SegHyperParams):
        label_smoothing: float = option(0.0, "cross-entropy label smoothing", metavar="X")

    parser = argparse.ArgumentParser()
    train_cli.add_hparam_options(parser, Extended, "recipe")
    args = parser.parse_args(["--label-smoothing", "0.1"])
    assert train_cli.hparams_from_args(args, Extended)["label_smoothing"] == 0.1
    assert "cross-entropy label smoothing (default: 0.0)" in parser.format_help()
