"""Memory-efficient training (``set_recompute``): same gradients, same BatchNorm statistics,
less stored, no effect outside training, nothing saved with the model."""
import copy
import dataclasses

import pytest
import torch
from torch import nn

import d3net.nn as d3nn
from d3net import models
from d3net.configs import MSSConfig, SegConfig, from_dict
from d3net.models import D3NetMSS, D3NetSegmentation, recompute_mode, set_recompute
from d3net.nn import D2Block, D3Block, D3BlockBC

from conftest import TINY_MSS

MODES = ("unit", "d2", "d3")

# bottlenecks, compression, several D2 blocks per D3 block, out_layers < num_layers
SMALL_SEG = dict(name="test-small", num_init_features=16, num_layers=(3, 2, 2, 2),
                 num_blocks=(3, 2, 2, 2), growth_rate=(4, 4, 4, 4),
                 compression=(0.5, 0.5, 0.5, 1.0), out_layers=(2, 2, 1, 2),
                 feature_channels=(8, 8, 8, 8), transition_factor=2, head_channels=16,
                 num_classes=5)
# two D2 blocks per D3 block and several layers, so every level has something inside it;
# a 256-point STFT keeps it fast
SMALL_MSS = dict(TINY_MSS, fft_size=256, hop_size=64, band_split=[32], valid_bins=96, bands=[
    {"init_features": 4, "num_layers": [2, 3, 2], "growth_rate": [4, 4, 4],
     "num_blocks": [2, 2, 2]},
    {"init_features": 4, "num_layers": [1, 1, 1], "growth_rate": [2, 2, 2],
     "num_blocks": [1, 2, 1]}])


def _seg(head="fcn", **kwargs):
    torch.manual_seed(0)
    return D3NetSegmentation(SegConfig(**SMALL_SEG, head=head), **kwargs)


def _mss(**kwargs):
    torch.manual_seed(0)
    return D3NetMSS(from_dict(SMALL_MSS), **kwargs)


def _seg_batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))


def _mss_batch():
    torch.manual_seed(1)
    return torch.rand(2, 2, 129, 16) * 3, torch.rand(2, 2, 129, 16)


def _seg_step(model, batch):
    images, labels = batch
    logits, aux = model.forward_train(images)
    loss = nn.functional.cross_entropy(logits, labels)
    if aux is not None:
        loss = loss + 0.4 * nn.functional.cross_entropy(aux, labels)
    loss.backward()
    return logits.detach()


def _mss_step(model, batch):
    mixture, target = batch
    estimate = model(mixture)
    nn.functional.mse_loss(estimate, target).backward()
    return estimate.detach()


def _assert_close_to_scale(actual, expected, scale, what, tolerance):
    """Equal to rounding: recomputing can copy a slice out of a wider tensor, and kernels
    may sum a contiguous copy in another order than the strided view (measured: below
    2e-6 of the largest value in float32, 1e-14 in float64). Conv biases right before a
    BatchNorm have a gradient that is rounding noise only, so the tolerance is absolute,
    scaled by the largest value."""
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale,
                               msg=what)


def _compare(build, batch, step, mode, context=None, exact=False, dtype=torch.float32):
    reference = build().to(dtype).train()
    batch = tuple(b.to(dtype) if b.is_floating_point() else b for b in batch)
    recomputed = set_recompute(copy.deepcopy(reference), mode)
    assert recompute_mode(recomputed) == mode and recompute_mode(reference) == "none"
    outputs = []
    for model in (reference, recomputed):
        with context() if context else torch.enable_grad():
            outputs.append(step(model, batch))
    if exact:
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    _assert_close_to_scale(outputs[1], outputs[0], outputs[0].abs().max(), "output", tolerance)
    grads = {name: p.grad for name, p in reference.named_parameters()}
    scale = max(g.abs().max() for g in grads.values())
    checked = 0
    for name, p in recomputed.named_parameters():
        assert p.grad is not None, name
        _assert_close_to_scale(p.grad, grads[name], scale, name, tolerance)
        if exact:
            torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=0, msg=name)
        checked += 1
    assert checked == len(grads) > 20
    # BatchNorm running statistics: updated once, by the first forward, as without
    reference_buffers = dict(reference.named_buffers())
    tracked = 0
    for name, buffer in recomputed.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert buffer.item() == reference_buffers[name].item() == 1, name
            tracked += 1
        else:
            torch.testing.assert_close(buffer, reference_buffers[name], rtol=tolerance,
                                       atol=tolerance, msg=name)
            if name.endswith("running_mean"):
                assert buffer.abs().sum() > 0, name  # the first forward did update it
    assert tracked > 10


@pytest.mark.parametrize("mode", MODES)
def test_segmentation_gradients_and_statistics_equal(mode):
    _compare(_seg, _seg_batch(), _seg_step, mode)


