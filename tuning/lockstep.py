"""Run several callback-style trainings one epoch at a time, in turn.

A configuration with replicates trains one model per seed. Schedulers and
the per-epoch MLflow curves need one report per epoch with the mean over
the seeds, so the replicates advance in lockstep: each runs in a thread
that blocks in its epoch callback until the others have finished the same
epoch. Only one thread works at any time (the trial's CPUs are not
oversubscribed), and each thread's global RNG state is saved and restored
around its pauses, so a replicate computes what it would compute alone.
"""

from __future__ import annotations

import queue
import random
import threading
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")
Step = Callable[[Any], None]  # called by a replicate once per epoch with its epoch item


class _Abort(BaseException):
    """Unwinds a paused replicate when another one failed."""


def _rng_state() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def run_lockstep(fns: Sequence[Callable[[Step], T]], on_round: Callable[[list[Any]], None]) -> list[T]:
    """Run every fn(step) to completion; after each epoch that all of them
    finished, call on_round (in the caller's thread) with their items in order.

    Every fn must call step the same number of times. An exception in any
    fn is raised here and the others are unwound.
    """
    if len(fns) == 1:  # nothing to interleave
        return [fns[0](lambda item: on_round([item]))]
    n = len(fns)
    go = [threading.Semaphore(0) for _ in range(n)]
    out: list[queue.Queue] = [queue.Queue() for _ in range(n)]
    abort = threading.Event()

    def worker(i: int) -> None:
        go[i].acquire()

        def step(item: Any) -> None:
            saved = _rng_state()
            out[i].put(("item", item))
            go[i].acquire()
            if abort.is_set():
                raise _Abort()
            _set_rng_state(saved)

        try:
            if abort.is_set():
                raise _Abort()
            out[i].put(("done", fns[i](step)))
        except _Abort:
            out[i].put(("aborted", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            out[i].put(("error", exc))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"replicate-{i}") for i in range(n)]
    for t in threads:
        t.start()
    results: list[Any] = [None] * n
    finished = [False] * n
    try:
        while not all(finished):
            items = []
            for i in range(n):
                if finished[i]:
                    continue
                go[i].release()
                kind, value = out[i].get()
                if kind == "error":
                    raise value
                if kind == "done":
                    finished[i], results[i] = True, value
                else:
                    items.append(value)
            if items:
                if len(items) != n:
                    raise RuntimeError(f"replicates out of step: {len(items)} of {n} reported an epoch")
                on_round(items)
    finally:
        if not all(finished):
            abort.set()
            for i in range(n):
                if not finished[i]:
                    go[i].release()
            for t in threads:
                t.join(timeout=10)
    return results
