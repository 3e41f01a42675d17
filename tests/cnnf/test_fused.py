"""The fused CPU kernels (cnnf.fused) against the eager formulas of cnnf.functional.

Every comparison runs the same call twice, once with CNNF_FUSED_KERNELS=0
(the eager composition ada_relu(l2_instance_norm(x, bias), g, eta)) and once
with the kernels on, and checks values, gates and every input gradient.
The hand-written C kernels that take over most of these calls are off here
(CNNF_NATIVE_KERNELS=0), so that these tests check the compiled kernels;
tests/cnnf/test_native.py checks the C ones.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from cnnf import functional as CF
from cnnf import fused, native
from tests.cnnf.conftest import b2_step_matches_eager

FP32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.ENV, "1")
    monkeypatch.setenv(native.ENV, "0")
    monkeypatch.setattr(fused, "_disabled_reason", None)


def maps(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


def run(monkeypatch: pytest.MonkeyPatch, on: bool, x: Tensor, bias: Tensor, s: Tensor | None, eta: float, upstream: Tensor):
    """(out, gate, grads of x, bias and s) of norm_ada_relu with the kernels on or off."""
    monkeypatch.setenv(fused.ENV, "1" if on else "0")
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, bias) + ((s,) if s is not None else ())]
    out, gate = CF.norm_ada_relu(leaves[0], leaves[1], leaves[2] if s is not None else None, eta)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out.detach(), gate, grads


@pytest.mark.parametrize("later", [False, True], ids=["first-pass", "later-pass"])
@pytest.mark.parametrize("shape", [(4, 16, 6, 6), (3, 32, 5, 7)])
def test_norm_ada_relu_matches_eager(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], later: bool) -> None:
    x, bias = maps(shape, 0), torch.randn(shape[1], generator=torch.Generator().manual_seed(1))
    s = maps(shape, 2) if later else None
    upstream = maps(shape, 3)
    eager = run(monkeypatch, False, x, bias, s, 0.3, upstream)
    fast = run(monkeypatch, True, x, bias, s, 0.3, upstream)
    assert fused._disabled_reason is None
    torch.testing.assert_close(fast[0], eager[0], **FP32)
    # the gate's contract: positive exactly where the unit is active
    assert torch.equal(CF.gate_mask(fast[1]), CF.gate_mask(eager[1]))
    assert torch.equal(CF.gate_mask(fast[1]) != 0, fast[0] != 0)
    for got, want in zip(fast[2], eager[2]):
        torch.testing.assert_close(got, want, **FP32)
    assert fast[0].is_contiguous(memory_format=torch.channels_last), "the kernels keep the models' layout"
    if later:
        assert (fast[0] < 0).any(), "a negative signal lets negative values pass"


def test_l2_instance_norm_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    x, upstream = maps((5, 8, 7, 7), 4), maps((5, 8, 7, 7), 5)
    results = []
    for on in (False, True):
        monkeypatch.setenv(fused.ENV, "1" if on else "0")
        a = x.clone().requires_grad_(True)
        b = torch.linspace(-1, 1, 8).requires_grad_(True)
        y = CF.l2_instance_norm(a, bias=b)
        results.append((y.detach(), *torch.autograd.grad(y, (a, b), upstream)))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **FP32)


def test_double_backward_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_graph=True takes the differentiable formulas, with r rebuilt from x."""
    shape = (2, 4, 5, 5)
    x, s, upstream = maps(shape, 6), maps(shape, 7), maps(shape, 8)
    bias = torch.zeros(4)
    results = []
    for on in (False, True):
        monkeypatch.setenv(fused.ENV, "1" if on else "0")
        for signal in (None, s):
            a = x.clone().requires_grad_(True)
            out, _ = CF.norm_ada_relu(a, bias, signal, 0.2)
            out2 = CF.l2_instance_norm(a)
            (g1,) = torch.autograd.grad((out * upstream).sum() + (out2 * upstream).sum(), a, create_graph=True)
            (g2,) = torch.autograd.grad(g1.square().sum(), a)
            results.append((g1.detach(), g2))
    for got, want in zip(results[2:], results[:2]):
        torch.testing.assert_close(got[0], want[0], **FP32)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


