"""Optuna's plots for a sweep's parent run, drawn from a real journal file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.searchers import open_study
from tuning.study_plots import CONTOUR, HISTORY, IMPORTANCES, plot_study


def _study(journal: Path, n: int, modes: list[str], only_step_size: bool = False) -> None:
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    study = open_study(journal, "s", modes)
    dists = {"model.ind": IntDistribution(0, 2), "model.step_size": FloatDistribution(0.05, 0.2), "train.lr": FloatDistribution(1e-3, 1e-1)}
    for i in range(n):
        params = {"model.ind": 1 if only_step_size else i % 3, "model.step_size": 0.05 + 0.01 * i,
                  "train.lr": 0.01 if only_step_size else 0.1 - 0.009 * i}
        values = [0.5 + 0.02 * i + 0.01 * params["model.ind"], 0.3 - 0.01 * i][: len(modes)]
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values))


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.parametrize("modes", [["max"], ["max", "min"]])
def test_history_importances_and_contour_of_the_two_top_knobs(tmp_path: Path, modes: list[str]) -> None:
    _study(tmp_path / "j", 8, modes)
    files = plot_study(tmp_path / "j", "s", ["val_acc", "R_spread"][: len(modes)], modes, tmp_path)
    assert [f.name for f in files] == [HISTORY, IMPORTANCES, CONTOUR]
    assert all(_is_png(f) for f in files)


def test_what_the_study_cannot_support_is_left_out(tmp_path: Path) -> None:
    _study(tmp_path / "one", 1, ["max"])
    assert plot_study(tmp_path / "one", "s", ["val_acc"], ["max"], tmp_path) == []  # one trial: no history to draw
    _study(tmp_path / "j", 6, ["max"], only_step_size=True)
    # one knob varied: its importance, but no contour of two
    names = [f.name for f in plot_study(tmp_path / "j", "s", ["val_acc"], ["max"], tmp_path)]
    assert names == [HISTORY, IMPORTANCES]
