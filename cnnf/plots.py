"""Figures of evaluation reports, drawn with matplotlib's Agg canvas.

A `matplotlib.figure.Figure` is used directly (no pyplot), so plotting
changes no global backend or state and works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from cnnf.report import EvalReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def agg_figure(figsize: tuple[float, float]) -> "Figure":
    """A figure on matplotlib's Agg canvas (no pyplot state); matplotlib is
    imported here, on the first plot, not with the plotting modules."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


NORM_NAME = {"linf": "L∞", "l2": "L2", "none": "no norm"}


def accuracy_vs_eps(reports: Sequence[tuple[str, EvalReport]], path: str | Path, *, title: Optional[str] = None,
                    labels: Optional[Sequence[str]] = None) -> Path:
    """Accuracy (%) against budget for every curve of every (model name, report)
    (labels: only the curves of these attack labels); a band of ± std where the
    curve has a spread. Writes a PNG to `path` and returns it."""
    curves = [(name, c) for name, report in reports for c in report.curves if labels is None or c.label in labels]
    if not curves:
        names = ", ".join(name for name, _ in reports) or "none given"
        which = f" labelled {', '.join(labels)}" if labels is not None else ""
        raise ValueError(f"no accuracy-vs-eps curves{which} to plot: none of the reports ({names}) has them; "
                         "evaluate with an eps grid to get them")
    fig = agg_figure((6.4, 4.8))
    ax = fig.add_subplot()
    for name, c in curves:
        acc = [100 * a for a in c.acc]
        (line,) = ax.plot(c.eps, acc, marker="o", markersize=3, label=f"{name} · {c.label}")
        if any(s > 0 for s in c.std):
            ax.fill_between(c.eps, [a - 100 * s for a, s in zip(acc, c.std)], [a + 100 * s for a, s in zip(acc, c.std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    norms = " / ".join(dict.fromkeys(NORM_NAME.get(c.norm, c.norm) for _, c in curves))
    ax.set_xlabel(f"ε ({norms}, [0, 1] pixel units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
