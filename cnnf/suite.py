"""What an evaluation runs: `AttackSpec` (one attack, its budget, target and
parameters), `Suite` (the attacks, the scored model, seeds and checks) and
the suites the project's reports use (`pgd_suite`, `cnnf_paper_suite`,
`fl_paper_suite`, `autoattack_suite`, `suite_from_config`). `cnnf.evaluate.evaluate` runs a
suite; the integrity checks (`cnnf.checks`) read its specs. Budgets are in
[0, 1] pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from cnnf.attacks import attack_names
from cnnf.config import EvalConfig
from cnnf.data import ArrayDataset
from cnnf.models import GATES, PREDICTIONS
from cnnf.report import metric_names, timing_names

UNBOUNDED = ("cw_l2", "deepfool")  # minimal-perturbation attacks: the budget is optional


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite.

    attack: registry name (`cnnf.attacks.attack_names()`).
    eps: budget in [0, 1] pixel units (None only for CW-L2 and DeepFool: unbounded).
    target: None = the scored prediction (end to end); "first", "last" or "avg".
    gates: "exact" or "bpda" (straight-through feedback gates; end-to-end targets).
    params: further constructor arguments of the attack, as (name, value) pairs.
    eps_grid: budgets of an accuracy-vs-eps curve for this attack (0 = clean).
    label: report name; default "<attack>/<first|e2e|last|avg>[_bpda]".
    cascade: attack only the examples every earlier attack of the suite left
    robust (clean-correct and unbroken), as AutoAttack runs its attacks; the
    others count as broken, so the reported accuracy is that of the sequence
    up to this attack (AutoAttack's "robust accuracy after <attack>"), and
    the cost falls with every stage. Not with an eps_grid.
    """

    attack: str
    eps: Optional[float] = None
    target: Optional[str] = None
    gates: str = "exact"
    params: tuple[tuple[str, Any], ...] = ()
    eps_grid: tuple[float, ...] = ()
    label: Optional[str] = None
    cascade: bool = False

    def __post_init__(self) -> None:
        names = attack_names()
        if self.attack not in names:
            raise ValueError(f"attack: unknown attack {self.attack!r}; expected one of: {', '.join(names)}")
        if self.eps is None and self.attack not in UNBOUNDED:
            raise ValueError(f"{self.attack}: eps is required (a budget in [0, 1] pixel units)")
        linf = attack_norm(self.attack, dict(self.params)) == "linf"
        for e in (self.eps, *self.eps_grid):
            if e is not None and not (0.0 <= e <= 1.0 if linf else e >= 0.0):
                raise ValueError(f"{self.attack}: eps {e} must be " + ("in [0, 1] pixel units" if linf else ">= 0 (pixel units)"))
        if self.target is not None and self.target not in PREDICTIONS:
            raise ValueError(f"{self.attack}: target must be one of {PREDICTIONS} or None (the scored prediction), got {self.target!r}")
        if self.gates not in GATES:
            raise ValueError(f"{self.attack}: gates must be one of {GATES}, got {self.gates!r}")
        if any(k in ("eps_pixels", "source") for k, _ in self.params):
            raise ValueError(f"{self.attack}: pass the budget as eps= and the transfer source to evaluate(), not in params")
        if self.cascade and self.eps_grid:
            raise ValueError(f"{self.attack}: cascade: an attack that runs on the survivors of the earlier ones has no eps_grid curve")

    @staticmethod
    def of(attack: str, eps: Optional[float] = None, *, target: Optional[str] = None, gates: str = "exact",
           eps_grid: Sequence[float] = (), label: Optional[str] = None, cascade: bool = False, **params: Any) -> "AttackSpec":
        """AttackSpec.of("pgd_linf", 0.1, steps=40) instead of spelling out params pairs."""
        return AttackSpec(attack, eps, target, gates, tuple(sorted(params.items())), tuple(eps_grid), label, cascade)

    def where(self) -> str:
        return ("e2e" if self.target is None else self.target) + ("_bpda" if self.gates == "bpda" else "")

    def name(self) -> str:
        return self.label or f"{self.attack}/{self.where()}"


