"""fl.stats: the mean margin matrix, robustness R and R_i, the adjacent-class
shares and class centres on hand-built margins whose statistics are worked
out by hand below."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from fl.search import NA, Margins
from fl.stats import margin_stats, r_spread


def margins(margin: list[list[float]], adjacent: list[list[int]], labels: list[int], max_margin: float = 0.5) -> Margins:
    n = len(labels)
    return Margins(torch.tensor(margin), torch.tensor(adjacent), torch.tensor(labels), torch.arange(n), step=0.02,
                   max_margin=max_margin, mode="exact", forward_passes=0, seconds=0.0)


def hand_margins() -> Margins:
    """3 classes, 4 samples, 2 directions (4 signed columns).

    class 0 -> 1: 0.1, 0.3, 0.2 (mean 0.2, 3 searches); 0 -> 2: 0.2, 0.4 (mean 0.3, 2);
    1 -> 0: 0.04, 0.08 (mean 0.06, 2); class 2 never flips. N/A: 3 from class 0,
    2 from class 1, 4 from class 2.
    """
    return margins(
        margin=[[0.1, 0.3, 0.2, 0.5], [0.2, 0.5, 0.5, 0.4], [0.04, 0.08, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]],
        adjacent=[[1, 1, 2, NA], [1, NA, NA, 2], [0, 0, NA, NA], [NA, NA, NA, NA]],
        labels=[0, 0, 1, 2],
    )


def close(t: Tensor, want: list) -> None:
    torch.testing.assert_close(t.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-7, equal_nan=True)


NAN = math.nan


def test_mean_margin_matrix_and_counts() -> None:
    s = margin_stats(hand_margins(), 3)
    assert s.counts.tolist() == [[0, 3, 2], [2, 0, 0], [0, 0, 0]]
    close(s.mean, [[NAN, 0.2, 0.3], [0.06, NAN, NAN], [NAN, NAN, NAN]])
    assert s.na_counts.tolist() == [3, 2, 4]
    assert int(s.counts.sum() + s.na_counts.sum()) == 16
    assert s.n_classes == 3 and s.max_margin == 0.5


def test_robustness_counts_empty_pairs_at_the_search_range() -> None:
    # 0.2 + 0.3 + 0.06 measured; (1, 2), (2, 0), (2, 1) never reached: 0.5 each.
    s = margin_stats(hand_margins(), 3)
    assert s.robustness == pytest.approx(0.2 + 0.3 + 0.06 + 3 * 0.5)
    # A larger range raises exactly the unreached pairs.
    wide = margin_stats(margins(hand_margins().margin.tolist(), hand_margins().adjacent.tolist(), [0, 0, 1, 2], 1.0), 3)
    assert wide.robustness == pytest.approx(0.2 + 0.3 + 0.06 + 3 * 1.0)


def test_class_robustness_is_margin_into_over_margin_out_of() -> None:
    s = margin_stats(hand_margins(), 3)
    # R_0 = (0.06 * 2) / (0.2 * 3 + 0.3 * 2); R_1 = (0.2 * 3) / (0.06 * 2); class 2 never flipped: inf.
    close(s.class_robustness, [0.12 / 1.2, 0.6 / 0.12, math.inf])
    assert s.class_robustness[0] < 1 < s.class_robustness[1]


def test_class_robustness_is_zero_for_a_class_nothing_reaches() -> None:
    m = margins([[0.1, 0.5], [0.5, 0.5]], [[1, NA], [NA, NA]], [0, 1])
    s = margin_stats(m, 2)
    close(s.class_robustness, [0.0, math.inf])


def test_adjacent_share_sums_to_one_with_na_last() -> None:
    s = margin_stats(hand_margins(), 3)
    # 16 searches end in class 0 (2), class 1 (3), class 2 (2) or nowhere (9).
    close(s.adjacent_share, [2 / 16, 3 / 16, 2 / 16, 9 / 16])
    assert float(s.adjacent_share.sum()) == pytest.approx(1.0)
    assert len(s.adjacent_share) == 4


def test_class_centre_is_the_sample_with_the_largest_mean_margin() -> None:
    s = margin_stats(hand_margins(), 3)
    # Class 0: sample 0 averages 0.275, sample 1 averages 0.4 -> sample 1.
    assert s.centre.tolist() == [1, 2, 3]
    close(s.centre_margin, [0.4, (0.04 + 0.08 + 1.0) / 4, 0.5])


def test_a_class_without_samples_has_no_centre() -> None:
    s = margin_stats(margins([[0.1, 0.5]], [[2, NA]], [0]), 3)
    assert s.centre.tolist() == [0, -1, -1]
    assert math.isnan(s.centre_margin[1]) and math.isnan(s.centre_margin[2])
    assert s.counts.tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_as_dict_is_plain() -> None:
    d = margin_stats(hand_margins(), 3).as_dict()
    assert d["R_i"][2] == "inf" and d["mean"][0][0] is None and d["counts"][0] == [0, 3, 2]
    assert d["R"] == pytest.approx(2.06) and d["centre"] == [1, 2, 3]
    json.dumps(d)  # serialisable as is


def test_r_spread() -> None:
    # The population std of log10 R_i: two classes a factor 50 apart are log10(50) / 2 decades from their mean.
    assert r_spread(torch.tensor([0.1, 5.0, math.inf], dtype=torch.float64)) == pytest.approx(math.log10(50) / 2)
    # Classes that nothing reaches (0) or that never flipped (inf) are left out.
    assert r_spread(torch.tensor([0.0, 2.0, 4.0, math.inf])) == pytest.approx(math.log10(2) / 2)
    assert r_spread(torch.tensor([1.5, 1.5])) == pytest.approx(0.0)
    assert r_spread(torch.tensor([1.0, 10.0, 100.0])) == pytest.approx(math.sqrt(2 / 3))
    assert math.isnan(r_spread(torch.tensor([math.inf, 0.0])))
    assert r_spread(margin_stats(hand_margins(), 3).class_robustness) == pytest.approx(math.log10(50) / 2)
