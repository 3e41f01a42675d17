"""cnnf.data: the bundled sample, the seeded stratified split, units, and
the errors for missing data. Real torchvision datasets only where present."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from cnnf.config import ConfigError, DataConfig
from cnnf.data import (
    SAMPLE_PATH,
    DataNotFoundError,
    DataSplits,
    check_available,
    dataset_names,
    load_raw,
    load_splits,
    stratified_split,
    to_input_units,
    to_inputs,
)
from tests.cnnf.conftest import offline_data_root

OFFLINE = offline_data_root()
needs_offline = pytest.mark.skipif(OFFLINE is None, reason="offline datasets not found ($CNNF_DATA_ROOT or ../shared/datasets)")


def row_keys(x: Tensor) -> list[bytes]:
    return [r.tobytes() for r in x.reshape(len(x), -1).numpy()]


def per_class(y: Tensor, n_classes: int = 10) -> list[int]:
    return torch.bincount(y, minlength=n_classes).tolist()


# ---------------------------------------------------------------- the bundled sample


def test_sample_sizes_shapes_and_range(sample_splits: DataSplits) -> None:
    s = sample_splits
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)
    assert s.n_classes == 10 and s.input_shape == (1, 28, 28)
    for part in (s.train, s.val, s.test):
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.x.shape[1:] == (1, 28, 28)
        assert part.x.min() >= -1.0 and part.x.max() <= 1.0
    # The full range is used: [-1, 1], not [0, 1] (spec "Notation").
    assert s.train.x.min() == -1.0 and s.train.x.max() == 1.0


def test_sample_is_stratified(sample_splits: DataSplits) -> None:
    s = sample_splits
    assert per_class(torch.cat([s.train.y, s.val.y])) == [400] * 10
    assert per_class(s.test.y) == [100] * 10
    assert per_class(s.val.y) == [40] * 10
    assert per_class(s.train.y) == [360] * 10


def test_val_is_disjoint_from_train_and_covers_the_rest() -> None:
    with np.load(SAMPLE_PATH) as z:
        raw_x, raw_y = torch.from_numpy(z["train_x"]), torch.from_numpy(z["train_y"])
    keep, held = stratified_split(raw_y, 400, seed=0)
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(raw_y)))
    s = load_splits(DataConfig(split_seed=0))
    assert torch.equal(s.train.x, to_inputs(raw_x[keep])) and torch.equal(s.val.x, to_inputs(raw_x[held]))
    assert set(row_keys(raw_x[keep])).isdisjoint(row_keys(raw_x[held]))


def test_split_is_deterministic_and_seeded(sample_splits: DataSplits) -> None:
    again = load_splits(DataConfig(split_seed=0))
    assert torch.equal(again.val.x, sample_splits.val.x) and torch.equal(again.train.y, sample_splits.train.y)
    other = load_splits(DataConfig(split_seed=1))
    assert len(other.val) == 400 and per_class(other.val.y) == [40] * 10
    assert set(row_keys(other.val.x)) != set(row_keys(sample_splits.val.x))
    assert torch.equal(other.test.x, sample_splits.test.x)  # the test split never moves


def test_n_train_subset_is_stratified_and_from_train(sample_splits: DataSplits) -> None:
    sub = load_splits(DataConfig(n_train=500))
    assert len(sub.train) == 500 and per_class(sub.train.y) == [50] * 10
    assert set(row_keys(sub.train.x)) <= set(row_keys(sample_splits.train.x))
    assert torch.equal(sub.val.x, sample_splits.val.x)  # n_train does not touch validation
    assert torch.equal(load_splits(DataConfig(n_train=500)).train.x, sub.train.x)


def test_n_train_is_honoured_when_not_a_multiple_of_the_classes() -> None:
    """DataConfig.n_train asks for exactly n images (an earlier version rounded per class)."""
    sub = load_splits(DataConfig(n_train=505))
    assert len(sub.train) == 505
    counts = per_class(sub.train.y)
    assert max(counts) - min(counts) <= 1


def test_stratified_split_quota_follows_class_shares() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    keep, held = stratified_split(labels, 5, seed=0)
    assert len(held) == 5 and len(keep) == 5
    # exact shares 3.0 / 1.5 / 0.5: floors 3 / 1 / 0, the one left over goes to class 1 (tie, lower class)
    assert torch.bincount(labels[held], minlength=3).tolist() == [3, 2, 0]


def test_n_train_above_the_training_split_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"data.n_train=4000 exceeds the 3600 training images"):
        load_splits(DataConfig(n_train=4000))


def test_to_input_units() -> None:
    assert to_input_units(0.1) == pytest.approx(0.2, abs=1e-12)
    assert to_input_units(8 / 255) == pytest.approx(0.0627, abs=1e-4)
    assert torch.equal(to_inputs(torch.tensor([[0, 255]], dtype=torch.uint8)), torch.tensor([[-1.0, 1.0]]))


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("dataset", "files"),
    [
        ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]),
        ("fashion-mnist", ["FashionMNIST/raw/train-images-idx3-ubyte", "FashionMNIST/raw/t10k-images-idx3-ubyte"]),
        ("cifar10", ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"]),
    ],
)
def test_missing_dataset_error_names_root_and_files(tmp_path: Path, dataset: str, files: list[str]) -> None:
    cfg = DataConfig(dataset=dataset, root=str(tmp_path), download=False)
    for call in (check_available, load_splits):
        with pytest.raises(DataNotFoundError) as info:
            call(cfg)
        msg = str(info.value)
        assert "\n" not in msg
        assert str(tmp_path) in msg and dataset in msg
        for f in files:
            assert f in msg
    assert isinstance(info.value, FileNotFoundError)
    assert not any(tmp_path.iterdir()), "nothing may be written when download is false"


def test_missing_dataset_uses_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNF_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere"):
        check_available(DataConfig(dataset="mnist"))


def test_sample_is_always_available(tmp_path: Path) -> None:
    check_available(DataConfig(dataset="fashion-mnist-sample", root=str(tmp_path)))


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(ConfigError) as info:
        DataConfig(dataset="svhn")
    assert info.value.field == "dataset"
    assert "svhn" in str(info.value)
    assert set(dataset_names()) == {"cifar10", "fashion-mnist", "fashion-mnist-sample", "mnist"}
    for name in dataset_names():
        assert name in str(info.value)


# ---------------------------------------------------------------- real offline datasets


@needs_offline
def test_real_fashion_mnist_sizes() -> None:
    s = load_splits(DataConfig(dataset="fashion-mnist", root=str(OFFLINE)))
    assert len(s.train) + len(s.val) == 60000 and len(s.val) == 6000 and len(s.test) == 10000
    assert s.input_shape == (1, 28, 28)
    assert per_class(torch.cat([s.train.y, s.val.y])) == [6000] * 10
    assert s.train.x.min() >= -1 and s.train.x.max() <= 1


@needs_offline
def test_real_mnist_sizes() -> None:
    s = load_splits(DataConfig(dataset="mnist", root=str(OFFLINE)))
    assert len(s.train) + len(s.val) == 8500 and len(s.test) == 1500
    assert s.input_shape == (1, 28, 28)


@needs_offline
def test_sample_comes_from_the_offline_fashion_mnist() -> None:
    """Every sample image is in the full set, in the same split, with the same label."""
    full_train_x, full_train_y, full_test_x, full_test_y = load_raw(DataConfig(dataset="fashion-mnist", root=str(OFFLINE)))
    with np.load(SAMPLE_PATH) as z:
        sample = {k: torch.from_numpy(z[k]) for k in z.files}

    def labels_by_hash(x: Tensor, y: Tensor) -> dict[str, set[int]]:
        table: dict[str, set[int]] = {}
        for key, label in zip(row_keys(x), y.tolist(), strict=True):
            table.setdefault(hashlib.sha1(key).hexdigest(), set()).add(label)
        return table

    for part, (fx, fy) in {"train": (full_train_x, full_train_y), "test": (full_test_x, full_test_y)}.items():
        table = labels_by_hash(fx, fy)
        sx, sy = sample[f"{part}_x"], sample[f"{part}_y"]
        assert sx.dtype == torch.uint8 and sx.shape[1:] == fx.shape[1:]
        for key, label in zip(row_keys(sx), sy.tolist(), strict=True):
            labels = table.get(hashlib.sha1(key).hexdigest())
            assert labels is not None, f"a sample {part} image is not in the full Fashion-MNIST {part} split"
            assert label in labels, f"a sample {part} image has label {label}, the full set says {labels}"
