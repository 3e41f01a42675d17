"""Training of a CNN-F, readable top to bottom.

Standard training (Appendix B.1): Adam, cross-entropy at every iteration
plus the reconstruction losses (`cnnf_loss`). Adversarial training (B.2):
PGD against the first forward pass, the clean and adversarial batches run
together (`adversarial_cnnf_loss`), SGD with a polynomial learning rate
stepped every batch and global gradient-norm clipping. Per-epoch metrics
leave through an optional callback with a `TrainState` snapshot (model,
optimizer, scheduler, RNG, epoch, history) from which `fit` resumes exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from cnnf import fused
from cnnf.attacks import LinfPGDAttack
from cnnf.config import ExperimentConfig, TrainConfig
from cnnf.data import ArrayDataset, DataSplits, dataset_info, random_crop_flip
from cnnf.layers import fc_feedback_aliases, retie_fc_feedback, untie_fc_feedback
from cnnf.models import FeedbackNet, InferenceModel, adversarial_cnnf_loss, cnnf_loss, create_model
from cnnf.runtime import tune_cpu_allocator



@dataclass(frozen=True)
class EpochResult:
    """Metrics of one finished epoch (accuracies in [0, 1])."""

    epoch: int
    train_loss: float
    train_ce: float
    train_recon: float
    train_acc: float  # of the last-iteration logits, on the fly
    val_acc: float  # full CNN-F with the evaluation iterations and prediction
    seconds: float
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "epoch"}

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        """The names `metrics()` gives: every field but the epoch (the step)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "epoch")


@dataclass
class TrainState:
    """Everything needed to continue training after `epoch` finished epochs.

    The per-batch randomness (shuffle, augmentation, PGD start) is drawn from
    a generator seeded by (seed, epoch), so a resumed run replays the same
    batches; `rng` also restores the global torch RNG for anything else.
    """

    epoch: int
    model: dict
    optimizer: dict
    history: list[EpochResult] = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)
    rng: Optional[Tensor] = None


def save_train_state(state: TrainState, path: str | Path) -> None:
    """Write atomically: a preemption mid-write leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": state.epoch, "model": state.model, "optimizer": state.optimizer,
                "scheduler": state.scheduler, "rng": state.rng,
                "history": [dataclasses.asdict(r) for r in state.history]}, tmp)
    tmp.replace(path)


def load_train_state(path: str | Path) -> TrainState:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return TrainState(raw["epoch"], raw["model"], raw["optimizer"], [EpochResult(**r) for r in raw["history"]],
                      raw.get("scheduler", {}), raw.get("rng"))


@dataclass(frozen=True)
class FitResult:
    model: FeedbackNet
    history: tuple[EpochResult, ...]
    device: torch.device


EpochCallback = Callable[[EpochResult, TrainState], None]


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first visible GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is visible to this process")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def transfer_source(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config that trains the plain CNN a CNN-F with train.init_from_cnn
    starts from: the same data and training settings, the backbone's plain
    twin, 0 feedback iterations. Fields that cannot matter at 0 iterations
    (ind, step size, reconstruction) are normalised, so trials that differ
    only in them share one source."""
    from cnnf.config import ModelConfig, plain_twin

    model = ModelConfig(arch=plain_twin(cfg.model.arch), init=cfg.model.init)
    train = dataclasses.replace(cfg.train, n_iterations=0, init_from_cnn=False, recon_coef=0.0, clean_coef=1.0)
    return dataclasses.replace(cfg, model=model, train=train, eval=dataclasses.replace(cfg.eval, n_iterations=None))


def build_model(cfg: ExperimentConfig) -> FeedbackNet:
    """An untrained model for cfg.model, sized for cfg.data's dataset."""
    return create_model(
        cfg.model.arch, init=cfg.model.init, ind=cfg.model.ind, step_size=cfg.model.step_size, recon_levels=cfg.model.recon_levels,
        in_channels=dataset_info(cfg.data.dataset).input_shape[0], n_classes=dataset_info(cfg.data.dataset).n_classes,
    )


