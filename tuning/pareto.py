"""The Pareto front of a multi-objective sweep, and its plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from tuning.tracking import TrialRecord


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b in every objective and better in one."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    at_least = all(s * x >= s * y for s, x, y in zip(sign, a, b))
    better = any(s * x > s * y for s, x, y in zip(sign, a, b))
    return at_least and better


def pareto_front(records: Sequence[TrialRecord], metrics: Sequence[str], modes: Sequence[str]) -> list[TrialRecord]:
    """The complete trials that no other complete trial dominates."""
    points = [(r, [r.metrics[m] for m in metrics]) for r in records
              if r.complete and all(m in r.metrics and math.isfinite(r.metrics[m]) for m in metrics)]
    return [r for r, v in points if not any(dominates(w, v, modes) for _, w in points)]


def plot_pareto(records: Sequence[TrialRecord], front: Sequence[TrialRecord], metrics: Sequence[str], modes: Sequence[str],
                path: Path) -> bool:
    """Every complete trial in objective space, the front highlighted; one
    panel per pair of objectives. Returns False when nothing can be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.complete and all(m in r.metrics for m in metrics)]
    if not done or len(metrics) < 2:
        return False
    pairs = [(i, j) for i in range(len(metrics)) for j in range(i + 1, len(metrics))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    on_front = {r.run_id for r in front}
    for ax, (i, j) in zip(axes[0], pairs):
        mx, my = metrics[i], metrics[j]
        rest = [r for r in done if r.run_id not in on_front]
        ax.scatter([r.metrics[mx] for r in rest], [r.metrics[my] for r in rest], color="tab:grey", label="dominated")
        best = sorted((r for r in done if r.run_id in on_front), key=lambda r: r.metrics[mx])
        ax.plot([r.metrics[mx] for r in best], [r.metrics[my] for r in best], "-o", color="tab:red", label="Pareto front")
        for r in done:
            ax.annotate(r.trial_id, (r.metrics[mx], r.metrics[my]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{mx} ({modes[i]})")
        ax.set_ylabel(f"{my} ({modes[j]})")
        ax.legend(fontsize=8)
    fig.suptitle(f"Pareto front: {len(front)} of {len(done)} trials (labels: trial numbers)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
