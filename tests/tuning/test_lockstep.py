"""run_lockstep: replicates advance one epoch at a time, in turn, each as if alone."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pytest
import torch

from tuning.lockstep import run_lockstep

TIMEOUT_S = 30


def within_timeout(fn: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    """Run fn in a helper thread; a hang fails the test instead of blocking it forever."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


def training(name: str, k: int, log: list | None = None) -> Callable[[Callable[[Any], None]], str]:
    """A fake training: k epochs, each reported with step((name, epoch))."""

    def fn(step: Callable[[Any], None]) -> str:
        for epoch in range(1, k + 1):
            if log is not None:
                log.append((name, epoch))
            step((name, epoch))
        return f"{name} done"

    return fn


def test_rounds_in_order() -> None:
    rounds: list[list] = []
    log: list = []
    results = within_timeout(lambda: run_lockstep([training(n, 4, log) for n in "abc"], rounds.append))
    assert results == ["a done", "b done", "c done"]
    assert rounds == [[("a", e), ("b", e), ("c", e)] for e in range(1, 5)]
    # one replicate works at a time, in turn: epoch e of every replicate before epoch e + 1 of any
    assert log == [(n, e) for e in range(1, 5) for n in "abc"]


def test_on_round_runs_in_the_callers_thread_after_each_epoch() -> None:
    threads, seen = [], []

    def on_round(items: list) -> None:
        threads.append(threading.current_thread())
        seen.append(len(items))

    def call() -> list:
        me = threading.current_thread()
        out = run_lockstep([training(n, 3) for n in "abc"], on_round)
        assert all(t is me for t in threads)
        return out

    within_timeout(call)
    assert seen == [3, 3, 3]


def test_one_replicate_runs_directly() -> None:
    rounds: list = []
    assert within_timeout(lambda: run_lockstep([training("a", 3)], rounds.append)) == ["a done"]
    assert rounds == [[("a", 1)], [("a", 2)], [("a", 3)]]


def test_no_epochs() -> None:
    rounds: list = []
    assert within_timeout(lambda: run_lockstep([training(n, 0) for n in "ab"], rounds.append)) == ["a done", "b done"]
    assert rounds == []


def _failing(at_epoch: int) -> Callable[[Callable[[Any], None]], str]:
    def fn(step: Callable[[Any], None]) -> str:
        for epoch in range(1, 4):
            if epoch == at_epoch:
                raise FloatingPointError(f"training loss became nan at epoch {epoch}")
            step(("bad", epoch))
        return "never"

    return fn


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("at_epoch", [1, 2])
def test_an_exception_propagates_and_the_other_threads_end(position: int, at_epoch: int) -> None:
    before = {t.ident for t in threading.enumerate()}
    fns: list = [training("a", 3), training("b", 3)]
    fns.insert(position, _failing(at_epoch))
    rounds: list = []
    with pytest.raises(FloatingPointError, match=f"nan at epoch {at_epoch}"):
        within_timeout(lambda: run_lockstep(fns, rounds.append))
    assert len(rounds) == at_epoch - 1  # the failing epoch never completed a round
    deadline = time.time() + 10
    while time.time() < deadline:
        left = [t for t in threading.enumerate() if t.name.startswith("replicate-") and t.ident not in before]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"replicate threads still alive: {left}"


def test_an_exception_in_on_round_unwinds_the_replicates() -> None:
    before = {t.ident for t in threading.enumerate()}

    def on_round(items: list) -> None:
        raise RuntimeError("report failed")

    with pytest.raises(RuntimeError, match="report failed"):
        within_timeout(lambda: run_lockstep([training(n, 3) for n in "abc"], on_round))
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("replicate-") and t.ident not in before and t.is_alive()]


def test_replicates_out_of_step_are_an_error() -> None:
    with pytest.raises(RuntimeError, match="out of step"):
        within_timeout(lambda: run_lockstep([training("a", 2), training("b", 3)], lambda items: None))


# --- RNG isolation ----------------------------------------------------------------------


def draws(seed: int, k: int) -> Callable[[Callable[[Any], None]], list]:
    """A replicate that seeds the global RNGs once, then draws after every pause."""

    def fn(step: Callable[[Any], None]) -> list:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        out = []
        for epoch in range(k):
            out.append((torch.rand(3).tolist(), random.random(), float(np.random.rand())))
            step(epoch)
            # drawn right after the pause, while the other replicates have drawn meanwhile
            out.append((torch.rand(2).tolist(), random.random(), float(np.random.rand())))
        return out

    return fn


def alone(fn: Callable[[Callable[[Any], None]], Any]) -> Any:
    return fn(lambda item: None)


def test_each_replicate_draws_what_it_draws_alone() -> None:
    seeds, k = [11, 22, 33], 4
    expected = [alone(draws(s, k)) for s in seeds]
    assert expected[0] != expected[1]

    def disturb(items: list) -> None:  # the caller draws too between rounds
        torch.rand(5)
        random.random()
        np.random.rand()

    got = within_timeout(lambda: run_lockstep([draws(s, k) for s in seeds], disturb))
    assert got == expected


def test_replicates_with_the_same_seed_draw_the_same() -> None:
    got = within_timeout(lambda: run_lockstep([draws(5, 3), draws(5, 3)], lambda items: None))
    assert got[0] == got[1] == alone(draws(5, 3))


def test_training_a_model_in_lockstep_matches_training_it_alone() -> None:
    """A tiny SGD loop with dropout and shuffling: weights after k epochs are
    bitwise those of the same loop run alone."""

    def train(seed: int, k: int = 3) -> Callable[[Callable[[Any], None]], torch.Tensor]:
        def fn(step: Callable[[Any], None]) -> torch.Tensor:
            torch.manual_seed(seed)
            net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            x, y = torch.randn(32, 4), torch.randn(32, 1)
            for epoch in range(k):
                for idx in torch.randperm(32).split(8):
                    opt.zero_grad()
                    torch.nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
                    opt.step()
                step(epoch)
            return torch.cat([p.detach().flatten() for p in net.parameters()])

        return fn

    expected = [alone(train(s)) for s in (0, 1)]
    got = within_timeout(lambda: run_lockstep([train(0), train(1)], lambda items: None))
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
