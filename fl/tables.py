"""Markdown tables of margin statistics and of a feedback-learning run."""

from __future__ import annotations

from typing import Sequence

from cnnf.tables import _markdown, fl_table
from fl.stats import MarginStats, r_spread


def _num(v: float, digits: int = 2) -> str:
    return "∞" if v == float("inf") else "–" if v != v else f"{v:.{digits}f}"


def robustness_table(stats: Sequence[tuple[str, MarginStats]]) -> str:
    """R, the R_i spread, the N/A share and R_i per class, one column per model."""
    c = stats[0][1].n_classes
    rows = [["R"] + [_num(s.robustness) for _, s in stats],
            ["R_i spread (std of log10 R_i)"] + [_num(r_spread(s.class_robustness)) for _, s in stats],
            ["N/A share (%)"] + [_num(100 * float(s.adjacent_share[-1]), 1) for _, s in stats],
            ["Samples misclassified (of searched)"] + [f"{s.n_wrong} / {s.n_samples}" for _, s in stats]]
    rows += [[f"R_{i}"] + [_num(float(s.class_robustness[i])) for _, s in stats] for i in range(c)]
    return _markdown(["", *[name for name, _ in stats]], rows, right=tuple(range(1, len(stats) + 1))) + "\n"


def adjacent_share_table(stats: Sequence[tuple[str, MarginStats]]) -> str:
    """Share (%) of all searches that end in each adjacent class (paper Table I)."""
    c = stats[0][1].n_classes
    rows = [[str(j) if j < c else "N/A"] + [_num(100 * float(s.adjacent_share[j])) for _, s in stats] for j in range(c + 1)]
    return _markdown(["adjacent class", *[name for name, _ in stats]], rows, right=tuple(range(1, len(stats) + 1))) + "\n"


def centre_table(names: Sequence[str], margins: Sequence[Sequence[float]]) -> str:
    """Mean margin of each class-centre image under each model."""
    c = len(margins[0])
    rows = [[str(i)] + [_num(m[i], 3) for m in margins] for i in range(c)]
    return _markdown(["class", *names], rows, right=tuple(range(1, len(names) + 1))) + "\n"


__all__ = ["adjacent_share_table", "centre_table", "fl_table", "robustness_table"]
