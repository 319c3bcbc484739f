"""The task-independent training loop helpers: DDP setup, SyncBN policy, checkpoints,
exact resume, the NaN guard, mixed precision and logging (no data, tiny models)."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from d3net.errors import D3NetError
from d3net import utils
from d3net.train import precision, solver
from d3net.train.distributed import (Distributed, init_distributed, maybe_sync_batchnorm,
                                    rng_state, seed_everything, set_rng_state,
                                    shutdown_distributed, wrap_ddp)
from d3net.train.checkpoint import (CHECKPOINT_FORMAT, checkpoint_state, load_checkpoint,
                                   restore_checkpoint, save_checkpoint)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 1, 1))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2], gamma=0.1)
    return model, optimizer, scheduler


def _steps(model, optimizer, scheduler, amp, count: int) -> list[float]:
    """``count`` steps on inputs drawn from the global RNG (so RNG restore matters)."""
    losses = []
    for _ in range(count):
        x = torch.randn(3, 2, 8, 8)
        loss = ((model(x) - x.mean(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        amp.backward_and_step(loss, optimizer)
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def test_single_process_context(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_distributed("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.enabled) == (0, 1, True, False)
    assert dist.device == torch.device("cpu") and not dist.owns_group
    assert dist.mean(torch.tensor(3.0)) == 3.0
    assert dist.gather_object({"a": 1}) == [{"a": 1}]
    dist.barrier()
    shutdown_distributed(dist)  # nothing to tear down


def test_bad_device_is_a_clear_error():
    with pytest.raises(D3NetError, match="invalid device"):
        utils.resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(D3NetError, match="CUDA is not available"):
            utils.resolve_device("cuda")


def test_sync_batchnorm_policy():
    cpu = Distributed(device=torch.device("cpu"))
    cpu_ddp = Distributed(rank=0, world_size=2, device=torch.device("cpu"), backend="gloo")
    model = _model()
    # auto: plain BN on CPU, even under DDP; off: always plain
    for dist, mode in ((cpu, "auto"), (cpu_ddp, "auto"), (cpu_ddp, "off")):
        out = maybe_sync_batchnorm(model, mode, dist)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in out.modules())
    with pytest.raises(D3NetError, match="SyncBatchNorm.*CPU"):
        maybe_sync_batchnorm(model, "on", cpu_ddp)
    with pytest.raises(D3NetError, match="--sync-bn"):
        maybe_sync_batchnorm(model, "always", cpu)
    gpu_ddp = Distributed(rank=0, world_size=2, device=torch.device("cuda", 0),
                          backend="nccl")
    out = maybe_sync_batchnorm(_model(), "auto", gpu_ddp)  # conversion needs no GPU
    assert any(isinstance(m, nn.SyncBatchNorm) for m in out.modules())


def test_checkpoint_resume_is_exact(tmp_path):
    dist = Distributed()
    amp = precision.MixedPrecision(True, torch.device("cpu"))
    # CPU: bfloat16 autocast where the CPU computes it natively, else float32; no scaler
    assert (amp.dtype is not None) == utils.native_bfloat16("cpu") and amp.state_dict() is None

    seed_everything(7)
    model, optimizer, scheduler = _setup()
    _steps(model, optimizer, scheduler, amp, 3)
    state = checkpoint_state(model, optimizer, scheduler, amp, dist, epoch=1, iteration=3,
                             best_metric=0.5, config={"name": "x"}, hparams={"lr": 1e-2},
                             extra={"history": [1.0]})
    path = save_checkpoint(tmp_path / "run.ckpt", state, dist)
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "run.ckpt"]  # no temp files left
    expected_losses = _steps(model, optimizer, scheduler, amp, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(1234)  # scramble the RNG: the checkpoint must restore it
    fresh, fresh_optimizer, fresh_scheduler = _setup(seed=99)
    loaded = load_checkpoint(path)
    assert (loaded["epoch"], loaded["iteration"], loaded["best_metric"]) == (1, 3, 0.5)
    assert loaded["config"] == {"name": "x"} and loaded["hparams"] == {"lr": 1e-2}
    assert loaded["extra"] == {"history": [1.0]}
    restore_checkpoint(loaded, fresh, fresh_optimizer, fresh_scheduler, amp, dist)
    assert fresh_scheduler.last_epoch == 3
    assert _steps(fresh, fresh_optimizer, fresh_scheduler, amp, 3) == expected_losses
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_only_rank_zero_writes_checkpoints(tmp_path):
    model, optimizer, scheduler = _setup()
    other = Distributed(rank=1, world_size=2)
    state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict()}
    assert save_checkpoint(tmp_path / "x.ckpt", state, other) is None
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(D3NetError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(D3NetError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(D3NetError, match="not a d3net training checkpoint"):
        load_checkpoint(foreign)
    model, optimizer, scheduler = _setup()
    state = checkpoint_state(model, optimizer, None, None, Distributed(), epoch=0,
                                  iteration=0)
    other = nn.Linear(2, 2)
    with pytest.raises(D3NetError, match="do not fit the model"):
        restore_checkpoint(state, other)


def test_rng_restore_with_another_world_size_warns():
    model, optimizer, scheduler = _setup()
    state = checkpoint_state(model, optimizer, scheduler, None, Distributed(),
                                  epoch=1, iteration=1)
    state["rng"] = state["rng"] * 2  # as if written by two processes
    with pytest.warns(UserWarning, match="2 process"):
        restore_checkpoint(state, model, optimizer, scheduler, None, Distributed())


def test_nan_guard_names_the_step_and_the_checkpoint(tmp_path):
    solver.check_finite_loss(1.5, epoch=0, iteration=1)
    with pytest.raises(solver.NonFiniteLossError, match=r"nan \(epoch 3, iteration 17\).*no "
                                                      "checkpoint"):
        solver.check_finite_loss(float("nan"), epoch=2, iteration=17,
                               checkpoint=tmp_path / "none.ckpt")
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(D3NetError, match="inf.*last good checkpoint .*run.ckpt is kept"):
        solver.check_finite_loss(float("inf"), epoch=0, checkpoint=ckpt)


def test_logger_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    logger = solver.Logger(tmp_path / "logs")
    logger.scalars({"loss/train": 1.0}, 1)
    logger.scalars({"loss/train": 0.5, "lr": 1e-3}, 2)
    logger.close()
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    silent = solver.Logger(tmp_path / "rank1", Distributed(rank=1, world_size=2))
    silent.scalars({"loss": 1.0}, 1)
    silent.close()
    assert not (tmp_path / "rank1").exists()


def test_logger_without_tensorboard_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(solver, "_warned_no_tensorboard", False)
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        logger = solver.Logger(tmp_path / "logs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.Logger(tmp_path / "logs2").scalars({"loss": 1.0}, 1)  # no second warning
    logger.scalars({"loss": 1.0}, 1)
    logger.close()
    assert not (tmp_path / "logs").exists()


def test_seed_everything_and_rng_state_round_trip():
    seed_everything(3, rank=1)
    state = rng_state()
    first = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(state)
    again = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    seed_everything(3, rank=0)
    assert not torch.equal(torch.rand(2), first[0])  # ranks get different streams


def test_unwrap_and_wrap_single_process():
    model = _model()
    dist = Distributed()
    assert wrap_ddp(model, dist) is model
    assert utils.unwrap(model) is model


def _autocast_steps(model, optimizer, amp, count: int) -> list[float]:
    """Like ``_steps`` with the forward under the mixed-precision context."""
    losses = []
    for _ in range(count):
        x = torch.randn(3, 2, 8, 8)
        with amp.autocast():
            out = model(x)
        loss = ((out.float() - x.mean(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        amp.backward_and_step(loss, optimizer)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_resume_is_exact(tmp_path, dtype):
    """bfloat16 autocast without a scaler, float16 with one (on CPU here, as on old GPUs):
    the scaler state travels in the checkpoint and a resumed run repeats the same steps."""
    amp = precision.MixedPrecision(True, "cpu", dtype=dtype)
    assert amp.dtype == dtype
    assert (amp.scaler is not None) == (dtype == torch.float16)
    assert amp.describe().startswith(str(dtype).replace("torch.", ""))
    seed_everything(5)
    model, optimizer, _ = _setup()
    _autocast_steps(model, optimizer, amp, 2)
    state = checkpoint_state(model, optimizer, None, amp, Distributed(), epoch=0, iteration=2)
    if dtype == torch.float16:
        assert state["scaler"]["scale"] == amp.scaler.get_scale()
    path = save_checkpoint(tmp_path / "amp.ckpt", state)
    expected = _autocast_steps(model, optimizer, amp, 3)

    fresh_amp = precision.MixedPrecision(True, "cpu", dtype=dtype)
    fresh, fresh_optimizer, _ = _setup(seed=11)
    restore_checkpoint(load_checkpoint(path), fresh, fresh_optimizer, None, fresh_amp)
    assert _autocast_steps(fresh, fresh_optimizer, fresh_amp, 3) == expected
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_mixed_precision_policy(monkeypatch):
    assert precision.MixedPrecision(False, "cpu").describe() == "float32"
    assert precision.MixedPrecision(None, "cpu").dtype is None  # auto: GPUs only
    # a CPU without native bfloat16 stays in float32 and says so
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False})
    assert precision.autocast_dtype("cpu") is None
    with pytest.warns(UserWarning, match="no native bfloat16"):
        amp = precision.MixedPrecision(True, "cpu")
    assert amp.dtype is None and amp.scaler is None
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert precision.autocast_dtype("cpu") == torch.bfloat16
    assert precision.MixedPrecision(True, "cpu").scaler is None
