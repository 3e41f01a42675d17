"""`train.fc_weight_decay`: one shared FC parameter (default) or the reference's tying.

The reference (cnnf/layers.py `Linear`) keeps FC^T as a second parameter whose
`.data` is a view of the forward weight. Both are stepped: weight decay twice
on the shared values, the clip norm counting the forward and feedback
gradients apart. These tests build that arrangement by hand with two plain
parameters on one storage, as the reference does, and compare whole training
steps with it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cnnf.config import ConfigError, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import DataSplits, load_splits
from cnnf.layers import TiedLinear, fc_feedback_aliases, retie_fc_feedback, untie_fc_feedback
from cnnf.models import cnnf_loss, create_model
from cnnf.train import TrainStep, build_optimizer, build_scheduler, fit


def make_step(tc: TrainConfig, reference: bool) -> TrainStep:
    torch.manual_seed(0)
    net = create_model("cnnf_mnist_small", ind=0).train()
    if reference:
        untie_fc_feedback(net)
    opt = build_optimizer(net, tc)
    return TrainStep(net, tc, opt, build_scheduler(opt, tc, 10), "fashion-mnist")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 28, 28, generator=g) * 2 - 1, torch.arange(6) % 10


def fc_names(net: torch.nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, TiedLinear)}


def test_default_is_once_and_unknown_values_are_refused() -> None:
    assert TrainConfig().fc_weight_decay == "once"
    with pytest.raises(ConfigError) as info:
        TrainConfig(fc_weight_decay="twice")
    assert info.value.field == "fc_weight_decay"


def test_untied_gradients_split_the_tied_gradient() -> None:
    """Forward + feedback gradient of the aliases = the shared parameter's gradient."""
    tc = TrainConfig(n_iterations=1)
    x, y = batch()
    grads = {}
    for reference in (False, True):
        step = make_step(tc, reference)
        out = step.model.iterate(x, 1)
        cnnf_loss(out, y, 1.0, 0.1)[0].backward()
        grads[reference] = {n: p.grad.clone() for n, p in step.model.named_parameters()}
        if reference:
            aliases = fc_feedback_aliases(step.model)
            assert len(aliases) == 2 and all(a.grad is not None and a.grad.abs().sum() > 0 for a in aliases)
            modules = [m for m in step.model.modules() if isinstance(m, TiedLinear)]
            names = [n for n, m in step.model.named_modules() if isinstance(m, TiedLinear)]
            for name, module in zip(names, modules, strict=True):
                assert module.feedback_weight.data_ptr() == module.weight.data_ptr()  # one storage
                torch.testing.assert_close(grads[True][f"{name}.weight"] + module.feedback_weight.grad, grads[False][f"{name}.weight"])
    for name in grads[False]:
        if not name.endswith("fc.weight"):
            torch.testing.assert_close(grads[True][name], grads[False][name])


def test_sgd_step_decays_fc_weights_twice() -> None:
    """SGD without momentum or clipping, torch's per-tensor loop (the CPU default):
    the forward weight is stepped first, W1 = W0 - lr (g_fwd + wd W0), then its
    feedback alias on the same storage, W2 = W1 - lr (g_fb + wd W1), as the
    reference's two parameters are (linear before linear_t). Once: W0 - lr (g + wd W0).
    Every other parameter takes the same step in both modes."""
    lr, wd = 0.05, 0.01
    tc = TrainConfig(optimizer="sgd", lr=lr, momentum=0.0, weight_decay=wd, n_iterations=1)
    x, y = batch()
    probe = make_step(tc, True)
    cnnf_loss(probe.model.iterate(x, 1), y, 1.0, 0.1)[0].backward()
    w0 = {n: p.detach().clone() for n, p in probe.model.named_parameters()}
    g_fwd = {n: p.grad.clone() for n, p in probe.model.named_parameters()}
    g_fb = {f"{n}.weight": m.feedback_weight.grad.clone() for n, m in probe.model.named_modules() if isinstance(m, TiedLinear)}
    after = {}
    for reference in (False, True):
        step = make_step(tc, reference)
        step(x, y, torch.Generator().manual_seed(0))
        after[reference] = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    assert set(g_fb) == fc_names(step.model)
    for name, w in w0.items():
        if name in g_fb:
            w1 = w - lr * (g_fwd[name] + wd * w)
            torch.testing.assert_close(after[True][name], w1 - lr * (g_fb[name] + wd * w1), atol=1e-7, rtol=1e-5)
            torch.testing.assert_close(after[False][name], w - lr * (g_fwd[name] + g_fb[name] + wd * w), atol=1e-7, rtol=1e-5)
            assert not torch.allclose(after[True][name], after[False][name], atol=1e-7, rtol=0)
        else:
            torch.testing.assert_close(after[True][name], after[False][name], atol=1e-7, rtol=0)


