"""CNN-F math as pure functions (house style 3).

Every function takes tensors and returns tensors (plus the masks or indices
the feedback pass needs); nothing is stored on a module. References are to
Huang et al. 2020 ("Neural Networks with Recurrent Generative Feedback") and
to ../shared/docs/cnnf-spec.md.
"""

from __future__ import annotations

from typing import ContextManager, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf import fused, native
from cnnf.switches import Switch

IN_EPS = 1e-8

# Straight-through (BPDA) gradients of the feedback gates, for attacks only:
# set through `straight_through_gates()`, a scope like torch.no_grad(), so the
# model code passes no extra argument and training never sees it.
_STRAIGHT_THROUGH = Switch("cnnf_straight_through_gates", default=False)


def straight_through_gates(enabled: bool = True) -> ContextManager[None]:
    """Within this scope, the feedback-dependent gates keep their exact forward
    values but take the gradient of a smooth stand-in (BPDA, Athalye et al.
    2018): the later-pass AdaReLU and the AdaReLU masks of the feedback pass
    pass the gradient everywhere (identity), the later-pass AdaPool and the
    unpooling of the feedback spread it evenly over each window (average
    pooling and its adjoint). The first forward pass, a plain CNN, keeps its
    exact ReLU and max-pool gradients. Exact gradients of these gates are 0
    almost everywhere through the selections, which can mask an end-to-end
    attack; comparing both exposes it.
    """
    return _STRAIGHT_THROUGH.scope(enabled)


def straight_through_enabled() -> bool:
    return bool(_STRAIGHT_THROUGH.scoped())


class _StraightThrough(torch.autograd.Function):
    """Returns `exact` bit for bit; its gradient goes to `surrogate` unchanged."""

    @staticmethod
    def forward(ctx, exact: Tensor, surrogate: Tensor) -> Tensor:  # type: ignore[override]
        return exact.view_as(exact)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, g


def _straight_through(exact: Tensor, surrogate: Tensor) -> Tensor:
    """exact's value with surrogate's gradient (a + (b - a).detach() would round)."""
    return _StraightThrough.apply(exact.detach(), surrogate)


