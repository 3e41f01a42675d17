"""fl.select: robustness tiers, per-class quotas (FL and reduced FL), the
checks that reject impossible settings, and example generation past the
measured boundary (checked against a linear classifier, where every example
1.5-2x past the first flip is still misclassified)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from cnnf.config import ConfigError
from fl.config import (SearchConfig, SelectionConfig, check_selection, class_quotas, equal_quota, samples_per_class,
                        tier_sizes)
from fl.directions import orthogonal_directions
from fl.search import NA, Margins, scan
from fl.select import SelectionPlan, generate, plan_selection
from fl.stats import margin_stats
from tests.fl.test_search import balanced_points, linear_classifier, predicted

# R_i of 10 classes; by descending R_i: 1, 4 | 9, 6, 2 | 5, 7, 0, 8, 3.
R10 = torch.tensor([0.5, 3.0, 1.0, 0.2, 2.5, 0.9, 1.1, 0.8, 0.3, 1.5], dtype=torch.float64)
ORDER10 = (1, 4, 9, 6, 2, 5, 7, 0, 8, 3)


# ---------------------------------------------------------------- helpers


def field_of(fn, *args) -> str:
    """The field a ConfigError names."""
    with pytest.raises(ConfigError) as e:
        fn(*args)
    return e.value.field


def searched(per_class: int, n_classes: int = 10) -> Margins:
    """Margins of per_class searched samples of each class (1 direction, nothing flipped)."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    n = len(labels)
    return Margins(torch.full((n, 2), 0.5), torch.full((n, 2), NA), labels, torch.arange(n), 0.02, 0.5, "exact", 0, 0.0)


def per_class(plan: SelectionPlan, m: Margins, n_classes: int = 10) -> list[int]:
    return torch.bincount(m.labels[plan.rows], minlength=n_classes).tolist()


def hand_margins(margin: list[list[float]], adjacent: list[list[int]], labels: list[int]) -> Margins:
    n = len(labels)
    return Margins(torch.tensor(margin), torch.tensor(adjacent), torch.tensor(labels), torch.arange(n), 0.02, 0.5,
                   "exact", 0, 0.0)


def plan_all(n: int) -> SelectionPlan:
    """A plan that takes rows 0..n-1."""
    return SelectionPlan((0,), ("equal",), (n,), torch.arange(n))


# ---------------------------------------------------------------- tiers and quotas


def test_default_tiers_and_quotas_for_ten_classes() -> None:
    cfg = SelectionConfig()
    assert tier_sizes(cfg, 10) == (2, 3, 5)
    assert class_quotas(cfg, 10) == (20,) * 2 + (100,) * 3 + (150,) * 5
    assert equal_quota(cfg, 10) == 109  # (2 * 20 + 3 * 100 + 5 * 150) / 10 = 109.0
    assert equal_quota(SelectionConfig(equal_quota=37), 10) == 37
    assert equal_quota(SelectionConfig(quota_high=1, quota_medium=2, quota_low=2), 10) == 2  # 1.8 rounds to 2


@pytest.mark.parametrize("n_classes, sizes", [(3, (1, 0, 2)), (4, (1, 1, 2)), (5, (1, 2, 2)), (100, (20, 30, 50))])
def test_tier_sizes_round_the_fractions(n_classes: int, sizes: tuple[int, int, int]) -> None:
    assert tier_sizes(SelectionConfig(), n_classes) == sizes
    assert sum(sizes) == n_classes


def test_plan_assigns_tiers_by_descending_class_robustness() -> None:
    m = searched(150)
    plan = plan_selection(m, R10, SelectionConfig())
    assert plan.order == ORDER10
    tier = dict(zip(range(10), plan.tier))
    assert {c for c, t in tier.items() if t == "high"} == {1, 4}
    assert {c for c, t in tier.items() if t == "medium"} == {9, 6, 2}
    assert {c for c, t in tier.items() if t == "low"} == {5, 7, 0, 8, 3}
    want = {"high": 20, "medium": 100, "low": 150}
    assert plan.quota == tuple(want[t] for t in plan.tier)
    assert per_class(plan, m) == list(plan.quota)
    assert plan.rows.tolist() == sorted(set(plan.rows.tolist()))
    assert len(plan.rows) == 2 * 20 + 3 * 100 + 5 * 150