def test_clip_norm_counts_the_two_gradients_apart() -> None:
    """With a clip that binds: the reference's factor is clip / sqrt(sum over the
    parameters + |g_fb|^2) with the FC weight's gradient split in two."""
    tc = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, grad_clip=1e-3, n_iterations=1)
    x, y = batch()
    step = make_step(tc, True)
    w0 = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    out = step.model.iterate(x, 1)
    cnnf_loss(out, y, 1.0, 0.1)[0].backward()
    g = {n: p.grad.clone() for n, p in step.model.named_parameters()}
    g_fb = {n: m.feedback_weight.grad.clone() for n, m in step.model.named_modules() if isinstance(m, TiedLinear)}
    norm_ref = torch.sqrt(sum(v.pow(2).sum() for v in g.values()) + sum(v.pow(2).sum() for v in g_fb.values()))
    step.optimizer.zero_grad(set_to_none=True)
    step(x, y, torch.Generator().manual_seed(0))
    factor = 1e-3 / (norm_ref + 1e-6)
    assert factor < 0.1  # the clip binds
    for name, p in step.model.named_parameters():
        total = g[name] + g_fb.get(name.removesuffix(".weight"), 0) if name.endswith("fc.weight") else g[name]
        torch.testing.assert_close(p.detach(), w0[name] - 0.1 * factor * total, atol=1e-8, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_splits() -> DataSplits:
    return load_splits(DataConfig(n_train=128, val_fraction=0.05))


REFERENCE = ExperimentConfig(
    data=DataConfig(n_train=128, val_fraction=0.05),
    model=ModelConfig(arch="cnnf_mnist_small", ind=0),
    train=TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, lr_schedule="poly", grad_clip=0.5,
                      n_iterations=1, device="cpu", seed=2, fc_weight_decay="reference"),
    eval=EvalConfig(n_iterations=1),
)


def test_fit_trains_with_the_switch_and_returns_a_tied_model(tiny_splits: DataSplits) -> None:
    result = fit(REFERENCE, tiny_splits)
    assert fc_feedback_aliases(result.model) == []
    baseline = fit(dataclasses.replace(REFERENCE, train=dataclasses.replace(REFERENCE.train, fc_weight_decay="once")), tiny_splits)
    a, b = result.model.state_dict(), baseline.model.state_dict()
    assert a.keys() == b.keys()  # the aliases are not parameters
    assert any(not torch.equal(a[n], b[n]) for n in fc_names(result.model))


def test_resume_with_the_switch_matches_uninterrupted(tiny_splits: DataSplits) -> None:
    """The optimizer state of the aliases travels with the checkpoint."""
    states = []
    full = fit(REFERENCE, tiny_splits, callback=lambda r, s: states.append(s))
    resumed = fit(REFERENCE, tiny_splits, resume=states[0])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_retie_restores_the_shared_weight() -> None:
    net = create_model("cnnf_mnist_small")
    aliases = untie_fc_feedback(net)
    assert untie_fc_feedback(net) == aliases  # idempotent
    retie_fc_feedback(net)
    assert fc_feedback_aliases(net) == []
