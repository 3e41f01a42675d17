"""Generic CNN-F driver: first pass, feedback, online update (Algorithm 1).

A concrete model only lists its stages; the iterative inference below is
shared by every architecture.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf.layers import Stage

PREDICTIONS = ("first", "last", "avg")


class CNNFOutput(NamedTuple):
    """Everything one iterative inference produced.

    logits: T + 1 tensors (N, n_classes), logits_0 is the plain first pass.
    recons: T tensors, the feedback reconstruction r_t at level `ind`.
    target: features at level `ind` of the first pass (the image for ind 0),
        the reconstruction target; not detached (cnnf-spec "Losses").
    """

    logits: tuple[Tensor, ...]
    recons: tuple[Tensor, ...]
    target: Tensor

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
    """

    def __init__(self, stages: Sequence[Stage], *, ind: int, step_size: float, legal_inds: Sequence[int]):
        super().__init__()
        if ind not in legal_inds:
            raise ValueError(f"ind={ind} is not legal here; expected one of {sorted(legal_inds)}")
        self.stages = nn.ModuleList(stages)
        self.ind = ind
        self.step_size = step_size

    def iterate(self, x: Tensor, n_iterations: int) -> CNNFOutput:
        """Algorithm 1 with the online update, T = n_iterations feedback cycles."""
        eta, ind, n_stages = self.step_size, self.ind, len(self.stages)
        records: list[Any] = [None] * n_stages
        h = x
        for k, stage in enumerate(self.stages):  # first pass: ReLU, max-pool
            if k == ind:
                target = h
            h, records[k] = stage(h, None, eta)
        logits, recons = [h], []
        state = target
        for _ in range(n_iterations):
            s = logits[-1]  # feedback starts from the raw logits
            signals: list[Any] = [None] * n_stages
            for k in range(n_stages - 1, ind - 1, -1):
                s, signals[k] = self.stages[k].feedback(s, records[k], k == ind)
            recons.append(s)
            state = state + eta * (s - state)  # h_t = h_{t-1} + eta (r_t - h_{t-1})
            h = state
            for k in range(ind, n_stages):
                h, records[k] = self.stages[k](h, signals[k], eta)
            logits.append(h)
        return CNNFOutput(tuple(logits), tuple(recons), target)

    def forward(self, x: Tensor, n_iterations: int = 0, prediction: str = "last") -> Tensor:
        """Logits of the chosen prediction after n_iterations feedback cycles."""
        return self.iterate(x, n_iterations).prediction(prediction)


class InferenceModel(nn.Module):
    """A FeedbackNet with its inference settings fixed: images in, logits out.

    Used as an attack target and as the model logged for users.
    """

    def __init__(self, net: FeedbackNet, n_iterations: int, prediction: str):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net = net
        self.n_iterations = 0 if prediction == "first" else n_iterations
        self.prediction = prediction

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, self.n_iterations, self.prediction)


def cnnf_loss(out: CNNFOutput, y: Tensor, clean_coef: float, recon_coef: float) -> tuple[Tensor, Tensor, Tensor]:
    """Standard-training loss (cnnf-spec "Losses" without the adversarial half).

    clean_coef * mean_t CE(logits_t, y) + recon_coef * mean_t MSE(r_t, target)
    over t = 0..T for the cross-entropy and t = 1..T for the reconstruction.
    Returns (loss, ce, recon) with recon = 0 when T = 0.
    """
    ce = torch.stack([F.cross_entropy(z, y) for z in out.logits]).mean()
    if out.recons:
        recon = torch.stack([F.mse_loss(r, out.target) for r in out.recons]).mean()
    else:
        recon = ce.new_zeros(())
    return clean_coef * ce + recon_coef * recon, ce, recon