def test_plan_ranks_inf_first_and_breaks_ties_by_class() -> None:
    r = torch.tensor([1.0, 1.0, math.inf, 0.5], dtype=torch.float64)
    plan = plan_selection(searched(4, 4), r, SelectionConfig(quota_high=1, quota_medium=2, quota_low=3))
    assert plan.order == (2, 0, 1, 3)
    # 4 classes: round(0.8) = 1 high, round(2.0) = 2 low, 1 medium.
    assert plan.tier == ("medium", "low", "high", "low")
    assert plan.quota == (2, 3, 1, 3)


def test_plan_is_seeded() -> None:
    m = searched(150)
    a, b = plan_selection(m, R10, SelectionConfig()), plan_selection(m, R10, SelectionConfig())
    assert torch.equal(a.rows, b.rows)
    other = plan_selection(m, R10, SelectionConfig(seed=1))
    assert per_class(other, m) == per_class(a, m) and not torch.equal(other.rows, a.rows)


def test_reduced_fl_gives_every_class_the_same_quota() -> None:
    m = searched(150)
    plan = plan_selection(m, R10, SelectionConfig(equal_quotas=True))
    assert plan.tier == ("equal",) * 10 and plan.quota == (109,) * 10
    assert per_class(plan, m) == [109] * 10
    assert len(plan.rows) == 1090 == sum(class_quotas(SelectionConfig(), 10))  # as many as FL
    fixed = plan_selection(m, R10, SelectionConfig(equal_quotas=True, equal_quota=50))
    assert fixed.quota == (50,) * 10 and per_class(fixed, m) == [50] * 10


def test_plan_rejects_a_quota_beyond_the_searched_samples() -> None:
    with pytest.raises(ConfigError, match="class 0 needs 150 samples but only 10"):
        plan_selection(searched(10), R10, SelectionConfig())


def test_plan_as_dict() -> None:
    d = plan_selection(searched(150), R10, SelectionConfig()).as_dict()
    assert d["order"] == list(ORDER10) and len(d["rows"]) == 1090 and d["tier"][1] == "high"


# ---------------------------------------------------------------- checks


def test_check_selection_accepts_the_defaults() -> None:
    check_selection(SelectionConfig(), 10, samples_per_class(1500, 10))
    check_selection(SelectionConfig(equal_quotas=True), 10, (109,) * 10)


@pytest.mark.parametrize("cfg, available, field", [
    (SelectionConfig(), 149, "selection.quota_low"),
    # Quotas never grow with robustness: a medium or high quota is the binding one only when the tiers
    # below it are empty (and their quota, unused, is at least as large).
    (SelectionConfig(low_fraction=0.0, quota_medium=120, quota_low=120), 100, "selection.quota_medium"),
    (SelectionConfig(high_fraction=1.0, low_fraction=0.0, quota_high=200, quota_medium=200, quota_low=200), 150,
     "selection.quota_high"),
    (SelectionConfig(equal_quotas=True), 108, "selection.equal_quota"),
    (SelectionConfig(equal_quotas=True, equal_quota=151), 150, "selection.equal_quota"),
], ids=["low", "medium", "high", "equal-default", "equal-set"])
def test_check_selection_rejects_a_quota_beyond_the_available_samples(cfg: SelectionConfig, available: int,
                                                                      field: str) -> None:
    assert field_of(check_selection, cfg, 10, (available + 5,) * 9 + (available,)) == field


def test_check_selection_rejects_an_empty_tier_with_a_quota() -> None:
    # 0.04 of 10 classes rounds to 0 high classes, yet quota_high is 20.
    assert field_of(check_selection, SelectionConfig(high_fraction=0.04), 10, (150,) * 10) == "selection.high_fraction"
    assert field_of(check_selection, SelectionConfig(low_fraction=0.04), 10, (150,) * 10) == "selection.low_fraction"
    # No quota, or a fraction of 0 on purpose: fine.
    check_selection(SelectionConfig(high_fraction=0.04, quota_high=0), 10, (150,) * 10)
    check_selection(SelectionConfig(high_fraction=0.0), 10, (150,) * 10)


