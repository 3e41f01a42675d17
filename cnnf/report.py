"""What an evaluation returns: frozen dataclasses, values only.

Accuracies are fractions in [0, 1]; budgets (`eps`) are in [0, 1] pixel
units, whatever range the model takes its inputs in. `acc` is the mean over
the evaluation's seeds and `std` their standard deviation (0 with one seed).
An example counts as robust to an attack only if the scored prediction is
right both on the clean image and on the attacked one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

CheckStatus = Literal["pass", "flag", "skipped"]

# The integrity checks of robustness-eval.md by id (cnnf.checks runs them in
# this order); the metrics check_<id>_ok are named from these ids.
CHECK_NAMES: dict[int, str] = {
    1: "large budget reaches chance",
    2: "iterative beats single-step",
    3: "monotone in budget",
    4: "more effort does not help the model",
    5: "white-box beats black-box",
    6: "transfer and noise weaker than white-box",
    7: "gradients not vanishing, forward deterministic",
    8: "end-to-end not above first pass (CNN-F)",
}

# AutoAttack's attacks (registry names): an EvalReport also gives the Min
# without them, so a report shows how much they lower the other attacks' Min.
AUTOATTACK_ATTACKS = ("apgd_ce", "apgd_dlr", "apgd_t", "square")


@dataclass(frozen=True)
class AttackResult:
    """One attack of the suite at its nominal budget."""

    label: str  # column name, e.g. "pgd_linf/first", "spsa/e2e", "pgd_linf/e2e_bpda"
    attack: str  # registry name
    target: str  # what the attack differentiates / queries: "first", "last" or "avg"
    gates: str  # "exact" or "bpda" (straight-through feedback gates)
    eps: Optional[float]  # budget in [0, 1] pixel units; None: unbounded (CW, DeepFool)
    norm: str  # "linf", "l2" or "none"
    acc: float
    std: float
    per_seed: tuple[float, ...]
    seconds: float  # summed over seeds
    images_per_s: float  # per attacked image (a cascade stage attacks only the earlier stages' survivors)
    cascade: bool = False  # acc is that after this attack and every one before it in the suite (AutoAttack's order)


@dataclass(frozen=True)
class Curve:
    """Accuracy of one attack over a grid of budgets (the first point may be 0: clean)."""

    label: str
    attack: str
    target: str
    norm: str
    eps: tuple[float, ...]
    acc: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Check:
    """One integrity check of robustness-eval.md ("flag, don't hide").

    status: "pass", "flag" (the numbers say the evaluation may be unreliable:
    read `detail`), or "skipped" (what it needs was not evaluated; `detail`
    says what). numbers: the figures the verdict rests on.
    """

    id: int
    name: str
    status: CheckStatus
    detail: str
    numbers: tuple[tuple[str, float], ...] = ()

    @property
    def flagged(self) -> bool:
        return self.status == "flag"


@dataclass(frozen=True)
class EvalReport:
    split: str
    n_examples: int
    n_classes: int
    n_iterations: int  # feedback iterations of the scored model
    prediction: str  # the scored prediction: "first", "last" or "avg"
    seeds: tuple[int, ...]
    clean_acc: float
    clean_std: float
    attacks: tuple[AttackResult, ...]
    min_acc: float  # mean over examples of the worst case over `attacks`
    min_std: float
    curves: tuple[Curve, ...]
    checks: tuple[Check, ...]
    seconds: float  # the whole evaluation
    checks_seconds: float = 0.0  # of which the integrity checks (their probe attacks and gradient tests)
    # The per-example Min over the attacks that are not AutoAttack's (AUTOATTACK_ATTACKS): the Min this
    # suite gives without APGD and Square. None when the suite runs none of AutoAttack's attacks, or only them.
    min_acc_no_aa: Optional[float] = None
    min_std_no_aa: Optional[float] = None

    @property
    def autoattack_gap(self) -> Optional[float]:
        """How much AutoAttack's attacks lower the Min (min_acc_no_aa - min_acc, >= 0), or None."""
        return None if self.min_acc_no_aa is None else self.min_acc_no_aa - self.min_acc

    def result(self, label: str) -> AttackResult:
        for r in self.attacks:
            if r.label == label:
                return r
        raise KeyError(f"no attack labelled {label!r} in this report; have: {', '.join(r.label for r in self.attacks)}")

    def acc(self, label: str) -> float:
        return self.result(label).acc

    @property
    def flagged(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.flagged)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metric names for trackers (`metric_names` lists them all): clean_acc,
        <label>_acc with '/' -> '_', min_acc and, when the checks ran,
        checks_flagged (count) and check_<id>_ok (1 pass, 0 flag; skipped left out)."""
        out = {f"{prefix}clean_acc": self.clean_acc, f"{prefix}min_acc": self.min_acc}
        for r in self.attacks:
            out[f"{prefix}{metric_name(r.label)}_acc"] = r.acc
        if self.checks:
            out[f"{prefix}checks_flagged"] = float(len(self.flagged))
        for c in self.checks:
            if c.status != "skipped":
                out[f"{prefix}check_{c.id}_ok"] = 0.0 if c.flagged else 1.0
        return out

    def timings(self, prefix: str = "") -> dict[str, float]:
        """Where the evaluation's time went, in seconds (`timing_names` lists them):
        eval_s (all of it), checks_s (the integrity checks) and one <label>_s per attack."""
        out = {f"{prefix}eval_s": self.seconds, f"{prefix}checks_s": self.checks_seconds}
        for r in self.attacks:
            out[f"{prefix}{metric_name(r.label)}_s"] = r.seconds
        return out

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalReport":
        """The inverse of as_dict (after a JSON round trip: lists back to tuples)."""
        def attack(a: dict) -> AttackResult:
            return AttackResult(**{**a, "per_seed": tuple(a["per_seed"])})

        def curve(c: dict) -> Curve:
            return Curve(**{**c, "eps": tuple(c["eps"]), "acc": tuple(c["acc"]), "std": tuple(c["std"])})

        def check(c: dict) -> Check:
            return Check(**{**c, "numbers": tuple((str(k), float(v)) for k, v in c["numbers"])})

        return cls(**{**d, "seeds": tuple(d["seeds"]), "attacks": tuple(attack(a) for a in d["attacks"]),
                      "curves": tuple(curve(c) for c in d["curves"]), "checks": tuple(check(c) for c in d["checks"])})


def metric_name(label: str) -> str:
    """'pgd_linf/e2e_bpda' -> 'pgd_linf_e2e_bpda' (tracker-safe)."""
    return label.replace("/", "_")


def metric_names(labels: Sequence[str], checks: bool, prefix: str = "") -> tuple[str, ...]:
    """Every name `EvalReport.metrics(prefix)` can give for a suite with these
    attack labels (with or without the integrity checks): the one place the
    metric names are made, so a tracker can know them before any evaluation runs."""
    names = [f"{prefix}clean_acc", f"{prefix}min_acc", *(f"{prefix}{metric_name(label)}_acc" for label in labels)]
    if checks:
        names += [f"{prefix}checks_flagged", *(f"{prefix}check_{i}_ok" for i in CHECK_NAMES)]
    return tuple(names)


def timing_names(labels: Sequence[str], prefix: str = "") -> tuple[str, ...]:
    """Every name `EvalReport.timings(prefix)` gives for these attack labels."""
    return (f"{prefix}eval_s", f"{prefix}checks_s", *(f"{prefix}{metric_name(label)}_s" for label in labels))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
