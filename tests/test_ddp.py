"""DDP on CPU: ``torchrun --nproc_per_node 2`` with gloo and plain BatchNorm.

Both ranks must hold identical parameters after several steps, the loss must fall, and
only rank 0 may write into the run folder (rank 1's file writes are recorded with a Python
audit hook, which sees every ``open``/``os.open``/rename/mkdir made from Python).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from d3net import models

WORKER = r'''
import json, os, sys
import torch

rank = int(os.environ["RANK"])
data, config, run_dir, report = sys.argv[1:5]
run_dir = os.path.abspath(run_dir)
writes = []

def audit(event, args):
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        if isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int)
            and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing:
            writes.append(("open", os.fsdecode(path)))
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
        if args and not isinstance(args[0], int):
            writes.append((event, os.fsdecode(args[0])))

if rank != 0:
    sys.addaudithook(audit)
control = os.path.join(report, f"control{rank}.txt")
with open(control, "w") as f:  # proves the hook sees writes
    f.write("x")

from d3net.train.mss import train_mss
# the same whole-track excerpts every epoch (no augmentation), so the loss of successive
# epochs is comparable
result = train_mss(data, "vocals", run_dir, config, epochs=2, batch_size=2, lr=1e-2,
                   lr_scaling=False, samples_per_track=4, excerpt_seconds=1.5,
                   patch_frames=16, gain_range=(1.0, 1.0), channel_swap=False,
                   random_tracks=False, validation=("synth-002",), sync_bn="auto", seed=0,
                   progress=False)
inside = [(kind, path) for kind, path in writes
          if os.path.abspath(path).startswith(run_dir)]
torch.save({k: v.detach().cpu() for k, v in result.model.named_parameters()},
           os.path.join(report, f"params{rank}.pt"))
with open(os.path.join(report, f"result{rank}.json"), "w") as f:
    json.dump({"train_loss": result.train_loss, "valid_loss": result.valid_loss,
               "writes_in_run_dir": inside,
               "control_seen": ("open", control) in writes}, f)
'''


def test_two_process_gloo_training(synth_musdb, tiny_mss_yaml, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(synth_musdb), str(tiny_mss_yaml),
               str(run_dir), str(report)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    params = [torch.load(report / f"params{r}.pt") for r in (0, 1)]
    results = [json.loads((report / f"result{r}.json").read_text()) for r in (0, 1)]
    assert params[0].keys() == params[1].keys() and len(params[0]) > 10
    for name, value in params[0].items():
        assert torch.equal(value, params[1][name]), name
    # every rank reports the same all-reduced losses, and they fall
    assert results[0]["train_loss"] == results[1]["train_loss"]
    assert results[0]["valid_loss"] == results[1]["valid_loss"]
    losses = results[0]["train_loss"]
    assert len(losses) == 2 and losses[-1] < losses[0], losses

    assert results[1]["control_seen"] and results[1]["writes_in_run_dir"] == []
    written = sorted(p.name for p in run_dir.iterdir())
    assert written == ["input_stats.npz", "logs", "vocals.ckpt", "vocals.last.safetensors",
                       "vocals.safetensors"]
    saved = models.load(run_dir / "vocals.last.safetensors")
    for name, value in saved.named_parameters():
        assert torch.equal(value, params[0][name]), name
    ckpt = torch.load(run_dir / "vocals.ckpt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # 2 training tracks x 4 excerpts = 8 per epoch, 2 ranks x batch 2: 2 steps per epoch
    assert ckpt["iteration"] == 2 * 2
