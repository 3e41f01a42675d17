"""Fused CPU kernels for the memory-bound parts of a CNN-F step.

The L2 instance norm and the AdaReLU that follows it are a handful of
elementwise ops and per-channel sums. Eager PyTorch runs each as its own pass
over the feature map (square, sum, scale, bias, relu forward; mask, product,
sum, scale, multiply-add backward), and on the 2-core development machine
those passes were about 40 % of a B.2 training step while the convolutions
ran near the matmul peak. Here the same formulas are written once as plain
tensor functions and compiled by torch.compile (inductor's C++ backend),
which turns each into one reduction pass and one elementwise pass.

The math is the same as the eager path in cnnf.functional (cnnf-spec A.4 and
Sec. 3.2); only the order of floating-point additions inside the sums differs.
bf16 inputs are computed in fp32 inside the kernel and rounded once on output.

Where they apply (channels-last float32 / bfloat16 maps, up to 256
channels), hand-written C versions of the same six formulas (cnnf.native)
serve the calls instead of the compiled ones: `run` picks. With them,
bfloat16 maps of any channel count take this path; the compiled kernels
alone handle bfloat16 only for multiples of 32 channels (slower otherwise).

Used only for CPU tensors (a GPU step is launch-bound at these sizes, and
this path has not been measured there). Compiling costs each process about
5 s when inductor's on-disk cache is warm and about 40 s when it is cold, so
`fit` and `evaluate` turn the kernels on only for work large enough to pay
that back (`worth_compiling`; TrainConfig.kernels overrides it), through the
`use_kernels` scope. Outside any scope they are off, so merely calling a
model never compiles anything. CNNF_FUSED_KERNELS=0 or 1 overrides every
choice. If compiling fails (no C++ compiler), a warning is
printed once and the eager path takes over for the rest of the process.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, ContextManager, Optional

import torch
from torch import Tensor

from cnnf import native
from cnnf.switches import Switch

ENV = "CNNF_FUSED_KERNELS"
MAX_VARIANTS = 64  # compiled versions per kernel before a new input variant runs eager

_disabled_reason: Optional[str] = None


# Below this many optimisation steps (or evaluated images) the eager path is
# used: at ~0.1-0.6 s per CPU step the compile time would not be paid back.
AUTO_MIN_STEPS = 1000
AUTO_MIN_IMAGES = 1000

_SWITCH = Switch("cnnf_fused_kernels", default=None, env=ENV)


def use_kernels(enabled: bool) -> ContextManager[None]:
    """Within this scope the fused kernels are on (or off), unless CNNF_FUSED_KERNELS says otherwise."""
    return _SWITCH.scope(enabled)


def choose(setting: str, device: torch.device, work: int, minimum: int) -> bool:
    """The kernels for a run: setting 'fused' or 'eager', or 'auto': on the
    CPU when `work` (steps, images) reaches `minimum`."""
    if setting not in ("auto", "fused", "eager"):
        raise ValueError(f"kernels: expected auto, fused or eager, got {setting!r}")
    if setting != "auto":
        return setting == "fused"
    return device.type == "cpu" and work >= minimum


def _requested() -> bool:
    forced = _SWITCH.from_env()
    return forced if forced is not None else bool(_SWITCH.scoped())


def enabled_for(x: Tensor) -> bool:
    """Whether the fused kernels serve this tensor: CPU, 4-D, float32 or
    bfloat16 (bfloat16 with a multiple of 32 channels, or any count the C
    kernels take), and no dispatch mode active (a FLOP counter or similar
    must see the individual ops) and not inside an outer torch.compile.
    The C kernels are asked last, so a process outside the fused scope never
    builds them."""
    return (
        _disabled_reason is None
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and _requested()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.compiler.is_compiling()
        and (x.dtype == torch.float32 or x.shape[1] % 32 == 0 or native.serves(x))
    )


def disable(reason: str) -> None:
    """Use the eager path for the rest of the process."""
    global _disabled_reason
    if _disabled_reason is None:
        warnings.warn(f"cnnf: fused CPU kernels are off for this process ({reason}); using eager PyTorch", stacklevel=3)
    _disabled_reason = reason


def _hw(x: Tensor) -> int:
    return x.shape[-2] * x.shape[-1]


# ------------------------------------------------------------ the formulas
# Plain tensor functions; `compiled(...)` wraps them. The eager versions are
# also used for double backward (create_graph=True), where they must stay
# differentiable.


def inv_rms(x: Tensor, eps: float) -> Tensor:
    """(mean_HW(x^2) + eps)^(-1/2) in float32, (N, C, 1, 1)."""
    xf = x.float()
    return torch.rsqrt((xf * xf).sum(dim=(-2, -1), keepdim=True) / _hw(x) + eps)


def _normed(x: Tensor, r: Tensor, bias: Optional[Tensor]) -> Tensor:
    y = x.float() * r
    return y if bias is None else y + bias.float().view(1, -1, 1, 1)


def norm_forward(x: Tensor, bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """y = x r (+ bias), and r."""
    r = inv_rms(x, eps)
    return _normed(x, r, bias).to(x.dtype), r


def norm_backward(g: Tensor, x: Tensor, r: Tensor, want_bias: bool) -> tuple[Tensor, Optional[Tensor]]:
    """dL/dx = r g - x r^3 mean_HW(g x); dL/dbias = sum_{N,H,W} g (float32)."""
    gf, xf = g.float(), x.float()
    m = (gf * xf).sum(dim=(-2, -1), keepdim=True) / _hw(x)
    grad_x = (gf * r - xf * (r * r * r * m)).to(x.dtype)
    return grad_x, (gf.sum(dim=(0, 2, 3)) if want_bias else None)


def norm_relu_forward(x: Tensor, bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """First pass: relu(x r + bias), and r."""
    r = inv_rms(x, eps)
    return torch.relu(_normed(x, r, bias)).to(x.dtype), r


def norm_relu_backward(g: Tensor, x: Tensor, r: Tensor, bias: Optional[Tensor], want_bias: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Backward of norm_relu_forward. The active units (x r + bias > 0) are
    recomputed from x rather than read from the saved output: one map fewer
    to stream through memory in each of the two passes."""
    return norm_backward(torch.where(_normed(x, r, bias) > 0, g.float(), 0.0), x, r, want_bias)