def test_bfloat16_close_to_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 maps with 32 channels take the kernels (fp32 inside, one rounding on output)."""
    shape = (4, 32, 6, 6)
    x, s = maps(shape, 9), maps(shape, 10)
    bias = torch.zeros(32)
    assert fused.enabled_for(x.bfloat16())
    assert not fused.enabled_for(maps((4, 16, 6, 6), 9, torch.bfloat16)), "16 bf16 channels run eager (slower fused)"
    ref, _ = CF.norm_ada_relu(x, bias, s, 0.1)
    out, _ = CF.norm_ada_relu(x.bfloat16(), bias, s.bfloat16(), 0.1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_where_the_kernels_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    x = maps((2, 4, 3, 3), 11)
    assert fused.enabled_for(x)
    assert not fused.enabled_for(x.double()), "float64 (gradcheck) stays eager"
    assert not fused.enabled_for(x.flatten(1)), "only 4-D maps"
    monkeypatch.setenv(fused.ENV, "0")
    assert not fused.enabled_for(x)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_see_the_eager_ops() -> None:
    """A FLOP counter (a dispatch mode) sees the individual ops, and the kernels stay on afterwards."""
    x = maps((2, 4, 3, 3), 12)
    with _CountOps() as counter:
        CF.norm_ada_relu(x, torch.zeros(4), None, 0.1)
    assert any(name.startswith("rsqrt") for name in counter.names)
    assert fused._disabled_reason is None and fused.enabled_for(x)


def test_compile_failure_falls_back_to_eager_once() -> None:
    def broken(t: Tensor) -> Tensor:
        torch._dynamo.graph_break()  # fullgraph=True cannot compile this
        return t + 1

    t = torch.ones(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(fused.compiled(broken)(t), t + 1)
    assert fused._disabled_reason is not None
    assert any("fused CPU kernels are off" in str(w.message) for w in caught)
    assert not fused.enabled_for(maps((2, 4, 3, 3), 13))


def test_many_input_variants_do_not_switch_the_kernels_off() -> None:
    """More input variants than dynamo's recompile limit (8 by default, 2
    here) still compile, up to fused.MAX_VARIANTS, and give the eager values."""
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=2):
        for shape in [(2, 4, 3, 3), (1, 4, 3, 3), (2, 4, 1, 1), (3, 6, 2, 5)]:
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(shape).contiguous(memory_format=layout)
                out, _ = CF.norm_ada_relu(x, torch.zeros(shape[1]), None, 0.1)
                torch.testing.assert_close(out, torch.relu(CF.l2_instance_norm(x.double()).float()), **FP32)
    assert fused._disabled_reason is None
    assert counters["stats"]["unique_graphs"] - graphs_before > 2, "variants beyond the limit were compiled too"


def test_training_step_gradients_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The B.2 CNN-F, one feedback iteration, clean + adversarial loss: loss and
    every parameter gradient agree with the eager path."""
    b2_step_matches_eager(monkeypatch, fused.ENV)


# ---------------------------------------------------------------- where they are used


def test_choose_pays_back_the_compile_time_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert fused.choose("auto", cpu, fused.AUTO_MIN_STEPS, fused.AUTO_MIN_STEPS)
    assert not fused.choose("auto", cpu, fused.AUTO_MIN_STEPS - 1, fused.AUTO_MIN_STEPS)
    assert not fused.choose("auto", gpu, 10**9, fused.AUTO_MIN_STEPS), "GPUs run eager"
    assert fused.choose("fused", cpu, 1, fused.AUTO_MIN_STEPS)
    assert not fused.choose("eager", cpu, 10**9, fused.AUTO_MIN_STEPS)
    with pytest.raises(ValueError, match="kernels: expected auto, fused or eager"):
        fused.choose("fast", cpu, 1, 1)


def test_off_outside_a_scope_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    x = maps((2, 4, 3, 3), 14)
    monkeypatch.delenv(fused.ENV)
    assert not fused.enabled_for(x), "calling a model compiles nothing unless asked"
    with fused.use_kernels(True):
        assert fused.enabled_for(x)
        with fused.use_kernels(False):
            assert not fused.enabled_for(x)
        monkeypatch.setenv(fused.ENV, "0")
        assert not fused.enabled_for(x)
    monkeypatch.setenv(fused.ENV, "1")
    assert fused.enabled_for(x)


def test_train_config_rejects_unknown_kernels() -> None:
    from cnnf.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="kernels: expected auto, fused or eager, got 'fast'"):
        TrainConfig(kernels="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("kernels", ["fused", "eager", "auto"])
def test_fit_and_evaluate_follow_the_kernels_setting(monkeypatch: pytest.MonkeyPatch, kernels: str) -> None:
    """fit and evaluate run the compiled kernels exactly when the setting asks
    (auto: a 2-step run on the CPU is too short to pay for compiling)."""
    from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
    from cnnf.data import load_splits
    from cnnf.evaluate import pgd_suite
    from cnnf.train import fit
    from cnnf.evaluate import evaluate

    monkeypatch.delenv(fused.ENV)
    calls: list[str] = []
    real = fused.compiled

    def spy(fn):  # type: ignore[no-untyped-def]
        kernel = real(fn)

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(fn.__name__)
            return kernel(*args, **kwargs)
        return call

    monkeypatch.setattr(fused, "compiled", spy)
    data = DataConfig(n_train=32, val_fraction=0.25)
    cfg = ExperimentConfig(data=data, model=ModelConfig(arch="cnnf_fmnist_std"),
                           train=TrainConfig(epochs=1, batch_size=16, device="cpu", kernels=kernels),  # type: ignore[arg-type]
                           eval=EvalConfig())
    splits = load_splits(data)
    model = fit(cfg, splits).model
    trained = len(calls)
    suite = dataclasses.replace(pgd_suite(eps=0.1, steps=1), checks=False, n_examples=8)
    evaluate(model, splits.val, suite, kernels=kernels)
    assert (trained > 0) == (kernels == "fused")
    assert (len(calls) > trained) == (kernels == "fused")
    assert "norm_relu_backward" in calls if kernels == "fused" else not calls
