"""Every registered CNN-F: shapes, gradients, the first pass as a plain CNN,
the feedback as the transpose of the gated forward, Algorithm 1, errors."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf import functional as CF
from cnnf.config import ConfigError, ModelConfig
from cnnf.models import PREDICTIONS, FeedbackNet, InferenceModel, cnnf_loss, create_model, model_entry, model_names
from cnnf.models.fmnist import ConvStage, LinearStage, PoolFCStage
from tests.cnnf.conftest import images, input_shape, make_net

NAMES = model_names()
NAME_INDS = [(n, i) for n in NAMES for i in model_entry(n).meta["legal_inds"]]
FASHION = ["cnnf_fmnist_std", "cnn_fmnist_std"]  # the B.1 backbone, for the hand-written forward


def ids(p: tuple[str, int]) -> str:
    return f"{p[0]}-ind{p[1]}"


def test_registry_lists_the_fashion_models() -> None:
    assert set(FASHION) <= set(NAMES)
    assert model_entry("cnnf_fmnist_std").meta["feedback"] is True
    assert model_entry("cnn_fmnist_std").meta["feedback"] is False
    assert model_entry("cnn_fmnist_std").meta["legal_inds"] == (0,)


def test_fashion_parameter_count_matches_b1() -> None:
    """~1.2M parameters: the unpadded layout (FC 9216 -> 128) of Appendix B.1."""
    n = sum(p.numel() for p in create_model("cnnf_fmnist_std").parameters())
    assert n == 288 + 32 + 18432 + 64 + 9216 * 128 + 128 + 128 * 10 + 10


# ---------------------------------------------------------------- shapes and gradients


def level_shape(net: FeedbackNet, x: Tensor) -> torch.Size:
    """Shape of the features at level net.ind in a first pass (the image for ind 0)."""
    h = x
    for stage in list(net.stages)[: net.ind]:
        h, _ = stage(h, None, net.step_size)
    return h.shape


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
@pytest.mark.parametrize("n_iterations", [0, 1, 2])
def test_iterate_shapes(name_ind: tuple[str, int], n_iterations: int) -> None:
    name, ind = name_ind
    net = make_net(name, ind)
    x = images(2, input_shape(name))
    with torch.no_grad():
        out = net.iterate(x, n_iterations)
    assert len(out.logits) == n_iterations + 1
    assert all(z.shape == (2, 10) for z in out.logits)
    assert len(out.recons) == n_iterations
    shape = level_shape(net, x)
    if ind == 0:
        assert shape == x.shape
    assert out.target.shape == shape
    assert all(r.shape == shape for r in out.recons)


def test_fashion_level_shapes() -> None:
    """ind 0 = image, 1 = after relu1 (32x26x26), 2 = after relu2 (64x24x24)."""
    x = images(1)
    expected = {0: (1, 1, 28, 28), 1: (1, 32, 26, 26), 2: (1, 64, 24, 24)}
    for ind, shape in expected.items():
        with torch.no_grad():
            out = make_net("cnnf_fmnist_std", ind).iterate(x, 1)
        assert out.target.shape == shape and out.recons[0].shape == shape


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
def test_gradient_reaches_every_parameter(name_ind: tuple[str, int]) -> None:
    name, ind = name_ind
    net = make_net(name, ind).train()
    x, y = images(4, input_shape(name)), torch.tensor([0, 1, 2, 3])
    n_iterations = 1 if model_entry(name).meta["feedback"] else 0
    loss, ce, recon = cnnf_loss(net.iterate(x, n_iterations), y, clean_coef=1.0, recon_coef=0.1)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    if n_iterations:
        assert recon > 0


def test_cnnf_loss_hand_formula() -> None:
    """clean_coef * mean_t CE(logits_t) + recon_coef * mean_t MSE(r_t, target)."""
    net = make_net("cnnf_fmnist_std", 0)
    x, y = images(3), torch.tensor([1, 4, 9])
    out = net.iterate(x, 2)
    loss, ce, recon = cnnf_loss(out, y, clean_coef=0.7, recon_coef=0.3)
    ce_ref = sum(F.cross_entropy(z, y) for z in out.logits) / 3
    recon_ref = sum(((r - x) ** 2).mean() for r in out.recons) / 2
    torch.testing.assert_close(ce, ce_ref)
    torch.testing.assert_close(recon, recon_ref)
    torch.testing.assert_close(loss, 0.7 * ce_ref + 0.3 * recon_ref)
    _, _, recon0 = cnnf_loss(net.iterate(x, 0), y, 1.0, 0.1)
    assert recon0 == 0


# ---------------------------------------------------------------- first pass = plain CNN


def in_bias(x: Tensor, bias: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8) + bias.view(1, -1, 1, 1)


def plain_fashion_forward(net: FeedbackNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """B.1 as an ordinary CNN written with torch.nn.functional; returns logits and levels 0..2."""
    s0, s1, s2, s3 = net.stages
    h1 = F.relu(in_bias(F.conv2d(x, s0.conv.weight), s0.norm.bias))
    h2 = F.relu(in_bias(F.conv2d(h1, s1.conv.weight), s1.norm.bias))
    p = F.max_pool2d(h2, 2).flatten(1)
    z = F.relu(F.linear(p, s2.fc.weight, s2.fc.bias))
    return F.linear(z, s3.fc.weight, s3.fc.bias), [x, h1, h2]


@pytest.mark.parametrize("name_ind", [p for p in NAME_INDS if p[0] in FASHION], ids=ids)
def test_zero_iterations_is_the_plain_cnn(name_ind: tuple[str, int]) -> None:
    name, ind = name_ind
    net = make_net(name, ind)
    x = images(3)
    with torch.no_grad():
        ref, levels = plain_fashion_forward(net, x)
        torch.testing.assert_close(net(x, 0), ref)
        out = net.iterate(x, 2)
    torch.testing.assert_close(out.logits[0], ref)  # later iterations leave logits_0 alone
    torch.testing.assert_close(out.target, levels[ind])


# ---------------------------------------------------------------- Algorithm 1


class Pass(NamedTuple):
    inputs: list[Tensor]  # input of each stage in this pass
    records: list[Any]
    signals: list[Any]  # the top-down signals the pass used (None on the first pass)


def algorithm1(net: FeedbackNet, x: Tensor, n_iterations: int) -> tuple[list[Tensor], list[Tensor], list[Pass]]:
    """cnnf-spec "Inference" written out over the stages: logits, recons and every pass."""
    stages, ind, eta = list(net.stages), net.ind, net.step_size
    inputs, records, h = [], [], x
    for stage in stages:
        inputs.append(h)
        h, rec = stage(h, None, eta)
        records.append(rec)
    passes = [Pass(inputs, records, [None] * len(stages))]
    logits, recons, state = [h], [], inputs[ind]
    for _ in range(n_iterations):
        s, signals = logits[-1], [None] * len(stages)
        for k in reversed(range(ind, len(stages))):
            s, signals[k] = stages[k].feedback(s, passes[-1].records[k], k == ind)
        recons.append(s)
        state = state + eta * (s - state)
        inputs, records, h = list(passes[-1].inputs), list(passes[-1].records), state
        for k in range(ind, len(stages)):
            inputs[k] = h
            h, records[k] = stages[k](h, signals[k], eta)
        passes.append(Pass(inputs, records, signals))
        logits.append(h)
    return logits, recons, passes


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
def test_iterate_follows_algorithm1(name_ind: tuple[str, int]) -> None:
    name, ind = name_ind
    net = make_net(name, ind)
    x = images(2, input_shape(name))
    with torch.no_grad():
        out = net.iterate(x, 2)
        logits, recons, _ = algorithm1(net, x, 2)
    for a, b in zip(out.logits, logits, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(out.recons, recons, strict=True):
        torch.testing.assert_close(a, b)


def test_feedback_changes_the_logits() -> None:
    """A CNN-F with T > 0 is not silently a plain CNN."""
    net = make_net("cnnf_fmnist_std", 0)
    with torch.no_grad():
        out = net.iterate(images(2), 2)
    assert not torch.allclose(out.logits[0], out.logits[1])
    assert not torch.allclose(out.logits[1], out.logits[2])


# ---------------------------------------------------------------- feedback = transpose of the gated forward


def vjp(f, x: Tensor, s: Tensor) -> Tensor:
    x = x.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, grad_outputs=s.double())
    return g.float()


def pooled(x: Tensor, sel: CF.PoolSelection) -> Tensor:
    """The AdaPool of a fixed selection as a linear map (gather, zeroed where inactive)."""
    out = x.flatten(2).gather(2, sel.index.flatten(2)).view(sel.index.shape)
    return out if sel.active is None else out * sel.active


@pytest.mark.parametrize("ind", [0, 1, 2])
def test_stage_feedback_is_transpose_of_gated_forward(ind: int) -> None:
    """With every gate fixed by a forward pass, each stage's feedback is the VJP
    of the stage's linear part (conv / pool selection / FC, no bias, times the
    AdaReLU mask), with the L2 instance norm of the spec inserted where it says.

    The feedback as a whole is not the transpose of the forward: the IN in the
    feedback rescales each channel by a signal-dependent positive factor, which
    the forward's VJP does not have. So the check is stage by stage, on the
    records of the first pass (max-pool, ReLU) and of later passes (min-pool
    and negative gates present):
      ConvStage:   conv^T(mask * s), then IN unless it is the final reconstruction
      PoolFCStage: unpool(IN(reshape(fc^T(mask * s)))), IN after fc1^T always
      LinearStage: fc^T s
    and the stored signals are the incoming s (AdaReLU) and IN(fc^T(...)) (AdaPool).
    """
    net = make_net("cnnf_fmnist_std", ind)
    x = images(2)
    torch.manual_seed(1)
    with torch.no_grad():
        _, _, passes = algorithm1(net, x, 2)
    stages = list(net.stages)
    for t, p in enumerate(passes):
        for k in range(ind, len(stages)):
            stage, xin, rec = stages[k], p.inputs[k], p.records[k]
            with torch.no_grad():
                y, _ = stage(xin, p.signals[k], net.step_size)
            s = torch.randn_like(y)
            got, stored = stage.feedback(s, rec, k == ind)
            where = f"pass {t}, stage {k}"
            if isinstance(stage, ConvStage):
                assert torch.equal(rec.mask, y != 0), f"{where}: record mask is not the forward gate"
                expected = vjp(lambda v: F.conv2d(v, stage.conv.weight.double()) * rec.mask, xin, s)
                if k > ind:  # not the final reconstruction
                    expected = CF.l2_instance_norm(expected)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=where)
                assert torch.equal(stored, s), where
            elif isinstance(stage, PoolFCStage):
                sel = rec.pool
                p_in = pooled(xin, sel)
                if t == 0:
                    torch.testing.assert_close(p_in, F.max_pool2d(xin, 2), msg=where)
                else:
                    assert sel.active is not None and (p_in < 0).any(), f"{where}: expected min-pooled units"
                g_relu = None if p.signals[k] is None else p.signals[k][1]
                z_ref, _ = CF.ada_relu(F.linear(p_in.flatten(1), stage.fc.weight, stage.fc.bias), g_relu, net.step_size)
                torch.testing.assert_close(y, z_ref, msg=where)  # the record is what the forward used
                v = vjp(lambda q: F.linear(q.flatten(1), stage.fc.weight.double()) * rec.mask, p_in, s)
                v = CF.l2_instance_norm(v)
                expected = vjp(lambda u: pooled(u, sel), xin, v)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=where)
                torch.testing.assert_close(stored[0], v, rtol=1e-4, atol=1e-5, msg=where)
                assert torch.equal(stored[1], s), where
            else:
                assert isinstance(stage, LinearStage)
                expected = vjp(lambda u: F.linear(u, stage.fc.weight.double(), stage.fc.bias.double()), xin, s)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=where)
                assert stored is None


def test_reconstruction_at_ind1_has_no_instance_norm() -> None:
    """cnnf-spec "Layers": no instance norm on the final reconstruction.

    For ind=1 the reconstruction is conv2^T(mask2 * s), not normalised to a
    per-channel RMS of 1 (an earlier version normalised it).
    """
    net = make_net("cnnf_fmnist_std", 1)
    x = images(2)
    with torch.no_grad():
        out = net.iterate(x, 1)
        _, _, passes = algorithm1(net, x, 0)
        s = out.logits[0]
        for k in (3, 2):
            s, _ = net.stages[k].feedback(s, passes[0].records[k], False)
        rec = passes[0].records[1]
        expected = net.stages[1].conv.feedback(CF.ada_relu_feedback(s, rec.mask), rec.input_size)
    torch.testing.assert_close(out.recons[0], expected)


def test_later_pass_uses_negative_gates() -> None:
    """After feedback, some AdaReLU units pass negative values (g < 0), as the spec requires."""
    net = make_net("cnnf_fmnist_std", 0)
    with torch.no_grad():
        _, _, passes = algorithm1(net, images(2), 1)
        y, _ = net.stages[0](passes[1].inputs[0], passes[1].signals[0], net.step_size)
    assert (y < 0).any()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", NAMES)
def test_illegal_ind_is_rejected_with_legal_list(name: str) -> None:
    legal = list(model_entry(name).meta["legal_inds"])
    bad = max(legal) + 1
    with pytest.raises(ValueError, match=rf"expected one of \[{', '.join(map(str, legal))}\]"):
        create_model(name, ind=bad)
    with pytest.raises(ConfigError) as info:
        ModelConfig(arch=name, ind=bad)
    assert info.value.field == "ind"
    assert str(legal) in str(info.value) and f"ind={bad}" in str(info.value)


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet_nope")
    assert "resnet_nope" in str(info.value) and all(n in str(info.value) for n in NAMES)
    with pytest.raises(ConfigError) as cinfo:
        ModelConfig(arch="resnet_nope")
    assert cinfo.value.field == "arch" and all(n in str(cinfo.value) for n in NAMES)


# ---------------------------------------------------------------- predictions and determinism


@pytest.mark.parametrize("name", NAMES)
def test_iterate_is_deterministic(name: str) -> None:
    net = make_net(name, 0)
    x = images(2, input_shape(name))
    with torch.no_grad():
        a, b = net.iterate(x, 2), net.iterate(x, 2)
    for u, v in zip(a.logits + a.recons, b.logits + b.recons, strict=True):
        assert torch.equal(u, v)


def test_predictions_are_what_their_names_say() -> None:
    net = make_net("cnnf_fmnist_std", 0)
    x = images(2)
    with torch.no_grad():
        out = net.iterate(x, 2)
        assert torch.equal(out.prediction("first"), out.logits[0])
        assert torch.equal(out.prediction("last"), out.logits[2])
        torch.testing.assert_close(out.prediction("avg"), (out.logits[0] + out.logits[1] + out.logits[2]) / 3)
        assert not torch.allclose(out.prediction("avg"), out.prediction("last"))
        for mode in PREDICTIONS:
            torch.testing.assert_close(net(x, 2, mode), out.prediction(mode))
    with pytest.raises(ValueError, match="first"):
        out.prediction("mean")


def test_inference_model_first_ignores_n_iterations() -> None:
    net = make_net("cnnf_fmnist_std", 0)
    x = images(2)
    first = InferenceModel(net, n_iterations=5, prediction="first")
    assert first.n_iterations == 0
    with torch.no_grad():
        torch.testing.assert_close(first(x), net(x, 0))
        torch.testing.assert_close(InferenceModel(net, 2, "last")(x), net.iterate(x, 2).logits[-1])
    with pytest.raises(ValueError, match="prediction"):
        InferenceModel(net, 1, "best")
