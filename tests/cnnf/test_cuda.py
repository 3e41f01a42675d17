"""The GPU path: training and evaluation on CUDA match the CPU math.

Runs only where a CUDA device is visible (the CI machine has none)."""

from __future__ import annotations

import pytest
import torch

from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, TrainConfig
from cnnf.data import load_splits
from cnnf.evaluate import evaluate
from cnnf.train import fit
from tests.cnnf.conftest import images, make_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_iterate_on_cuda_matches_cpu() -> None:
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
    report = evaluate(result.model, splits.val, cfg.eval, cfg.eval_iterations)
    assert 0.0 <= report.pgd_first_acc <= report.clean_acc <= 1.0
