"""The Pareto front of a multi-objective sweep over hand-built trial records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tuning.pareto import dominates, pareto_front, plot_pareto
from tuning.tracking import TrialRecord


def rec(trial: int, status: str = "FINISHED", state: str = "COMPLETE", **metrics: float) -> TrialRecord:
    return TrialRecord(str(trial), f"run{trial}", status, {"model.ind": trial % 3}, dict(metrics), state)


def ids(records) -> list[str]:
    return [r.trial_id for r in records]


@pytest.mark.parametrize(
    "a,b,modes,expected",
    [
        ([1, 1], [0, 0], ["max", "max"], True),
        ([0, 0], [1, 1], ["max", "max"], False),
        ([1, 0], [0, 1], ["max", "max"], False),  # a trade-off: neither dominates
        ([1, 1], [1, 1], ["max", "max"], False),  # a tie dominates nothing
        ([1, 1], [1, 0], ["max", "max"], True),  # equal in one, better in the other
        ([0, 0], [1, 1], ["min", "min"], True),
        ([1, 0], [0, 1], ["max", "min"], True),  # higher first, lower second
        ([1, 1], [0, 0], ["max", "min"], False),
        ([0.5, 0.2], [0.5, 0.3], ["max", "min"], True),
        ([0.5, 0.3], [0.5, 0.2], ["max", "min"], False),
        ([2, 2, 2], [2, 2, 1], ["max", "max", "max"], True),
        ([2, 2, 2], [2, 3, 1], ["max", "max", "max"], False),
    ],
)
def test_dominates(a, b, modes, expected) -> None:
    assert dominates(a, b, modes) is expected


def test_dominance_is_never_mutual() -> None:
    points = [(x, y) for x in (0, 0.5, 1) for y in (0, 0.5, 1)]
    for modes in (["max", "max"], ["max", "min"], ["min", "min"]):
        for a in points:
            assert not dominates(a, a, modes)
            for b in points:
                assert not (dominates(a, b, modes) and dominates(b, a, modes))


def test_front_of_two_maximised_objectives() -> None:
    records = [rec(0, a=0.9, b=0.1), rec(1, a=0.5, b=0.5), rec(2, a=0.1, b=0.9), rec(3, a=0.4, b=0.4), rec(4, a=0.9, b=0.05)]
    assert ids(pareto_front(records, ["a", "b"], ["max", "max"])) == ["0", "1", "2"]


def test_front_with_a_min_and_a_max_objective() -> None:
    # acc (max) against loss (min)
    records = [rec(0, acc=0.9, loss=0.5), rec(1, acc=0.8, loss=0.2), rec(2, acc=0.8, loss=0.3), rec(3, acc=0.7, loss=0.1),
               rec(4, acc=0.95, loss=0.6), rec(5, acc=0.6, loss=0.15)]
    assert ids(pareto_front(records, ["acc", "loss"], ["max", "min"])) == ["0", "1", "3", "4"]
    # the same points with both maximised: the loss is now a gain
    assert ids(pareto_front(records, ["acc", "loss"], ["max", "max"])) == ["4"]
    assert ids(pareto_front(records, ["acc", "loss"], ["min", "min"])) == ["3", "5"]


def test_ties_are_all_on_the_front() -> None:
    records = [rec(0, a=0.5, b=0.5), rec(1, a=0.5, b=0.5), rec(2, a=0.4, b=0.5)]
    assert ids(pareto_front(records, ["a", "b"], ["max", "max"])) == ["0", "1"]


def test_metric_order_follows_the_metrics_argument() -> None:
    records = [rec(0, a=1.0, b=0.0), rec(1, a=0.0, b=1.0), rec(2, a=0.5, b=0.1)]
    assert ids(pareto_front(records, ["b", "a"], ["max", "min"])) == ["1"]
    assert ids(pareto_front(records, ["a", "b"], ["max", "min"])) == ["0"]


def test_incomplete_pruned_and_failed_records_are_excluded() -> None:
    records = [
        rec(0, a=0.5, b=0.5),
        rec(1, "FINISHED", "PRUNED", a=0.99, b=0.99),  # stopped early: its values are low-fidelity
        rec(2, "FAILED", "FAILED", a=0.99, b=0.99),
        rec(3, "RUNNING", "", a=0.99, b=0.99),
        rec(4, "KILLED", "", a=0.99, b=0.99),
        rec(5, a=0.99),  # no value of b
        rec(6, a=float("nan"), b=0.99),
        rec(7, a=0.4, b=0.6),
    ]
    front = pareto_front(records, ["a", "b"], ["max", "max"])
    assert ids(front) == ["0", "7"]
    assert all(r.complete for r in front)


def test_front_of_nothing_and_of_one() -> None:
    assert pareto_front([], ["a", "b"], ["max", "max"]) == []
    assert ids(pareto_front([rec(3, a=0.1, b=0.1)], ["a", "b"], ["max", "max"])) == ["3"]


def test_every_dominated_point_is_dominated_by_one_on_the_front() -> None:
    import random

    rng = random.Random(0)
    records = [rec(i, a=rng.random(), b=rng.random(), c=rng.random()) for i in range(60)]
    metrics, modes = ["a", "b", "c"], ["max", "min", "max"]
    front = pareto_front(records, metrics, modes)
    on = {r.trial_id for r in front}
    value = lambda r: [r.metrics[m] for m in metrics]  # noqa: E731
    assert front
    for r in records:
        if r.trial_id in on:
            assert not any(dominates(value(o), value(r), modes) for o in records)
        else:
            assert any(dominates(value(f), value(r), modes) for f in front)


def test_plot_pareto_writes_a_png(tmp_path: Path) -> None:
    records = [rec(0, a=0.9, b=0.1), rec(1, a=0.5, b=0.5), rec(2, a=0.4, b=0.4), rec(3, "FINISHED", "PRUNED", a=0.2, b=0.2)]
    front = pareto_front(records, ["a", "b"], ["max", "max"])
    path = tmp_path / "pareto.png"
    assert plot_pareto(records, front, ["a", "b"], ["max", "max"], path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_pareto_three_objectives_has_a_panel_per_pair(tmp_path: Path) -> None:
    from PIL import Image

    records = [rec(i, a=i / 5, b=1 - i / 5, c=math.sin(i)) for i in range(5)]
    front = pareto_front(records, ["a", "b", "c"], ["max", "max", "max"])
    two, three = tmp_path / "two.png", tmp_path / "three.png"
    assert plot_pareto(records, front, ["a", "b"], ["max", "max"], two)
    assert plot_pareto(records, front, ["a", "b", "c"], ["max", "max", "max"], three)
    assert Image.open(three).size[0] > 2 * Image.open(two).size[0]  # three panels side by side


def test_plot_pareto_draws_nothing_without_complete_trials(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    assert plot_pareto([rec(0, "FAILED", "FAILED", a=0.1, b=0.2)], [], ["a", "b"], ["max", "max"], path) is False
    assert plot_pareto([rec(0, a=0.1, b=0.2)], [], ["a"], ["max"], path) is False
    assert not path.exists()
