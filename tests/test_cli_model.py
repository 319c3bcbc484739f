"""Every ``--model`` of the CLI goes through the one option helper: each command accepts a
weight name, a model file, a folder and ``demo`` where its task allows, and refuses a model
of the other task with the same sentence. Official weights come from a local server
(tests/test_weights.py); everything else is tiny."""
import argparse

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from conftest import TINY_MSS, TINY_SEG
from d3net import cli, models
from d3net.configs import TARGETS
from d3net.data import musdb
from d3net.data.synth_music import generate_dataset as generate_songs
from d3net.data.synth_scenes import generate_dataset as generate_scenes
from d3net.train.init import glorot_init_


#: command -> its task; the test below checks this is every command with --model
COMMANDS = {"separate": "mss", "segment": "seg", "evaluate mss": "mss", "evaluate seg": "seg"}
SENTENCE = {"mss": "not a music separation model (it is a segmentation model)",
            "seg": "not a segmentation model (it is a music separation model)"}


def commands_with_model_option(parser, prefix=()):
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands_with_model_option(sub, prefix + (name,)))
        elif "--model" in action.option_strings:
            found[" ".join(prefix)] = (action, parser.get_default("model_task"))
    return found


def test_every_model_option_is_the_shared_one():
    found = commands_with_model_option(cli.build_parser())
    tasks = {name: task for name, (_, task) in found.items()}
    assert COMMANDS.items() <= tasks.items()  # later commands with --model: the same helper
    for name, (action, task) in found.items():
        assert task in ("mss", "seg"), name
        assert "see 'd3net weights list'" in action.help and "$D3NET_MODEL" in action.help
        assert action.default is None  # D3NET_MODEL is read when the command runs, not here


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    songs = root / "songs"
    generate_songs(songs, subsets={"train": 1, "test": 1}, seconds=1.0, seed=5, progress=False)
    scenes = root / "scenes"
    generate_scenes(scenes, images=4, size=(64, 128), seed=1, progress=False)  # 2 train, 2 val
    mean, scale = musdb.compute_input_stats(musdb.list_tracks(songs, "train"), progress=False)
    torch.manual_seed(0)
    for target in TARGETS:
        model = glorot_init_(models.create(dict(TINY_MSS, target=target)), conv="normal")
        model.set_input_stats(mean, scale)
        models.save(model, root / "mss" / f"{target}.safetensors")
    seg = models.create(TINY_SEG)
    models.save(seg, root / "seg.safetensors")
    models.save(seg, root / "run" / "model.safetensors")
    t = np.arange(22050) / 44100
    soundfile.write(str(root / "song.wav"), 0.3 * np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1),
                    44100)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
                    ).save(root / "image.png")
    return root


def argv(command, root, tmp_path, model):
    base = {"separate": ["separate", str(root / "song.wav"), "-o", str(tmp_path / "out"),
                         "--no-flip", "--targets", "vocals"],
            "segment": ["segment", str(root / "image.png"), "-o", str(tmp_path / "out")],
            "evaluate mss": ["evaluate", "mss", "--root", str(root / "songs"), "--scorer",
                             "own"],
            "evaluate seg": ["evaluate", "seg", "--root", str(root / "scenes")]}[command]
    return base + (["--model", str(model)] if model is not None else []) + ["-q"]


def run(command, root, tmp_path, model, capsys):
    code = cli.main(argv(command, root, tmp_path, model))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def skip_separation(patch):
    """Make ``Separator.separate`` return the mixture for every target, recording which
    networks the separator was given."""
    from d3net.separate import Separator
    seen = []

    def separate(self, waveform, sample_rate, accompaniment=False):
        seen.append({t: m.config.name for t, m in self.models.items()})
        names = self.targets + (["accompaniment"] if accompaniment else [])
        return {name: waveform.clone() for name in names}

    patch.setattr(Separator, "separate", separate)
    return seen


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_accepts_every_form_of_model(command, inputs, tmp_path, capsys,
                                                  monkeypatch):
    task = COMMANDS[command]
    if task == "mss":
        accepted = [inputs / "mss", inputs / "mss" / "vocals.safetensors", "demo"]
    else:
        accepted = [inputs / "run", inputs / "seg.safetensors"]
    for model in accepted:
        with monkeypatch.context() as patch:
            if command == "evaluate mss" and model == "demo":
                seen = skip_separation(patch)  # scoring four mss-small networks is slow
            code, err = run(command, inputs, tmp_path, model, capsys)
        assert code == 0, (model, err)
        if command == "evaluate mss" and model == "demo":
            assert seen == [{t: "mss-small" for t in TARGETS}]
    monkeypatch.setenv("D3NET_MODEL", str(accepted[0]))  # read by the same helper
    assert run(command, inputs, tmp_path, None, capsys)[0] == 0


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_fetches_weight_names(command, inputs, tmp_path, capsys):
    # the test mirror refuses connections: a name is taken as a name and fetched
    name = {"mss": "official-mss", "seg": "official-d3net-l"}[COMMANDS[command]]
    code, err = run(command, inputs, tmp_path, name, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"error: cannot fetch {name} from http://127.0.0.1:9/" in err
    assert "d3net convert nnabla" in err and "--model DIR" in err


@pytest.mark.parametrize("command", ["segment", "evaluate seg"])
def test_segmentation_commands_run_served_official_weights(command, inputs, tmp_path, capsys,
                                                           server):
    code, err = run(command, inputs, tmp_path, "official-d3net-s", capsys)
    assert code == 0, err
    assert server.requests == ["/semantic-segmentation/D3Net-S.h5"]


def test_wrong_task_is_refused_with_the_same_sentence_everywhere(inputs, tmp_path, capsys):
    wrong = {"mss": [inputs / "seg.safetensors", inputs / "run", "official-d3net-s"],
             "seg": [inputs / "mss", inputs / "mss" / "bass.safetensors", "demo",
                     "official-mss"]}
    tails = set()
    for command, task in COMMANDS.items():
        for model in wrong[task]:
            code, err = run(command, inputs, tmp_path, model, capsys)
            assert code == 2 and len(err.splitlines()) == 1, (command, model, err)
            prefix = f"d3net {command.split()[0]}: error: {model}: "
            assert err == prefix + SENTENCE[task], err
            tails.add(err[len(prefix):].replace("music separation", "X").replace(
                "segmentation", "Y").replace("X", "T").replace("Y", "T"))
    assert len(tails) == 1  # one sentence, only the task words differ
    assert not (tmp_path / "out").exists()


def test_pretrained_backbone_goes_through_the_loader(inputs, tmp_path, tiny_seg_yaml, capsys):
    base = ["train", "seg", "--root", str(inputs / "scenes"), "--out", str(tmp_path / "run"),
            "--config", str(tiny_seg_yaml), "--iters", "1", "--batch-size", "2", "--crop", "64x96",
            "-q", "--pretrained-backbone"]
    assert cli.main(base + ["demo"]) == 2
    assert capsys.readouterr().err.strip() == \
        "d3net train: error: demo: " + SENTENCE["seg"]
    assert cli.main(base + ["official-d3net-s-backbone"]) == 2  # a name: fetched
    assert "cannot fetch official-d3net-s-backbone from http://127.0.0.1:9/" in \
        capsys.readouterr().err
    assert cli.main(base + [str(inputs / "seg.safetensors")]) == 0
    trained = models.load(tmp_path / "run")
    assert trained.config.name == "seg-tiny"
