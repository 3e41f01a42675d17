"""Figures of margin statistics (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
from torch import Tensor

from cnnf.plots import agg_figure
from fl.stats import MarginStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def margin_heatmap(stats: Sequence[tuple[str, MarginStats]], path: str | Path, *, title: Optional[str] = None) -> Path:
    """Mean margin per (origin class, adjacent class), one panel per model,
    on a shared colour scale; cells with no search are blank, each cell shows
    the mean margin and its count. Writes a PNG and returns its path."""
    if not stats:
        raise ValueError("margin_heatmap: no statistics to plot")
    n = len(stats)
    fig = agg_figure((5.2 * n, 4.8))
    top = max(s.max_margin for _, s in stats)
    for i, (name, s) in enumerate(stats):
        ax = fig.add_subplot(1, n, i + 1)
        mean = s.mean.numpy()
        image = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=0.0, vmax=top)
        c = s.n_classes
        for a in range(c):
            for b in range(c):
                if s.counts[a, b] > 0 and c <= 12:
                    ax.text(b, a, f"{mean[a, b]:.2f}\n{int(s.counts[a, b])}", ha="center", va="center", fontsize=5,
                            color="white" if mean[a, b] < 0.6 * top else "black")
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xlabel("adjacent class")
        ax.set_ylabel("origin class")
        ax.set_title(f"{name}: R = {s.robustness:.2f}", fontsize="medium")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean margin (pixel units)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def class_robustness(stats: Sequence[tuple[str, MarginStats]], path: str | Path, *, title: Optional[str] = None) -> Path:
    """R_i per class, one bar per model, with the R_i = 1 line (robust above,
    vulnerable below); an infinite R_i (no search from the class flipped) is
    drawn at the top of the axis and marked."""
    if not stats:
        raise ValueError("class_robustness: no statistics to plot")
    fig = agg_figure((7.0, 4.0))
    ax = fig.add_subplot()
    c = stats[0][1].n_classes
    finite = [v for _, s in stats for v in s.class_robustness.tolist() if math.isfinite(v)]
    cap = 1.15 * max(finite + [1.0])
    width = 0.8 / len(stats)
    for i, (name, s) in enumerate(stats):
        values = [v if math.isfinite(v) else cap for v in s.class_robustness.tolist()]
        xs = np.arange(c) + (i - (len(stats) - 1) / 2) * width
        ax.bar(xs, values, width, label=name)
        for x, v in zip(xs, s.class_robustness.tolist()):
            if not math.isfinite(v):
                ax.text(x, cap, "∞", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(c))
    ax.set_xlabel("class")
    ax.set_ylabel("class robustness R_i")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def class_centres(images: Tensor, margins: Sequence[tuple[str, Sequence[float]]], path: str | Path, *,
                  title: Optional[str] = None) -> Path:
    """The class-centre images (one per class, input units [-1, 1]) with their
    mean margin under each model in the caption, e.g. "0: 0.41 → 0.47"."""
    n = len(images)
    if n == 0:
        raise ValueError("class_centres: no images to plot")
    fig = agg_figure((max(1.3, 0.4 * len(margins) + 0.5) * n, 1.9))
    for c in range(n):
        ax = fig.add_subplot(1, n, c + 1)
        img = images[c].detach().cpu().float()
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
        ax.imshow(((img + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"{c}: " + " → ".join(f"{m[c]:.2f}" for _, m in margins), fontsize=7)
    names = " → ".join(name for name, _ in margins)
    fig.suptitle(title or f"class-centre images, mean margin ({names})", fontsize=8)
    return _save(fig, path)
