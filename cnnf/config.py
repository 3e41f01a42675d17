"""Typed configuration of a CNN-F experiment (house style 1).

Frozen dataclasses with the defaults of the paper's Fashion-MNIST standard
training (Appendix B.1). YAML keys are exactly these field names;
`sweeps/spec.py` validates a YAML file into these classes, and a trial
rebuilds its config from the sampled values with `dataclasses.replace`.

Units: every epsilon is in [0, 1] pixel units (`eps_linf` 0.1 = 0.1 of the
pixel range), whatever the model's input scaling.

Validation reads model and dataset facts from `cnnf.catalog`, so building
and validating a config imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from cnnf.catalog import dataset_info, dataset_names, model_info, model_names


class ConfigError(ValueError):
    """A config value that is well-typed but not allowed; names the field."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}")


def require(ok: bool, field_path: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_path, message)


@dataclass(frozen=True)
class DataConfig:
    """Which data, where it lives, and the train/validation split."""

    dataset: str = "fashion-mnist-sample"
    root: Optional[str] = None  # None: $CNNF_DATA_ROOT, else ./data
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    n_train: Optional[int] = None  # seeded stratified subset of the training split

    def __post_init__(self) -> None:
        require(self.dataset in dataset_names(), "dataset", f"unknown dataset {self.dataset!r}; expected one of: {', '.join(dataset_names())}")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        require(self.n_train is None or self.n_train > 0, "n_train", f"must be positive, got {self.n_train}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (a registered name) and its feedback knobs."""

    arch: str = "cnnf_fmnist_std"
    ind: int = 0  # level the feedback reconstructs to; 0 = image (pixel-level)
    step_size: float = 0.1  # eta of the online update
    # Intermediate levels that also carry a reconstruction loss; None: the
    # architecture's default (B.2: 3 and 4, WRN: the three group outputs).
    recon_levels: Optional[tuple[int, ...]] = None
    # Weight initialisation: "reference" (the authors' code: He-normal convs with
    # std sqrt(2 / (k k C_out)), FC biases 0) or "torch" (PyTorch's default uniform
    # init for every conv and FC, the behaviour before reference init became the default)
    init: Literal["reference", "torch"] = "reference"

    def __post_init__(self) -> None:
        require(self.init in ("reference", "torch"), "init", f"expected reference or torch, got {self.init!r}")

        require(self.arch in model_names(), "arch", f"unknown model {self.arch!r}; expected one of: {', '.join(model_names())}")
        info = model_info(self.arch)
        legal = info.legal_inds
        require(self.ind in legal, "ind", f"ind={self.ind} is not legal for {self.arch}; expected one of {list(legal)}")
        require(0.0 < self.step_size <= 1.0, "step_size", f"must be in (0, 1], got {self.step_size}")
        if self.recon_levels is not None:
            object.__setattr__(self, "recon_levels", tuple(self.recon_levels))
            top = info.n_levels - 1
            bad = [k for k in self.recon_levels if not self.ind < k <= top]
            require(
                not bad and len(set(self.recon_levels)) == len(self.recon_levels),
                "recon_levels",
                f"{list(self.recon_levels)} is not allowed for {self.arch} with ind={self.ind}; expected distinct levels in {self.ind + 1}..{top}",
            )


@dataclass(frozen=True)
class TrainConfig:
    """Training. The defaults are standard training (B.1): Adam, CE at every
    iteration + reconstruction. Adversarial training (B.2) is adv_eps_linf > 0
    (0.1 for Fashion-MNIST, 8/255 for CIFAR-10) with optimizer sgd, lr 0.05,
    lr_schedule poly, grad_clip 0.5, batch_size 256 and clean_coef 0.1."""

    epochs: int = 30
    batch_size: int = 128  # clean images per step; adversarial training adds as many adversarial ones
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # sgd only
    lr_schedule: Literal["constant", "poly"] = "constant"  # poly: lr (1 - step / steps)^lr_power, every batch
    lr_power: float = 0.9
    grad_clip: Optional[float] = None  # global gradient-norm clip (B.2: 0.5)
    n_iterations: int = 1  # feedback iterations T during training
    clean_coef: float = 1.0  # weight cc of the clean cross-entropy terms
    recon_coef: float = 0.1  # weight of the reconstruction terms (lambda)
    adv_eps_linf: float = 0.0  # [0, 1] pixel units; > 0: PGD adversarial training against the first pass
    adv_steps: int = 7
    adv_step_linf: Optional[float] = None  # [0, 1] pixel units; None: the paper's per dataset (B.2: 0.355 eps Fashion-MNIST, 0.319 eps CIFAR-10)
    # mixed: (cc CE(clean) + CE(adv)) / 2 per iteration (CNN-F B.2). adversarial:
    # CE(adv) alone (Madry et al.; the CNN-F reference's --clean no); the clean
    # batch still gives the reconstruction targets and the training accuracy.
    adv_loss: Literal["mixed", "adversarial"] = "mixed"
    augment: Literal["none", "crop_flip"] = "none"  # crop_flip: random crop (pad 4) + horizontal flip (CIFAR)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls/convs to bfloat16, weights and optimizer stay fp32
    # fused: the instance norms and AdaReLUs as compiled CPU kernels (cnnf.fused, ~5 s to
    # compile per process); auto: fused on the CPU for runs of >= 1000 steps
    kernels: Literal["auto", "fused", "eager"] = "auto"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    init_from_cnn: bool = False  # start from the plain CNN of the same backbone, trained with these settings (0 iterations)
    # once: FC and FC^T share one parameter, weight decay applies once. reference: the
    # authors' tying through `.data` (a second parameter on the same storage): weight
    # decay twice on FC weights, clipping and Adam moments see the two gradients apart
    fc_weight_decay: Literal["once", "reference"] = "once"

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.lr_power > 0, "lr_power", f"must be > 0, got {self.lr_power}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")
        require(self.n_iterations >= 0, "n_iterations", f"must be >= 0, got {self.n_iterations}")
        require(self.clean_coef > 0, "clean_coef", f"must be > 0, got {self.clean_coef}")
        require(self.recon_coef >= 0, "recon_coef", f"must be >= 0, got {self.recon_coef}")
        require(0.0 <= self.adv_eps_linf <= 1.0, "adv_eps_linf", f"must be in [0, 1] pixel units, got {self.adv_eps_linf}")
        require(self.adv_steps >= 1, "adv_steps", f"must be >= 1, got {self.adv_steps}")
        require(self.adv_step_linf is None or self.adv_step_linf > 0, "adv_step_linf", f"must be > 0, got {self.adv_step_linf}")
        require(self.adv_loss in ("mixed", "adversarial"), "adv_loss", f"expected mixed or adversarial, got {self.adv_loss!r}")
        require(self.adv_loss == "mixed" or self.adv_eps_linf > 0, "adv_loss",
                "adversarial needs adversarial training (train.adv_eps_linf > 0)")
        require(self.fc_weight_decay in ("once", "reference"), "fc_weight_decay", f"expected once or reference, got {self.fc_weight_decay!r}")
        require(self.kernels in ("auto", "fused", "eager"), "kernels", f"expected auto, fused or eager, got {self.kernels!r}")
        require(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"expected auto, cpu, cuda or cuda:N, got {self.device!r}",
        )


