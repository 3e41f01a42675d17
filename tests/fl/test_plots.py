"""The figures of margin statistics are written as PNGs and refuse empty input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.search import NA, Margins
from fl.stats import margin_stats

PNG = b"\x89PNG"


def stats():
    adjacent = torch.tensor([[1, NA, 2, 1], [0, 0, NA, NA], [NA, NA, NA, NA]])
    margin = torch.tensor([[0.1, 0.5, 0.2, 0.3], [0.2, 0.4, 0.5, 0.5], [0.5] * 4])
    m = Margins(margin, adjacent, torch.tensor([0, 1, 2]), torch.arange(3), 0.02, 0.5, "exact", 0, 0.0)
    return margin_stats(m, 3)


def test_margin_heatmap_and_class_robustness_write_pngs(tmp_path: Path) -> None:
    s = stats()
    assert math.isinf(float(s.class_robustness[2]))  # class 2 never flipped: drawn capped and marked
    for fn, name in ((margin_heatmap, "heat.png"), (class_robustness, "bars.png")):
        out = fn([("before", s), ("after", s)], tmp_path / "sub" / name, title="t")
        assert out.read_bytes()[:4] == PNG
        with pytest.raises(ValueError, match="no statistics"):
            fn([], tmp_path / "none.png")


def test_class_centres_writes_a_png_with_one_panel_per_class(tmp_path: Path) -> None:
    images = torch.rand(3, 1, 28, 28) * 2 - 1
    out = class_centres(images, [("Ori", [0.1, 0.2, 0.3]), ("FL", [0.2, 0.3, 0.4])], tmp_path / "c.png")
    assert out.read_bytes()[:4] == PNG
    with pytest.raises(ValueError, match="no images"):
        class_centres(images[:0], [("Ori", [])], tmp_path / "e.png")
