"""Generic CNN-F driver: first pass, feedback, online update (Algorithm 1).

A concrete model only lists its stages; the iterative inference below is
shared by every architecture.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf.functional import straight_through_gates
from cnnf.layers import Stage

PREDICTIONS = ("first", "last", "avg")


class CNNFOutput(NamedTuple):
    """Everything one iterative inference produced.

    logits: T + 1 tensors (N, n_classes), logits_0 is the plain first pass.
    recons: T tensors, the feedback reconstruction r_t at level `ind`.
    target: features at level `ind` of the first pass (the image for ind 0),
        the reconstruction target; not detached (cnnf-spec "Losses").
    aux_levels: the intermediate levels above `ind` that also carry a
        reconstruction loss (cnnf-spec: the blocks before the AdaPools of the
        B.2 model, the outputs of the three WRN groups).
    aux_recons: T tuples, the feedback signal at each aux level, gated by the
        AdaReLU that produced that level's features.
    aux_targets: the first-pass features at each aux level; not detached.
    """

    logits: tuple[Tensor, ...]
    recons: tuple[Tensor, ...]
    target: Tensor
    aux_levels: tuple[int, ...] = ()
    aux_recons: tuple[tuple[Tensor, ...], ...] = ()
    aux_targets: tuple[Tensor, ...] = ()

    def prediction(self, mode: str) -> Tensor:
        if mode == "first":
            return self.logits[0]
        if mode == "last":
            return self.logits[-1]
        if mode == "avg":
            return torch.stack(self.logits).mean(0)
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {mode!r}")


class FeedbackNet(nn.Module):
    """A CNN-F: stages between feedback levels, level k = input of stage k.

    ind: the level the feedback reconstructs to (0 = image).
    step_size: eta, the online-update step of both the state at `ind` and the
        AdaReLU pre-activations.
    recon_levels: intermediate levels, each above `ind`, whose feedback signal
        is also compared with the first-pass features (empty: only `ind`).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        ind: int,
        step_size: float,
        legal_inds: Sequence[int],
        recon_levels: Sequence[int] = (),
    ):
        super().__init__()
        if ind not in legal_inds:
            raise ValueError(f"ind={ind} is not legal here; expected one of {sorted(legal_inds)}")
        bad = [k for k in recon_levels if not ind < k < len(stages)]
        if bad:
            raise ValueError(f"recon_levels {bad} must lie above ind={ind} and below the logits (level {len(stages)})")
        self.stages = nn.ModuleList(stages)
        self.ind = ind
        self.step_size = step_size
        self.recon_levels = tuple(sorted(set(recon_levels)))
        # Channels-last (NHWC) conv weights and activations: oneDNN's convs and
        # PyTorch's CPU pooling are several times faster in this layout (and
        # GPU convs use it natively). Only strides change, never values.
        self.to(memory_format=torch.channels_last)

    def iterate(self, x: Tensor, n_iterations: int) -> CNNFOutput:
        """Algorithm 1 with the online update, T = n_iterations feedback cycles."""
        eta, ind, n_stages, aux = self.step_size, self.ind, len(self.stages), self.recon_levels
        records: list[Any] = [None] * n_stages
        aux_targets: list[Tensor] = []
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h = x
        for k, stage in enumerate(self.stages):  # first pass: ReLU, max-pool
            if k == ind:
                target = h
            elif k in aux:
                aux_targets.append(h)
            h, records[k] = stage(h, None, eta)
        logits, recons, aux_recons = [h], [], []
        state = target
        for _ in range(n_iterations):
            s = logits[-1]  # feedback starts from the raw logits
            signals: list[Any] = [None] * n_stages
            taps: list[Tensor] = []
            for k in range(n_stages - 1, ind - 1, -1):
                s, signals[k] = self.stages[k].feedback(s, records[k], k == ind)
                if k in aux:  # the level's features are the output of stage k - 1
                    taps.append(self.stages[k - 1].gate(s, records[k - 1]))
            recons.append(s)
            aux_recons.append(tuple(reversed(taps)))
            # h_t = h_{t-1} + eta (r_t - h_{t-1}) as one op: 3 passes over the map
            # forward instead of 8 (sub, mul, add), and two scalings backward
            # instead of a mul, a neg and an accumulation (+0.8 % bf16, +1.7 %
            # fp32 per B.2 training step, interleaved A/B).
            # Under bf16 autocast the image (ind 0) stays float32 while r_t is
            # bfloat16: both go to the promoted type, as the + and - did.
            common = torch.promote_types(state.dtype, s.dtype)
            state = torch.lerp(state.to(common), s.to(common), eta)
            h = state
            for k in range(ind, n_stages):
                h, records[k] = self.stages[k](h, signals[k], eta)
            logits.append(h)
        return CNNFOutput(tuple(logits), tuple(recons), target, aux, tuple(aux_recons), tuple(aux_targets))

    def forward(self, x: Tensor, n_iterations: int = 0, prediction: str = "last") -> Tensor:
        """Logits of the chosen prediction after n_iterations feedback cycles."""
        return self.iterate(x, n_iterations).prediction(prediction)