def test_check_selection_rejects_overlapping_tiers() -> None:
    # 3 classes: round(1.5) = 2 high and 2 low.
    cfg = SelectionConfig(high_fraction=0.5, low_fraction=0.5)
    assert tier_sizes(cfg, 3)[0] + tier_sizes(cfg, 3)[2] == 4
    assert field_of(check_selection, cfg, 3, (150,) * 3) == "selection.low_fraction"


def test_selection_config_rejects_an_empty_strength_range() -> None:
    assert field_of(SelectionConfig, 0.2, 0.5, 20, 100, 150, 40, 2.0, 1.5) == "strength_max"
    with pytest.raises(ConfigError, match="strength_min 2.0 > strength_max 1.5"):
        SelectionConfig(strength_min=2.0, strength_max=1.5)
    SelectionConfig(strength_min=1.5, strength_max=1.5)  # a single strength is allowed


# ---------------------------------------------------------------- generation


def test_generate_hand_computed_examples() -> None:
    """x = 0 in 4 dimensions, directions 2 e_i (norm sqrt(4)); flipped columns
    +e0 at 0.1, -e1 at 0.04, +e2 at 0.3. Two directions per sample at strength
    1.5: -e1 and +e0, moved 1.5 x margin pixels = 2 x 1.5 x margin input units
    per unit of per-pixel RMS."""
    m = hand_margins([[0.1, 0.5, 0.3, 0.5, 0.5, 0.04, 0.5, 0.5], [0.5] * 8],
                     [[1, NA, 2, NA, NA, 1, NA, NA], [NA] * 8], [0, 1])
    x = torch.zeros(2, 4)
    cfg = SelectionConfig(directions_per_sample=2, strength_min=1.5, strength_max=1.5)
    out = generate(x, m, 2 * torch.eye(4), plan_all(2), cfg)
    want = torch.tensor([[0.0, -2 * 1.5 * 0.04 * 2, 0, 0], [2 * 1.5 * 0.1 * 2, 0, 0, 0]])
    torch.testing.assert_close(out.x, want, rtol=1e-6, atol=1e-7)
    assert out.y.tolist() == [0, 0], "the sample's true label; sample 1 never flipped and gives nothing"


def test_generate_keeps_the_sample_shape_and_clips_when_asked() -> None:
    m = hand_margins([[0.5, 0.4]], [[1, 1]], [0])
    x = torch.full((1, 1, 2, 2), 0.9)
    d = torch.full((1, 4), 1.0)  # norm 2 = sqrt(4)
    out = generate(x, m, d, plan_all(1), SelectionConfig())
    assert out.x.shape == (2, 1, 2, 2) and out.x.max() > 1.0
    clipped = generate(x, m, d, plan_all(1), SelectionConfig(), clip=True)
    assert torch.equal(clipped.x, out.x.clamp(-1.0, 1.0)) and torch.equal(clipped.y, out.y)


def test_generate_with_nothing_flipped_is_empty() -> None:
    m = hand_margins([[0.5, 0.5]], [[NA, NA]], [3])
    out = generate(torch.zeros(1, 1, 2, 2), m, torch.ones(1, 4), plan_all(1), SelectionConfig())
    assert out.x.shape == (0, 1, 2, 2) and out.y.shape == (0,) and out.y.dtype == torch.int64


