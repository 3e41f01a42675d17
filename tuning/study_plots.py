"""Optuna's own plots of a sweep's study, for the parent run: the
optimisation history, the parameter importances and the contour of the two
most important parameters. They answer "which knob mattered" on the MLflow
page without code. With several objectives each plot reads the first one.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

HISTORY, IMPORTANCES, CONTOUR = "optuna_history.png", "optuna_importances.png", "optuna_contour.png"


def plot_study(journal: Path, sweep_id: str, metrics: list[str], modes: list[str], out_dir: Path) -> list[Path]:
    """Draw the plots the study supports into out_dir; returns their paths.

    The history needs two complete trials; the importances two complete
    trials and a parameter that varied; the contour two such parameters. A
    plot Optuna refuses is named on stderr and left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    from tuning.searchers import open_study

    study = open_study(journal, sweep_id, modes)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    target: Optional[Callable[[Any], float]] = (lambda t: t.values[0]) if len(metrics) > 1 else None
    named = {"target": target, "target_name": metrics[0]}
    varied = [p for p in sorted({p for t in complete for p in t.params}) if len({repr(t.params.get(p)) for t in complete}) > 1]
    out: list[Path] = []

    def draw(name: str, plot: Callable[[], Any]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
                plot()
            fig = plt.gcf()
            fig.set_size_inches(7, 5)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=110)
            out.append(out_dir / name)
        except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw for this study: said, left out
            print(f"optuna plot {name} left out: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            plt.close("all")

    vis = optuna.visualization.matplotlib
    draw(HISTORY, lambda: vis.plot_optimization_history(study, **named))
    if varied:
        draw(IMPORTANCES, lambda: vis.plot_param_importances(study, params=varied, **named))
    if len(varied) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = list(optuna.importance.get_param_importances(study, params=varied, target=target))
        draw(CONTOUR, lambda: vis.plot_contour(study, params=ranked[:2], **named))
    return out
