"""Datasets by name, scaled to [-1, 1], with a deterministic validation split.

Names: `fashion-mnist`, `mnist`, `cifar10` (through torchvision, read from
`root`), and `fashion-mnist-sample`, a stratified sample of the offline
Fashion-MNIST (4,000 train / 1,000 test images) shipped inside the package
so that the demo and the default tests need no download.

The test split is only ever used for final reporting: training, early
stopping and every sweep objective use the validation split cut from the
training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from cnnf.catalog import SAMPLE_PATH, DatasetInfo, dataset_info, dataset_names
from cnnf.config import DataConfig
from cnnf.datafiles import DATA_ROOT_ENV, DataNotFoundError, check_available, missing_files, not_found, resolve_root  # noqa: F401

INPUT_RANGE = (-1.0, 1.0)  # models see x = 2 * pixel - 1 (Normalize(0.5, 0.5))


def to_input_units(eps_pixels: float) -> float:
    """Convert a budget in [0, 1] pixel units into model-input units.

    The one place where the paper's epsilons (quoted on [0, 1]) become the
    values used on [-1, 1] inputs: Fashion-MNIST 0.1 -> 0.2.
    """
    return eps_pixels * (INPUT_RANGE[1] - INPUT_RANGE[0])


class ArrayDataset(NamedTuple):
    """Images and labels held as tensors. x: (N, C, H, W) in [-1, 1]; y: (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> "ArrayDataset":
        return self if n is None else ArrayDataset(self.x[:n], self.y[:n])

    def to(self, device: torch.device | str) -> "ArrayDataset":
        return ArrayDataset(self.x.to(device), self.y.to(device))


def random_crop_flip(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """CIFAR augmentation on a batch: random crop after zero-padding each side
    by `pad` pixels (black, the low end of INPUT_RANGE), then a horizontal flip
    with probability 1/2. x: (N, C, H, W) -> (N, C, H, W)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=INPUT_RANGE[0])
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


# A raw dataset: uint8 images (N, C, H, W) and int64 labels, for train and test.
RawSplits = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class DatasetSource:
    """How to read a dataset; its static facts (classes, input shape, the
    adversarial step ratio, the files under the root) are its `cnnf.catalog.DatasetInfo`."""

    info: DatasetInfo
    load: Callable[[Path, bool], RawSplits]  # (root, download) -> raw splits


# The static facts (`dataset_names`, `dataset_info`) come from `cnnf.catalog`,
# the data root and `check_available` from `cnnf.datafiles`, both without
# torch; every name in the catalog has exactly one source here.
_SOURCES: dict[str, DatasetSource] = {}


def _register(source: DatasetSource) -> None:
    if source.info.name in _SOURCES:
        raise ValueError(f"dataset {source.info.name!r} is already registered")
    _SOURCES[source.info.name] = source


def _torchvision_mnist_like(name: str, cls_name: str) -> DatasetSource:
    def load(root: Path, download: bool) -> RawSplits:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
        return train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long()

    return DatasetSource(dataset_info(name), load)


def _cifar10() -> DatasetSource:
    def load(root: Path, download: bool) -> RawSplits:
        import torchvision

        train = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=download)

        def chw(d: np.ndarray) -> Tensor:
            return torch.from_numpy(d).permute(0, 3, 1, 2).contiguous()

        return chw(train.data), torch.tensor(train.targets), chw(test.data), torch.tensor(test.targets)

    return DatasetSource(dataset_info("cifar10"), load)


def _sample_source() -> DatasetSource:
    def load(root: Path, download: bool) -> RawSplits:
        with np.load(SAMPLE_PATH) as z:
            return tuple(torch.from_numpy(z[k]) for k in ("train_x", "train_y", "test_x", "test_y"))  # type: ignore[return-value]

    return DatasetSource(dataset_info("fashion-mnist-sample"), load)


_register(_torchvision_mnist_like("fashion-mnist", "FashionMNIST"))  # files: <root>/FashionMNIST/raw (cnnf.catalog)
_register(_torchvision_mnist_like("mnist", "MNIST"))
_register(_cifar10())
_register(_sample_source())
if set(_SOURCES) != set(dataset_names()):  # the catalog and the readers describe the same datasets
    raise RuntimeError(f"cnnf.catalog datasets {dataset_names()} have readers {sorted(_SOURCES)}")


def load_raw(cfg: DataConfig) -> RawSplits:
    """Read the raw uint8 splits, downloading only when files are missing and allowed."""
    source = _SOURCES[cfg.dataset]
    download = bool(missing_files(cfg))
    if download and not cfg.download:
        raise not_found(cfg, "missing and data.download is false")
    try:
        return source.load(resolve_root(cfg), download)
    except Exception as exc:  # torchvision raises URLError / RuntimeError on failed downloads
        if download:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise not_found(cfg, f"download failed: {first_line}") from exc
        raise


def to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in INPUT_RANGE."""
    lo, hi = INPUT_RANGE
    return images.float().div_(255.0).mul_(hi - lo).add_(lo)


def stratified_split(labels: Tensor, n_held: int, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic per-class split: (kept indices, held-out indices), each sorted.

    Exactly n_held indices are held out, spread over the classes in
    proportion to their counts (largest remainder; ties go to the lower
    class), each class's share drawn by a seeded permutation.
    """
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_held / len(labels)
    quota = exact.floor().long()
    short = n_held - int(quota.sum())
    if short > 0:  # stable sort keeps the lower class first among equal remainders
        quota[torch.sort(exact - quota, descending=True, stable=True).indices[:short]] += 1
    g = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        held.append(idx[torch.randperm(len(idx), generator=g)][:q])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def load_splits(cfg: DataConfig) -> DataSplits:
    """Load a dataset by name and cut the seeded stratified validation split."""
    train_x, train_y, test_x, test_y = load_raw(cfg)
    keep, val = stratified_split(train_y, int(round(cfg.val_fraction * len(train_y))), cfg.split_seed)
    if cfg.n_train is not None:
        if cfg.n_train > len(keep):
            raise ValueError(
                f"data.n_train={cfg.n_train} exceeds the {len(keep)} training images of {cfg.dataset!r} "
                f"left after the validation split (val_fraction={cfg.val_fraction})"
            )
        _, chosen = stratified_split(train_y[keep], cfg.n_train, cfg.split_seed + 1)
        keep = keep[chosen]
    return DataSplits(
        name=cfg.dataset,
        train=ArrayDataset(to_inputs(train_x[keep]), train_y[keep].long()),
        val=ArrayDataset(to_inputs(train_x[val]), train_y[val].long()),
        test=ArrayDataset(to_inputs(test_x), test_y.long()),
        n_classes=dataset_info(cfg.dataset).n_classes,
    )


def write_fashion_mnist_sample(root: str | Path, out: str | Path = SAMPLE_PATH, n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> Path:
    """Cut the stratified `fashion-mnist-sample` from an offline Fashion-MNIST.

    Recreates the shipped file: `python -c "from cnnf.data import
    write_fashion_mnist_sample as w; w('../shared/datasets')"`.
    """
    cfg = DataConfig(dataset="fashion-mnist", root=str(root))
    train_x, train_y, test_x, test_y = load_raw(cfg)
    _, tr = stratified_split(train_y, n_train, seed)
    _, te = stratified_split(test_y, n_test, seed)
    out = Path(out)
    np.savez_compressed(
        out,
        train_x=train_x[tr].numpy(), train_y=train_y[tr].numpy().astype(np.int64),
        test_x=test_x[te].numpy(), test_y=test_y[te].numpy().astype(np.int64),
    )
    return out
