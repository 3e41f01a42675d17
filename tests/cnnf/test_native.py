"""The hand-written C kernels (cnnf.native) against the formulas of cnnf.fused.

The formulas run as plain (eager) tensor code in float64 or float32; the C
kernels must give the same maps and gradients, fall back (return None) for
inputs they do not serve, and leave the compiled kernels in charge when they
cannot be built.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

from cnnf import functional as CF
from cnnf import fused, native
from tests.cnnf.conftest import b2_step_matches_eager

CL = torch.channels_last
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}
EPS = 1e-8


KERNELS = ("norm_fwd", "norm_bwd", "ada_fwd", "ada_bwd", "maxpool2", "unpool2", "gather2")


@pytest.fixture(autouse=True)
def _native_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    if native.library() is None:
        pytest.fail("the native kernels did not build on this machine (a C compiler is needed for the fused path)")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the C functions called from here on (the library wrapped in a spy)."""
    names: set[str] = set()
    real = native.library()

    class Spy:
        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            names.add(name)
            return getattr(real, name)

    monkeypatch.setattr(native, "library", lambda: Spy())
    return names


def maps(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=CL)


def close(got: Tensor, want: Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


# Channel counts: the specialised kernels (16, 32, 64, 128) and the generic one (20).
SHAPES = [(3, 16, 5, 5), (2, 32, 28, 28), (4, 64, 14, 14), (2, 20, 6, 7), (2, 128, 3, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_norm_and_norm_relu_match_the_formulas(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x, g = maps(shape, 0, dtype), maps(shape, 1, dtype)
    bias = torch.randn(shape[1], generator=torch.Generator().manual_seed(2)) * 0.3
    for relu, formula, grad_formula in ((False, fused.norm_forward, None), (True, fused.norm_relu_forward, fused.norm_relu_backward)):
        got = native.norm_forward(x, bias, EPS, relu)
        want = formula(x, bias, EPS)
        assert got is not None
        close(got[0], want[0], dtype)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=0)  # r: float32 in both
        assert got[0].dtype == dtype and got[0].is_contiguous(memory_format=CL)
        if relu:
            assert torch.equal(got[0] > 0, want[0] > 0) or dtype == torch.bfloat16  # the same units active
        r = want[1]
        grads = native.norm_backward(g, x, r, bias if relu else None, relu, True)
        want_g = grad_formula(g, x, r, bias, True) if relu else fused.norm_backward(g, x, r, True)
        assert grads is not None
        close(grads[0], want_g[0], dtype)
        torch.testing.assert_close(grads[1], want_g[1], rtol=1e-4, atol=1e-3)  # bias: float32 sums in another order
        assert grads[0].dtype == dtype and grads[1].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "x".join(map(str, s)))
def test_norm_ada_relu_matches_the_formulas(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x, s, g = maps(shape, 3, dtype), maps(shape, 4, dtype), maps(shape, 5, dtype)
    s[0, :, 0, 0] = 0  # a zero signal: the unit is off whatever its value
    bias = torch.randn(shape[1], generator=torch.Generator().manual_seed(6)) * 0.3
    got, want = native.norm_ada_relu_forward(x, bias, s, 0.3, EPS), fused.norm_ada_relu_forward(x, bias, s, 0.3, EPS)
    assert got is not None
    for a, b in zip(got, want):
        close(a, b, dtype)
    assert (got[0] < 0).any(), "a negative signal lets negative values pass"
    assert torch.equal(got[0] != 0, got[1] > 0), "the gate is positive exactly where the output is kept"
    assert not got[0][0, :, 0, 0].any()
    z, r = want[1], want[2]
    grads = native.norm_ada_relu_backward(g, z, x, r, 0.3, True, True)
    want_g = fused.norm_ada_relu_backward(g, z, x, r, 0.3, True, True)
    assert grads is not None
    close(grads[0], want_g[0], dtype)
    torch.testing.assert_close(grads[1], want_g[1], rtol=1e-4, atol=1e-3)
    close(grads[2], want_g[2], dtype)
    without = native.norm_ada_relu_backward(g, z, x, r, 0.3, False, False)
    assert without is not None and without[1] is None and without[2] is None
    assert torch.equal(without[0], grads[0])


def test_the_thread_count_does_not_change_a_bit() -> None:
    """Each sample is one thread's work: 1 or 2 threads give identical results."""
    x, g = maps((6, 32, 9, 9), 7), maps((6, 32, 9, 9), 8)
    bias = torch.linspace(-0.2, 0.2, 32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, r = native.norm_forward(x, bias, EPS, True)
            results.append((out, r, *native.norm_backward(g, x, r, bias, True, True)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_nan_propagates_like_torch_relu() -> None:
    """A NaN poisons its (sample, channel) as in the formulas, so a diverging
    run still ends with a non-finite loss instead of silently zeroed units."""
    x = maps((2, 16, 4, 4), 9)
    x[1, 3, 2, 2] = float("nan")
    got, _ = native.norm_forward(x, torch.zeros(16), EPS, True)
    want, _ = fused.norm_relu_forward(x, torch.zeros(16), EPS)
    assert torch.equal(got.isnan(), want.isnan()) and got[1, 3].isnan().all()


def test_inputs_the_kernels_do_not_serve_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    x = maps((2, 16, 4, 4), 10)
    bias = torch.zeros(16)
    assert native.norm_forward(x, bias, EPS, True) is not None
    assert native.norm_forward(x.contiguous(), bias, EPS, True) is None, "NCHW"
    assert native.norm_forward(x.double(), bias.double(), EPS, True) is None, "float64"
    assert native.norm_forward(x, bias.double(), EPS, True) is None, "a bias of another dtype"
    assert native.norm_forward(maps((1, 300, 2, 2), 11), None, EPS, True) is None, "over 256 channels"
    assert native.norm_ada_relu_forward(x, bias, x.bfloat16(), 0.1, EPS) is None, "signal of another dtype"
    r = torch.ones(2, 16, 1, 1)
    assert native.norm_backward(x[:, :, :2], x, r, bias, True, True) is None, "gradient of another shape"
    with native.use_native(False):
        assert native.norm_forward(x, bias, EPS, True) is None
    monkeypatch.setenv(native.ENV, "0")
    assert native.norm_forward(x, bias, EPS, True) is None


def test_build_is_cached_and_a_failed_build_leaves_the_compiled_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CNNF_NATIVE_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        (built,) = (tmp_path / "cache").glob("*/libcnnf_kernels.so")
        stamp = built.stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None and built.stat().st_mtime_ns == stamp, "loaded from the cache, not rebuilt"

        monkeypatch.setenv("CNNF_NATIVE_CACHE", str(tmp_path / "other"))
        monkeypatch.setenv("CC", "false")  # a compiler that always fails
        native.library.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.library() is None
        assert any("native CPU kernels unavailable" in str(w.message) for w in caught)
        assert not list((tmp_path / "other").glob("*/*.so")), "nothing half-written is left to load"
        x = maps((2, 16, 4, 4), 12)
        assert native.norm_forward(x, None, EPS, True) is None
        monkeypatch.setenv(fused.ENV, "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, _ = CF.norm_ada_relu(x, torch.zeros(16), None, 0.1)  # the compiled kernel serves
        torch.testing.assert_close(out, torch.relu(CF.l2_instance_norm(x.double()).float()), rtol=1e-5, atol=1e-5)
    finally:
        native.library.cache_clear()


def test_training_step_gradients_match_eager(monkeypatch: pytest.MonkeyPatch, served: set[str]) -> None:
    """The B.2 CNN-F (16, 32 and 64 channels), one feedback iteration, clean +
    adversarial loss: with the C kernels serving every instance norm and
    pooling, the loss and every parameter gradient agree with the eager path."""
    b2_step_matches_eager(monkeypatch, fused.ENV)
    assert {f"cnnf_{k}_f32" for k in KERNELS} <= served


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 16, 28, 28), (3, 64, 14, 14), (2, 20, 7, 9)], ids=lambda s: "x".join(map(str, s)))
def test_pooling_is_bitwise_torchs(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """max_pool2d's values and indices (ties: the first; NaN wins), its backward,
    max_unpool2d and the unpool's backward (a gather), bit for bit; odd sizes drop the last row / column."""
    import torch.nn.functional as F

    x = maps(shape, 14, dtype)
    x[0, 0, 0, 0] = float("nan")
    x[1, 1, 2:4, 2:4] = 1.0  # a window of ties
    want, want_index = F.max_pool2d(x, 2, return_indices=True)
    got, index = native.maxpool2(x)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(index, want_index) and got.is_contiguous(memory_format=CL)
    g = maps(tuple(want.shape), 15, dtype)
    size = (shape[2], shape[3])
    back = torch.ops.aten.max_pool2d_with_indices_backward(g, x, [2, 2], [2, 2], [0, 0], [1, 1], False, want_index)
    assert torch.equal(native.unpool2(g, index, size), back)
    assert torch.equal(native.unpool2(g, index, size), F.max_unpool2d(g, want_index, 2, output_size=size))
    big = maps(shape, 16, dtype)
    assert torch.equal(native.gather2(big, index), big.flatten(2).gather(2, want_index.flatten(2)).view_as(g))
    assert native.unpool2(g, index.contiguous(), size) is None, "indices in another layout fall back"


@pytest.mark.parametrize("later", [False, True], ids=["first-pass", "later-pass"])
def test_ada_pool_and_its_feedback_match_eager(monkeypatch: pytest.MonkeyPatch, later: bool) -> None:
    """Values and gradients of the AdaPool and the unpooling feedback, native kernels on or off."""
    x, s = maps((3, 16, 8, 8), 17), maps((3, 16, 4, 4), 18)
    s[0, 0] = 0
    results = []
    for on in ("1", "0"):
        monkeypatch.setenv(fused.ENV, on)
        a, b = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
        pooled, selection = CF.ada_pool(a, s if later else None)
        fb = CF.ada_pool_feedback(b, selection, (8, 8))
        loss = (pooled * maps((3, 16, 4, 4), 19)).sum() + (fb * maps((3, 16, 8, 8), 20)).sum()
        results.append((pooled.detach(), selection.index, fb.detach(), *torch.autograd.grad(loss, (a, b))))
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_with_fused_kernels_runs_on_the_c_kernels(monkeypatch: pytest.MonkeyPatch, served: set[str], precision: str) -> None:
    """B.2 adversarial training through fit (autocast for bf16): the C kernels
    serve the norms and pooling of every dtype the step produces, and the run's
    losses stay finite."""
    from cnnf.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
    from cnnf.data import load_splits
    from cnnf.train import fit

    monkeypatch.delenv(fused.ENV, raising=False)
    data = DataConfig(n_train=32, val_fraction=0.25)
    train = TrainConfig(epochs=1, batch_size=8, device="cpu", kernels="fused", precision=precision,  # type: ignore[arg-type]
                        adv_eps_linf=0.1, adv_steps=1, n_iterations=1)
    cfg = ExperimentConfig(data=data, model=ModelConfig(arch="cnnf_fmnist_adv", ind=2), train=train)
    (epoch,) = fit(cfg, load_splits(data)).history
    suffix = "f32" if precision == "fp32" else "bf16"
    assert {f"cnnf_{k}_{suffix}" for k in KERNELS} <= served
    assert all(torch.isfinite(torch.tensor(v)) for v in (epoch.train_loss, epoch.train_ce, epoch.train_recon))


def test_bfloat16_maps_of_16_channels_take_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernels serve bf16 only for multiples of 32 channels; the C ones serve any count."""
    monkeypatch.setenv(fused.ENV, "1")
    x = maps((4, 16, 6, 6), 13, torch.bfloat16)
    assert fused.enabled_for(x)
    monkeypatch.setenv(native.ENV, "0")
    assert not fused.enabled_for(x)


def test_the_eager_path_never_builds_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the fused scope, asking whether a bf16 map of 16 channels takes
    the fused path must not build (or even look up) the C library."""
    monkeypatch.delenv(fused.ENV, raising=False)

    def no_build() -> None:
        raise AssertionError("the C library was asked for outside the fused scope")

    monkeypatch.setattr(native, "library", no_build)
    assert not fused.enabled_for(maps((4, 16, 6, 6), 21, torch.bfloat16))
    out, _ = CF.norm_ada_relu(maps((2, 16, 4, 4), 22, torch.bfloat16), torch.zeros(16), None, 0.1)
    assert out.dtype == torch.bfloat16
