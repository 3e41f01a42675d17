"""Where a dataset's files live and whether they are there, without torch.

The data root is the config's `root`, else $CNNF_DATA_ROOT, else ./data; the
files each dataset needs are its `cnnf.catalog.DatasetInfo.files`. A sweep's
preflight (`check_available`) and the loaders in `cnnf.data` share these.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnf.catalog import dataset_info
from cnnf.config import DataConfig

DATA_ROOT_ENV = "CNNF_DATA_ROOT"


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are missing and could not (or may not) be downloaded."""


def resolve_root(cfg: DataConfig) -> Path:
    """The data root: the config's, else $CNNF_DATA_ROOT, else ./data."""
    return Path(cfg.root or os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def expected_files(cfg: DataConfig) -> list[Path]:
    """The files the dataset needs, under the resolved root."""
    root = resolve_root(cfg)
    return [root / f for f in dataset_info(cfg.dataset).files]


def missing_files(cfg: DataConfig) -> list[Path]:
    return [p for p in expected_files(cfg) if not p.exists()]


def not_found(cfg: DataConfig, reason: str) -> DataNotFoundError:
    root = resolve_root(cfg)
    files = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in expected_files(cfg))
    return DataNotFoundError(
        f"dataset {cfg.dataset!r} not found under root {str(root)!r} ({reason}); expected the files {files} "
        f"there (set data.root or ${DATA_ROOT_ENV})"
    )


def check_available(cfg: DataConfig) -> None:
    """Raise DataNotFoundError unless the files are there or a download is allowed."""
    if missing_files(cfg) and not cfg.download:
        raise not_found(cfg, "missing and data.download is false")