@pytest.mark.parametrize("family", ["seg", "mss"])
def test_gradients_equal_in_float64(family):
    # what float32 rounding leaves of the differences: nothing beyond float64 rounding
    if family == "seg":
        _compare(_seg, _seg_batch(), _seg_step, "unit", dtype=torch.float64)
    else:
        _compare(_mss, _mss_batch(), _mss_step, "unit", dtype=torch.float64)


def test_segmentation_ocr_head_gradients_equal():
    _compare(lambda: _seg(head="ocr"), _seg_batch(), _seg_step, "d2")


@pytest.mark.parametrize("mode", MODES)
def test_separation_gradients_and_statistics_equal(mode):
    _compare(_mss, _mss_batch(), _mss_step, mode)


def test_gradients_equal_under_bfloat16_autocast():
    # The checkpoint re-enters autocast for the recomputation (else its saved tensors would
    # be float32 and the checkpoint would refuse them). The segmentation D2 mode copies no
    # slice, so it must match exactly, as it does in float32.
    _compare(_seg, _seg_batch(), _seg_step, "d2", exact=True,
             context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))


def test_gradients_equal_in_channels_last_layout():
    def build():
        return _seg().to(memory_format=torch.channels_last)
    images, labels = _seg_batch()
    _compare(build, (images.contiguous(memory_format=torch.channels_last), labels), _seg_step,
             "unit")


def test_sync_batchnorm_layers_count_once():
    # SyncBatchNorm (what DDP training on GPUs converts BatchNorm to) runs as plain
    # BatchNorm outside a process group; its own bookkeeping must accept the recompute too
    def build():
        return nn.SyncBatchNorm.convert_sync_batchnorm(_mss())
    _compare(build, _mss_batch(), _mss_step, "d2")


def test_cumulative_average_batchnorm_counts_once():
    def build():
        model = _mss()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # running statistics = plain average over the steps
        return model
    _compare(build, _mss_batch(), _mss_step, "unit")