@dataclass(frozen=True)
class Suite:
    """What to evaluate and how.

    n_iterations / prediction: the scored model (feedback iterations at test
    time, "first" / "last" / "avg"); ignored for a plain nn.Module.
    seeds: each attack runs once per seed (fresh random starts and draws);
    accuracies are mean ± std over them.
    checks: run the integrity checks, with their probe attacks on the first
    `check_examples` images. eps: the nominal Linf budget the probes use
    (default: that of the first Linf attack in `attacks`).
    """

    attacks: tuple[AttackSpec, ...]
    n_iterations: int = 1
    prediction: str = "avg"
    n_examples: Optional[int] = None
    batch_size: int = 256
    seeds: tuple[int, ...] = (0,)
    checks: bool = True
    check_examples: int = 200
    eps: Optional[float] = None

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.n_iterations < 0:
            raise ValueError(f"n_iterations must be >= 0, got {self.n_iterations}")
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        if self.batch_size < 1 or self.check_examples < 1 or (self.n_examples is not None and self.n_examples < 1):
            raise ValueError("batch_size, check_examples and n_examples must be positive")
        labels = [a.name() for a in self.attacks]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"attacks: duplicate labels {dupes}; give the specs distinct `label`s")
        if self.eps is not None and not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps {self.eps} must be in [0, 1] pixel units")

    def metric_names(self, prefix: str = "") -> tuple[str, ...]:
        """Every metric `evaluate(...).metrics(prefix)` can report for this suite."""
        return metric_names([a.name() for a in self.attacks], self.checks, prefix)

    def timing_names(self, prefix: str = "") -> tuple[str, ...]:
        """Every name `evaluate(...).timings(prefix)` reports for this suite."""
        return timing_names([a.name() for a in self.attacks], prefix)

    def examples_in(self, data: ArrayDataset) -> int:
        """How many of `data`'s images the suite evaluates (the first ones)."""
        return len(data) if self.n_examples is None else min(self.n_examples, len(data))

    def nominal_eps(self) -> Optional[float]:
        if self.eps is not None:
            return self.eps
        for a in self.attacks:
            if a.eps is not None and attack_norm(a.attack, dict(a.params)) == "linf":
                return a.eps
        return None


def pgd_suite(eps: float = 0.1, steps: int = 40, *, n_iterations: int = 1, prediction: str = "avg",
              step: Optional[float] = None, random_start: bool = True, **suite: Any) -> Suite:
    """Clean, Linf PGD against the first pass and end to end (what sweeps report)."""
    params = {"steps": steps, "step_pixels": step, "random_start": random_start}
    return Suite((AttackSpec.of("pgd_linf", eps, target="first", **params), AttackSpec.of("pgd_linf", eps, **params)),
                 n_iterations=n_iterations, prediction=prediction, **suite)


def cnnf_paper_suite(eps: float = 0.1, *, n_iterations: int = 1, prediction: str = "avg", pgd_steps: int = 40,
                     spsa_steps: int = 7, transfer: bool = True, bpda: bool = True, **suite: Any) -> Suite:
    """The attacks of CNN-F Tables 2-5 (cnnf-spec "Evaluation"): PGD and SPSA
    against the first pass and end to end, transfer from a plain CNN (pass it
    to evaluate as transfer_source), and, beyond the paper, PGD end to end
    with straight-through gates. SPSA: delta 0.01 and Adam lr 0.01 in the
    [-1, 1] input units of the reference (0.005 in pixel units), 128 samples,
    `spsa_steps` iterations (the reference ran 7)."""
    spsa = {"steps": spsa_steps, "n_samples": 128, "delta_pixels": 0.005, "lr_pixels": 0.005}
    attacks = [AttackSpec.of("pgd_linf", eps, target="first", steps=pgd_steps),
               AttackSpec.of("pgd_linf", eps, steps=pgd_steps),
               AttackSpec.of("spsa", eps, target="first", **spsa),
               AttackSpec.of("spsa", eps, **spsa)]
    if bpda:
        attacks.append(AttackSpec.of("pgd_linf", eps, gates="bpda", steps=pgd_steps))
    if transfer:
        attacks.append(AttackSpec.of("transfer", eps, base="pgd_linf", steps=pgd_steps))
    return Suite(tuple(attacks), n_iterations=n_iterations, prediction=prediction, **suite)