def norm_ada_relu_forward(x: Tensor, bias: Optional[Tensor], s: Tensor, eta: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Later pass: f = x r + bias, f' = f + eta (s - f), z = sign(s) f',
    out = f' where z > 0 else 0. Returns (out, z, r)."""
    r = inv_rms(x, eps)
    f = _normed(x, r, bias)
    sf = s.float()
    f = f + eta * (sf - f)
    z = torch.sign(sf) * f
    return torch.where(z > 0, f, 0.0).to(x.dtype), z.to(x.dtype), r


def norm_ada_relu_backward(
    g: Tensor, z: Tensor, x: Tensor, r: Tensor, eta: float, want_bias: bool, want_s: bool
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Backward of norm_ada_relu_forward: the active gradient goes (1 - eta)
    to the normed input and eta to the signal s; the gate z carries none."""
    gz = torch.where(z > 0, g.float(), 0.0)
    grad_x, grad_bias = norm_backward(gz * (1 - eta), x, r, want_bias)
    return grad_x, grad_bias, ((gz * eta) if want_s else None)


# ------------------------------------------------------------ dispatch


@functools.cache
def _native_adapters() -> dict[Callable, Callable]:
    return {
        norm_forward: lambda x, bias, eps: native.norm_forward(x, bias, eps, relu=False),
        norm_backward: lambda g, x, r, want_bias: native.norm_backward(g, x, r, None, False, want_bias),
        norm_relu_forward: lambda x, bias, eps: native.norm_forward(x, bias, eps, relu=True),
        norm_relu_backward: lambda g, x, r, bias, want_bias: native.norm_backward(g, x, r, bias, True, want_bias),
        norm_ada_relu_forward: native.norm_ada_relu_forward,
        norm_ada_relu_backward: native.norm_ada_relu_backward,
    }


def run(fn: Callable, *args):  # type: ignore[no-untyped-def]
    """fn(*args) on the fastest CPU kernel that serves these inputs: the
    hand-written C one (cnnf.native) where it applies, else fn compiled."""
    adapter = _native_adapters().get(fn)
    if adapter is not None:
        out = adapter(*args)
        if out is not None:
            return out
    return compiled(fn)(*args)


# ------------------------------------------------------------ compilation


@functools.cache
def compiled(fn: Callable) -> Callable:
    """fn compiled for the CPU (dynamic shapes: one kernel for every batch
    size, so a resumed run and a continuous one run the same code). On a
    compile failure the process falls back to eager and `fn` itself runs."""
    from torch._dynamo.exc import FailOnRecompileLimitHit  # here: importing dynamo costs ~1.5 s, paid only by a compile

    kernel = torch.compile(fn, dynamic=True, fullgraph=True, options={"compile_threads": 1})

    @functools.wraps(fn)
    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        if _disabled_reason is not None:
            return fn(*args, **kwargs)
        try:
            # Each input variant (dtype, memory layout, grad or inference
            # mode, bias or none, ...) is a compiled version of its own, and
            # dynamo's default limit of 8 per function is reached in processes
            # that train, evaluate and attack several models. The limit is
            # raised for these calls only (~20 us each); beyond it, eager.
            with torch._dynamo.config.patch(recompile_limit=max(MAX_VARIANTS, torch._dynamo.config.recompile_limit)):
                return kernel(*args, **kwargs)
        except FailOnRecompileLimitHit:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
            disable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
            return fn(*args, **kwargs)

    return call
