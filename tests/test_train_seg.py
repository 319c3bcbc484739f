"""Segmentation training recipe on synthetic scenes: loss, schedule, resume, evaluation,
pretrained backbones, the OCR head and 2-process DDP on CPU (gloo)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from d3net import models as model_io
from d3net import cli
from d3net.data.synth_scenes import generate_dataset
from d3net.errors import D3NetError
from d3net.evaluate.seg import evaluate_seg
from d3net.segment import Segmenter
from d3net.train import seg as train_seg_module
from d3net.utils import native_bfloat16
from d3net.train.seg import poly_lr, seg_loss, train_seg

# fast settings for a ~20 k parameter model on 64x128 scenes
FAST = dict(batch_size=2, crop=(64, 96), scale_range=(0.75, 1.25), lr=0.05,
            lr_scaling=False, val_interval=0, checkpoint_interval=2, seed=3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_dataset(root, images=10, size=(64, 128), seed=0, progress=False)  # 8 train, 2 val
    return root


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- pieces

def test_poly_schedule_is_the_official_formula():
    assert poly_lr(0, 100, 0.01, 0.9, 1e-4) == pytest.approx(0.01)
    assert poly_lr(50, 100, 0.01, 0.9, 1e-4) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert poly_lr(99, 100, 0.01, 0.9, 1e-4) > 1e-4
    assert poly_lr(100, 100, 0.01, 0.9, 1e-4) == pytest.approx(1e-4)  # the floor
    values = [poly_lr(i, 80_000) for i in range(0, 80_000, 1000)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_loss_ignores_label_255_and_adds_the_auxiliary_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 4, 5)
    labels = torch.randint(0, 19, (2, 4, 5))
    labels[0, :2] = 255
    valid = labels != 255
    manual = -torch.log_softmax(logits, 1).gather(1, labels.clamp(max=18)[:, None])[:, 0][valid]
    assert seg_loss(logits, labels) == pytest.approx(float(manual.mean()), rel=1e-6)
    aux = torch.randn(2, 19, 4, 5)
    assert seg_loss(logits, labels, aux, 0.4) == pytest.approx(
        float(seg_loss(logits, labels) + 0.4 * seg_loss(aux, labels)), rel=1e-6)
    everything_ignored = torch.full((2, 4, 5), 255)
    assert float(seg_loss(logits, everything_ignored)) == 0.0


# ----------------------------------------------------------------------------- runs

def test_train_resume_evaluate_and_segment(scenes, tiny_seg_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    result = train_seg(scenes, run, tiny_seg_yaml, iters=8, progress=False,
                       **{**FAST, "val_interval": 4})
    assert result.iterations == 8 and len(result.train_loss) == 8
    losses = result.train_loss
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1  # it learns
    assert [it for it, _ in result.val_miou] == [4, 8]
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "last.safetensors",
                                               "train.ckpt", "logs"}
    assert any((run / "logs").iterdir())  # TensorBoard events
    best = model_io.read_metadata(run / "model.safetensors")
    assert float(best["best_miou"]) == pytest.approx(result.best_miou, rel=1e-5)

    # an existing run is not overwritten by accident
    with pytest.raises(D3NetError, match="--resume"):
        train_seg(scenes, run, tiny_seg_yaml, iters=8, progress=False, **FAST)
    # resume with a different crop is refused, with a larger --iters it continues
    with pytest.raises(D3NetError, match="crop"):
        train_seg(scenes, run, resume=True, progress=False, iters=10,
                  **{**FAST, "crop": (32, 32)})
    capsys.readouterr()
    code = cli.main(["train", "seg", "--root", str(scenes), "--out", str(run), "--resume",
                     "--iters", "10", "--batch-size", "2", "--crop", "64x96", "--lr", "0.05",
                     "--no-lr-scaling", "--scale-range", "0.75,1.25", "--val-interval", "4",
                     "--checkpoint-interval", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "resuming" in out and "poly schedule recomputed over 10 iterations (was 8)" in out
    state = torch.load(run / "train.ckpt", weights_only=False)
    assert state["iteration"] == 10
    history = state["extra"]["history"]
    assert history["train_loss"][:8] == losses and len(history["train_loss"]) == 10
    assert [it for it, _ in history["val_miou"]] == [4, 8, 10]

    # evaluation of the run folder: the per-class table is printed
    code = cli.main(["evaluate", "seg", "--root", str(scenes), "--model", str(run), "-q"])
    table = capsys.readouterr().out
    assert code == 0
    assert "road" in table and "sky" in table and "mIoU" in table
    matrix = evaluate_seg(scenes, run, split="val", progress=False)
    assert f"{100 * matrix.miou():.2f}" in table
    assert int(matrix.matrix.sum()) > 0.5 * 2 * 64 * 128  # most pixels are labelled
    tta = evaluate_seg(scenes, run, split="val", mode="slide", crop=(48, 64), scales=(0.75, 1.0),
                       flip=True, progress=False)
    assert int(tta.matrix.sum()) == int(matrix.matrix.sum())

    # segmentation of an image with the trained model
    image = next((scenes / "leftImg8bit" / "val").rglob("*.png"))
    code = cli.main(["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(run),
                     "-q"])
    assert code == 0
    labels = np.asarray(Image.open(tmp_path / "seg" / f"{image.stem}_trainIds.png"))
    assert labels.shape == (64, 128) and labels.max() < 19
    assert (tmp_path / "seg" / f"{image.stem}_overlay.png").is_file()


def test_cli_errors_are_one_line(scenes, tmp_path, capsys):
    code = cli.main(["evaluate", "seg", "--root", str(scenes), "--model",
                     str(tmp_path / "nothing"), "-q"])
    assert code == 2
    assert "model not found" in capsys.readouterr().err
    code = cli.main(["train", "seg", "--root", str(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "run"), "--config", "d3net-s", "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err
    code = cli.main(["train", "seg", "--root", str(scenes), "--out", str(tmp_path / "run"),
                     "--crop", "64by96", "-q"])
    assert code == 2 and "--crop" in capsys.readouterr().err


def test_evaluation_matches_a_hand_made_confusion_matrix(scenes, tiny_seg_yaml):
    from d3net.data.cityscapes import CityscapesDataset
    from d3net.evaluate.miou import ConfusionMatrix

    torch.manual_seed(0)
    model = model_io.create(tiny_seg_yaml).eval()
    segmenter = Segmenter(model)
    val = CityscapesDataset(scenes, "val")
    expected = ConfusionMatrix(19)
    for index in range(len(val)):
        image, label = val.load(index)
        expected.update(torch.from_numpy(segmenter.predict_image(image)[0]).long(),
                        torch.from_numpy(label).long())
    model.train()
    matrix = evaluate_seg(scenes, model, progress=False)
    assert torch.equal(matrix.matrix, expected.matrix)
    assert model.training  # left as it came
    first = evaluate_seg(val, segmenter, limit=1, progress=False)  # a dataset and a Segmenter
    assert 0 < int(first.matrix.sum()) < int(matrix.matrix.sum())
    with pytest.raises(D3NetError, match="split"):
        evaluate_seg(scenes, model, split="test", progress=False)


def test_interrupted_run_resumes_exactly(scenes, tiny_seg_yaml, tmp_path, monkeypatch):
    straight = train_seg(scenes, tmp_path / "a", tiny_seg_yaml, iters=6, progress=False, **FAST)

    calls = {"n": 0}
    original = train_seg_module.seg_loss

    def crash_on_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_seg_module, "seg_loss", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_seg(scenes, tmp_path / "b", tiny_seg_yaml, iters=6, progress=False, **FAST)
    monkeypatch.setattr(train_seg_module, "seg_loss", original)
    resumed = train_seg(scenes, tmp_path / "b", resume=True, iters=6, progress=False, **FAST)

    assert resumed.train_loss == straight.train_loss
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_mixed_precision_run_resumes_exactly_across_validation(scenes, tiny_seg_yaml, tmp_path,
                                                                monkeypatch, capsys):
    """--amp (bfloat16 where this CPU has it natively) and --recompute with a validation
    before the checkpoint: an interrupted run resumes on the very same numbers (validation's inference
    must leave the training layout as it was)."""
    amp = native_bfloat16("cpu")
    options = dict(FAST, amp=amp, val_interval=2, recompute="unit")
    straight = train_seg(scenes, tmp_path / "a", tiny_seg_yaml, iters=4, progress=False,
                         **options)
    opening = capsys.readouterr().out
    assert ("bfloat16 autocast" in opening) == amp and ("float32" in opening) != amp
    assert "recompute unit" in opening
    assert [it for it, _ in straight.val_miou] == [2, 4]

    with monkeypatch.context() as patch:  # killed in the 4th step, after a checkpoint at 2
        losses = iter([train_seg_module.seg_loss] * 3)
        patch.setattr(train_seg_module, "seg_loss",
                      lambda *a, **k: next(losses, _interrupt)(*a, **k))
        with pytest.raises(KeyboardInterrupt):
            train_seg(scenes, tmp_path / "b", tiny_seg_yaml, iters=4, progress=False, quiet=True,
                      **options)
    resumed = train_seg(scenes, tmp_path / "b", resume=True, iters=4, progress=False,
                        quiet=True)
    assert resumed.train_loss == straight.train_loss
    assert resumed.val_miou == straight.val_miou
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_channels_last_with_cpu_bfloat16_is_refused(scenes, tiny_seg_yaml, tmp_path):
    if not native_bfloat16("cpu"):
        pytest.skip("this CPU has no native bfloat16 (--amp trains in float32 here)")
    with pytest.raises(D3NetError, match="channels-last with bfloat16"):
        train_seg(scenes, tmp_path / "r", tiny_seg_yaml, iters=1, amp=True, channels_last=True,
                  progress=False, quiet=True, **FAST)
    assert not (tmp_path / "r" / "train.ckpt").exists()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ocr_head_trains_with_its_auxiliary_loss(scenes, tiny_seg_yaml, tmp_path, monkeypatch):
    seen = []
    original = train_seg_module.seg_loss

    def spy(logits, labels, aux=None, aux_weight=0.4, **kwargs):
        seen.append((aux is not None, aux_weight))
        return original(logits, labels, aux, aux_weight, **kwargs)

    monkeypatch.setattr(train_seg_module, "seg_loss", spy)
    result = train_seg(scenes, tmp_path / "ocr", tiny_seg_yaml, head="ocr", iters=2,
                       progress=False, **FAST)
    assert seen == [(True, 0.4)] * 2
    model = model_io.load(tmp_path / "ocr" / "model.safetensors")
    assert model.config.head == "ocr"
    assert all(np.isfinite(result.train_loss))


def test_nan_loss_stops_with_one_clear_line(scenes, tiny_seg_yaml, tmp_path, monkeypatch):
    monkeypatch.setattr(train_seg_module, "seg_loss",
                        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(D3NetError, match="NaN|nan"):
        train_seg(scenes, tmp_path / "nan", tiny_seg_yaml, iters=3, progress=False, **FAST)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    root, out, config, report = sys.argv[1:5]
    out = os.path.abspath(out)
    writes = []

    def audit(event, args):  # every file opened for writing, renamed or created
        if event == "open" and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int)
                    and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                writes.append(os.path.abspath(os.fsdecode(args[0])))
        elif event in ("os.rename", "os.mkdir", "os.remove"):
            n = 2 if event == "os.rename" else 1
            writes.extend(os.path.abspath(os.fsdecode(a)) for a in args[:n]
                          if isinstance(a, (str, bytes, os.PathLike)))

    sys.addaudithook(audit)
    from d3net.train.seg import train_seg
    result = train_seg(root, out, config, iters=6, batch_size=2, crop=(64, 96),
                       scale_range=(0.75, 1.25), lr=0.05, lr_scaling=False, val_interval=3,
                       checkpoint_interval=3, seed=3, progress=False, quiet=True)
    torch.save({"state": result.model.state_dict(), "loss": result.train_loss,
                "miou": result.val_miou,
                "writes": [w for w in writes if w.startswith(out)]}, f"{report}.{rank}")
""")


def test_two_process_ddp_on_cpu(scenes, tiny_seg_yaml, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(scenes), str(tmp_path / "run"), str(tiny_seg_yaml),
         str(tmp_path / "report")],
        capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = torch.load(tmp_path / "report.0", weights_only=False)
    rank1 = torch.load(tmp_path / "report.1", weights_only=False)
    for key, value in rank0["state"].items():  # DDP kept the ranks in step
        assert torch.equal(rank1["state"][key], value), key  # (and BN statistics synced)
    assert rank0["loss"] == rank1["loss"]  # the logged loss is the mean over the ranks
    assert np.mean(rank0["loss"][-2:]) < np.mean(rank0["loss"][:2])
    assert rank0["miou"] == rank1["miou"] and len(rank0["miou"]) == 2
    assert rank1["writes"] == []  # only rank 0 writes
    assert any(w.endswith("train.ckpt") for w in rank0["writes"])  # the spy sees writes
    run = tmp_path / "run"
    files = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "last.safetensors", "train.ckpt"} <= files
    state = torch.load(run / "train.ckpt", weights_only=False)
    assert state["world_size"] == 2 and state["iteration"] == 6
    for key, value in rank0["state"].items():
        assert torch.equal(state["model"][key], value)
