"""The integrity checks 1-8 of robustness-eval.md (Athalye et al. 2018,
Carlini et al. 2019), run by `cnnf.evaluate.evaluate` on every evaluation.

Each check compares attacks the suite already ran, adding a probe attack
where the suite lacks what the check needs. Probes run on the first
`suite.check_examples` images with the suite's first seed, and the
comparisons use the same images. A check never hides a number: it passes, or
it is flagged with the figures that tripped it; "skipped" only where it does
not apply (check 8 on a model without feedback).

Tolerances: accuracies are compared with a slack of max(0.5 %, one image);
per-example comparisons count the images where the weaker attack succeeded
and the stronger one failed. Check 4 also compares every APGD and Square
attack of the suite with its PGD / FGSM per example (flagged above
max(2 %, one image): the signature of a weak or masked gradient).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.attacks import ATTACKS
from cnnf.suite import AttackSpec
from cnnf.report import CHECK_NAMES, AttackResult, Check, CheckStatus, Curve

if TYPE_CHECKING:
    from cnnf.evaluate import _Evaluator

LARGE_EPS = 0.5  # check 1, [0, 1] pixel units
LARGE_STEPS = 10  # check 1: at least this many PGD steps (a huge budget needs few)
ITERATIVE_SLACK = 0.01  # check 2: share of images FGSM breaks and PGD does not
MONOTONE_SLACK = 0.01  # check 3: rise allowed between neighbouring budgets
UNCONVERGED = 0.01  # check 4: more effort lowering accuracy by more than this
BLACK_BOX_SLACK = 0.002  # check 5: robustness-eval.md's 0.2 %, per example
ZERO_GRAD_SHARE = 0.01  # check 7
STRONGER_SLACK = 0.02  # check 4: share of images APGD or Square breaks and every PGD / FGSM of the suite does not
STRONGER = ("apgd_ce", "apgd_dlr", "apgd_t", "square")  # attacks PGD's numbers are compared against (check 4)
PROBE_SPSA = {"steps": 5, "n_samples": 32}  # check 5 when the suite has no gradient-free attack
PROBE_NOISE_DRAWS = 20  # check 6 when the suite has no noise attack
ROUNDING = 1e-6  # accuracies are float32 ratios of counts: a difference exactly at a slack must not trip it


def _check(id_: int, status: CheckStatus, detail: str, numbers: tuple[tuple[str, float], ...] = ()) -> Check:
    return Check(id_, CHECK_NAMES[id_], status, detail, numbers)


def _default(attack: str, name: str) -> Any:
    p = inspect.signature(ATTACKS.get(attack).factory).parameters.get(name)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _is_white_box(attack: str) -> bool:
    cls = ATTACKS.get(attack).factory
    return not getattr(cls, "gradient_free", False) and attack != "transfer"


def _is_query_black_box(attack: str) -> bool:
    """A gradient-free attack that queries the model itself (SPSA), not noise or transfer."""
    cls = ATTACKS.get(attack).factory
    return getattr(cls, "gradient_free", False) and not _is_noise(attack) and attack != "transfer"


def _is_noise(attack: str) -> bool:
    return attack in ("uniform_noise", "gaussian_noise")


class _Checker:
    def __init__(self, ev: "_Evaluator", results: Sequence[AttackResult], curves: Sequence[Curve], n_classes: int):
        self.ev, self.results, self.curves, self.n_classes = ev, results, curves, n_classes
        self.seed = ev.suite.seeds[0]
        self.m = min(ev.suite.check_examples, ev.n)
        self.tol = max(0.005, 1.0 / max(self.m, 1))
        self.specs = list(ev.suite.attacks)
        self.main = self._main_pgd()
        self.eps = ev.suite.nominal_eps() or (self.main.eps if self.main.eps is not None else 0.1)

    # -- helpers ------------------------------------------------------------------
    def _main_pgd(self) -> AttackSpec:
        """The suite's end-to-end Linf PGD (else any Linf PGD), or a PGD-20 probe."""
        pgd = [s for s in self.specs if s.attack == "pgd_linf" and s.gates == "exact"]
        for s in pgd:
            if s.target is None:
                return s
        if pgd:
            return pgd[0]
        return AttackSpec.of("pgd_linf", self.ev.suite.nominal_eps() or 0.1, steps=20, label="probe/pgd_linf")

    def _large_budget(self) -> AttackSpec:
        """The main PGD's target at Linf LARGE_EPS, with at least LARGE_STEPS steps (checks 1 and 3)."""
        return AttackSpec.of("pgd_linf", LARGE_EPS, target=self.main.target, gates=self.main.gates,
                             steps=max(LARGE_STEPS, dict(self.main.params).get("steps") or LARGE_STEPS))

    def robust(self, spec: AttackSpec, **overrides: Any) -> Tensor:
        """Per-example robustness on the check images (runs the probe if needed)."""
        unit = self.ev.unit(spec, self.seed, n=self.m if spec not in self.specs else None)
        if overrides:  # a variant on the check images: a cascade stage's rows no longer apply
            unit = dataclasses.replace(unit, n=self.m, **{"rows": None, **overrides})
        return self.ev.run(unit, spec.name() if spec in self.specs else f"check: {spec.name()}")[: self.m]

    def acc(self, robust: Tensor) -> float:
        return robust.float().mean().item()

    def target_of(self, spec: AttackSpec) -> tuple[str, str]:
        return self.ev.resolve_target(spec.target, spec.gates)

    # -- the checks ---------------------------------------------------------------
    def large_budget(self) -> Check:
        a, chance = self.acc(self.robust(self._large_budget())), 1.0 / self.n_classes
        ok = a <= chance + ROUNDING
        detail = (f"PGD at Linf {LARGE_EPS} leaves {a:.1%} accuracy (chance {chance:.1%})" if ok else
                  f"PGD at Linf {LARGE_EPS} leaves {a:.1%} > chance {chance:.1%}: the attack cannot drive the model "
                  "to chance with a huge budget, a sign of masked gradients or a broken attack")
        return _check(1, "pass" if ok else "flag", detail,
                     (("acc_at_0.5", a), ("chance", chance)))

    def iterative_beats_single_step(self) -> Check:
        t = self.target_of(self.main)
        fgsm = next((s for s in self.specs if s.attack == "fgsm" and s.eps == self.main.eps and self.target_of(s) == t), None)
        if fgsm is None:
            fgsm = AttackSpec.of("fgsm", self.main.eps, target=self.main.target, gates=self.main.gates, label="probe/fgsm")
        pgd, single = self.robust(self.main), self.robust(fgsm)
        share = (pgd & ~single).float().mean().item()
        ok = share <= ITERATIVE_SLACK + ROUNDING
        detail = (f"{self.main.name()} {self.acc(pgd):.1%} <= FGSM {self.acc(single):.1%}; FGSM alone breaks {share:.1%} of images"
                  if ok else f"FGSM breaks {share:.1%} of images that {self.main.name()} does not "
                  f"(PGD {self.acc(pgd):.1%}, FGSM {self.acc(single):.1%}): the iterative attack is weak or the loss surface is masked")
        return _check(2, "pass" if ok else "flag", detail,
                     (("pgd_acc", self.acc(pgd)), ("fgsm_acc", self.acc(single)), ("fgsm_only_share", share)))

    def monotone_in_budget(self) -> Check:
        # Noise curves are left out: each strength is a fresh random draw, not an
        # attack optimised within its budget, so their small rises are sampling error.
        series: list[tuple[str, Sequence[float], Sequence[float]]] = [(c.label, c.eps, c.acc) for c in self.curves
                                                                      if not _is_noise(c.attack)]
        if not series:
            e = self.main.eps or self.eps
            grid = sorted({0.0, e / 4, e / 2, e, LARGE_EPS})
            large = self._large_budget()
            accs = []
            for g in grid:
                if g == LARGE_EPS:
                    accs.append(self.acc(self.robust(large)))
                elif g == e:
                    accs.append(self.acc(self.robust(self.main)))
                else:
                    accs.append(self.acc(self.robust(self.main, eps=g)))
            series = [(f"{self.main.name()} (probe grid)", grid, accs)]
        worst = 0.0
        where = ""
        for label, eps, acc in series:
            for i in range(1, len(acc)):
                rise = acc[i] - acc[i - 1]
                if rise > worst:
                    worst, where = rise, f"{label}: {acc[i - 1]:.1%} at eps {eps[i - 1]:g} -> {acc[i]:.1%} at eps {eps[i]:g}"
        ok = worst <= MONOTONE_SLACK + ROUNDING
        detail = (f"accuracy non-increasing over {', '.join(s[0] for s in series)}" if ok else
                  f"accuracy rises with the budget ({where}): the attack fails at larger budgets")
        return _check(3, "pass" if ok else "flag", detail, (("largest_rise", worst),))

    def more_effort(self) -> Check:
        """PGD with twice the steps and restarts; and, where the suite has them,
        APGD and Square against PGD per example (`stronger_than_pgd`)."""
        params = dict(self.main.params)
        steps = params.get("steps") or _default("pgd_linf", "steps")
        restarts = params.get("restarts") or _default("pgd_linf", "restarts") or 1
        more = dict(params, steps=2 * steps, restarts=max(2, 2 * restarts))
        spec = AttackSpec.of("pgd_linf", self.main.eps, target=self.main.target, gates=self.main.gates,
                            label="probe/pgd_more", **more)
        base, stronger = self.acc(self.robust(self.main)), self.acc(self.robust(spec))
        numbers = [("acc", base), ("acc_2x_steps_restarts", stronger)]
        problems, fine = [], []
        if stronger > base + self.tol + ROUNDING:
            problems.append(f"{2 * steps} steps x {more['restarts']} restarts give {stronger:.1%} > {base:.1%}: the attack is unstable")
        elif stronger < base - max(UNCONVERGED, self.tol) - ROUNDING:
            problems.append(f"{2 * steps} steps x {more['restarts']} restarts lower accuracy {base:.1%} -> {stronger:.1%}: "
                            f"{self.main.name()} had not converged; report the stronger attack")
        else:
            fine.append(f"{2 * steps} steps x {more['restarts']} restarts: {stronger:.1%} vs {base:.1%}")
        more_numbers, more_problems, more_fine = self.stronger_than_pgd()
        return _check(4, "flag" if problems or more_problems else "pass", "; ".join(problems + more_problems + fine + more_fine),
                      tuple(numbers + more_numbers))

    def stronger_than_pgd(self) -> tuple[list[tuple[str, float]], list[str], list[str]]:
        """Per example on the check images: the share each APGD / Square attack
        of the suite (Linf, at the main PGD's budget) breaks that every PGD and
        FGSM of the suite at that budget left robust (else the main PGD or its
        probe). Above max(STRONGER_SLACK, one image) the PGD figures overstate
        robustness: their fixed step is weak, or the gradient is masked (Square
        needs none). A cascade stage counts with the stages before it.
        Returns (numbers, problems, passing remarks)."""
        eps = self.main.eps
        others = [s for s in self.specs if s.attack in STRONGER and s.eps == eps and dict(s.params).get("norm", "linf") == "linf"]
        if not others:
            return [], [], []
        pgds = [s for s in self.specs if s.attack in ("pgd_linf", "fgsm") and s.eps == eps]
        base = self.ev.clean_correct()[: self.m].clone()
        for s in pgds or [self.main]:
            base &= self.robust(s)
        base_names = ", ".join(s.name() for s in pgds or [self.main])
        numbers: list[tuple[str, float]] = [("pgd_worst_acc", self.acc(base))]
        problems, fine = [], []
        for s in others:
            r = self.robust(s)
            share = (base & ~r).float().mean().item()
            numbers += [(f"{s.name()}_acc", self.acc(r)), (f"{s.name()}_only_share", share)]
            what = f"{s.name()}{' (with the stages before it)' if s.cascade else ''}"
            if share > max(STRONGER_SLACK, self.tol) + ROUNDING:
                problems.append(f"{what} breaks {share:.1%} of images that {base_names} left robust "
                                f"({self.acc(base):.1%} -> {self.acc(base & r):.1%}): PGD overstates robustness, the "
                                f"signature of a weak or masked gradient; report the Min over all attacks")
            else:
                fine.append(f"{what} breaks {share:.1%} of images {base_names} left robust")
        return numbers, problems, fine

    def _white_box_robust(self, target: Optional[tuple[str, str]] = None) -> tuple[Tensor, list[str]]:
        """Per-example robustness to every white-box attack of the suite at the
        nominal budget (all targets unless `target` is given), and their labels."""
        robust = self.ev.clean_correct()[: self.m].clone()
        names = []
        for s in self.specs:
            if _is_white_box(s.attack) and s.eps is not None and (target is None or self.target_of(s) == target):
                robust &= self.robust(s)
                names.append(s.name())
        if not names:
            robust &= self.robust(self.main)
            names.append(self.main.name())
        return robust, names

    def white_box_beats_black_box(self) -> Check:
        black = [s for s in self.specs if _is_query_black_box(s.attack)]
        probe = not black
        if probe:
            black = [AttackSpec.of("spsa", self.main.eps, target=self.main.target, label="probe/spsa", **PROBE_SPSA)]
        white, names = self._white_box_robust()
        worst, numbers, detail_bad = 0.0, [], ""
        for b in black:
            if probe:
                # The verdict counts only images no white-box attack broke, so the
                # probe attacks just those (the suite's own attacks ran on all).
                rows = tuple(torch.nonzero(white).flatten().tolist())
                rb = self.robust(b, rows=rows)
                numbers.append((f"{b.name()}_images", float(len(rows))))
            else:
                rb = self.robust(b)
                numbers.append((f"{b.name()}_acc", self.acc(rb)))
            share = (~rb & white).float().mean().item()
            numbers.append((f"{b.name()}_only_share", share))
            if share > worst:
                worst, detail_bad = share, (f"{b.name()} breaks {share:.1%} of images that no white-box attack "
                                            f"({', '.join(names)}) breaks: white-box gradients are masked")
        ok = worst <= BLACK_BOX_SLACK + ROUNDING
        numbers.append(("white_box_acc", self.acc(white)))
        settings = (f" (probe SPSA, {PROBE_SPSA['steps']} steps x {PROBE_SPSA['n_samples']} samples, on the "
                    f"{int(white.sum())} images no white-box attack broke)") if probe else ""
        detail = f"no image broken by the gradient-free attack alone{settings}" if ok else detail_bad
        return _check(5, "pass" if ok else "flag", detail, tuple(numbers))

    def weaker_than_white_box(self) -> Check:
        others = [s for s in self.specs if _is_noise(s.attack) or s.attack == "transfer"]
        if not any(_is_noise(s.attack) for s in others):
            others.append(AttackSpec.of("uniform_noise", self.eps, label="probe/uniform_noise", draws=PROBE_NOISE_DRAWS))
        white, names = self._white_box_robust()
        wb = self.acc(white)
        numbers, bad = [("white_box_acc", wb)], []
        for s in others:
            a = self.acc(self.robust(s))
            numbers.append((f"{s.name()}_acc", a))
            if a < wb - self.tol - ROUNDING:
                bad.append(f"{s.name()} {a:.1%}")
        ok = not bad
        detail = (f"{', '.join(s.name() for s in others)} all >= white-box worst case {wb:.1%}" if ok else
                  f"{', '.join(bad)} below the white-box worst case {wb:.1%} ({', '.join(names)}): the white-box attacks are weak")
        return _check(6, "pass" if ok else "flag", detail, tuple(numbers))

    def gradients_and_determinism(self) -> Check:
        ev = self.ev
        x, y = ev.data.x[: self.m], ev.data.y[: self.m]
        zero_share = {}
        targets = {self.target_of(self.main), (ev.prediction, "exact")}
        if ev.is_cnnf and ev.n_iterations > 0:
            targets.add(("first", "exact"))
        for target, gates in sorted(targets):
            predict = ev.predictor(target, gates)
            zero = []
            for i in range(0, self.m, ev.suite.batch_size):
                xb = x[i:i + ev.suite.batch_size].clone().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(predict(xb), y[i:i + ev.suite.batch_size], reduction="sum")
                    (g,) = torch.autograd.grad(loss, xb)
                zero.append(g.flatten(1).abs().amax(1) == 0)
            zero_share[f"{target}{'_bpda' if gates == 'bpda' else ''}"] = torch.cat(zero).float().mean().item()
        with torch.no_grad():
            a, b = ev.scored(x), ev.scored(x)
        max_diff = (a - b).abs().max().item() if len(x) else 0.0
        same_pred = bool(torch.equal(a.argmax(1), b.argmax(1)))
        finite = bool(torch.isfinite(a).all())
        bad = [k for k, v in zero_share.items() if v > ZERO_GRAD_SHARE + ROUNDING]
        problems = []
        if bad:
            problems.append("zero input gradients for " + ", ".join(f"{zero_share[k]:.1%} of images ({k})" for k in bad))
        if not same_pred or max_diff > 1e-4 or not finite:
            problems.append(f"forward not deterministic or not finite (max logit difference {max_diff:.2g}, "
                            f"same predictions {same_pred}, finite {finite})")
        numbers = tuple((f"zero_grad_share_{k}", v) for k, v in zero_share.items()) + (("forward_max_diff", max_diff),)
        detail = "; ".join(problems) if problems else (
            "input gradients non-zero (" + ", ".join(f"{k} {v:.1%} zero" for k, v in zero_share.items())
            + f"); two forwards agree (max difference {max_diff:.2g})")
        return _check(7, "flag" if problems else "pass", detail, numbers)

    def cnnf_end_to_end(self) -> Check:
        ev = self.ev
        if not ev.is_cnnf or ev.n_iterations == 0:
            return _check(8, "skipped", "the scored model has no feedback iterations: first pass and end to end coincide")
        first = next((s for s in self.specs if s.attack == "pgd_linf" and s.target == "first"), None) or \
            AttackSpec.of("pgd_linf", self.main.eps, target="first", label="probe/pgd_first", **dict(self.main.params))
        e2e = next((s for s in self.specs if s.attack == "pgd_linf" and s.target is None and s.gates == "exact"), None) or \
            AttackSpec.of("pgd_linf", self.main.eps, label="probe/pgd_e2e", **dict(self.main.params))
        bpda = next((s for s in self.specs if s.attack == "pgd_linf" and s.gates == "bpda"), None) or \
            AttackSpec.of("pgd_linf", self.main.eps, gates="bpda", label="probe/pgd_e2e_bpda", **dict(e2e.params))
        a_first, a_e2e, a_bpda = (self.acc(self.robust(s)) for s in (first, e2e, bpda))
        numbers = (("first_acc", a_first), ("e2e_acc", a_e2e), ("e2e_bpda_acc", a_bpda))
        problems = []
        if a_e2e > a_first + self.tol + ROUNDING:
            problems.append(f"end-to-end PGD {a_e2e:.1%} > first-pass PGD {a_first:.1%}: gradients through the "
                            "recurrence are masked; the first-pass number is the honest one")
        if a_bpda < a_e2e - self.tol - ROUNDING:
            problems.append(f"straight-through (BPDA) gates {a_bpda:.1%} < exact end-to-end {a_e2e:.1%}: "
                            "the exact gate gradients mask the attack")
        detail = "; ".join(problems) if problems else (
            f"first {a_first:.1%}, end to end {a_e2e:.1%}, end to end with BPDA gates {a_bpda:.1%}")
        return _check(8, "flag" if problems else "pass", detail, numbers)


def run_checks(ev: "_Evaluator", results: Sequence[AttackResult], curves: Sequence[Curve], n_classes: int) -> tuple[Check, ...]:
    c = _Checker(ev, results, curves, n_classes)
    # In CHECK_NAMES order: the metric names check_<id>_ok are declared from it.
    return (c.large_budget(), c.iterative_beats_single_step(), c.monotone_in_budget(), c.more_effort(),
            c.white_box_beats_black_box(), c.weaker_than_white_box(), c.gradients_and_determinism(),
            c.cnnf_end_to_end())
