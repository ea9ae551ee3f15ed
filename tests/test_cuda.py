"""The CUDA path: pinned transfers, bf16 autocast, and BiFP's mask refresh and steps on the GPU
agreeing with the CPU. Skipped where no CUDA device is visible (CI has none)."""
from types import SimpleNamespace

import pytest
import torch

from fairprune import models
from fairprune.device import autocast, to_device
from fairprune.pruning import PruneContext, get_method, measure_sparsity
from fairprune.pruning.base import GlobalTopMasks

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
SHAPES = SimpleNamespace(input_shape=(3, 32, 32), num_classes=2, mean=[0.5] * 3, std=[0.25] * 3)


def test_pinned_transfer_and_bf16_autocast():
    host = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    moved = to_device(host, CUDA)
    assert moved.is_cuda and torch.equal(moved.cpu(), host)
    model = models.build("resnet10", SHAPES).to(CUDA)
    with autocast(CUDA):
        logits = model(moved.float() / 255)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_global_top_masks_on_cuda_equal_the_cpu_selection_while_scores_drift():
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(300, 200, generator=g), torch.randn(5000, generator=g)]
    scores[1][:50] = scores[1][50]  # ties at some threshold
    gpu, cpu = GlobalTopMasks(20_000), GlobalTopMasks(20_000)
    for _ in range(8):
        on_gpu = gpu([s.to(CUDA) for s in scores])
        on_cpu = cpu(scores)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(on_gpu, on_cpu))
        assert sum(int(m.sum()) for m in on_gpu) == 20_000
        scores = [s + 0.01 * torch.randn(s.shape, generator=g) for s in scores]
    assert gpu.calls == 8
    tied = [torch.randint(0, 20, (300, 200), generator=g).float(), torch.randint(0, 20, (5000,), generator=g).float()]
    on_gpu = GlobalTopMasks(20_000)([s.to(CUDA) for s in tied])
    assert all(torch.equal(a.cpu(), b) for a, b in zip(on_gpu, GlobalTopMasks(20_000)(tied)))  # first ties kept


@pytest.mark.parametrize("method", ["bifp_uns", "bifp_lagrangian"])
def test_bifp_trains_on_cuda_at_exactly_the_target_sparsity(method):
    torch.manual_seed(0)
    model = models.build("resnet10", SHAPES).to(CUDA).train()
    instance = get_method(method)
    ctx = PruneContext(data=SimpleNamespace(num_groups=2), device=CUDA, options={"bifp": {"score_lr": 0.05}})
    instance.prune(model, 0.7, ctx)
    step = instance.training_step(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), CUDA)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 3, 32, 32, generator=g).to(CUDA)
    y, a = torch.randint(0, 2, (64,), generator=g).to(CUDA), torch.randint(0, 2, (64,), generator=g).to(CUDA)
    losses = [float(step(x, y, a)[0]) for _ in range(40)]
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]  # one batch, fitted
    assert measure_sparsity(model)["sparsity_actual"] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("method", ["bifp_uns", "bifp_lagrangian"])
def test_bifp_steps_never_wait_for_the_gpu(method):
    """Weight and score steps queue their kernels without a host read (which would drain the queue)."""
    model = models.build("resnet10", SHAPES).to(CUDA).train()
    instance = get_method(method)
    instance.prune(model, 0.7, PruneContext(data=SimpleNamespace(num_groups=2), device=CUDA, options={}))
    step = instance.training_step(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), CUDA)
    x = torch.rand(64, 3, 32, 32, device=CUDA)
    y, a = torch.randint(0, 2, (64,), device=CUDA), torch.randint(0, 2, (64,), device=CUDA)
    for _ in range(4):  # cuDNN autotuning, optimiser state
        step(x, y, a)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            step(x, y, a)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("arch", ["resnet10", "mobilenet_v2"])
def test_structured_bifp_exports_on_cuda(arch):
    from test_bifp import check_structured_export

    check_structured_export(arch, CUDA)