class Generated:
    """Generation on a searched linear classifier: 4 classes, 3 samples each,
    8 orthogonal directions in 8 dimensions."""

    def __init__(self, directions_per_sample: int = 3, seed: int = 0, strength: tuple[float, float] = (1.5, 2.0),
                 quotas: tuple[int, int, int] = (1, 2, 3)):
        self.model, _ = linear_classifier((8,), 4)
        data = balanced_points(self.model, (8,), 4, per_class=3)
        self.x, self.directions = data.x, orthogonal_directions(8, 8, seed=0)
        # Unclipped: the points lie outside the pixel range, and the boundary geometry below is the unclipped walk's.
        self.margins = scan(self.model, data.x, data.y, self.directions, SearchConfig(device="cpu", clip=False))
        self.cfg = SelectionConfig(high_fraction=0.25, low_fraction=0.5, quota_high=quotas[0], quota_medium=quotas[1],
                                   quota_low=quotas[2], directions_per_sample=directions_per_sample,
                                   strength_min=strength[0], strength_max=strength[1], seed=seed)
        self.plan = plan_selection(self.margins, margin_stats(self.margins, 4).class_robustness, self.cfg)
        self.out = generate(self.x, self.margins, self.directions, self.plan, self.cfg)

    def per_sample(self) -> list[tuple[int, Tensor, Tensor]]:
        """(row, its examples, their labels), in plan order: min(flipped, directions_per_sample) each."""
        parts, at = [], 0
        for r in self.plan.rows.tolist():
            n = min(int(self.margins.flipped[r].sum()), self.cfg.directions_per_sample)
            parts.append((r, self.out.x[at : at + n], self.out.y[at : at + n]))
            at += n
        assert at == len(self.out.y), "examples beyond min(flipped, directions_per_sample) per sample"
        return parts


@pytest.fixture(scope="module")
def generated() -> Generated:
    return Generated()


def test_generate_takes_the_smallest_margin_flipped_directions(generated: Generated) -> None:
    g = generated
    assert len(g.plan.rows) == 1 + 2 + 3 + 3
    signed = g.margins.signed_directions(g.directions)
    n_flipped = g.margins.flipped[g.plan.rows].sum(1)
    assert (n_flipped > g.cfg.directions_per_sample).any(), "some sample must have more flipped directions than taken"
    for r, ex, y in g.per_sample():
        assert (y == g.margins.labels[r]).all()
        offset = ex - g.x[r]
        cos = (offset @ signed.T) / (offset.norm(dim=1, keepdim=True) * math.sqrt(8))
        col = cos.argmax(1)
        assert (cos.max(1).values > 1 - 1e-5).all(), "each example lies along one signed direction"
        assert len(set(col.tolist())) == len(col)
        assert g.margins.flipped[r, col].all()
        flipped_margins = g.margins.margin[r, g.margins.flipped[r]].sort().values
        assert torch.equal(g.margins.margin[r, col].sort().values, flipped_margins[: len(col)])


def test_generated_examples_lie_at_the_strength_range_times_the_margin(generated: Generated) -> None:
    g = generated
    signed = g.margins.signed_directions(g.directions)
    ratios = []
    for r, ex, _ in g.per_sample():
        offset = ex - g.x[r]
        col = (offset @ signed.T).argmax(1)
        # ||offset|| / sqrt(dim) is per-pixel RMS in input units; / 2 gives pixel units.
        ratios.append(offset.norm(dim=1) / math.sqrt(8) / 2 / g.margins.margin[r, col])
    ratio = torch.cat(ratios)
    assert len(ratio) >= 15
    assert ratio.min() >= 1.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5
    assert ratio.std() > 0.05, "strengths are drawn uniformly, not fixed"


def test_generated_examples_cross_the_linear_boundary(generated: Generated) -> None:
    g = generated
    assert len(g.out.y) > 0
    assert (predicted(g.model, g.out.x) != g.out.y).all()


def test_generation_is_seeded(generated: Generated) -> None:
    again = Generated()
    assert torch.equal(again.out.x, generated.out.x) and torch.equal(again.out.y, generated.out.y)
    other = Generated(seed=5)
    assert not torch.equal(other.out.x, generated.out.x)
    # The same plan with another seed: the same directions at other strengths.
    g = generated
    reseeded = generate(g.x, g.margins, g.directions, g.plan, replace(g.cfg, seed=5))
    assert torch.equal(reseeded.y, g.out.y) and not torch.equal(reseeded.x, g.out.x)


def test_one_direction_per_sample() -> None:
    g = Generated(directions_per_sample=1, strength=(2.0, 2.0))
    assert len(g.out.y) == int((g.margins.flipped[g.plan.rows].sum(1) > 0).sum())
    for r, ex, _ in g.per_sample():
        if len(ex):
            smallest = g.margins.margin[r, g.margins.flipped[r]].min()
            # Exactly 2 x the smallest margin.
            torch.testing.assert_close((ex - g.x[r]).norm() / math.sqrt(8) / 2, 2 * smallest, rtol=1e-5, atol=1e-6)
