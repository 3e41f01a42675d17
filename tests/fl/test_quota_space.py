"""The quota search space (issue #22): a budget spread by two ordered ratios
(`fl.config.class_quotas`), explicit quotas that must not grow with
robustness, the two sizes of reduced FL, the reduced-FL baseline at the same
budget and its metric names."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from cnnf.config import ConfigError
from fl.config import (FLConfig, FLEvalConfig, SearchConfig, SelectionConfig, check_selection, class_quotas, equal_quota,
                        reduced_at_budget, samples_per_class, tier_quotas)
from fl.metrics import REDUCED, VS_REDUCED, ReducedBaseline, comparison_metrics, metric_names
from fl.search import NA, Margins
from fl.select import plan_selection
from fl.stats import margin_stats

R10 = torch.tensor([0.5, 3.0, 1.0, 0.2, 2.5, 0.9, 1.1, 0.8, 0.3, 1.5], dtype=torch.float64)  # as in test_select


def field_of(fn, *args, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return e.value.field


def searched(per_class: int, n_classes: int = 10) -> Margins:
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    n = len(labels)
    return Margins(torch.full((n, 2), 0.5), torch.full((n, 2), NA), labels, torch.arange(n), 0.02, 0.5, "exact", 0, 0.0)


# ---------------------------------------------------------------- budget and ratios -> quotas


def test_the_papers_budget_and_ratios_give_the_papers_quotas() -> None:
    cfg = SelectionConfig(budget=2 * 20 + 3 * 100 + 5 * 150)  # default ratios 2/3 and 0.2
    assert tier_quotas(cfg, 10) == (20, 100, 150)
    assert class_quotas(cfg, 10) == class_quotas(SelectionConfig(), 10)


def test_tier_quotas_follow_the_formula() -> None:
    cfg = SelectionConfig(budget=100, medium_ratio=0.5, high_ratio=0.25)
    q_high, q_medium, q_low = tier_quotas(cfg, 10)
    assert q_low == Fraction(100) / (5 + 3 * Fraction(1, 2) + 2 * Fraction(1, 2) * Fraction(1, 4))
    assert (q_medium, q_high) == (q_low / 2, q_low / 8)
    assert 2 * q_high + 3 * q_medium + 5 * q_low == 100


@pytest.mark.parametrize("budget, n_classes", [(30, 10), (95, 10), (100, 10), (1090, 10), (7, 4), (501, 100)])
def test_budget_quotas_sum_to_the_budget_and_never_grow_with_robustness(budget: int, n_classes: int) -> None:
    rng = random.Random(budget)
    ratios = [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)] + [(rng.random(), rng.random()) for _ in range(200)]
    for medium_ratio, high_ratio in ratios:
        cfg = SelectionConfig(budget=budget, medium_ratio=medium_ratio, high_ratio=high_ratio)
        q = class_quotas(cfg, n_classes)
        assert sum(q) == budget, (medium_ratio, high_ratio, q)
        assert list(q) == sorted(q), "by rank, most robust first: quotas never decrease"
        exact = tier_quotas(cfg, n_classes)
        high, low = round(cfg.high_fraction * n_classes), round(cfg.low_fraction * n_classes)
        by_rank = [exact[0]] * high + [exact[1]] * (n_classes - high - low) + [exact[2]] * low
        # Each class: its tier's exact quota rounded down, or one more.
        assert all(math.floor(want) <= got <= math.floor(want) + 1 for got, want in zip(q, by_rank)), (q, by_rank)


def test_equal_ratios_are_equal_quotas() -> None:
    assert class_quotas(SelectionConfig(budget=100, medium_ratio=1.0, high_ratio=1.0), 10) == (10,) * 10
    # 95 over 10 classes: 9.5 each; the 5 dropped samples go to the least robust classes.
    assert class_quotas(SelectionConfig(budget=95, medium_ratio=1.0, high_ratio=1.0), 10) == (9,) * 5 + (10,) * 5


def test_zero_ratios_put_the_whole_budget_on_the_low_tier() -> None:
    assert class_quotas(SelectionConfig(budget=30, medium_ratio=0.0), 10) == (0,) * 5 + (6,) * 5


def test_plan_follows_budget_quotas_by_rank() -> None:
    cfg = SelectionConfig(budget=95, medium_ratio=0.5, high_ratio=0.3)
    plan = plan_selection(searched(30), R10, cfg)
    by_rank = [plan.quota[c] for c in plan.order]
    assert tuple(by_rank) == class_quotas(cfg, 10) and len(plan.rows) == 95


def test_budget_checks_name_the_budget() -> None:
    # 200 samples over the 5 low classes at medium_ratio 0: 40 each, 30 searched.
    assert field_of(check_selection, SelectionConfig(budget=200, medium_ratio=0.0), 10, (30,) * 10) == "selection.budget"
    check_selection(SelectionConfig(budget=150, medium_ratio=0.0), 10, (30,) * 10)
    # No low tier and a medium_ratio of 0: nobody can take the budget.
    empty = SelectionConfig(budget=10, low_fraction=0.0, medium_ratio=0.0)
    assert field_of(check_selection, empty, 10, (30,) * 10) == "selection.budget"
    # A tier fraction that rounds to no class while the budget gives that tier a share.
    assert field_of(check_selection, SelectionConfig(budget=50, high_fraction=0.04), 10, (30,) * 10) == "selection.high_fraction"
    check_selection(SelectionConfig(budget=50, high_fraction=0.04, high_ratio=0.0), 10, (30,) * 10)
    assert field_of(FLConfig, search=SearchConfig(n_samples=100), selection=SelectionConfig(budget=1090)) == "selection.budget"


@pytest.mark.parametrize("kw, field", [
    ({"budget": 0}, "budget"),
    ({"medium_ratio": 1.5}, "medium_ratio"),
    ({"high_ratio": -0.1}, "high_ratio"),
    ({"reduced_size": "largest"}, "reduced_size"),
])
def test_budget_fields_are_checked(kw: dict, field: str) -> None:
    assert field_of(SelectionConfig, **kw) == field


# ---------------------------------------------------------------- explicit quotas must be monotone


@pytest.mark.parametrize("kw, field", [
    ({"quota_high": 101}, "quota_high"),
    ({"quota_medium": 151}, "quota_medium"),
    ({"quota_high": 5, "quota_medium": 4, "quota_low": 8}, "quota_high"),
    ({"quota_high": 1, "quota_medium": 9, "quota_low": 8}, "quota_medium"),
])
def test_non_monotone_explicit_quotas_are_refused(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        SelectionConfig(**kw)
    assert e.value.field == field and "\n" not in str(e.value)
    assert "quota_high <= quota_medium <= quota_low" in e.value.message and "budget" in e.value.message


def test_equal_explicit_quotas_are_monotone() -> None:
    SelectionConfig(quota_high=7, quota_medium=7, quota_low=7)
    SelectionConfig(quota_high=0, quota_medium=0, quota_low=0)


# ---------------------------------------------------------------- reduced FL: two sizes


def test_reduced_fl_sizes() -> None:
    explicit = SelectionConfig(equal_quotas=True)  # 20 / 100 / 150
    assert equal_quota(explicit, 10) == 109  # equal_total: 1090 / 10
    assert equal_quota(replace(explicit, reduced_size="max_quota"), 10) == 150  # every class the low tier's quota
    assert equal_quota(replace(explicit, reduced_size="max_quota", equal_quota=12), 10) == 12  # explicit overrides
    budget = SelectionConfig(equal_quotas=True, budget=95, medium_ratio=0.5, high_ratio=0.5)
    assert equal_quota(budget, 10) == round(9.5) == 10  # rounded half to even
    assert equal_quota(replace(budget, reduced_size="max_quota"), 10) == max(class_quotas(budget, 10))
    # An empty low tier: the largest quota of a tier that has classes.
    no_low = SelectionConfig(low_fraction=0.0, quota_low=500, reduced_size="max_quota", equal_quotas=True)
    assert equal_quota(no_low, 10) == 100


def test_reduced_plan_follows_reduced_size() -> None:
    m = searched(150)
    plan = plan_selection(m, R10, SelectionConfig(equal_quotas=True, reduced_size="max_quota"))
    assert plan.quota == (150,) * 10 and plan.tier == ("equal",) * 10 and len(plan.rows) == 1500
    assert field_of(check_selection, SelectionConfig(equal_quotas=True, reduced_size="max_quota"), 10,
                    (149,) * 10) == "selection.equal_quota"
    check_selection(SelectionConfig(equal_quotas=True), 10, (149,) * 10)  # 109 fits


def test_reduced_at_budget_is_shared_by_every_spread_of_one_budget() -> None:
    a = reduced_at_budget(SelectionConfig(budget=95, medium_ratio=0.1, high_ratio=0.9), 10)
    b = reduced_at_budget(SelectionConfig(budget=95, medium_ratio=1.0, high_ratio=0.0, high_fraction=0.1), 10)
    assert a == b and a.equal_quotas and equal_quota(a, 10) == 10
    # Explicit quotas: the FL total; equal_quota and reduced_size of the trial do not matter.
    c = reduced_at_budget(SelectionConfig(equal_quota=3, reduced_size="max_quota"), 10)
    assert equal_quota(c, 10) == 109
    # What changes the baseline's examples stays: seed, directions, strength.
    assert reduced_at_budget(SelectionConfig(budget=95, seed=4), 10).seed == 4
    assert reduced_at_budget(SelectionConfig(budget=95, seed=4), 10) != a
    # A budget too small to give every class a sample: zero quotas, not an error.
    tiny = reduced_at_budget(SelectionConfig(budget=4), 10)
    assert equal_quota(tiny, 10) == 0
    check_selection(tiny, 10, samples_per_class(40, 10))


# ---------------------------------------------------------------- metric names


class FakeReport:
    """An EvalReport stand-in: metrics(prefix) as the real one names them."""

    def __init__(self, values: dict[str, float]):
        self.values = values

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.values.items()}


@pytest.mark.parametrize("margins_after", [True, False])
def test_metric_names_list_the_reduced_baseline(margins_after: bool) -> None:
    cfg = FLConfig(eval=FLEvalConfig(margins_after=margins_after))
    names = metric_names(cfg)
    assert len(set(names)) == len(names)
    assert {f"{REDUCED}_val_min_acc", f"{REDUCED}_val_clean_acc", f"{REDUCED}_n_generated",
            f"{VS_REDUCED}_val_min_acc"} <= set(names)
    assert ({f"{REDUCED}_R", f"{REDUCED}_R_spread", f"{VS_REDUCED}_R", f"{VS_REDUCED}_R_spread"} <= set(names)) == margins_after
    assert not any(n.startswith(f"{REDUCED}_test") for n in names), "test-split numbers stay out of the baseline's metrics"
    assert {"val_min_acc", "n_generated", "base_R"} <= set(names)  # the trial's own names are kept


def test_comparison_metrics_give_the_baseline_and_the_differences() -> None:
    stats = margin_stats(Margins(torch.tensor([[0.1, 0.3], [0.2, 0.5]]), torch.tensor([[1, 1], [0, NA]]),
                                 torch.tensor([0, 1]), torch.arange(2), 0.02, 0.5, "exact", 0, 0.0), 2)
    trial = {s: FakeReport({"clean_acc": 0.9, "min_acc": 0.5}) for s in ("val", "test")}
    reduced = ReducedBaseline({s: FakeReport({"clean_acc": 0.8, "min_acc": 0.375}) for s in ("val", "test")}, 12, stats)
    out = comparison_metrics(trial, trial, trial, stats, 20, stats, reduced)
    assert out[f"{REDUCED}_val_min_acc"] == 0.375 and out[f"{REDUCED}_n_generated"] == 12.0
    assert out[f"{VS_REDUCED}_val_min_acc"] == 0.5 - 0.375
    assert out[f"{VS_REDUCED}_R"] == 0.0 and out[f"{REDUCED}_R"] == out["R"]
    assert f"{REDUCED}_test_min_acc" not in out
    without = comparison_metrics(trial, trial, trial, stats, 20, None, SimpleNamespace(**{**reduced.__dict__, "after": None}))
    assert f"{REDUCED}_R" not in without and f"{VS_REDUCED}_R" not in without
