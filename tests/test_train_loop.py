"""The task-independent training loop helpers: DDP setup, SyncBN policy, checkpoints,
exact resume, the NaN guard, mixed precision and logging (no data, tiny models)."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from d3net.errors import D3NetError
from d3net.train import loop


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
    dist = loop.init_distributed("cpu")
    assert (dist.rank, dist.world_size, dist.is_main, dist.enabled) == (0, 1, True, False)
    assert dist.device == torch.device("cpu") and not dist.owns_group
    assert dist.mean(torch.tensor(3.0)) == 3.0
    assert dist.gather_object({"a": 1}) == [{"a": 1}]
    dist.barrier()
    loop.shutdown_distributed(dist)  # nothing to tear down


def test_bad_device_is_a_clear_error():
    with pytest.raises(D3NetError, match="invalid device"):
        loop.resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(D3NetError, match="CUDA is not available"):
            loop.resolve_device("cuda")


def test_sync_batchnorm_policy():
    cpu = loop.Distributed(device=torch.device("cpu"))
    cpu_ddp = loop.Distributed(rank=0, world_size=2, device=torch.device("cpu"), backend="gloo")
    model = _model()
    # auto: plain BN on CPU, even under DDP; off: always plain
    for dist, mode in ((cpu, "auto"), (cpu_ddp, "auto"), (cpu_ddp, "off")):
        out = loop.maybe_sync_batchnorm(model, mode, dist)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in out.modules())
    with pytest.raises(D3NetError, match="SyncBatchNorm.*CPU"):
        loop.maybe_sync_batchnorm(model, "on", cpu_ddp)
    with pytest.raises(D3NetError, match="--sync-bn"):
        loop.maybe_sync_batchnorm(model, "always", cpu)
    gpu_ddp = loop.Distributed(rank=0, world_size=2, device=torch.device("cuda", 0),
                               backend="nccl")
    out = loop.maybe_sync_batchnorm(_model(), "auto", gpu_ddp)  # conversion needs no GPU
    assert any(isinstance(m, nn.SyncBatchNorm) for m in out.modules())


def test_checkpoint_resume_is_exact(tmp_path):
    dist = loop.Distributed()
    amp = loop.MixedPrecision(True, torch.device("cpu"))
    assert not amp.enabled and amp.state_dict() is None  # CPU: float32, no scaler

    loop.seed_everything(7)
    model, optimizer, scheduler = _setup()
    _steps(model, optimizer, scheduler, amp, 3)
    state = loop.checkpoint_state(model, optimizer, scheduler, amp, dist, epoch=1, iteration=3,
                                  best_metric=0.5, config={"name": "x"}, hparams={"lr": 1e-2},
                                  extra={"history": [1.0]})
    path = loop.save_checkpoint(tmp_path / "run.ckpt", state, dist)
    assert path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "run.ckpt"]  # no temp files left
    expected_losses = _steps(model, optimizer, scheduler, amp, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(1234)  # scramble the RNG: the checkpoint must restore it
    fresh, fresh_optimizer, fresh_scheduler = _setup(seed=99)
    loaded = loop.load_checkpoint(path)
    assert (loaded["epoch"], loaded["iteration"], loaded["best_metric"]) == (1, 3, 0.5)
    assert loaded["config"] == {"name": "x"} and loaded["hparams"] == {"lr": 1e-2}
    assert loaded["extra"] == {"history": [1.0]}
    loop.restore_checkpoint(loaded, fresh, fresh_optimizer, fresh_scheduler, amp, dist)
    assert fresh_scheduler.last_epoch == 3
    assert _steps(fresh, fresh_optimizer, fresh_scheduler, amp, 3) == expected_losses
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_only_rank_zero_writes_checkpoints(tmp_path):
    model, optimizer, scheduler = _setup()
    other = loop.Distributed(rank=1, world_size=2)
    state = {"format": loop.CHECKPOINT_FORMAT, "model": model.state_dict()}
    assert loop.save_checkpoint(tmp_path / "x.ckpt", state, other) is None
    assert list(tmp_path.iterdir()) == []


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(D3NetError, match="checkpoint not found"):
        loop.load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(D3NetError, match="not a readable checkpoint"):
        loop.load_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(D3NetError, match="not a d3net training checkpoint"):
        loop.load_checkpoint(foreign)
    model, optimizer, scheduler = _setup()
    state = loop.checkpoint_state(model, optimizer, None, None, loop.Distributed(), epoch=0,
                                  iteration=0)
    other = nn.Linear(2, 2)
    with pytest.raises(D3NetError, match="do not fit the model"):
        loop.restore_checkpoint(state, other)


def test_rng_restore_with_another_world_size_warns():
    model, optimizer, scheduler = _setup()
    state = loop.checkpoint_state(model, optimizer, scheduler, None, loop.Distributed(),
                                  epoch=1, iteration=1)
    state["rng"] = state["rng"] * 2  # as if written by two processes
    with pytest.warns(UserWarning, match="2 process"):
        loop.restore_checkpoint(state, model, optimizer, scheduler, None, loop.Distributed())


def test_nan_guard_names_the_step_and_the_checkpoint(tmp_path):
    loop.check_finite_loss(1.5, epoch=0, iteration=1)
    with pytest.raises(loop.NonFiniteLossError, match=r"nan \(epoch 3, iteration 17\).*no "
                                                      "checkpoint"):
        loop.check_finite_loss(float("nan"), epoch=2, iteration=17,
                               checkpoint=tmp_path / "none.ckpt")
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(D3NetError, match="inf.*last good checkpoint .*run.ckpt is kept"):
        loop.check_finite_loss(float("inf"), epoch=0, checkpoint=ckpt)


def test_logger_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    logger = loop.Logger(tmp_path / "logs")
    logger.scalar("loss/train", 1.0, 1)
    logger.scalars({"loss/train": 0.5, "lr": 1e-3}, 2)
    logger.close()
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    silent = loop.Logger(tmp_path / "rank1", loop.Distributed(rank=1, world_size=2))
    silent.scalar("loss", 1.0, 1)
    silent.close()
    assert not (tmp_path / "rank1").exists()


def test_logger_without_tensorboard_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setattr(loop, "_warned_no_tensorboard", False)
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        logger = loop.Logger(tmp_path / "logs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.Logger(tmp_path / "logs2").scalar("loss", 1.0, 1)  # no second warning
    logger.scalar("loss", 1.0, 1)
    logger.close()
    assert not (tmp_path / "logs").exists()


def test_seed_everything_and_rng_state_round_trip():
    loop.seed_everything(3, rank=1)
    state = loop.rng_state()
    first = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    loop.set_rng_state(state)
    again = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    loop.seed_everything(3, rank=0)
    assert not torch.equal(torch.rand(2), first[0])  # ranks get different streams


def test_unwrap_and_wrap_single_process():
    model = _model()
    dist = loop.Distributed()
    assert loop.wrap_ddp(model, dist) is model
    assert loop.unwrap(model) is model
