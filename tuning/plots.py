"""The per-trial figure (learning curves and final accuracies). Drawn in the
trial's own process (parallel with the other trials) for trials that run to
the end, by the driver's MLflow callback for trials stopped early."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuning.space import public_params

if TYPE_CHECKING:
    from tuning.kinds import ExperimentKind


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


TRIAL_PLOT = "trial.png"


def trial_title(config: dict[str, Any]) -> str:
    """'trial N: p=v, ...' from a trial's sampled config."""
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in public_params(config).items())
    return f"trial {config.get('_trial', '?')}: {params}"


def plot_trial(history: list[dict[str, float]], kind: ExperimentKind, title: str, note: str, path: Path) -> None:
    """Learning curves (per-epoch accuracies and loss) and the final accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h for h in history if any(k in h for k in kind.epoch_metrics)]
    final = history[-1] if history else {}
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(1, len(epochs) + 1))
    for key in (k for k in kind.epoch_metrics if k.endswith("_acc")):
        ys = [h.get(key, math.nan) for h in epochs]
        ax_curve.plot(xs, ys, marker="o", label=key)
    ax_curve.set_xlabel("epoch")
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.set_ylabel("accuracy")
    ax_curve.set_ylim(0, 1)
    if "train_loss" in kind.epoch_metrics:
        ax_loss = ax_curve.twinx()
        ax_loss.plot(xs, [h.get("train_loss", math.nan) for h in epochs], color="grey", linestyle="--", label="train_loss")
        ax_loss.set_ylabel("train loss")
        ax_loss.legend(loc="upper right")
    ax_curve.legend(loc="lower left")
    ax_curve.set_title("learning curves")
    bars = [(k, v) for k, v in final.items() if k.endswith("_acc") and k not in kind.epoch_metrics]
    ax_bar.barh([k for k, _ in bars], [v for _, v in bars], color=["tab:blue" if k.startswith("val_") else "tab:orange" for k, _ in bars])
    for i, (_, v) in enumerate(bars):
        ax_bar.text(v, i, f" {v:.3f}", va="center")
    ax_bar.set_xlim(0, 1.1)
    ax_bar.invert_yaxis()
    ax_bar.set_title("final accuracy (blue: validation, orange: test)")
    ax_bar.set_xlabel(note, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