@dataclass(frozen=True)
class EvalConfig:
    """What a trial evaluates (`cnnf.suite.suite_from_config`), by `suite`:
    "pgd" (the default): clean accuracy, Linf PGD against the first pass and
    end to end, FGSM, then APGD-CE end to end on the examples those left
    robust (apgd_steps 0 leaves it out: the PGD-only suite), an
    optional accuracy-vs-eps curve of the end-to-end PGD, and the integrity
    checks. "autoattack": AutoAttack's standard sequence (APGD-CE, APGD-T,
    Square; no FAB-T), each stage on the examples the earlier ones left
    robust, against the first pass and end to end (Square end to end), and
    the checks (`cnnf.suite.autoattack_suite`)."""

    n_iterations: Optional[int] = None  # feedback iterations at test time; None: train.n_iterations
    prediction: Literal["first", "last", "avg"] = "avg"
    eps_linf: float = 0.1  # [0, 1] pixel units (Fashion-MNIST standard budget)
    pgd_steps: int = 40
    pgd_step_linf: Optional[float] = None  # [0, 1] pixel units; None: 2.5 * eps_linf / pgd_steps
    pgd_random_start: bool = True
    n_examples: Optional[int] = None  # evaluate the first n of each split; None: all
    batch_size: int = 256
    seed: int = 0
    eps_grid: tuple[float, ...] = ()  # [0, 1] pixel units: budgets of the end-to-end PGD accuracy-vs-eps curve
    checks: bool = True  # the integrity checks of robustness-eval.md, with probe attacks on check_examples images
    check_examples: int = 100
    suite: Literal["pgd", "autoattack"] = "pgd"
    apgd_steps: int = 100  # APGD-CE and APGD-T iterations (Croce & Hein 2020: 100); 0: no APGD-CE in the pgd suite
    apgd_targets: int = 9  # autoattack: target classes of APGD-T (the highest wrong logits)
    square_queries: int = 5000  # autoattack: Square attack iterations (one query each)

    def __post_init__(self) -> None:
        require(self.suite in ("pgd", "autoattack"), "suite", f"expected pgd or autoattack, got {self.suite!r}")
        least = 1 if self.suite == "autoattack" else 0
        require(self.apgd_steps >= least, "apgd_steps", f"must be >= {least} with suite {self.suite}, got {self.apgd_steps}")
        require(self.apgd_targets >= 1, "apgd_targets", f"must be >= 1, got {self.apgd_targets}")
        require(self.square_queries >= 0, "square_queries", f"must be >= 0, got {self.square_queries}")
        require(not (self.suite == "autoattack" and self.eps_grid), "eps_grid",
                "the accuracy-vs-eps curve is the pgd suite's (end-to-end PGD); unset it with suite autoattack")
        object.__setattr__(self, "eps_grid", tuple(float(e) for e in self.eps_grid))
        require(all(0.0 <= e <= 1.0 for e in self.eps_grid), "eps_grid", f"budgets must be in [0, 1] pixel units, got {list(self.eps_grid)}")
        require(self.check_examples >= 1, "check_examples", f"must be positive, got {self.check_examples}")
        require(self.n_iterations is None or self.n_iterations >= 0, "n_iterations", f"must be >= 0, got {self.n_iterations}")
        require(0.0 <= self.eps_linf <= 1.0, "eps_linf", f"must be in [0, 1] pixel units, got {self.eps_linf}")
        require(self.pgd_steps >= 1, "pgd_steps", f"must be >= 1, got {self.pgd_steps}")
        require(self.pgd_step_linf is None or self.pgd_step_linf > 0, "pgd_step_linf", f"must be > 0, got {self.pgd_step_linf}")
        require(self.n_examples is None or self.n_examples > 0, "n_examples", f"must be positive, got {self.n_examples}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


def plain_twin(arch: str) -> str:
    """The plain CNN registered for a CNN-F backbone: cnnf_<x> -> cnn_<x>."""
    return "cnn_" + arch[len("cnnf_"):] if arch.startswith("cnnf_") else arch


@dataclass(frozen=True)
class ExperimentConfig:
    """One CNN-F training + evaluation run; the `base` of a `cnnf` sweep."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        in_shape = model_info(self.model.arch).input_shape
        data_shape = dataset_info(self.data.dataset).input_shape
        require(
            in_shape[1:] == data_shape[1:],
            "model.arch",
            f"{self.model.arch} expects {in_shape[1]}x{in_shape[2]} images but {self.data.dataset} has {data_shape[1]}x{data_shape[2]}",
        )
        if not model_info(self.model.arch).feedback:
            require(self.train.n_iterations == 0, "train.n_iterations", f"must be 0 for the plain CNN {self.model.arch}")
            require(self.eval.n_iterations in (None, 0), "eval.n_iterations", f"must be 0 for the plain CNN {self.model.arch}")
            require(not self.model.recon_levels, "model.recon_levels", f"must be unset for the plain CNN {self.model.arch}")
            require(not self.train.init_from_cnn, "train.init_from_cnn", f"{self.model.arch} is itself the plain CNN")
        elif self.train.init_from_cnn:
            twin = plain_twin(self.model.arch)
            require(twin in model_names(), "train.init_from_cnn", f"{self.model.arch} has no plain CNN twin (expected {twin!r})")

    @property
    def eval_iterations(self) -> int:
        return self.train.n_iterations if self.eval.n_iterations is None else self.eval.n_iterations
