"""What configs may name: every model and dataset, as plain facts (no torch).

The ground floor of the package: `cnnf.config` (and `fl.config`, the sweep
YAML loader) validate against these records without importing torch. The
torch side builds from them: `cnnf.models.register_model(name)` takes a
model's metadata from here (a name missing here cannot be registered), and
`cnnf.data` attaches its readers to the `DatasetInfo` here. One source of
truth: add a model or dataset here first, then its builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _unknown(kind: str, name: object, known: list[str]) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; expected one of: {', '.join(known)}")


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture as configs see it, before anything is built.

    legal_inds: the feedback levels the architecture accepts (`model.ind`).
    feedback: False for a plain CNN of the same backbone (0 iterations only).
    input_shape: (C, H, W) the architecture expects.
    n_levels: the number of stages; level k is the input of stage k, so
        levels 0..n_levels - 1 exist (the logits are not a level).
    recon_levels: the intermediate levels that carry reconstruction losses by
        default (those above `ind`); `model.recon_levels` overrides them.
    """

    name: str
    feedback: bool
    legal_inds: tuple[int, ...]
    input_shape: tuple[int, int, int]
    n_levels: int
    recon_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not self.legal_inds or any(not 0 <= k < self.n_levels for k in self.legal_inds):
            problems.append(f"legal_inds {list(self.legal_inds)} must be non-empty levels in 0..{self.n_levels - 1}")
        if any(not 0 < k < self.n_levels for k in self.recon_levels):
            problems.append(f"recon_levels {list(self.recon_levels)} must lie in 1..{self.n_levels - 1}")
        if not self.feedback and (self.legal_inds != (0,) or self.recon_levels):
            problems.append("a plain CNN has legal_inds (0,) and no recon_levels")
        if len(self.input_shape) != 3:
            problems.append(f"input_shape {self.input_shape} must be (C, H, W)")
        if problems:
            raise ValueError(f"model {self.name!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, without reading it.

    adv_step_ratio: the paper's PGD step of adversarial training as a fraction
    of its eps (Appendix B.2): Fashion-MNIST 0.071 for eps 0.2 in [-1, 1] units,
    CIFAR-10 0.02 for 8/255 in pixel units (0.063 ~ 2 * 8/255 in [-1, 1]).
    MNIST has no CNN-F recipe in the paper and takes Fashion-MNIST's.
    files: the files that must exist under the data root (`cnnf.datafiles`);
    an absolute path is a file shipped with the package.
    """

    name: str
    n_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    adv_step_ratio: float
    files: tuple[str, ...]


# --------------------------------------------------------------------- models

_FMNIST_SHAPE = (1, 28, 28)
_CIFAR_SHAPE = (3, 32, 32)
_STD_LEVELS = 4  # B.1 layout (cnnf.models.fmnist.standard_backbone), also the small MNIST model
_ADV_LEVELS = 7  # B.2 layout
_WRN_LEVELS = 9  # WRN-40-2: image, 6 blocks of group 1, groups 2 and 3
WRN_GROUP_LEVELS = (6, 7, 8)  # the outputs of the three groups: reconstruction losses "after each of the 3 groups"


def _pair(backbone: str, shape: tuple[int, int, int], n_levels: int, legal_inds: tuple[int, ...],
          recon_levels: tuple[int, ...] = ()) -> tuple[ModelInfo, ModelInfo]:
    """The CNN-F `cnnf_<backbone>` and its plain CNN twin `cnn_<backbone>`."""
    return (ModelInfo(f"cnnf_{backbone}", True, legal_inds, shape, n_levels, recon_levels),
            ModelInfo(f"cnn_{backbone}", False, (0,), shape, n_levels))


_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        *_pair("fmnist_std", _FMNIST_SHAPE, _STD_LEVELS, (0, 1, 2)),
        *_pair("fmnist_adv", _FMNIST_SHAPE, _ADV_LEVELS, (0, 1, 2), (3, 4)),
        *_pair("mnist_small", _FMNIST_SHAPE, _STD_LEVELS, (0, 1, 2)),
        *_pair("wrn40_2", _CIFAR_SHAPE, _WRN_LEVELS, tuple(range(7)), WRN_GROUP_LEVELS),
    )
}


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The catalog record of a model; ValueError listing the known ones."""
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise _unknown("model", name, model_names()) from None


# ------------------------------------------------------------------- datasets

FASHION_ADV_STEP_RATIO = 0.071 / 0.2  # eps 0.1 pixel units -> step 0.0355 (0.071 in [-1, 1])
CIFAR_ADV_STEP_RATIO = 0.01 / (8 / 255)  # eps 8/255 -> step 0.01 pixel units (0.02 in [-1, 1])

SAMPLE_PATH = Path(__file__).parent / "assets" / "fashion_mnist_sample.npz"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _torchvision_files(folder: str) -> tuple[str, ...]:
    """torchvision's MNIST-like layout under the root: <folder>/raw/<file>."""
    return tuple(f"{folder}/raw/{f}" for f in _MNIST_FILES)


_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("fashion-mnist", 10, _FMNIST_SHAPE, FASHION_ADV_STEP_RATIO, _torchvision_files("FashionMNIST")),
        DatasetInfo("mnist", 10, _FMNIST_SHAPE, FASHION_ADV_STEP_RATIO, _torchvision_files("MNIST")),
        DatasetInfo("cifar10", 10, _CIFAR_SHAPE, CIFAR_ADV_STEP_RATIO,
                    tuple(f"cifar-10-batches-py/{f}" for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])),
        # a stratified 4,000 / 1,000 sample of Fashion-MNIST shipped in cnnf/assets
        DatasetInfo("fashion-mnist-sample", 10, _FMNIST_SHAPE, FASHION_ADV_STEP_RATIO, (str(SAMPLE_PATH),)),
    )
}


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """Static facts about a dataset (classes, input shape) without reading it;
    ValueError listing the known ones."""
    try:
        return _DATASETS[name]
    except (KeyError, TypeError):
        raise _unknown("dataset", name, dataset_names()) from None
