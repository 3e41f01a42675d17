"""Every registered CNN-F: shapes, gradients, the first pass as a plain CNN,
the feedback as the transpose of the gated forward, Algorithm 1 with the
intermediate reconstructions, the losses, sizes and costs, errors.

WRN-40-2 cases run on one or two images with T <= 2 so that the file stays fast.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from cnnf import functional as CF
from cnnf.config import ConfigError, ModelConfig
from cnnf.layers import Stage
from cnnf.models import (
    PREDICTIONS,
    CNNFOutput,
    FeedbackNet,
    InferenceModel,
    adversarial_cnnf_loss,
    cnnf_loss,
    create_model,
    model_entry,
    model_names,
)
from cnnf.models.fmnist import ConvNormStage, ConvStage, FCStage, LinearStage, PoolConvStage, PoolFCStage
from cnnf.models.wrn import BlocksStage, HeadStage, PreActBlock
from tests.cnnf.conftest import images, input_shape, make_net

NAMES = model_names()
NAME_INDS = [(n, i) for n in NAMES for i in model_entry(n).meta.legal_inds]
FEEDBACK = [n for n in NAMES if model_entry(n).meta.feedback]
FEEDBACK_INDS = [p for p in NAME_INDS if p[0] in FEEDBACK]
FASHION = ["cnnf_fmnist_std", "cnn_fmnist_std"]  # the B.1 backbone


def ids(p: tuple[str, int]) -> str:
    return f"{p[0]}-ind{p[1]}"


def backbone(name: str) -> str:
    """cnnf_X and its plain twin cnn_X share the backbone X."""
    return name.split("_", 1)[1]


def twin(name: str) -> str:
    return "cnn_" + backbone(name)


def at(where: str) -> Callable[[str], str]:
    """assert_close message: where it failed, then torch's own report."""
    return lambda report: f"{where}: {report}"


def n_images(name: str) -> int:
    """Two images for the Fashion models, one for the WRN (keeps the file fast)."""
    return 1 if backbone(name) == "wrn40_2" else 2


# Features at every level k (the input of stage k) per sample, from cnnf-spec
# "Architectures"; the logits are not a level.
LEVEL_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "fmnist_std": [(1, 28, 28), (32, 26, 26), (64, 24, 24), (128,)],
    "fmnist_adv": [(1, 28, 28), (16, 28, 28), (32, 28, 28), (32, 28, 28), (64, 14, 14), (1000,), (128,)],
    "wrn40_2": [(3, 32, 32)] + [(32, 32, 32)] * 6 + [(64, 16, 16), (128, 8, 8)],
    "mnist_small": [(1, 28, 28), (8, 26, 26), (16, 24, 24), (64,)],  # B.1 at a quarter of the width (feedback learning)
}
# Intermediate reconstruction levels by default (cnnf-spec: the two layers
# before the AdaPools of B.2; after each of the 3 WRN groups; none for B.1).
DEFAULT_AUX: dict[str, tuple[int, ...]] = {"fmnist_std": (), "fmnist_adv": (3, 4), "wrn40_2": (6, 7, 8), "mnist_small": ()}


def default_aux(name: str, ind: int) -> tuple[int, ...]:
    if not model_entry(name).meta.feedback:
        return ()
    return tuple(k for k in DEFAULT_AUX[backbone(name)] if k > ind)


def released_ind(name: str) -> int:
    """The factory's default ind: the released setting (B.2: 2, WRN: 5)."""
    return create_model(name).ind


def with_recon_levels(name: str, ind: int, recon_levels: Optional[Sequence[int]]) -> FeedbackNet:
    """make_net's seeded model, rebuilt with explicit recon_levels."""
    net = create_model(name, ind=ind, recon_levels=recon_levels)
    net.load_state_dict(make_net(name, ind).state_dict())
    return net.eval()


# ---------------------------------------------------------------- registry, sizes, costs


def test_registry_lists_the_fashion_models() -> None:
    assert set(FASHION) <= set(NAMES)
    assert model_entry("cnnf_fmnist_std").meta.feedback is True
    assert model_entry("cnn_fmnist_std").meta.feedback is False
    assert model_entry("cnn_fmnist_std").meta.legal_inds == (0,)


def test_registry_lists_every_backbone_with_its_plain_twin() -> None:
    """cnnf-spec: B.1, B.2 and WRN-40-2, each also as a plain CNN (the CNN columns)."""
    assert {"cnnf_fmnist_adv", "cnn_fmnist_adv", "cnnf_wrn40_2", "cnn_wrn40_2"} <= set(NAMES)
    assert {backbone(n) for n in NAMES} == set(LEVEL_SHAPES)
    for name in FEEDBACK:
        meta, plain = model_entry(name).meta, model_entry(twin(name)).meta
        assert plain.feedback is False and plain.legal_inds == (0,) and plain.recon_levels == ()
        assert plain.input_shape == meta.input_shape and plain.n_levels == meta.n_levels
    assert model_entry("cnnf_fmnist_adv").meta.legal_inds == (0, 1, 2)
    assert model_entry("cnnf_wrn40_2").meta.legal_inds == tuple(range(7))


@pytest.mark.parametrize("name", NAMES)
def test_registry_meta_matches_the_built_model(name: str) -> None:
    """meta n_levels is the number of stages; meta recon_levels the spec's defaults."""
    meta = model_entry(name).meta
    net = create_model(name)
    assert meta.n_levels == len(net.stages) == len(LEVEL_SHAPES[backbone(name)])
    expected = DEFAULT_AUX[backbone(name)] if meta.feedback else ()
    assert tuple(meta.recon_levels) == expected
    assert all(0 < k < meta.n_levels for k in meta.recon_levels)


def test_fashion_parameter_count_matches_b1() -> None:
    """~1.2M parameters: the unpadded layout (FC 9216 -> 128) of Appendix B.1."""
    n = sum(p.numel() for p in create_model("cnnf_fmnist_std").parameters())
    assert n == 288 + 32 + 18432 + 64 + 9216 * 128 + 128 + 128 * 10 + 10


def test_fashion_adversarial_parameter_count_matches_b2() -> None:
    """~3.3M parameters (Appendix B.2): 4 bias-free convs with IN bias, 3 FCs with bias."""
    convs = [(1, 16), (16, 32), (32, 32), (32, 64)]
    fcs = [(64 * 7 * 7, 1000), (1000, 128), (128, 10)]
    expected = sum(c_in * c_out * 9 + c_out for c_in, c_out in convs) + sum(i * o + o for i, o in fcs)
    assert expected == 3_298_962
    for name in ("cnnf_fmnist_adv", "cnn_fmnist_adv"):
        assert sum(p.numel() for p in create_model(name).parameters()) == expected


