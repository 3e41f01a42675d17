"""The metrics of one feedback-learning comparison, named here only.

A retrained model (FL or reduced FL) is reported beside the original model
and the control (the original retrained on its own images): its accuracies
under the FL suite on each split, the original's margin statistics (R and
the spread of R_i), the number of generated examples, the original's and
the control's validation accuracies, and, when the retrained model is
searched again (`eval.margins_after`), its own R and spread.

Beside them, the reduced-FL baseline at the same budget (`REDUCED`, see
`fl.config.reduced_at_budget`): equal quotas choosing as many samples as
the trial's FL, so a quota sweep asks the paper's question, whether
compensating the inequality beats spreading the same samples evenly. It
gives `reduced_` + the validation accuracies, `reduced_n_generated` and,
with margins_after, `reduced_R` and `reduced_R_spread`; `vs_reduced_<m>` is
the trial's m minus the baseline's (for val_min_acc, R and R_spread).
`metric_names(cfg)` lists every name `comparison_metrics` gives for that
config, so a tracker knows them before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from cnnf.report import EvalReport
from fl.config import FLConfig
from fl.pipeline import fl_suites
from fl.stats import MarginStats, r_spread

SPLITS = ("val", "test")  # the first split also runs the integrity checks (fl.pipeline.fl_suites)
REDUCED = "reduced"  # prefix of the reduced-FL baseline at the trial's budget
VS_REDUCED = "vs_reduced"  # prefix of the trial's metric minus the baseline's
_COMPARED = ("val_min_acc", "R", "R_spread")  # the metrics given as a difference to the baseline


@dataclass(frozen=True)
class ReducedBaseline:
    """Reduced FL at the trial's budget, retrained and evaluated: its reports by
    split (SPLITS), its generated examples and, if searched again, its margins."""

    reports: Mapping[str, EvalReport]
    n_generated: int
    after: Optional[MarginStats] = None


def comparison_metrics(reports: Mapping[str, EvalReport], base: Mapping[str, EvalReport], control: Mapping[str, EvalReport],
                       base_stats: MarginStats, n_generated: int, after: Optional[MarginStats] = None,
                       reduced: Optional[ReducedBaseline] = None, heldout: Optional[MarginStats] = None,
                       base_heldout: Optional[MarginStats] = None) -> dict[str, float]:
    """reports / base / control: the retrained model's, the original's and the
    control's evaluations by split (SPLITS); base_stats: the original's margins;
    after: the retrained model's margins on the original's samples and
    directions, if it was searched again (`R`, `R_spread`, `n_wrong`: the
    samples it misclassifies); heldout / base_heldout: the retrained and the
    original model along the held-out directions (`R_heldout`, ...);
    reduced: the reduced-FL baseline at the same budget."""
    out: dict[str, float] = {}
    for split in SPLITS:
        out.update(reports[split].metrics(f"{split}_"))
    out.update({"base_R": base_stats.robustness, "base_R_spread": r_spread(base_stats.class_robustness),
                "n_generated": float(n_generated)})
    for who, evaluated in (("base", base), ("control", control)):
        out.update({f"{who}_{k}": v for k, v in evaluated["val"].metrics("val_").items() if k.endswith("_acc")})
    if after is not None:
        out.update({"R": after.robustness, "R_spread": r_spread(after.class_robustness), "n_wrong": float(after.n_wrong)})
    for prefix, held in (("", heldout), ("base_", base_heldout)):
        if held is not None:
            out.update({f"{prefix}R_heldout": held.robustness, f"{prefix}R_spread_heldout": r_spread(held.class_robustness)})
    if reduced is not None:
        out.update(_reduced_metrics(out, reduced))
    return out


def _reduced_metrics(trial: Mapping[str, float], reduced: ReducedBaseline) -> dict[str, float]:
    out = {f"{REDUCED}_{k}": v for k, v in reduced.reports["val"].metrics("val_").items() if k.endswith("_acc")}
    out[f"{REDUCED}_n_generated"] = float(reduced.n_generated)
    if reduced.after is not None:
        out.update({f"{REDUCED}_R": reduced.after.robustness, f"{REDUCED}_R_spread": r_spread(reduced.after.class_robustness)})
    for name in _COMPARED:
        if name in trial and f"{REDUCED}_{name}" in out:
            out[f"{VS_REDUCED}_{name}"] = trial[name] - out[f"{REDUCED}_{name}"]
    return out


def metric_names(cfg: FLConfig) -> tuple[str, ...]:
    """Every name `comparison_metrics` gives for a comparison run with cfg
    (with the reduced-FL baseline, as an FL trial reports it)."""
    suites = fl_suites(cfg, SPLITS)
    names = [n for split in SPLITS for n in suites[split].metric_names(f"{split}_")]
    names += ["base_R", "base_R_spread", "n_generated"]
    val_acc = [n for n in suites["val"].metric_names("val_") if n.endswith("_acc")]
    names += [f"{who}_{n}" for who in ("base", "control") for n in val_acc]
    if cfg.eval.margins_after:
        names += ["R", "R_spread", "n_wrong", "R_heldout", "R_spread_heldout", "base_R_heldout", "base_R_spread_heldout"]
    names += [f"{REDUCED}_{n}" for n in val_acc] + [f"{REDUCED}_n_generated"]
    if cfg.eval.margins_after:
        names += [f"{REDUCED}_R", f"{REDUCED}_R_spread"]
    names += [f"{VS_REDUCED}_{n}" for n in _COMPARED if n in names and f"{REDUCED}_{n}" in names]
    return tuple(names)