def fl_paper_suite(eps: float = 0.1, *, l2_eps: Optional[float] = None, noise_eps: Optional[float] = None,
                   noise_sigma: Optional[float] = None, fgsm_grid: Sequence[float] = (), noise_grid: Sequence[float] = (),
                   noise_worst_of: Optional[int] = 100, **suite: Any) -> Suite:
    """The attacks of the feedback-learning paper's Table III on a plain model:
    FGSM, CW-L2, PGD, BIM, MIM, DeepFool, uniform and Gaussian noise. eps:
    Linf budget; l2_eps: CW-L2 / DeepFool budget (None: unbounded);
    noise_eps: uniform-noise half-width (default eps); noise_sigma: Gaussian
    standard deviation (default eps); fgsm_grid: budgets of the FGSM
    accuracy-vs-strength curve (the paper's MNIST figure). Pixel units.

    Noise is scored as the paper reports it, accuracy under one noise draw
    per image ("uniform_noise", "gaussian_noise"; noise_grid: the strengths
    of a single-draw accuracy curve for each). noise_worst_of k adds the
    stronger worst-of-k metric ("uniform_noise_worst", "gaussian_noise_worst":
    an image counts as broken if any of k draws fools it); None leaves it out."""
    grid = tuple(sorted({0.0, *fgsm_grid, eps})) if fgsm_grid else ()
    u_eps = noise_eps if noise_eps is not None else eps
    g_sigma = noise_sigma if noise_sigma is not None else eps
    u_grid = tuple(sorted({0.0, *noise_grid, u_eps})) if noise_grid else ()
    g_grid = tuple(sorted({0.0, *noise_grid, g_sigma})) if noise_grid else ()
    # Labels are the attack names: metrics <split>_fgsm_acc, <split>_pgd_linf_acc, ...
    attacks = [AttackSpec.of("fgsm", eps, eps_grid=grid, label="fgsm"), AttackSpec.of("cw_l2", l2_eps, label="cw_l2"),
               AttackSpec.of("pgd_linf", eps, label="pgd_linf"), AttackSpec.of("bim", eps, label="bim"),
               AttackSpec.of("mim", eps, label="mim"), AttackSpec.of("deepfool", l2_eps, label="deepfool"),
               AttackSpec.of("uniform_noise", u_eps, eps_grid=u_grid, label="uniform_noise", draws=1),
               AttackSpec.of("gaussian_noise", g_sigma, eps_grid=g_grid, label="gaussian_noise", draws=1)]
    if noise_worst_of is not None:
        attacks += [AttackSpec.of("uniform_noise", u_eps, label="uniform_noise_worst", draws=noise_worst_of),
                    AttackSpec.of("gaussian_noise", g_sigma, label="gaussian_noise_worst", draws=noise_worst_of)]
    suite.setdefault("prediction", "first")
    suite.setdefault("n_iterations", 0)
    return Suite(tuple(attacks), **suite)


AUTOATTACK_TARGETS = {"first": ("first", "exact"), "e2e": (None, "exact"), "e2e_bpda": (None, "bpda")}


