"""Stages computed once and reused by every trial of a sweep that needs them.

A feedback-learning sweep's trials share the trained base model and its
margins; CNN-F trials that start from the plain CNN (`init_from_cnn`) share
that CNN. Whichever trial needs a stage first computes it while the others
wait on a file lock, then everyone loads the stored result. Stage files are
keyed by their own config (`config_key`), written atomically, and never
overwritten. Generic (no model code), so both `fl` and the sweep layer use it."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")


def config_key(*parts: Any) -> str:
    """A short stable hash of dataclasses / plain values."""
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def stage_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), across processes on one machine
    or a shared filesystem with POSIX locks; released on exit or when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_stage(folder: Optional[Path], name: str, key: str, compute: Callable[[], T],
                 save: Callable[[T, Path], None], load: Callable[[Path], T],
                 log: Optional[Callable[[str], None]] = None) -> T:
    """Load folder/<name>-<key>.pt if present, else compute and store it.

    Concurrent callers with the same key wait for the one computing it.
    Without a folder the stage is computed every time.
    """
    if folder is None:
        return compute()
    folder = Path(folder)
    path = folder / f"{name}-{key}.pt"
    with stage_lock(folder / f"{name}-{key}.lock"):
        if path.exists():
            if log:
                log(f"{name}: reusing {path}")
            return load(path)
        value = compute()
        tmp = path.with_name(path.name + ".tmp")
        save(value, tmp)
        tmp.replace(path)
        if log:
            log(f"{name}: stored {path}")
        return value