def wrn40_2_parameter_count(in_channels: int = 3, n_classes: int = 10) -> int:
    """WRN-40-2 from its layer list: stem, 3 groups of 6 pre-activation blocks, head."""
    n = in_channels * 16 * 9  # stem, no bias
    for c_in, c_out in ((16, 32), (32, 64), (64, 128)):
        for j in range(6):
            c = c_in if j == 0 else c_out
            n += c + c * c_out * 9 + c_out + c_out * c_out * 9  # IN1 bias, conv1, IN2 bias, conv2
            n += c * c_out if j == 0 else 0  # 1x1 projection shortcut
    return n + 128 + 128 * n_classes + n_classes  # head IN bias, FC


def test_wrn_parameter_count() -> None:
    """~2.24M (cnnf-spec); every BatchNorm is IN + bias, so one parameter per channel."""
    assert wrn40_2_parameter_count() == 2_240_842
    for name in ("cnnf_wrn40_2", "cnn_wrn40_2"):
        assert sum(p.numel() for p in create_model(name).parameters()) == 2_240_842


@pytest.mark.parametrize(("name", "macs"), [("cnnf_fmnist_adv", 17.8e6), ("cnnf_wrn40_2", 328e6)])
def test_first_pass_macs_per_image(name: str, macs: float) -> None:
    """cnnf-spec: ~17.8M (B.2) and ~328M (WRN-40-2) MACs per image and forward pass."""
    net = create_model(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(images(1, input_shape(name)), 0)
    assert counter.get_total_flops() / 2 == pytest.approx(macs, rel=0.01)


# ---------------------------------------------------------------- shapes and gradients


def level_shape(net: FeedbackNet, x: Tensor, level: Optional[int] = None) -> torch.Size:
    """Shape of the features at a level (default net.ind) in a first pass (the image for 0)."""
    h = x
    for stage in list(net.stages)[: net.ind if level is None else level]:
        h, _ = stage(h, None, net.step_size)
    return h.shape


@pytest.mark.parametrize("name", NAMES)
def test_level_shapes(name: str) -> None:
    """Level k is the input of stage k: B.1 ind 1 = after relu1 (32x26x26), B.2 levels
    3 and 4 before the AdaPools, WRN levels 1..6 the group-1 blocks, 7 and 8 groups 2, 3."""
    net = make_net(name, 0)
    n = n_images(name)
    h = images(n, input_shape(name))
    with torch.no_grad():
        for k, stage in enumerate(net.stages):
            assert h.shape == (n, *LEVEL_SHAPES[backbone(name)][k]), f"level {k}"
            h, _ = stage(h, None, net.step_size)
    assert h.shape == (n, 10)


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
@pytest.mark.parametrize("n_iterations", [0, 1, 2])
def test_iterate_shapes(name_ind: tuple[str, int], n_iterations: int) -> None:
    name, ind = name_ind
    net = make_net(name, ind)
    n = n_images(name)
    x = images(n, input_shape(name))
    with torch.no_grad():
        out = net.iterate(x, n_iterations)
    assert len(out.logits) == n_iterations + 1
    assert all(z.shape == (n, 10) for z in out.logits)
    assert len(out.recons) == n_iterations
    shape = level_shape(net, x)
    if ind == 0:
        assert shape == x.shape
    assert shape == (n, *LEVEL_SHAPES[backbone(name)][ind])
    assert out.target.shape == shape
    assert all(r.shape == shape for r in out.recons)
    # intermediate reconstructions at the default levels
    aux = default_aux(name, ind)
    assert out.aux_levels == aux
    assert [t.shape for t in out.aux_targets] == [(n, *LEVEL_SHAPES[backbone(name)][k]) for k in aux]
    assert len(out.aux_recons) == n_iterations
    for taps in out.aux_recons:
        assert [r.shape for r in taps] == [t.shape for t in out.aux_targets]


def test_fashion_level_shapes() -> None:
    """ind 0 = image, 1 = after relu1 (32x26x26), 2 = the AdaPool's input, the
    second IN + bias output (64x24x24; B.1 has no relu2)."""
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
    n = 2 * n_images(name)
    x, y = images(n, input_shape(name)), torch.arange(n)
    n_iterations = 1 if model_entry(name).meta.feedback else 0
    loss, ce, recon = cnnf_loss(net.iterate(x, n_iterations), y, clean_coef=1.0, recon_coef=0.1)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    if n_iterations:
        assert recon > 0


# ---------------------------------------------------------------- first pass = plain CNN


def in_bias(x: Tensor, bias: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8) + bias.view(1, -1, 1, 1)


def plain_fashion_forward(net: FeedbackNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """B.1 as an ordinary CNN written with torch.nn.functional; returns logits and levels 0..3.

    Appendix B.1: Conv32 IN ReLU, Conv64 IN, max-pool (the pool is the second
    nonlinearity, no ReLU before it), FC128 ReLU, FC10."""
    s0, s1, s2, s3 = net.stages
    h1 = F.relu(in_bias(F.conv2d(x, s0.conv.weight), s0.norm.bias))
    h2 = in_bias(F.conv2d(h1, s1.conv.weight), s1.norm.bias)
    p = F.max_pool2d(h2, 2).flatten(1)
    z = F.relu(F.linear(p, s2.fc.weight, s2.fc.bias))
    return F.linear(z, s3.fc.weight, s3.fc.bias), [x, h1, h2, z]


def plain_fashion_adversarial_forward(net: FeedbackNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """B.2 as an ordinary CNN: 3 padded convs, max-pool, conv, max-pool, 3 FCs; levels 0..6."""
    c1, c2, c3, c4, fc1, fc2, fc3 = net.stages
    h1 = F.relu(in_bias(F.conv2d(x, c1.conv.weight, padding=1), c1.norm.bias))  # (16, 28, 28)
    h2 = F.relu(in_bias(F.conv2d(h1, c2.conv.weight, padding=1), c2.norm.bias))  # (32, 28, 28)
    h3 = F.relu(in_bias(F.conv2d(h2, c3.conv.weight, padding=1), c3.norm.bias))  # (32, 28, 28)
    h4 = F.relu(in_bias(F.conv2d(F.max_pool2d(h3, 2), c4.conv.weight, padding=1), c4.norm.bias))  # (64, 14, 14)
    h5 = F.relu(F.linear(F.max_pool2d(h4, 2).flatten(1), fc1.fc.weight, fc1.fc.bias))  # 3136 -> 1000
    h6 = F.relu(F.linear(h5, fc2.fc.weight, fc2.fc.bias))
    return F.linear(h6, fc3.fc.weight, fc3.fc.bias), [x, h1, h2, h3, h4, h5, h6]


def wrn_groups(net: FeedbackNet) -> list[list[PreActBlock]]:
    """The 3 x 6 blocks of WRN-40-2 in order (group 1 is spread over stages 0..5)."""
    stages = list(net.stages)
    assert all(len(s.blocks) == 1 for s in stages[:6]) and len(stages[6].blocks) == len(stages[7].blocks) == 6
    return [[s.blocks[0] for s in stages[:6]], list(stages[6].blocks), list(stages[7].blocks)]


def plain_preact_block(block: PreActBlock, x: Tensor, stride: int, projection: bool) -> Tensor:
    """relu1(IN1(x)) -> conv1 -> relu2(IN2) -> conv2, plus x or a 1x1 conv of relu1's output."""
    a = F.relu(in_bias(x, block.norm1.bias))
    b = F.relu(in_bias(F.conv2d(a, block.conv1.weight, stride=stride, padding=1), block.norm2.bias))
    z = F.conv2d(b, block.conv2.weight, padding=1)
    return z + (F.conv2d(a, block.shortcut.weight, stride=stride) if projection else x)


def plain_wrn_forward(net: FeedbackNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """WRN-40-2 (widths 16/32/64/128, strides 1/2/2, IN + bias) as an ordinary CNN; levels 0..8."""
    h = F.conv2d(x, net.stages[0].stem.weight, padding=1)  # (16, 32, 32)
    levels = [x]
    for g, blocks in enumerate(wrn_groups(net)):
        for j, block in enumerate(blocks):
            h = plain_preact_block(block, h, stride=2 if g > 0 and j == 0 else 1, projection=j == 0)
            if g == 0:
                levels.append(h)  # levels 1..6: each block of group 1
        if g > 0:
            levels.append(h)  # levels 7, 8: the outputs of groups 2 and 3
    head = net.stages[8]
    a = F.relu(in_bias(h, head.norm.bias))  # (128, 8, 8)
    return F.linear(F.avg_pool2d(a, 8).flatten(1), head.fc.weight, head.fc.bias), levels


PLAIN_FORWARD: dict[str, Callable[[FeedbackNet, Tensor], tuple[Tensor, list[Tensor]]]] = {
    "fmnist_std": plain_fashion_forward,
    "fmnist_adv": plain_fashion_adversarial_forward,
    "wrn40_2": plain_wrn_forward,
    "mnist_small": plain_fashion_forward,  # the B.1 layout, narrower
}


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
def test_zero_iterations_is_the_plain_cnn(name_ind: tuple[str, int]) -> None:
    """net(x, 0) and logits_0 are the hand-written plain CNN; out.target and
    out.aux_targets are its features at ind and at the aux levels."""
    name, ind = name_ind
    net = make_net(name, ind)
    x = images(n_images(name), input_shape(name))
    # The model's instance norms run as fused CPU kernels (cnnf.fused), the
    # reference's as eager ops: the same formulas, other summation orders,
    # which over WRN-40-2's 40 layers drift past assert_close's fp32 default.
    tol = {"rtol": 1e-5, "atol": 1e-4} if backbone(name) == "wrn40_2" else {}
    with torch.no_grad():
        ref, levels = PLAIN_FORWARD[backbone(name)](net, x)
        torch.testing.assert_close(net(x, 0), ref, **tol)
        out = net.iterate(x, 2)
    torch.testing.assert_close(out.logits[0], ref, **tol)  # later iterations leave logits_0 alone
    torch.testing.assert_close(out.target, levels[ind], **tol)
    assert out.aux_levels == default_aux(name, ind)
    assert len(out.aux_targets) == len(out.aux_levels)
    for k, t in zip(out.aux_levels, out.aux_targets):
        torch.testing.assert_close(t, levels[k], **tol, msg=at(f"aux target at level {k}"))


@pytest.mark.parametrize("name", FEEDBACK)
def test_feedback_model_and_plain_twin_agree_at_zero_iterations(name: str) -> None:
    """cnnf_X and cnn_X hold the same parameters and give identical logits at T = 0."""
    x = images(n_images(name), input_shape(name))
    plain = make_net(twin(name), 0, seed=1)
    for ind in (0, max(model_entry(name).meta.legal_inds)):
        net = make_net(name, ind)
        plain.load_state_dict(net.state_dict())  # strict: the same parameter names and shapes
        with torch.no_grad():
            assert torch.equal(net(x, 0), plain(x, 0)), f"ind={ind}"
    net = make_net(name, 0, seed=2)
    net.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.equal(net(x, 0), plain(x, 0))


# ---------------------------------------------------------------- Algorithm 1


class Pass(NamedTuple):
    inputs: list[Tensor]  # input of each stage in this pass
    records: list[Any]
    signals: list[Any]  # the top-down signals the pass used (None on the first pass)
    levels: list[Optional[Tensor]]  # feedback signal at each level >= ind that led to this pass (None: first pass)


def algorithm1(net: FeedbackNet, x: Tensor, n_iterations: int) -> tuple[list[Tensor], list[Tensor], list[Pass]]:
    """cnnf-spec "Inference" written out over the stages: logits, recons and every pass."""
    stages, ind, eta = list(net.stages), net.ind, net.step_size
    inputs, records, h = [], [], x
    for stage in stages:
        inputs.append(h)
        h, rec = stage(h, None, eta)
        records.append(rec)
    passes = [Pass(inputs, records, [None] * len(stages), [None] * len(stages))]
    logits, recons, state = [h], [], inputs[ind]
    for _ in range(n_iterations):
        s, signals, levels = logits[-1], [None] * len(stages), [None] * len(stages)
        for k in reversed(range(ind, len(stages))):
            s, signals[k] = stages[k].feedback(s, passes[-1].records[k], k == ind)
            levels[k] = s
        recons.append(s)
        state = state + eta * (s - state)
        inputs, records, h = list(passes[-1].inputs), list(passes[-1].records), state
        for k in range(ind, len(stages)):
            inputs[k] = h
            h, records[k] = stages[k](h, signals[k], eta)
        passes.append(Pass(inputs, records, signals, levels))
        logits.append(h)
    return logits, recons, passes


def hand_gate(stage: Stage, s: Tensor, record: Any) -> Tensor:
    """A feedback signal at a stage's output level, masked by the AdaReLU that
    produced that level's features; a residual sum (WRN blocks) has no gate."""
    if isinstance(stage, (ConvStage, PoolConvStage, PoolFCStage)):
        return s * CF.gate_mask(record.gate)
    if isinstance(stage, FCStage):
        return s * CF.gate_mask(record)
    if isinstance(stage, (BlocksStage, ConvNormStage)):
        return s
    raise AssertionError(f"{type(stage).__name__} cannot produce an intermediate level")


def expected_aux(net: FeedbackNet, passes: list[Pass], levels: Sequence[int]) -> list[list[Tensor]]:
    """aux_recons[t][j]: the signal at levels[j] in feedback t + 1, gated by the
    forward (pass t) that feedback followed."""
    stages = list(net.stages)
    return [[hand_gate(stages[k - 1], passes[t + 1].levels[k], passes[t].records[k - 1]) for k in levels] for t in range(len(passes) - 1)]


def assert_follows_algorithm1(net: FeedbackNet, x: Tensor, n_iterations: int, levels: Sequence[int]) -> None:
    with torch.no_grad():
        out = net.iterate(x, n_iterations)
        logits, recons, passes = algorithm1(net, x, n_iterations)
    # the WRN's 40 layers and residual sums (larger under the He-normal init)
    # accumulate fp32 rounding of ~1e-5 between two orders of the same ops
    tol = {"rtol": 1e-5, "atol": 1e-4} if isinstance(net.stages[0], BlocksStage) else {}
    for a, b in zip(out.logits, logits, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(out.recons, recons, strict=True):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(out.target, passes[0].inputs[net.ind])
    assert out.aux_levels == tuple(levels)
    for k, t in zip(levels, out.aux_targets, strict=True):
        torch.testing.assert_close(t, passes[0].inputs[k], msg=at(f"aux target at level {k}"))
    assert len(out.aux_recons) == n_iterations
    for t, (got, want) in enumerate(zip(out.aux_recons, expected_aux(net, passes, levels), strict=True)):
        for k, a, b in zip(levels, got, want, strict=True):
            torch.testing.assert_close(a, b, **tol, msg=at(f"aux recon at level {k}, iteration {t + 1}"))


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
def test_iterate_follows_algorithm1(name_ind: tuple[str, int]) -> None:
    """logits, recons, target and the intermediate reconstructions at the default levels."""
    name, ind = name_ind
    net = make_net(name, ind)
    assert_follows_algorithm1(net, images(n_images(name), input_shape(name)), 2, default_aux(name, ind))


def test_feedback_changes_the_logits() -> None:
    """A CNN-F with T > 0 is not silently a plain CNN."""
    net = make_net("cnnf_fmnist_std", 0)
    with torch.no_grad():
        out = net.iterate(images(2), 2)
    assert not torch.allclose(out.logits[0], out.logits[1])
    assert not torch.allclose(out.logits[1], out.logits[2])


# ---------------------------------------------------------------- intermediate reconstruction levels


def test_released_settings_reconstruct_at_k_levels() -> None:
    """cnnf-spec "Losses": K = 3 targets for B.2 at ind 2, K = 4 for the WRN at ind 5."""
    assert create_model("cnnf_fmnist_adv").ind == 2 and create_model("cnnf_wrn40_2").ind == 5
    assert create_model("cnnf_fmnist_adv").recon_levels == (3, 4)
    assert create_model("cnnf_wrn40_2").recon_levels == (6, 7, 8)
    assert create_model("cnnf_wrn40_2", ind=6).recon_levels == (7, 8)
    assert create_model("cnnf_fmnist_std").recon_levels == ()


@pytest.mark.parametrize("name_ind", NAME_INDS, ids=ids)
def test_default_recon_levels(name_ind: tuple[str, int]) -> None:
    """The architecture's levels above ind (below it the feedback never runs)."""
    name, ind = name_ind
    assert create_model(name, ind=ind).recon_levels == default_aux(name, ind)
    assert create_model(name, ind=ind, recon_levels=()).recon_levels == ()


@pytest.mark.parametrize(
    ("name", "ind", "levels", "n_iterations"),
    [
        ("cnnf_fmnist_std", 0, (3, 1, 2), 2),  # gates of ConvStage and PoolFCStage; ConvNormStage has none
        ("cnnf_fmnist_adv", 0, (6, 1, 5), 2),  # ConvStage, PoolFCStage, FCStage
        ("cnnf_fmnist_adv", 1, (4,), 2),  # PoolConvStage only
        ("cnnf_wrn40_2", 0, (8, 1, 3), 1),  # residual sums, the stem stage among them
    ],
)
def test_explicit_recon_levels_are_respected(name: str, ind: int, levels: tuple[int, ...], n_iterations: int) -> None:
    net = with_recon_levels(name, ind, levels)
    assert net.recon_levels == tuple(sorted(levels))
    assert_follows_algorithm1(net, images(n_images(name), input_shape(name)), n_iterations, sorted(levels))


@pytest.mark.parametrize("name_ind", FEEDBACK_INDS, ids=ids)
def test_recon_level_outside_the_feedback_range_is_rejected(name_ind: tuple[str, int]) -> None:
    """A level at or below ind (the feedback stops there) or at the logits is rejected,
    by FeedbackNet (ValueError) and by ModelConfig (ConfigError naming recon_levels),
    both saying what is allowed."""
    name, ind = name_ind
    n_levels = model_entry(name).meta.n_levels
    for bad in (ind, n_levels, -1):
        with pytest.raises(ValueError) as info:
            create_model(name, ind=ind, recon_levels=(ind + 1, bad) if ind + 1 < n_levels else (bad,))
        msg = str(info.value)
        assert "recon_levels" in msg and f"[{bad}]" in msg and f"ind={ind}" in msg and f"level {n_levels}" in msg, msg
        with pytest.raises(ConfigError) as cinfo:
            ModelConfig(arch=name, ind=ind, recon_levels=(bad,))
        assert cinfo.value.field == "recon_levels"
        assert f"{ind + 1}..{n_levels - 1}" in str(cinfo.value), str(cinfo.value)
    with pytest.raises(ConfigError, match="distinct") as cinfo:
        ModelConfig(arch=name, ind=ind, recon_levels=(n_levels - 1, n_levels - 1))
    assert cinfo.value.field == "recon_levels"
    cfg = ModelConfig(arch=name, ind=ind, recon_levels=[n_levels - 1])  # type: ignore[arg-type]  # as YAML gives it
    assert cfg.recon_levels == (n_levels - 1,)
    assert ModelConfig(arch=name, ind=ind).recon_levels is None  # None: the architecture's default


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("name", FEEDBACK)
def test_cnnf_loss_hand_formula_with_aux_levels(name: str) -> None:
    """clean_coef * mean_t CE(logits_t) + recon_coef * mean_{t,k} MSE(r_{k,t}, target_k),
    t = 1..T and the K = 1 + len(aux) levels, at the released ind; the reconstructions
    from Algorithm 1 written out, the targets from the hand-written plain CNN."""
    net = make_net(name, released_ind(name))
    n, n_iterations = n_images(name) + 1, 2
    x, y = images(n, input_shape(name)), torch.arange(n) + 3
    aux = default_aux(name, net.ind)
    with torch.no_grad():
        out = net.iterate(x, n_iterations)
        loss, ce, recon = cnnf_loss(out, y, clean_coef=0.7, recon_coef=0.3)
        logits, recons, passes = algorithm1(net, x, n_iterations)
        _, levels = PLAIN_FORWARD[backbone(name)](net, x)
    taps = expected_aux(net, passes, aux)
    ce_ref = sum(F.cross_entropy(z, y) for z in logits) / (n_iterations + 1)
    terms = [((recons[t] - levels[net.ind]) ** 2).mean() for t in range(n_iterations)]
    terms += [((taps[t][j] - levels[k]) ** 2).mean() for t in range(n_iterations) for j, k in enumerate(aux)]
    recon_ref = sum(terms) / ((1 + len(aux)) * n_iterations)
    torch.testing.assert_close(ce, ce_ref)
    torch.testing.assert_close(recon, recon_ref)
    torch.testing.assert_close(loss, 0.7 * ce_ref + 0.3 * recon_ref)


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


def adversarial_pair(name: str, n: int) -> tuple[Tensor, Tensor]:
    x = images(n, input_shape(name))
    x_adv = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).sign()).clamp(-1, 1)
    return x, x_adv


@pytest.mark.parametrize(("name", "n_iterations"), [("cnnf_fmnist_std", 2), ("cnnf_fmnist_adv", 2), ("cnnf_wrn40_2", 1)])
def test_adversarial_cnnf_loss_hand_formula(name: str, n_iterations: int) -> None:
    """cnnf-spec "Losses" on iterate(cat(x, x_adv)):
    sum_t [cc CE(clean_t) + CE(adv_t)] / (2 (T + 1)) + lam mean_{k,t} MSE(recon_{k,t}(adv), target_k(clean)),
    the hand side from separate clean and adversarial runs (every op is per sample)."""
    net = make_net(name, released_ind(name))
    n = n_images(name)
    x, x_adv = adversarial_pair(name, n)
    y = torch.arange(n) + 2
    cc, lam = 0.1, 0.3
    with torch.no_grad():
        loss, ce, recon = adversarial_cnnf_loss(net.iterate(torch.cat([x, x_adv]), n_iterations), y, cc, lam)
        clean, adv = net.iterate(x, n_iterations), net.iterate(x_adv, n_iterations)
    aux = default_aux(name, net.ind)
    ce_ref = sum(cc * F.cross_entropy(c, y) + F.cross_entropy(a, y) for c, a in zip(clean.logits, adv.logits)) / (2 * (n_iterations + 1))
    terms = [((r - clean.target) ** 2).mean() for r in adv.recons]
    terms += [((taps[j] - clean.aux_targets[j]) ** 2).mean() for taps in adv.aux_recons for j in range(len(aux))]
    assert len(terms) == (1 + len(aux)) * n_iterations
    recon_ref = sum(terms) / len(terms)
    tol = dict(rtol=1e-4, atol=1e-6)  # batch of 2n vs n: different conv kernels
    torch.testing.assert_close(ce, ce_ref, **tol)
    torch.testing.assert_close(recon, recon_ref, **tol)
    torch.testing.assert_close(loss, ce_ref + lam * recon_ref, **tol)


@pytest.mark.parametrize(("name", "n_iterations"), [("cnnf_fmnist_adv", 2), ("cnn_fmnist_std", 0)])
def test_adversarial_only_loss_hand_formula(name: str, n_iterations: int) -> None:
    """train.adv_loss adversarial (Madry et al.; the reference's --clean no):
    sum_t CE(adv_t) / (T + 1), the same reconstruction term, and no gradient
    through the clean cross-entropy (the clean logits do not enter the loss)."""
    net = make_net(name, released_ind(name) if name.startswith("cnnf") else 0)
    n = n_images(name)
    x, x_adv = adversarial_pair(name, n)
    y = torch.arange(n) + 2
    lam = 0.3
    out = net.iterate(torch.cat([x, x_adv]), n_iterations)
    loss, ce, recon = adversarial_cnnf_loss(out, y, 0.1, lam, adversarial_only=True)
    with torch.no_grad():
        adv = net.iterate(x_adv, n_iterations)
    ce_ref = sum(F.cross_entropy(a, y) for a in adv.logits) / (n_iterations + 1)
    tol = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ce.detach(), ce_ref, **tol)
    torch.testing.assert_close(loss.detach(), ce_ref + lam * recon.detach(), **tol)
    mixed, _, _ = adversarial_cnnf_loss(out, y, 0.1, lam)
    assert not torch.allclose(mixed, loss)
    if n_iterations == 0:  # a plain CNN: the clean logits get no gradient at all
        grads = torch.autograd.grad(loss, out.logits[0])[0]
        assert (grads[:n] == 0).all() and (grads[n:] != 0).any()


def test_reconstruction_loss_gradients_match_mse_and_keep_channels_last() -> None:
    """The reconstruction terms have F.mse_loss's value and gradients (adversarial
    rows of the recons against clean rows of the targets), and hand back
    channels-last gradients for channels-last maps, rows outside the slices 0."""
    torch.manual_seed(0)
    cl = torch.channels_last

    def leaf(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=cl).requires_grad_(True)

    recons, target = [leaf(4, 3, 5, 5), leaf(4, 3, 5, 5)], leaf(4, 3, 5, 5)
    aux_recon, aux_target = leaf(4, 2, 3, 3), leaf(4, 2, 3, 3)
    logits = tuple(torch.zeros(4, 10, dtype=torch.float64) for _ in range(3))
    out = CNNFOutput(logits, tuple(recons), target, (4,), ((aux_recon,), (aux_recon,)), (aux_target,))
    y = torch.tensor([1, 2])
    _, _, recon = adversarial_cnnf_loss(out, y, 0.1, 1.0)
    adv, clean = slice(2, 4), slice(0, 2)
    terms = [F.mse_loss(r[adv], target[clean]) for r in recons] + [F.mse_loss(aux_recon[adv], aux_target[clean])] * 2
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(recon, expected)
    leaves = [*recons, target, aux_recon, aux_target]
    got, want = torch.autograd.grad(recon, leaves), torch.autograd.grad(expected, leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
        assert a.is_contiguous(memory_format=cl) and not a.is_contiguous()
    assert torch.count_nonzero(got[0][clean]) == 0 and torch.count_nonzero(got[2][adv]) == 0


def test_adversarial_loss_gradient_flows_through_unrolled_iterations_and_targets() -> None:
    """The autograd gradient of adversarial_cnnf_loss is the derivative of the loss
    (central differences along a random parameter direction, float64), so nothing
    is detached: not the unrolled T = 2 iterations, not the clean targets. The
    loss with detached targets has a different gradient, so the check would see it.
    """
    net = make_net("cnnf_fmnist_adv", 2).double()
    x, x_adv = adversarial_pair("cnnf_fmnist_adv", 1)
    batch, y = torch.cat([x, x_adv]).double(), torch.tensor([3])
    params = list(net.parameters())
    cc, lam = 0.1, 1.0

    def loss_of(detach_targets: bool = False) -> Tensor:
        out = net.iterate(batch, 2)
        if detach_targets:
            out = out._replace(target=out.target.detach(), aux_targets=tuple(t.detach() for t in out.aux_targets))
        return adversarial_cnnf_loss(out, y, cc, lam)[0]

    g = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum(d.pow(2).sum() for d in direction))
    direction = [d / norm for d in direction]
    grads = torch.autograd.grad(loss_of(), params)
    slope = sum((gr * d).sum() for gr, d in zip(grads, direction))
    grads_detached = torch.autograd.grad(loss_of(detach_targets=True), params)
    slope_detached = sum((gr * d).sum() for gr, d in zip(grads_detached, direction))
    eps = 1e-5  # along a unit direction: small enough that no AdaReLU / AdaPool gate flips
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        up = loss_of()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        down = loss_of()
        for p, d in zip(params, direction):
            p.add_(eps * d)
    finite = (up - down) / (2 * eps)
    torch.testing.assert_close(slope, finite, rtol=1e-6, atol=1e-10)
    assert abs(slope_detached - finite) > 1e-3 * abs(finite), "the targets' gradient is too small to tell"
    # every parameter gets a gradient, those below ind included (through logits_0 and the targets)
    assert all(gr.abs().sum() > 0 for gr in grads)


# ---------------------------------------------------------------- feedback = transpose of the gated forward


def vjp(f: Callable[[Tensor], Tensor], x: Tensor, s: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """s^T J_f at x, computed in dtype (f must build its weights in that dtype too)."""
    x = x.detach().to(dtype).requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, grad_outputs=s.to(dtype))
    return g.float()


def pooled(x: Tensor, sel: CF.PoolSelection) -> Tensor:
    """The AdaPool of a fixed selection as a linear map (gather, zeroed where inactive)."""
    out = x.flatten(2).gather(2, sel.index.flatten(2)).view(sel.index.shape)
    return out if sel.active is None else out * sel.active


def ada_pool_reference(x: Tensor, g: Optional[Tensor]) -> Tensor:
    """cnnf-spec AdaPool: max-pool; later passes max where g > 0, min where g < 0, 0 where g == 0."""
    top, bottom = F.max_pool2d(x, 2), -F.max_pool2d(-x, 2)
    if g is None:
        return top
    return torch.where(g > 0, top, torch.where(g < 0, bottom, torch.zeros_like(top)))


TOL = dict(rtol=1e-4, atol=1e-5)


class Seen(NamedTuple):
    """What the later passes exercised (asserted once per model and ind)."""

    negative_gates: list[bool]  # an AdaReLU unit passed a value where its g < 0
    min_pools: list[bool]  # an AdaPool unit took the minimum (g < 0)


def check_pool(where: str, t: int, xin: Tensor, sel: CF.PoolSelection, g_pool: Optional[Tensor], seen: Seen) -> Tensor:
    """The record's selection is the spec's AdaPool of this pass; returns the pooled map."""
    p_in = pooled(xin, sel)
    torch.testing.assert_close(p_in, ada_pool_reference(xin, g_pool), msg=at(where))
    if t == 0:
        assert g_pool is None and sel.active is None, where  # the first feedback uses the max indices
    else:
        assert g_pool is not None and sel.active is not None, where
        seen.min_pools.append(bool((g_pool < 0).any()))
    return p_in


def check_gate(t: int, mask: Tensor, g: Optional[Tensor], seen: Seen) -> None:
    if t > 0:
        assert g is not None
        seen.negative_gates.append(bool(((mask != 0) & (g < 0)).any()))  # masks may be bool or 0/1


def check_conv_stage(stage: ConvStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    got, stored = stage.feedback(s, rec, final)
    assert torch.equal(CF.gate_mask(rec.gate) != 0, y != 0), f"{where}: record mask is not the forward gate"
    check_gate(t, CF.gate_mask(rec.gate), g, seen)
    conv = stage.conv
    expected = vjp(lambda v: F.conv2d(v, conv.weight.double(), None, conv.stride, conv.padding) * CF.gate_mask(rec.gate), xin, s)
    if not final:  # IN after every transposed conv but the final reconstruction
        expected = CF.l2_instance_norm(expected)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    assert torch.equal(stored, s), where  # the AdaReLU stores the signal before masking


def check_conv_norm_stage(stage: ConvNormStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """conv^T(s) with no mask (no gate: B.1's AdaPool above is the nonlinearity), then IN unless final."""
    got, stored = stage.feedback(s, rec, final)
    conv = stage.conv
    torch.testing.assert_close(y, in_bias(F.conv2d(xin, conv.weight, None, conv.stride, conv.padding), stage.norm.bias), msg=at(where))
    assert g is None, where  # nothing is stored for this stage
    expected = vjp(lambda v: F.conv2d(v, conv.weight.double(), None, conv.stride, conv.padding), xin, s)
    if not final:
        expected = CF.l2_instance_norm(expected)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    assert stored is None, where


def check_pool_conv_stage(stage: PoolConvStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """unpool(IN(conv^T(mask * s))); the IN output is also the AdaPool's g."""
    got, stored = stage.feedback(s, rec, final)
    g_pool, g_relu = (None, None) if g is None else g
    p_in = check_pool(where, t, xin, rec.pool, g_pool, seen)
    conv, eta = stage.conv, 0.1
    z_ref, mask = CF.ada_relu(in_bias(F.conv2d(p_in, conv.weight, None, conv.stride, conv.padding), stage.norm.bias), g_relu, eta)
    torch.testing.assert_close(y, z_ref, msg=at(where))  # the record is what the forward used
    # the gate's contract is its sign (active where > 0): on the first pass the
    # fused CPU path (cnnf.fused) returns the ReLU output, the eager one the pre-activation
    assert torch.equal(CF.gate_mask(rec.gate), CF.gate_mask(mask)), at(where)
    check_gate(t, CF.gate_mask(rec.gate), g_relu, seen)
    v = CF.l2_instance_norm(vjp(lambda q: F.conv2d(q, conv.weight.double(), None, conv.stride, conv.padding) * CF.gate_mask(rec.gate), p_in, s))
    expected = vjp(lambda u: pooled(u, rec.pool), xin, v)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    torch.testing.assert_close(stored[0], v, **TOL, msg=at(where))
    assert torch.equal(stored[1], s), where


def check_pool_fc_stage(stage: PoolFCStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """unpool(IN(reshape(fc^T(mask * s)))): IN after the first FC^T that becomes a map, even when final."""
    got, stored = stage.feedback(s, rec, final)
    g_pool, g_relu = (None, None) if g is None else g
    p_in = check_pool(where, t, xin, rec.pool, g_pool, seen)
    z_ref, mask = CF.ada_relu(F.linear(p_in.flatten(1), stage.fc.weight, stage.fc.bias), g_relu, 0.1)
    torch.testing.assert_close(y, z_ref, msg=at(where))
    torch.testing.assert_close(rec.gate, mask, msg=at(where))
    check_gate(t, CF.gate_mask(rec.gate), g_relu, seen)
    v = CF.l2_instance_norm(vjp(lambda q: F.linear(q.flatten(1), stage.fc.weight.double()) * CF.gate_mask(rec.gate), p_in, s))
    expected = vjp(lambda u: pooled(u, rec.pool), xin, v)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    torch.testing.assert_close(stored[0], v, **TOL, msg=at(where))
    assert torch.equal(stored[1], s), where


def check_fc_stage(stage: FCStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """fc^T(mask * s), no IN between FC layers."""
    got, stored = stage.feedback(s, rec, final)
    z_ref, mask = CF.ada_relu(F.linear(xin, stage.fc.weight, stage.fc.bias), g, 0.1)
    torch.testing.assert_close(y, z_ref, msg=at(where))
    torch.testing.assert_close(rec, mask, msg=at(where))
    check_gate(t, CF.gate_mask(rec), g, seen)
    expected = vjp(lambda u: F.linear(u, stage.fc.weight.double()) * CF.gate_mask(rec), xin, s)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    assert torch.equal(stored, s), where


def check_linear_stage(stage: LinearStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    got, stored = stage.feedback(s, rec, final)
    expected = vjp(lambda u: F.linear(u, stage.fc.weight.double(), stage.fc.bias.double()), xin, s)
    torch.testing.assert_close(got, expected, **TOL, msg=at(where))
    assert stored is None


def check_head_stage(stage: HeadStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """mask * IN(upsample_x8(fc^T s)); nearest upsampling is H W times the transpose of
    average pooling, so the VJP of the forward's avgpool-FC, scaled, then IN."""
    got, stored = stage.feedback(s, rec, final)
    a, mask = CF.ada_relu(in_bias(xin, stage.norm.bias), g, 0.1)
    torch.testing.assert_close(y, F.linear(a.mean(dim=(2, 3)), stage.fc.weight, stage.fc.bias), msg=at(where))
    assert torch.equal(CF.gate_mask(rec.gate), CF.gate_mask(mask)), at(where)  # the sign, as above
    assert tuple(rec.spatial) == (8, 8), where
    check_gate(t, CF.gate_mask(rec.gate), g, seen)
    hw = xin.shape[-2] * xin.shape[-1]
    # float32 as in the model: fc^T s sums 10 terms that can nearly cancel, and the
    # IN of such a near-zero channel (rms ~ sqrt(1e-8)) magnifies their rounding
    v = CF.l2_instance_norm(hw * vjp(lambda q: F.linear(q.mean(dim=(2, 3)), stage.fc.weight), xin, s, torch.float32))
    torch.testing.assert_close(got, v * CF.gate_mask(rec.gate), **TOL, msg=at(where))
    torch.testing.assert_close(stored, v, **TOL, msg=at(where))


class BlockTrace(NamedTuple):
    a: Tensor  # relu1 output, the input of conv1 and of the projection shortcut
    b: Tensor  # relu2 output, the input of conv2
    mask1: Tensor
    mask2: Tensor


def preact_block_forward(block: PreActBlock, x: Tensor, g: Optional[tuple[Tensor, Tensor]], eta: float) -> tuple[Tensor, BlockTrace]:
    """IN1 -> AdaReLU -> conv1 -> IN2 -> AdaReLU -> conv2, plus x or shortcut(a)."""
    g1, g2 = (None, None) if g is None else g
    a, mask1 = CF.ada_relu(in_bias(x, block.norm1.bias), g1, eta)
    b, mask2 = CF.ada_relu(in_bias(F.conv2d(a, block.conv1.weight, None, block.conv1.stride, 1), block.norm2.bias), g2, eta)
    z = F.conv2d(b, block.conv2.weight, None, 1, 1)
    shortcut = x if block.shortcut is None else F.conv2d(a, block.shortcut.weight, None, block.shortcut.stride)
    return z + shortcut, BlockTrace(a, b, CF.gate_mask(mask1), CF.gate_mask(mask2))


def preact_block_feedback(block: PreActBlock, s: Tensor, trace: BlockTrace) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """cnnf-spec "Residual block feedback" with each conv^T as the VJP of the conv:
    u = IN(conv2^T s), g2 = u; v = IN(conv1^T(mask2 u));
    projection: v += conv_sc^T s (no IN), out = mask1 v; identity: out = mask1 v + s; g1 = v."""
    w1, w2 = block.conv1.weight.double(), block.conv2.weight.double()
    u = CF.l2_instance_norm(vjp(lambda q: F.conv2d(q, w2, None, 1, 1), trace.b, s))
    v = CF.l2_instance_norm(vjp(lambda q: F.conv2d(q, w1, None, block.conv1.stride, 1), trace.a, u * trace.mask2))
    if block.shortcut is not None:
        w_sc = block.shortcut.weight.double()
        v = v + vjp(lambda q: F.conv2d(q, w_sc, None, block.shortcut.stride), trace.a, s)
        return v * trace.mask1, (v, u)
    return v * trace.mask1 + s, (v, u)


def check_blocks_stage(stage: BlocksStage, where: str, t: int, xin: Tensor, y: Tensor, rec: Any, g: Any, s: Tensor, final: bool, seen: Seen) -> None:
    """The blocks' feedback in reverse, then stem^T without IN (the pixel reconstruction)."""
    got, stored = stage.feedback(s, rec, final)
    records, input_size = rec
    assert tuple(input_size) == tuple(xin.shape[-2:]), where
    h = xin if stage.stem is None else F.conv2d(xin, stage.stem.weight, None, 1, 1)
    traces = []
    for j, block in enumerate(stage.blocks):
        h, trace = preact_block_forward(block, h, None if g is None else g[j], 0.1)
        assert torch.equal(CF.gate_mask(records[j].gate1), trace.mask1) and torch.equal(CF.gate_mask(records[j].gate2), trace.mask2), f"{where}, block {j}"
        traces.append(trace)
        check_gate(t, trace.mask1, None if g is None else g[j][0], seen)
        check_gate(t, trace.mask2, None if g is None else g[j][1], seen)
    torch.testing.assert_close(y, h, msg=at(where))  # the records are what the forward used
    expected_signals: list[Any] = [None] * len(stage.blocks)
    v = s
    for j in reversed(range(len(stage.blocks))):
        v, expected_signals[j] = preact_block_feedback(stage.blocks[j], v, traces[j])
    if stage.stem is not None:
        assert final, f"{where}: the stem stage only runs in the feedback when it ends at the image"
        v = vjp(lambda q: F.conv2d(q, stage.stem.weight.double(), None, 1, 1), xin, v)  # no IN
    torch.testing.assert_close(got, v, **TOL, msg=at(where))
    assert len(stored) == len(stage.blocks), where
    for j, (pair, want) in enumerate(zip(stored, expected_signals, strict=True)):
        torch.testing.assert_close(pair[0], want[0], **TOL, msg=at(f"{where}, block {j} g1"))
        torch.testing.assert_close(pair[1], want[1], **TOL, msg=at(f"{where}, block {j} g2"))


STAGE_CHECKS: dict[type, Callable[..., None]] = {
    ConvStage: check_conv_stage,
    ConvNormStage: check_conv_norm_stage,
    PoolConvStage: check_pool_conv_stage,
    PoolFCStage: check_pool_fc_stage,
    FCStage: check_fc_stage,
    LinearStage: check_linear_stage,
    HeadStage: check_head_stage,
    BlocksStage: check_blocks_stage,
}
# WRN: every stage kind is checked at ind 0 (stem and all blocks); ind 5 is the
# released setting. Other inds add no stage kind and cost a WRN each.
TRANSPOSE_CASES = [p for p in FEEDBACK_INDS if backbone(p[0]) != "wrn40_2" or p[1] in (0, 5)]


@pytest.mark.parametrize("name_ind", TRANSPOSE_CASES, ids=ids)
def test_stage_feedback_is_transpose_of_gated_forward(name_ind: tuple[str, int]) -> None:
    """With every gate fixed by a forward pass, each stage's feedback is the VJP
    of the stage's linear part (conv / pool selection / FC, no bias, times the
    AdaReLU mask), with the L2 instance norm of the spec inserted where it says.

    The feedback as a whole is not the transpose of the forward: the IN in the
    feedback rescales each channel by a signal-dependent positive factor, which
    the forward's VJP does not have. So the check is stage by stage, on the
    records of the first pass (max-pool, ReLU) and of later passes (min-pool
    and negative gates present):
      ConvStage:     conv^T(mask * s), then IN unless it is the final reconstruction
      ConvNormStage: conv^T(s), then IN unless final (no gate: B.1's second conv)
      PoolConvStage: unpool(IN(conv^T(mask * s)))
      PoolFCStage:   unpool(IN(reshape(fc^T(mask * s)))), IN after fc1^T always
      FCStage:       fc^T(mask * s), no IN
      LinearStage:   fc^T s
      HeadStage:     mask * IN(upsample_x8(fc^T s))
      BlocksStage:   the residual block feedback per block, in reverse; stem^T last, no IN
    and the stored signals are the incoming s (AdaReLU) and the IN output (AdaPool,
    head gate, relu2 of a block), v before masking (relu1 of a block).
    """
    name, ind = name_ind
    net = make_net(name, ind)
    x = images(n_images(name), input_shape(name))
    assert net.step_size == 0.1  # the checks rebuild the forward with eta 0.1
    torch.manual_seed(1)
    with torch.no_grad():
        _, _, passes = algorithm1(net, x, 2)
    stages = list(net.stages)
    seen = Seen([], [])
    for t, p in enumerate(passes):
        for k in range(ind, len(stages)):
            stage, xin, rec = stages[k], p.inputs[k], p.records[k]
            with torch.no_grad():
                y, _ = stage(xin, p.signals[k], net.step_size)
            s = torch.randn_like(y)
            STAGE_CHECKS[type(stage)](stage, f"pass {t}, stage {k}", t, xin, y, rec, p.signals[k], s, k == ind, seen)
    assert any(seen.negative_gates), "expected AdaReLU units passing negative values (g < 0) on a later pass"
    if any(isinstance(s, (PoolConvStage, PoolFCStage)) for s in stages[ind:]):
        assert any(seen.min_pools), "expected min-pooled units (g < 0) on a later pass"


def test_every_stage_kind_has_a_transpose_check() -> None:
    kinds = {type(s) for n in FEEDBACK for s in create_model(n).stages}
    assert kinds <= set(STAGE_CHECKS), kinds - set(STAGE_CHECKS)
    assert kinds == {type(s) for n, i in TRANSPOSE_CASES for s in create_model(n, ind=i).stages[i:]}


def test_reconstruction_at_ind1_has_no_instance_norm() -> None:
    """cnnf-spec "Layers": no instance norm on the final reconstruction.

    For ind=1 the reconstruction is conv2^T(s), not normalised to a per-channel
    RMS of 1 (an earlier version normalised it). B.1 has no AdaReLU after conv2,
    so no mask either.
    """
    net = make_net("cnnf_fmnist_std", 1)
    x = images(2)
    with torch.no_grad():
        out = net.iterate(x, 1)
        _, _, passes = algorithm1(net, x, 0)
        s = out.logits[0]
        for k in (3, 2):
            s, _ = net.stages[k].feedback(s, passes[0].records[k], False)
        expected = net.stages[1].conv.feedback(s, passes[0].records[1])
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
    legal = list(model_entry(name).meta.legal_inds)
    for bad in (max(legal) + 1, -1):
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
    x = images(n_images(name), input_shape(name))
    with torch.no_grad():
        a, b = net.iterate(x, 2), net.iterate(x, 2)
    for u, v in zip(a.logits + a.recons, b.logits + b.recons, strict=True):
        assert torch.equal(u, v)
    for u, v in zip(a.aux_recons, b.aux_recons, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(u, v, strict=True))


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