def autoattack_suite(eps: float = 0.1, *, norm: str = "linf", targets: Sequence[str] = ("e2e",), apgd_steps: int = 100,
                     n_targets: int = 9, square_queries: int = 5000, square: bool = True, cascade: bool = True,
                     n_iterations: int = 1, prediction: str = "avg", **suite: Any) -> Suite:
    """AutoAttack's standard sequence (Croce & Hein 2020): APGD-CE (apgd_steps
    iterations, no restarts), APGD-T (targeted DLR against each of the
    n_targets classes with the highest wrong logits, apgd_steps iterations,
    one restart each) and Square (square_queries iterations, p_init 0.8).
    FAB-T, AutoAttack's third attack (a minimal-distortion attack), is left
    out: it is not implemented here, so an image only FAB-T would break
    counts as robust.

    targets: what the APGD stages attack, in order, each of "first" (the
    first forward pass), "e2e" (the scored prediction end to end) and
    "e2e_bpda" (end to end with straight-through gates); a plain model
    resolves them all to its only pass, so give it ("e2e",). Square queries
    the scored prediction (what a black-box attacker sees). norm: "linf" or
    "l2" (eps in [0, 1] pixel units either way). square: False leaves Square
    out (its queries dominate the cost on a robust model).

    cascade (default): every stage attacks only the examples still robust
    after the earlier ones (as AutoAttack does, so the cost falls with every
    stage) and reports the accuracy after it; the last stage's is the Min.
    cascade=False runs every attack on every image (standalone accuracies,
    the Min still per example over all of them)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm: expected linf or l2, got {norm!r}")
    bad = [t for t in targets if t not in AUTOATTACK_TARGETS]
    if bad or not targets:
        raise ValueError(f"targets: expected a non-empty sequence of {', '.join(AUTOATTACK_TARGETS)}, got {list(targets)}")
    attacks = []
    for attack, params in (("apgd_ce", {"steps": apgd_steps}), ("apgd_t", {"steps": apgd_steps, "n_targets": n_targets})):
        for t in targets:
            target, gates = AUTOATTACK_TARGETS[t]
            attacks.append(AttackSpec.of(attack, eps, target=target, gates=gates, cascade=cascade, norm=norm, **params))
    if square:
        attacks.append(AttackSpec.of("square", eps, cascade=cascade, norm=norm, queries=square_queries))
    return Suite(tuple(attacks), n_iterations=n_iterations, prediction=prediction, **suite)


def suite_from_config(cfg: EvalConfig, n_iterations: int) -> Suite:
    """The suite a sweep trial runs (EvalConfig), by cfg.suite.

    "pgd": Linf PGD first and end to end, FGSM at the same budget, then
    APGD-CE (cfg.apgd_steps iterations, none if 0) end to end on the
    examples those three left robust, an accuracy-vs-eps curve of the
    end-to-end PGD when cfg.eps_grid is set, and the checks. Labels
    "pgd_first", "pgd_e2e", "fgsm", "apgd_ce" give the metrics
    <split>_pgd_first_acc, ... that sweeps optimise; apgd_ce's accuracy is
    that after all four attacks, i.e. the Min.

    "autoattack": `autoattack_suite` at cfg.eps_linf against the first pass
    and end to end (only the first pass for a plain model or prediction
    "first"), cascaded; labels "apgd_ce/first", "apgd_ce/e2e",
    "apgd_t/first", "apgd_t/e2e", "square/e2e" (metrics apgd_ce_first_acc, ...)."""
    common = dict(n_iterations=n_iterations, prediction=cfg.prediction, n_examples=cfg.n_examples,
                  batch_size=cfg.batch_size, seeds=(cfg.seed,), checks=cfg.checks, check_examples=cfg.check_examples)
    if cfg.suite == "autoattack":
        targets = ("first", "e2e") if n_iterations > 0 and cfg.prediction != "first" else ("e2e",)
        return autoattack_suite(cfg.eps_linf, targets=targets, apgd_steps=cfg.apgd_steps, n_targets=cfg.apgd_targets,
                                square_queries=cfg.square_queries, square=cfg.square_queries > 0, **common)
    params = {"steps": cfg.pgd_steps, "step_pixels": cfg.pgd_step_linf, "random_start": cfg.pgd_random_start}
    grid = tuple(sorted({0.0, *cfg.eps_grid, cfg.eps_linf})) if cfg.eps_grid else ()  # 0: the clean point, free
    attacks = [AttackSpec.of("pgd_linf", cfg.eps_linf, target="first", label="pgd_first", **params),
               AttackSpec.of("pgd_linf", cfg.eps_linf, eps_grid=grid, label="pgd_e2e", **params),
               AttackSpec.of("fgsm", cfg.eps_linf, label="fgsm")]
    if cfg.apgd_steps > 0:
        attacks.append(AttackSpec.of("apgd_ce", cfg.eps_linf, label="apgd_ce", cascade=True, steps=cfg.apgd_steps))
    return Suite(tuple(attacks), **common)


def attack_norm(name: str, params: Mapping[str, Any] | None = None) -> str:
    """What the budget of attack `name` bounds; a transfer attack's is its base attack's."""
    from cnnf.attacks import ATTACKS

    if name == "transfer":
        return attack_norm(str((params or {}).get("base", "pgd_linf")))
    if params and "norm" in params:  # attacks with a norm argument (APGD, Square)
        return str(params["norm"])
    return getattr(ATTACKS.get(name).factory, "norm", "linf")


__all__ = ["AttackSpec", "Suite", "UNBOUNDED", "attack_norm", "autoattack_suite", "cnnf_paper_suite", "fl_paper_suite", "pgd_suite", "suite_from_config"]