GATES = ("exact", "bpda")


class InferenceModel(nn.Module):
    """A FeedbackNet with its inference settings fixed: images in, logits out.

    Used as an attack target and as the model logged for users. gates="bpda"
    gives the feedback gates straight-through gradients (see
    `cnnf.functional.straight_through_gates`); the logits are unchanged.
    """

    def __init__(self, net: FeedbackNet, n_iterations: int, prediction: str, gates: str = "exact"):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if gates not in GATES:
            raise ValueError(f"gates must be one of {GATES}, got {gates!r}")
        self.net = net
        self.n_iterations = 0 if prediction == "first" else n_iterations
        self.prediction = prediction
        self.gates = gates

    def forward(self, x: Tensor) -> Tensor:
        with straight_through_gates(self.gates == "bpda"):
            return self.net(x, self.n_iterations, self.prediction)


class _MSE(torch.autograd.Function):
    """mean((a[rows_a] - b[rows_b])^2), the value of F.mse_loss on the two
    row slices, with gradients in the memory layout of a and b.

    F.mse_loss, the mean of a square and slicing all hand back NCHW-contiguous
    gradients for channels-last inputs, and every op that later mixes them
    with channels-last tensors (the gradient sums, the gates, the
    convolutions) then runs on a slow strided path.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, rows_a: slice, rows_b: slice) -> Tensor:  # type: ignore[override]
        diff = a[rows_a] - b[rows_b]
        ctx.save_for_backward(diff)
        ctx.rows, ctx.shapes = (rows_a, rows_b), (a.shape, b.shape)
        return diff.square().mean()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        grad = diff * (g * (2.0 / diff.numel()))  # a 0-dim factor keeps diff's layout
        need_a, need_b = ctx.needs_input_grad[:2]
        return (
            _into_rows(grad, ctx.shapes[0], ctx.rows[0]) if need_a else None,
            _into_rows(-grad, ctx.shapes[1], ctx.rows[1]) if need_b else None,
            None,
            None,
        )


def _into_rows(part: Tensor, shape: torch.Size, rows: slice) -> Tensor:
    """part as the gradient of a tensor of `shape` sliced at `rows`: the rows
    outside the slice get zeros, in part's layout (channels-last for maps)."""
    if part.shape == shape:
        return part
    layout = torch.channels_last if part.dim() == 4 else torch.contiguous_format
    full = torch.empty(shape, dtype=part.dtype, device=part.device, memory_format=layout).zero_()
    full[rows] = part
    return full


def _recon_loss(out: CNNFOutput, rows: slice = slice(None), target_rows: slice = slice(None)) -> Tensor:
    """mean over t = 1..T and the K levels of MSE(recon_{k,t}[rows], target_k[target_rows])."""
    terms = [_MSE.apply(r, out.target, rows, target_rows) for r in out.recons]
    for taps in out.aux_recons:
        terms += [_MSE.apply(r, t, rows, target_rows) for r, t in zip(taps, out.aux_targets, strict=True)]
    return torch.stack(terms).mean() if terms else out.logits[0].new_zeros(())


def cnnf_loss(out: CNNFOutput, y: Tensor, clean_coef: float, recon_coef: float) -> tuple[Tensor, Tensor, Tensor]:
    """Standard-training loss (cnnf-spec "Losses" without the adversarial half).

    clean_coef * mean_t CE(logits_t, y) + recon_coef * mean_{k,t} MSE(r_{k,t}, target_k)
    over t = 0..T for the cross-entropy and t = 1..T, the K reconstruction
    levels for the reconstruction. Returns (loss, ce, recon) with recon = 0
    when T = 0.
    """
    ce = torch.stack([F.cross_entropy(z, y) for z in out.logits]).mean()
    recon = _recon_loss(out)
    return clean_coef * ce + recon_coef * recon, ce, recon


def adversarial_cnnf_loss(out: CNNFOutput, y: Tensor, clean_coef: float, recon_coef: float,
                          adversarial_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of cnnf-spec "Losses" for a batch [clean; adversarial] run together.

    out comes from iterate(cat(x, x_adv)) and y holds the B labels once:
      sum_t [cc CE(logits_t(clean), y) + CE(logits_t(adv), y)] / (2 (T + 1))
      + lam * mean_{k,t} MSE(recon_{k,t}(adv), feature_k(clean first pass)).
    adversarial_only: sum_t CE(logits_t(adv), y) / (T + 1) instead (Madry et
    al.'s loss; the reference's --clean no), with the same reconstruction term.
    Returns (loss, ce, recon); ce is the weighted cross-entropy term.
    """
    b = len(y)
    clean, adv = slice(0, b), slice(b, 2 * b)
    if adversarial_only:
        ce = torch.stack([F.cross_entropy(z[adv], y) for z in out.logits]).mean()
    else:
        ce = torch.stack([clean_coef * F.cross_entropy(z[clean], y) + F.cross_entropy(z[adv], y) for z in out.logits]).mean() / 2
    recon = _recon_loss(out, rows=adv, target_rows=clean)
    return ce + recon_coef * recon, ce, recon