@torch.no_grad()
def accuracy(predict: torch.nn.Module, data: ArrayDataset, batch_size: int = 512) -> float:
    """Share of examples whose argmax logit equals the label."""
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += (predict(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum().item()
    return correct / max(len(data), 1)


def build_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (B.1) or SGD with momentum (B.2); weight decay once per parameter
    (the tied feedback shares each weight, it is not a second copy), unless
    the model's FC feedback was untied to the reference's second parameters
    (`train.fc_weight_decay: reference`), which the optimizer then steps too."""
    params = trainable_tensors(model)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def trainable_tensors(model: torch.nn.Module) -> list[Tensor]:
    """The parameters and, under the reference FC tying, the feedback's own tensors."""
    return list(model.parameters()) + fc_feedback_aliases(model)


def build_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-batch learning-rate factor: 1, or (1 - step / total_steps)^lr_power down to 0 (B.2)."""
    if tc.lr_schedule == "poly":
        power = tc.lr_power
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps) ** power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def adv_step_linf(tc: TrainConfig, dataset: str) -> float:
    """The PGD step of adversarial training in [0, 1] pixel units: the
    configured one, else the paper's for the dataset (Appendix B.2: 0.355 eps
    for Fashion-MNIST, 0.319 eps for CIFAR-10, i.e. 0.071 and 0.02 in [-1, 1]
    units at the paper's budgets)."""
    if tc.adv_step_linf is not None:
        return tc.adv_step_linf
    return dataset_info(dataset).adv_step_ratio * tc.adv_eps_linf


class TrainStep:
    """One optimisation step on a batch, standard or adversarial.

    Kept apart from the epoch loop so benchmarks time exactly what `fit` runs.
    """

    def __init__(self, model: FeedbackNet, tc: TrainConfig, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, dataset: str):
        self.model, self.tc, self.optimizer, self.scheduler = model, tc, optimizer, scheduler
        self.device_type = next(model.parameters()).device.type
        if self.device_type == "cpu":
            tune_cpu_allocator()
        self.attack = None
        if tc.adv_eps_linf > 0:
            step = adv_step_linf(tc, dataset)
            self.attack = LinfPGDAttack(tc.adv_eps_linf, tc.adv_steps, step, random_start=True, track_success=False)
        self.first_pass = InferenceModel(model, 0, "first")
        self.trainable = trainable_tensors(model)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.tc.precision == "bf16")

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """Train on (x, y); returns [loss, ce, recon, correct] summed over the clean examples."""
        tc = self.tc
        if tc.augment == "crop_flip":
            x = random_crop_flip(x, 4, generator)
        with self.autocast():
            if self.attack is not None:
                # B.2: PGD with random start against the first pass only; the
                # attack differentiates w.r.t. the input alone, so no weight
                # gradients are computed.
                x_adv = self.attack.perturb(self.first_pass, x, y, generator)
                out = self.model.iterate(torch.cat([x, x_adv]), tc.n_iterations)
                loss, ce, recon = adversarial_cnnf_loss(out, y, tc.clean_coef, tc.recon_coef, tc.adv_loss == "adversarial")
            else:
                out = self.model.iterate(x, tc.n_iterations)
                loss, ce, recon = cnnf_loss(out, y, tc.clean_coef, tc.recon_coef)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        n = len(y)
        correct = (out.logits[-1][:n].argmax(1) == y).sum()  # clean half, last iteration
        return torch.stack([loss.detach() * n, ce.detach() * n, recon.detach() * n, correct.float()])


def fit(
    cfg: ExperimentConfig,
    splits: DataSplits,
    *,
    callback: Optional[EpochCallback] = None,
    resume: Optional[TrainState] = None,
    init: Optional[dict] = None,
) -> FitResult:
    """Train cfg.model on splits.train for cfg.train.epochs, validating each epoch.

    Validation runs the full CNN-F with the evaluation iterations and
    prediction on the held-out validation split; nothing here looks at the
    test split (cnnf-spec: no selection on the test set).

    init: starting weights (a state dict) instead of a fresh initialisation,
    e.g. feedback learning's retraining from the trained model; a resumed
    run takes its weights from `resume` instead.
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(tc.seed)
    model = build_model(cfg)
    if init is not None:
        model.load_state_dict(init)
    model = model.to(device)
    if tc.fc_weight_decay == "reference":
        untie_fc_feedback(model)  # after .to(): the aliases must share the device copy's storage
    train, val = splits.train.to(device), splits.val.to(device)
    steps_per_epoch = -(-len(train) // tc.batch_size)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, tc.epochs * steps_per_epoch)
    history: list[EpochResult] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        if resume.scheduler:
            scheduler.load_state_dict(resume.scheduler)
        if resume.rng is not None:
            torch.set_rng_state(resume.rng)
        history, start_epoch = list(resume.history), resume.epoch

    step = TrainStep(model, tc, optimizer, scheduler, cfg.data.dataset)
    scored = InferenceModel(model, cfg.eval_iterations, cfg.eval.prediction)
    kernels = fused.choose(tc.kernels, device, tc.epochs * steps_per_epoch, fused.AUTO_MIN_STEPS)
    with fused.use_kernels(kernels):
        for epoch in range(start_epoch + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            # All per-batch randomness depends only on (seed, epoch): a resumed run sees the same batches.
            generator = torch.Generator(device=device).manual_seed(tc.seed * 100_003 + epoch)
            order = torch.randperm(len(train), generator=generator, device=device)
            sums = torch.zeros(4, device=device)  # loss, ce, recon, correct (summed over examples)
            for b, i in enumerate(range(0, len(train), tc.batch_size)):
                idx = order[i : i + tc.batch_size]
                try:
                    sums += step(train.x[idx], train.y[idx], generator)
                except FloatingPointError as exc:
                    raise FloatingPointError(f"{exc} at epoch {epoch}, batch {b}") from None
            model.eval()
            with step.autocast():
                val_acc = accuracy(scored, val, cfg.eval.batch_size)
            seconds = time.perf_counter() - t0
            loss_sum, ce_sum, recon_sum, correct_sum = (sums / len(train)).tolist()
            result = EpochResult(epoch, loss_sum, ce_sum, recon_sum, correct_sum, val_acc, seconds, len(train) / seconds)
            history.append(result)
            if callback is not None:  # a snapshot: later steps must not change what the callback holds
                snapshot = TrainState(epoch, copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
                                      list(history), copy.deepcopy(scheduler.state_dict()), torch.get_rng_state())
                callback(result, snapshot)
    model.eval()
    retie_fc_feedback(model)  # the trained model uses its one weight both ways again (same values)
    return FitResult(model, tuple(history), device)
