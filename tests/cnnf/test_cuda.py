"""The GPU path: training and evaluation on CUDA match the CPU math.

Runs only where a CUDA device is visible (the CI machine has none)."""

from __future__ import annotations

import pytest
import torch

from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, TrainConfig
from cnnf.data import load_splits
from cnnf.evaluate import evaluate, suite_from_config
from cnnf.train import fit
from tests.cnnf.conftest import images, make_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later;
    comparing the math against the CPU needs full fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_iterate_on_cuda_matches_cpu(no_tf32: None) -> None:
    net = make_net("cnnf_fmnist_std", 1)
    x = images(4)
    with torch.no_grad():
        cpu = net.iterate(x, 2)
        gpu = net.cuda().iterate(x.cuda(), 2)
    for a, b in zip(cpu.logits, gpu.logits, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-3)


def test_fit_and_evaluate_on_cuda() -> None:
    cfg = ExperimentConfig(
        data=DataConfig(n_train=256), train=TrainConfig(epochs=1, batch_size=64, device="cuda"),
        eval=EvalConfig(pgd_steps=2, n_examples=64),
    )
    splits = load_splits(cfg.data)
    result = fit(cfg, splits)
    assert result.device.type == "cuda" and next(result.model.parameters()).is_cuda
    report = evaluate(result.model, splits.val, suite_from_config(cfg.eval, cfg.eval_iterations))
    assert 0.0 <= report.acc("pgd_first") <= report.clean_acc <= 1.0
    assert len(report.checks) == 8


def _adv_cfg(precision: str, epochs: int = 2):
    import dataclasses

    from tests.cnnf.test_train_adversarial import ADV
    train = dataclasses.replace(ADV.train, device="cuda", precision=precision, epochs=epochs, augment="crop_flip")
    return dataclasses.replace(ADV, train=train)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_adversarial_training_on_cuda_lowers_the_loss(precision: str) -> None:
    """B.2 (PGD against the first pass, SGD, poly LR, clipping, crop/flip) on
    the GPU, in fp32 and under bf16 autocast: finite, and the loss goes down."""
    cfg = _adv_cfg(precision, epochs=3)
    result = fit(cfg, load_splits(cfg.data))
    losses = [r.train_loss for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


@pytest.fixture
def deterministic_cudnn():
    """Deterministic cuDNN kernels for this test only: left on, they would
    change the kernels of every later test (see tests/cnnf/attacks/test_cuda.py)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_cuda_resume_matches_uninterrupted_run(tmp_path, deterministic_cudnn: None) -> None:
    """A checkpoint written on the GPU resumes on the GPU to the same weights."""
    from tests.cnnf.test_train import without_timing
    from cnnf.train import load_train_state, save_train_state

    cfg = _adv_cfg("fp32")
    splits = load_splits(cfg.data)
    path = tmp_path / "state.pt"

    def keep_epoch1(result, state) -> None:
        if result.epoch == 1:
            save_train_state(state, path)

    full = fit(cfg, splits, callback=keep_epoch1)
    resumed = fit(cfg, splits, resume=load_train_state(path))
    # GPU scatter/atomic kernels are not bit-reproducible: same to float tolerance.
    for r, f in zip(without_timing(resumed.history), without_timing(full.history), strict=True):
        assert r == pytest.approx(f, rel=1e-3, abs=1e-4)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_gpu_trained_weights_load_on_cpu(tmp_path, no_tf32: None) -> None:
    cfg = _adv_cfg("fp32", epochs=1)
    result = fit(cfg, load_splits(cfg.data))
    path = tmp_path / "w.pt"
    torch.save(result.model.state_dict(), path)
    cpu_net = make_net("cnnf_fmnist_std", 0)
    cpu_net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x = images(8)
    with torch.no_grad():
        a = cpu_net.iterate(x, 1).logits[-1]
        b = result.model.iterate(x.cuda(), 1).logits[-1].cpu()
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
