"""The metrics of one feedback-learning comparison, named here only.

A retrained model (FL or reduced FL) is reported beside the original model
and the control (the original retrained on its own images): its accuracies
under the FL suite on each split, the original's margin statistics (R and
the spread of R_i), the number of generated examples, the original's and
the control's validation accuracies, and, when the retrained model is
searched again (`eval.margins_after`), its own R and spread.
`metric_names(cfg)` lists every name `comparison_metrics` gives for that
config, so a tracker knows them before anything runs.
"""

from __future__ import annotations

from typing import Mapping, Optional

from cnnf.report import EvalReport
from fl.config import FLConfig
from fl.pipeline import fl_suites
from fl.stats import MarginStats, r_spread

SPLITS = ("val", "test")  # the first split also runs the integrity checks (fl.pipeline.fl_suites)


def comparison_metrics(reports: Mapping[str, EvalReport], base: Mapping[str, EvalReport], control: Mapping[str, EvalReport],
                       base_stats: MarginStats, n_generated: int, after: Optional[MarginStats] = None) -> dict[str, float]:
    """reports / base / control: the retrained model's, the original's and the
    control's evaluations by split (SPLITS); base_stats: the original's margins;
    after: the retrained model's own margins, if it was searched again."""
    out: dict[str, float] = {}
    for split in SPLITS:
        out.update(reports[split].metrics(f"{split}_"))
    out.update({"base_R": base_stats.robustness, "base_R_spread": r_spread(base_stats.class_robustness),
                "n_generated": float(n_generated)})
    for who, evaluated in (("base", base), ("control", control)):
        out.update({f"{who}_{k}": v for k, v in evaluated["val"].metrics("val_").items() if k.endswith("_acc")})
    if after is not None:
        out.update({"R": after.robustness, "R_spread": r_spread(after.class_robustness)})
    return out


def metric_names(cfg: FLConfig) -> tuple[str, ...]:
    """Every name `comparison_metrics` gives for a comparison run with cfg."""
    suites = fl_suites(cfg, SPLITS)
    names = [n for split in SPLITS for n in suites[split].metric_names(f"{split}_")]
    names += ["base_R", "base_R_spread", "n_generated"]
    val_acc = [n for n in suites["val"].metric_names("val_") if n.endswith("_acc")]
    names += [f"{who}_{n}" for who in ("base", "control") for n in val_acc]
    if cfg.eval.margins_after:
        names += ["R", "R_spread"]
    return tuple(names)