class _L2InstanceNorm(torch.autograd.Function):
    """y = x r (+ bias) with r = (mean_HW(x^2) + eps)^(-1/2), with a hand-written backward

        dL/dx = r g - x r^3 mean_HW(g x),    dL/dbias = sum_{N,H,W} g,

    two passes over the feature map instead of the six that autograd records
    for pow / mean / add / rsqrt / mul / add (the norm runs after every conv
    and conv^T, so this is a measurable share of a CPU training step). The
    (N, C) factors r are kept from the forward pass.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:  # type: ignore[override]
        ctx.eps, ctx.has_bias, ctx.fused = eps, bias is not None, fused.enabled_for(x)
        if ctx.fused:
            y, r = fused.run(fused.norm_forward, x, bias, eps)
            ctx.save_for_backward(x, r)
            return y
        r = _inv_rms(x, eps)
        ctx.save_for_backward(x, r)
        if bias is None:
            return x * r
        return torch.addcmul(bias.view(1, -1, 1, 1).to(x.dtype), x, r)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Optional[Tensor], None]:  # type: ignore[override]
        x, r = ctx.saved_tensors  # r: (N, C, 1, 1)
        want_bias = ctx.has_bias and ctx.needs_input_grad[1]
        if ctx.fused and not torch.is_grad_enabled():
            grad_x, grad_bias = fused.run(fused.norm_backward, g, x, r, want_bias)
            return grad_x, grad_bias, None
        if torch.is_grad_enabled():
            # create_graph=True: r rebuilt from differentiable ops on x, so
            # second derivatives stay exact.
            r = _inv_rms(x, ctx.eps)
        m = _mean_hw(g * x)  # (N, C, 1, 1)
        grad_x = torch.addcmul(g * r, x, r.pow(3) * m, value=-1)
        grad_bias = g.sum(dim=(0, 2, 3)) if want_bias else None
        return grad_x, grad_bias, None


def _mean_hw(x: Tensor) -> Tensor:
    """mean over H and W, (N, C, H, W) -> (N, C, 1, 1). Written as a sum and a
    division of the small result: torch's CPU mean of bfloat16 channels-last
    maps runs at half the speed of its sum."""
    return x.sum(dim=(-2, -1), keepdim=True) / (x.shape[-2] * x.shape[-1])


def _inv_rms(x: Tensor, eps: float) -> Tensor:
    """(mean_HW(x^2) + eps)^(-1/2) per sample and channel, (N, C, 1, 1)."""
    return torch.rsqrt(_mean_hw(x.square()) + eps)


def l2_instance_norm(x: Tensor, eps: float = IN_EPS, bias: Optional[Tensor] = None) -> Tensor:
    """Appendix A.4: x / sqrt(mean_HW(x^2) + eps) per sample and channel.

    No mean subtraction and no learnable scale, so the map is positively
    homogeneous and sign-preserving, which the AdaReLU gates rely on.
    bias: optional per-channel (C,) bias added in the same pass (the
    learnable bias that follows the norm in the forward pass).
    x: (N, C, H, W).
    """
    return _L2InstanceNorm.apply(x, bias, eps)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on in channels-last layout."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return g.contiguous(memory_format=torch.channels_last)


def channels_last_grad(x: Tensor) -> Tensor:
    """x, unchanged; its gradient is made channels-last (N, C, H, W tensors).

    The models keep activations channels-last (oneDNN's fast layout). A few
    backward formulas (flatten, max_unpool2d) return NCHW-contiguous
    gradients, and every later op that mixes them with channels-last tensors
    runs on a slow strided path; one copy at the small pooled maps is cheaper.
    """
    return _ChannelsLastGrad.apply(x) if x.requires_grad else x


def ada_relu(f: Tensor, g: Tensor | None, eta: float) -> tuple[Tensor, Tensor]:
    """AdaReLU forward (Sec. 3.2, online update of Algorithm 1).

    First pass (g is None): plain ReLU. Later passes: the pre-activation is
    first moved toward the stored feedback, f' = f + eta (g - f), and the unit
    is active where f' and g have the same sign, so where g < 0 negative
    values pass.

    Returns (output, gate). The gate is z = sign(g) f' (f on the first pass):
    the unit is active exactly where z > 0, and the output is f' where active
    and 0 elsewhere. Keeping z instead of a 0/1 mask makes every use a single
    fused op (relu, and threshold_backward) with no bool tensors, which are
    slow to build on CPU; and the sign test cannot underflow the way
    f' * g > 0 can. The gate carries no gradient: it is piecewise constant
    in f and g, so its derivative is 0 almost everywhere, and leaving it out
    of the graph spares the backward pass a zero tensor and an addition for
    every gate (the gradient still reaches g through f').
    """
    if g is None:
        return torch.relu(f), f.detach()
    f = torch.lerp(f, g.to(f.dtype), eta)  # f + eta (g - f)
    with torch.no_grad():
        z = torch.sign(g).to(f.dtype) * f  # sign(g) is +-1, or 0 where the feedback is exactly 0
    out = _where_active(f, z)
    if straight_through_enabled() and f.requires_grad:
        out = _straight_through(out, f)
    return out, z


class _NormReLU(torch.autograd.Function):
    """First pass of norm_ada_relu through the fused kernels: relu(IN(x) + bias)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:  # type: ignore[override]
        out, r = fused.run(fused.norm_relu_forward, x, bias, eps)
        ctx.save_for_backward(x, r, bias)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Optional[Tensor], None]:  # type: ignore[override]
        x, r, bias = ctx.saved_tensors
        want_bias = bias is not None and ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph: differentiable eager formulas, r rebuilt from x
            grad_x, grad_bias = fused.norm_relu_backward(g, x, fused.inv_rms(x, ctx.eps), bias, want_bias)
        else:
            grad_x, grad_bias = fused.run(fused.norm_relu_backward, g, x, r, bias, want_bias)
        return grad_x, grad_bias, None


class _NormAdaReLU(torch.autograd.Function):
    """Later pass of norm_ada_relu through the fused kernels; returns (out, gate z)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], s: Tensor, eta: float, eps: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, z, r = fused.run(fused.norm_ada_relu_forward, x, bias, s, eta, eps)
        ctx.save_for_backward(x, r, z)
        ctx.eta, ctx.eps, ctx.has_bias = eta, eps, bias is not None
        ctx.mark_non_differentiable(z)
        ctx.set_materialize_grads(False)  # z gets no gradient: no zero map for it in backward
        return out, z

    @staticmethod
    def backward(ctx, g: Optional[Tensor], _gz: None) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], None, None]:  # type: ignore[override]
        if g is None:
            return None, None, None, None, None
        x, r, z = ctx.saved_tensors
        want_bias, want_s = ctx.has_bias and ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if torch.is_grad_enabled():
            grads = fused.norm_ada_relu_backward(g, z, x, fused.inv_rms(x, ctx.eps), ctx.eta, want_bias, want_s)
        else:
            grads = fused.run(fused.norm_ada_relu_backward, g, z, x, r, ctx.eta, want_bias, want_s)
        grad_x, grad_bias, grad_s = grads
        return grad_x, grad_bias, grad_s, None, None


def norm_ada_relu(x: Tensor, bias: Optional[Tensor], g: Tensor | None, eta: float, eps: float = IN_EPS) -> tuple[Tensor, Tensor]:
    """ada_relu(l2_instance_norm(x, bias=bias), g, eta): the IN + bias + AdaReLU
    that follows every convolution, as one step.

    On the CPU (float32 / bfloat16) it runs as two fused kernels each way
    (cnnf.fused); elsewhere, and for straight-through attack gradients, it is
    exactly the composition of the two eager functions. The gate is positive
    exactly where the unit is active (on the first pass the fused path returns
    the ReLU output as the gate, the eager one the pre-activation: both are
    > 0 at the same units).
    """
    if not fused.enabled_for(x):
        return ada_relu(l2_instance_norm(x, eps, bias), g, eta)
    if g is None:  # the first pass keeps its exact ReLU gradient also under straight_through_gates
        out = _NormReLU.apply(x, bias, eps)
        return out, out.detach()
    out, z = _NormAdaReLU.apply(x, bias, g, eta, eps)
    if straight_through_enabled() and torch.is_grad_enabled():
        # the same forward values as the exact gates, the gradient of f' (see ada_relu)
        f = l2_instance_norm(x, eps, bias)
        out = _straight_through(out, torch.lerp(f, g.to(f.dtype), eta))
    return out, z


def _where_active(v: Tensor, gate: Tensor) -> Tensor:
    """v where gate > 0, else 0: threshold_backward(v, gate, 0) is one fused op,
    differentiable in v (its derivative is the same op on the incoming gradient)."""
    return torch.ops.aten.threshold_backward(v, gate.to(v.dtype), 0)


def gate_mask(gate: Tensor) -> Tensor:
    """The 0/1 mask of an AdaReLU gate (1 where the unit is active), in its dtype."""
    return (gate > 0).to(gate.dtype)


def ada_relu_feedback(s: Tensor, gate: Tensor) -> Tensor:
    """AdaReLU feedback: the top-down signal where the latest forward was active, else 0."""
    out = _where_active(s, gate.detach())
    if straight_through_enabled() and s.requires_grad:
        out = _straight_through(out, s)
    return out


class PoolSelection(NamedTuple):
    """Which input position each pooled unit took in the latest forward pass.

    index: (N, C, h, w) flat index into the (H, W) plane, as max_pool2d gives.
    active: (N, C, h, w) 0/1 in the feature dtype; 0 where the unit output 0
        (feedback exactly 0).
    """

    index: Tensor
    active: Tensor | None


class _AdaPool(torch.autograd.Function):
    """The later-pass AdaPool with its selection computed once: out = x at the
    selected positions (the max where g > 0, the min where g < 0), 0 where
    g == 0. Its gradient goes to the selected positions only, one scatter,
    instead of the backward of two max-pools, a negation and two selects."""

    @staticmethod
    def forward(ctx, x: Tensor, g: Tensor, kernel: int) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        # One max-pool of x signed by its window's feedback: sign +1 gives the
        # max, -1 the max of -x (the min, with max_pool2d's own tie-breaking,
        # negated back), 0 a window of zeros whose output is 0. Three times
        # faster on the CPU than a max-pool, a min-pool and selects on bools.
        sign = torch.sign(g).to(x.dtype)  # (N, C, h, w)
        window_sign = F.interpolate(sign, scale_factor=kernel, mode="nearest").to(x.dtype)  # (N, C, H, W)
        signed, index = _max_pool_indices(x * window_sign, kernel)
        active = sign.abs()
        ctx.save_for_backward(x, index, active)
        ctx.kernel = kernel
        ctx.mark_non_differentiable(index, active)
        ctx.set_materialize_grads(False)  # no zero maps for index and active in backward
        return signed * sign, index, active

    @staticmethod
    def backward(ctx, grad: Optional[Tensor], _index: None, _active: None) -> tuple[Optional[Tensor], None, None]:  # type: ignore[override]
        if grad is None:
            return None, None, None
        x, index, active = ctx.saved_tensors
        return _unpool(grad * active, x, index, ctx.kernel), None, None  # the selection is piecewise constant in g: no gradient


def _native_pool(x: Tensor, kernel: int) -> bool:
    """Whether the 2x2 pooling of x runs on cnnf.native's kernels (the fused CPU path)."""
    return kernel == 2 and fused.enabled_for(x) and native.serves(x)


def _max_pool_indices(x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:
    """F.max_pool2d(x, kernel, return_indices=True) of a tensor outside autograd."""
    if _native_pool(x, kernel):
        pooled = native.maxpool2(x)
        if pooled is not None:
            return pooled
    return F.max_pool2d(x, kernel, return_indices=True)


def _unpool(grad: Tensor, x: Tensor, index: Tensor, kernel: int) -> Tensor:
    """max_pool2d's backward: grad at the selected positions of x's shape, 0 elsewhere."""
    if not torch.is_grad_enabled() and _native_pool(grad, kernel):
        out = native.unpool2(grad, index, (x.shape[-2], x.shape[-1]))
        if out is not None:
            return out
    k = kernel
    return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [k, k], [k, k], [0, 0], [1, 1], False, index)


class _MaxPool(torch.autograd.Function):
    """The first-pass max-pool on cnnf.native's kernels: the same values,
    indices and gradient as F.max_pool2d, the backward written densely."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, index = _max_pool_indices(x, kernel)
        ctx.save_for_backward(x, index)
        ctx.kernel = kernel
        ctx.mark_non_differentiable(index)
        ctx.set_materialize_grads(False)
        return out, index

    @staticmethod
    def backward(ctx, grad: Optional[Tensor], _index: None) -> tuple[Optional[Tensor], None]:  # type: ignore[override]
        if grad is None:
            return None, None
        x, index = ctx.saved_tensors
        return _unpool(grad, x, index, ctx.kernel), None


class _Unpool(torch.autograd.Function):
    """F.max_unpool2d on cnnf.native's kernels (its backward, a gather, too)."""

    @staticmethod
    def forward(ctx, s: Tensor, index: Tensor, output_size: tuple[int, int]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        out = native.unpool2(s, index, output_size)
        if out is None:
            out = F.max_unpool2d(s, index, 2, output_size=output_size).contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        out = None if torch.is_grad_enabled() else native.gather2(grad, index)
        if out is None:
            out = grad.flatten(2).gather(2, index.flatten(2)).view_as(index).contiguous(memory_format=torch.channels_last)
        return out, None, None


def ada_pool(x: Tensor, g: Tensor | None, kernel: int = 2) -> tuple[Tensor, PoolSelection]:
    """AdaPool forward (Sec. 3.2).

    First pass: max-pool. Later passes: max-pool where the feedback g at the
    pooled output is > 0, min-pool where < 0, and 0 where g == 0.
    x: (N, C, H, W); g: (N, C, H / kernel, W / kernel).
    """
    if g is None:
        if _native_pool(x, kernel):
            top, top_index = _MaxPool.apply(x, kernel)
        else:
            top, top_index = F.max_pool2d(x, kernel, return_indices=True)
        return top, PoolSelection(top_index, None)
    out, index, active = _AdaPool.apply(x, g.detach(), kernel)
    if straight_through_enabled() and x.requires_grad:
        out = _straight_through(out, F.avg_pool2d(x, kernel) * active)
    return out, PoolSelection(index, active)


def ada_pool_feedback(
    s: Tensor, selection: PoolSelection, output_size: tuple[int, int], kernel: int = 2
) -> Tensor:
    """AdaPool feedback: unpool s to the positions the latest forward selected.

    Unselected positions (and units whose forward output was 0) get 0, which
    later turns the AdaReLU below them off. s: (N, C, h, w) -> (N, C, H, W).
    """
    if selection.active is not None:
        s = s * selection.active
    # Autocast runs max_unpool2d in float32 on the CPU; with bf16 activations
    # that would turn the whole feedback path below it into float32.
    with torch.autocast(s.device.type, enabled=False):
        if _native_pool(s, kernel):
            out = _Unpool.apply(s, selection.index, output_size)
        else:
            out = F.max_unpool2d(channels_last_grad(s), selection.index, kernel, output_size=output_size)
    if straight_through_enabled() and s.requires_grad:
        spread = F.interpolate(s, scale_factor=kernel, mode="nearest") / kernel**2  # adjoint of average pooling
        spread = F.pad(spread, (0, output_size[1] - spread.shape[-1], 0, output_size[0] - spread.shape[-2]))
        out = _straight_through(out, spread.to(out.dtype))
    return out


def tied_conv_transpose(
    s: Tensor, weight: Tensor, stride: int, padding: int, output_size: tuple[int, int]
) -> Tensor:
    """Transpose of the bias-free conv with the same weight (the tied feedback).

    output_padding restores the exact input size for strided convs.
    s: (N, C_out, h, w) -> (N, C_in, H, W) with (H, W) = output_size.
    """
    k_h, k_w = weight.shape[-2:]
    h, w = s.shape[-2:]
    pad_h = output_size[0] - ((h - 1) * stride - 2 * padding + k_h)
    pad_w = output_size[1] - ((w - 1) * stride - 2 * padding + k_w)
    return F.conv_transpose2d(s, weight, None, stride, padding, output_padding=(pad_h, pad_w))


def tied_linear_transpose(s: Tensor, weight: Tensor) -> Tensor:
    """Transpose of the linear map with the same weight: (N, out) @ (out, in) -> (N, in)."""
    return s @ weight