def test_two_steps_with_optimizer_match():
    reference = _seg().train()
    recomputed = set_recompute(copy.deepcopy(reference), "d2")
    for model in (reference, recomputed):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            optimizer.zero_grad()
            _seg_step(model, _seg_batch())
            optimizer.step()
    for (name, a), b in zip(reference.state_dict().items(), recomputed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert all(b.item() == 2 for name, b in recomputed.named_buffers()
               if name.endswith("num_batches_tracked"))


def _saved_bytes(model, batch, step):
    """Bytes of the distinct storages autograd keeps for backward outside checkpoints."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model, batch)
    return sum(storages.values())


@pytest.mark.parametrize("block", ["bc", "nested"])
def test_recompute_stores_less(block):
    torch.manual_seed(0)
    if block == "bc":
        module = D3BlockBC(16, 4, 3, 4, out_layers=3, compression=0.5).train()
        x = torch.randn(2, 16, 32, 32, requires_grad=True)
    else:
        module = D3Block(8, 4, 3, 3).train()
        x = torch.randn(2, 8, 32, 32, requires_grad=True)

    def step(m, batch):
        m(batch).square().mean().backward()
    saved = {mode: _saved_bytes(set_recompute(module, mode), x, step)
             for mode in ("none", *MODES)}
    # measured: unit 0.31, d2 0.14 / 0.09, d3 0.10 / 0.05 of "none"
    assert saved["unit"] < 0.4 * saved["none"], saved
    assert saved["d3"] < saved["d2"] < 0.2 * saved["none"], saved


def test_whole_models_store_less():
    batch = _seg_batch()
    saved = {mode: _saved_bytes(_seg(recompute=mode).train(), batch, _seg_step)
             for mode in ("none", *MODES)}
    assert saved["d3"] < saved["d2"] < saved["unit"] < saved["none"], saved


def _forbid_checkpoint(monkeypatch):
    calls = []

    def recording(*args, **kwargs):
        calls.append(1)
        raise AssertionError("checkpoint used")
    monkeypatch.setattr(d3nn, "checkpoint", recording)
    return calls


def test_no_effect_in_eval_mode_or_without_gradients(monkeypatch):
    model = _mss(recompute="d2")
    plain = copy.deepcopy(model)
    set_recompute(plain, False)
    mixture = _mss_batch()[0]
    calls = _forbid_checkpoint(monkeypatch)
    model.eval()
    plain.eval()
    expected = plain(mixture)
    torch.testing.assert_close(model(mixture), expected, rtol=0, atol=0)  # eval, grad on
    with torch.inference_mode():
        torch.testing.assert_close(model(mixture), expected, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        model(mixture)
    assert calls == []
    with pytest.raises(AssertionError, match="checkpoint used"):  # ... but used in training
        model(mixture)


def test_granularity_marks_the_outermost_blocks():
    model = _mss()

    def marked(kind):
        return [m.recomputed for m in model.modules() if type(m) is kind]
    set_recompute(model, "unit")
    assert all(marked(d3nn.BNReLUConv)) and not any(marked(D2Block) + marked(D3Block))
    set_recompute(model, "d2")
    assert all(marked(D2Block)) and not any(marked(d3nn.BNReLUConv) + marked(D3Block))
    set_recompute(model, "d3")
    assert all(marked(D3Block)) and not any(marked(d3nn.BNReLUConv))
    # the final D2 block stands outside any D3 block: recomputed as a whole
    assert model.final.recomputed and sum(marked(D2Block)) == 1
    set_recompute(model, False)
    assert recompute_mode(model) == "none" and not any(marked(D2Block) + marked(D3Block))
    assert recompute_mode(set_recompute(model)) == d3nn.DEFAULT_RECOMPUTE


def test_blocks_take_the_option():
    block = D3BlockBC(8, 4, 2, 2, out_layers=2, compression=0.5, recompute="d2")
    assert recompute_mode(block) == "d2" and all(b.recomputed for b in block.blocks)
    assert recompute_mode(D2Block(4, 2, 3, recompute="unit")) == "unit"
    assert recompute_mode(D3Block(4, 2, 2, 2, recompute=True)) == d3nn.DEFAULT_RECOMPUTE


def test_d2_block_takes_several_inputs():
    torch.manual_seed(0)
    block = D2Block(10, 3, 3, bottleneck_channels=8, compression=0.5).train()
    parts = [torch.randn(2, c, 9, 9, requires_grad=True) for c in (4, 6)]
    joined = block(torch.cat(parts, dim=1))
    torch.testing.assert_close(block(*parts), joined, rtol=0, atol=0)
    set_recompute(block, "unit")
    torch.testing.assert_close(block(*parts), joined)


def test_bad_modes():
    with pytest.raises(ValueError, match="recompute must be one of"):
        set_recompute(_mss(), "everything")
    with pytest.raises(ValueError, match="no dense block"):
        set_recompute(nn.Conv2d(1, 1, 1), "d2")
    set_recompute(nn.Conv2d(1, 1, 1), False)  # switching off is always fine


def test_builders_and_model_files_do_not_carry_it(tmp_path):
    model = models.create(SegConfig(**SMALL_SEG), recompute="d2")
    assert recompute_mode(model) == "d2"
    assert recompute_mode(models.d3net_mss(small=True, recompute="unit")) == "unit"
    plain = copy.deepcopy(model)
    set_recompute(plain, False)
    assert models.fingerprint(model) == models.fingerprint(plain)
    assert model.state_dict().keys() == plain.state_dict().keys()
    path = models.save(model, tmp_path / "m.safetensors")
    assert recompute_mode(models.load(path)) == "none"
    assert "recompute" not in models.read_metadata(path)["config"]


def test_configs_have_no_such_field():
    for config in (MSSConfig, SegConfig):
        assert "recompute" not in {f.name for f in dataclasses.fields(config)}


DDP_WORKER = r'''
import copy, json, os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from d3net.configs import from_dict
from d3net.models import D3NetMSS, set_recompute

config, report = json.loads(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
plain = D3NetMSS(from_dict(config)).train()
ddp = DistributedDataParallel(set_recompute(copy.deepcopy(plain), "d2"))
optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, ddp)]
grad_diff = 0.0
for step in range(2):
    torch.manual_seed(100 * step + rank)  # every rank its own batch
    mixture, target = torch.rand(2, 2, 129, 16) * 3, torch.rand(2, 2, 129, 16)
    for model, optimizer in zip((plain, ddp), optimizers):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(mixture), target).backward()
    for p in plain.parameters():  # what DDP should do: average the gradients
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    scale = max(p.grad.abs().max().item() for p in plain.parameters())
    grad_diff = max(grad_diff, *((a.grad - b.grad).abs().max().item() / scale
                                 for a, b in zip(plain.parameters(), ddp.module.parameters())))
    for optimizer in optimizers:
        optimizer.step()
params = [p.detach() for p in ddp.module.parameters()]
gathered = [[torch.empty_like(p) for p in params] for _ in range(2)]
for i, p in enumerate(params):
    dist.all_gather([g[i] for g in gathered], p)
same_on_ranks = all(torch.equal(a, b) for a, b in zip(*gathered))
with open(os.path.join(report, f"rank{rank}.json"), "w") as f:
    json.dump({"same_on_ranks": same_on_ranks, "grad_diff": grad_diff,
               "tracked": [b.item() for n, b in ddp.module.named_buffers()
                           if n.endswith("num_batches_tracked")]}, f)
del ddp, optimizers  # DDP's reducer must not outlive the process group it uses
dist.barrier()
dist.destroy_process_group()
'''


def test_recompute_under_two_process_ddp(tmp_path):
    """Non-reentrant checkpointing under DDP (gloo, 2 CPU processes): the gradients DDP
    averages equal the all-reduced gradients of the same model without recompute, the
    ranks stay identical, and BatchNorm counts one update per step."""
    import json
    import os
    import subprocess
    import sys
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), json.dumps(SMALL_MSS),
                           str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["same_on_ranks"]
        assert result["grad_diff"] < 1e-5, result["grad_diff"]
        assert result["tracked"] and set(result["tracked"]) == {2}
