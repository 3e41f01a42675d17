"""Robustness evaluation: `evaluate(model, data, suite) -> EvalReport`.

A `Suite` lists attacks (`AttackSpec`), each aimed at a target of the model:
the first forward pass ("first"), or end to end through the unrolled CNN-F on
the scored prediction (`target=None`, the default: attack what is scored;
the reference attacks `last` while scoring `avg`), or an explicit "last" /
"avg"; end-to-end attacks can use straight-through (BPDA) feedback gates.
Every adversarial image is scored with the full model's scored prediction,
and an example is robust only if it is right both clean and attacked.

The report holds accuracy per attack (mean ± std over the suite's seeds),
the per-example worst case over the attacks ("Min"), accuracy-vs-eps curves
and the integrity checks of robustness-eval.md (`cnnf.checks`), which run
extra probe attacks on the first `check_examples` images. Budgets are in
[0, 1] pixel units throughout; the attacks convert them once.

Random draws (starts, SPSA directions, noise) come from one generator per
(seed, attack, budget, target), so results do not depend on the order in
which work is done, and an evaluation interrupted with a `state_path`
resumes where it stopped (the generator state is saved too) and gives the
same numbers. Nothing here prints; progress
goes to an optional callback.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from cnnf import fused
from cnnf.attacks import Attack, attack_names, create_attack
from cnnf.config import EvalConfig
from cnnf.data import ArrayDataset
from cnnf.models import GATES, PREDICTIONS, FeedbackNet, InferenceModel
from cnnf.report import AttackResult, Check, Curve, EvalReport, mean_std, metric_names, timing_names
from cnnf.runtime import tune_cpu_allocator

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
    """

    attack: str
    eps: Optional[float] = None
    target: Optional[str] = None
    gates: str = "exact"
    params: tuple[tuple[str, Any], ...] = ()
    eps_grid: tuple[float, ...] = ()
    label: Optional[str] = None

    def __post_init__(self) -> None:
        names = attack_names()
        if self.attack not in names:
            raise ValueError(f"attack: unknown attack {self.attack!r}; expected one of: {', '.join(names)}")
        if self.eps is None and self.attack not in UNBOUNDED:
            raise ValueError(f"{self.attack}: eps is required (a budget in [0, 1] pixel units)")
        linf = _attack_class_norm(self.attack, dict(self.params)) == "linf"
        for e in (self.eps, *self.eps_grid):
            if e is not None and not (0.0 <= e <= 1.0 if linf else e >= 0.0):
                raise ValueError(f"{self.attack}: eps {e} must be " + ("in [0, 1] pixel units" if linf else ">= 0 (pixel units)"))
        if self.target is not None and self.target not in PREDICTIONS:
            raise ValueError(f"{self.attack}: target must be one of {PREDICTIONS} or None (the scored prediction), got {self.target!r}")
        if self.gates not in GATES:
            raise ValueError(f"{self.attack}: gates must be one of {GATES}, got {self.gates!r}")
        if any(k in ("eps_pixels", "source") for k, _ in self.params):
            raise ValueError(f"{self.attack}: pass the budget as eps= and the transfer source to evaluate(), not in params")

    @staticmethod
    def of(attack: str, eps: Optional[float] = None, *, target: Optional[str] = None, gates: str = "exact",
           eps_grid: Sequence[float] = (), label: Optional[str] = None, **params: Any) -> "AttackSpec":
        """AttackSpec.of("pgd_linf", 0.1, steps=40) instead of spelling out params pairs."""
        return AttackSpec(attack, eps, target, gates, tuple(sorted(params.items())), tuple(eps_grid), label)

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
            if a.eps is not None and _attack_class_norm(a.attack, dict(a.params)) == "linf":
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


def suite_from_config(cfg: EvalConfig, n_iterations: int) -> Suite:
    """The suite a sweep trial runs (EvalConfig): Linf PGD first and end to end,
    FGSM at the same budget, an accuracy-vs-eps curve of the end-to-end PGD
    when cfg.eps_grid is set, and the checks. Labels "pgd_first", "pgd_e2e",
    "fgsm" give the metrics <split>_pgd_first_acc, ... that sweeps optimise."""
    params = {"steps": cfg.pgd_steps, "step_pixels": cfg.pgd_step_linf, "random_start": cfg.pgd_random_start}
    grid = tuple(sorted({0.0, *cfg.eps_grid, cfg.eps_linf})) if cfg.eps_grid else ()  # 0: the clean point, free
    attacks = (AttackSpec.of("pgd_linf", cfg.eps_linf, target="first", label="pgd_first", **params),
               AttackSpec.of("pgd_linf", cfg.eps_linf, eps_grid=grid, label="pgd_e2e", **params),
               AttackSpec.of("fgsm", cfg.eps_linf, label="fgsm"))
    return Suite(attacks, n_iterations=n_iterations, prediction=cfg.prediction, n_examples=cfg.n_examples,
                 batch_size=cfg.batch_size, seeds=(cfg.seed,), checks=cfg.checks, check_examples=cfg.check_examples)


@dataclass(frozen=True)
class EvalProgress:
    """Reported after every batch: `done` of `total` batches, the attack at work."""

    done: int
    total: int
    label: str


Progress = Callable[[EvalProgress], None]


# ---------------------------------------------------------------------------
# Units of work: one attack at one budget on one target with one seed, over
# the first n images. Probes of the checks are units too (on fewer images).


@dataclass(frozen=True)
class Unit:
    attack: str
    eps: Optional[float]
    target: str  # resolved: "first", "last" or "avg"
    gates: str
    params: tuple[tuple[str, Any], ...]
    seed: int
    n: int  # the first n examples
    # Attack only these of the first n (indices); the others count as not
    # robust. For a check whose verdict rests on a subset (cnnf.checks, check 5).
    rows: Optional[tuple[int, ...]] = None

    def key(self) -> str:
        fields = (self.attack, self.eps, self.target, self.gates, self.params, self.seed, self.n)
        return repr(fields if self.rows is None else (*fields, self.rows))

    def size(self) -> int:
        """How many examples the unit attacks."""
        return self.n if self.rows is None else len(self.rows)


def _attack_class_norm(name: str, params: Mapping[str, Any] | None = None) -> str:
    """What the budget of attack `name` bounds; a transfer attack's is its base attack's."""
    from cnnf.attacks import ATTACKS

    if name == "transfer":
        return _attack_class_norm(str((params or {}).get("base", "pgd_linf")))
    return getattr(ATTACKS.get(name).factory, "norm", "linf")


class _Evaluator:
    """Holds the model's prediction functions and the per-example results of
    every unit run so far (bool tensors on the CPU: robust and clean-correct)."""

    def __init__(self, model: nn.Module, data: ArrayDataset, suite: Suite, transfer_source: Optional[nn.Module],
                 state_path: Optional[Path], progress: Optional[Progress]):
        self.suite, self.progress = suite, progress
        self.device = next(model.parameters()).device
        self.is_cnnf = isinstance(model, FeedbackNet)
        self.model = model
        if self.is_cnnf:
            self.prediction = suite.prediction
            self.n_iterations = 0 if suite.prediction == "first" else suite.n_iterations
        else:
            self.prediction, self.n_iterations = "first", 0
        self.scored = self.predictor(self.prediction, "exact")
        self.transfer_source = transfer_source
        n = suite.examples_in(data)
        self.data = data.head(n).to(self.device)
        self.n = n
        self.results: dict[str, Tensor] = {}
        self.seconds: dict[str, float] = {}
        self.state_path = state_path
        self.fingerprint = _fingerprint(model, self.data, suite)
        # unit -> (examples done, robust so far, seconds, generator state)
        self.partial: dict[str, tuple[int, Tensor, float, Optional[Tensor]]] = {}
        if state_path is not None and state_path.exists():
            self._load()
        self.done_batches, self.total_batches = 0, 0

    # -- prediction functions ------------------------------------------------
    def resolve_target(self, target: Optional[str], gates: str) -> tuple[str, str]:
        """(target, gates) as run: the scored prediction for None; a plain model
        or a 'first' target has no gates to straighten."""
        t = self.prediction if target is None else target
        if not self.is_cnnf or self.n_iterations == 0 or t == "first":
            return "first", "exact"
        return t, gates

    def predictor(self, target: str, gates: str) -> nn.Module:
        if not self.is_cnnf:
            return self.model
        return InferenceModel(self.model, self.n_iterations if target != "first" else 0, target, gates)

    # -- clean ----------------------------------------------------------------
    def clean_correct(self) -> Tensor:
        if "clean" not in self.results:
            with torch.no_grad():
                ok = [self.scored(self.data.x[i:i + self.suite.batch_size]).argmax(1) == self.data.y[i:i + self.suite.batch_size]
                      for i in range(0, self.n, self.suite.batch_size)]
            self.results["clean"] = torch.cat(ok).cpu()
        return self.results["clean"]

    # -- units --------------------------------------------------------------------
    def unit(self, spec: AttackSpec, seed: int, n: Optional[int] = None, eps: Any = "nominal") -> Unit:
        target, gates = self.resolve_target(spec.target, spec.gates)
        return Unit(spec.attack, spec.eps if eps == "nominal" else eps, target, gates, spec.params, seed,
                    self.n if n is None else min(n, self.n))

    def planned(self, units: Sequence[Unit]) -> None:
        """Count the batches still to run, for the progress callback."""
        todo = {u.key(): u for u in units if u.key() not in self.results and not (u.eps == 0.0)}
        self.total_batches += sum(-(-u.size() // self.suite.batch_size) for u in todo.values())

    def run(self, unit: Unit, label: str) -> Tensor:
        """Per-example robustness (clean-correct and still correct when attacked)
        on the first unit.n images (False outside unit.rows, if given); cached, resumable."""
        key = unit.key()
        if key in self.results:
            return self.results[key]
        clean = self.clean_correct()[: unit.n]
        if unit.eps == 0.0:  # no budget: the clean images
            self.results[key], self.seconds[key] = clean.clone(), 0.0
            return self.results[key]
        attack = self.build(unit)
        predict = self.predictor(unit.target, unit.gates)
        # One random stream per unit, its state saved with the partial results:
        # a resumed unit continues the same stream, and since attacks draw
        # per-batch tensors in order, the batch size does not change a
        # single-draw attack's numbers.
        generator = torch.Generator(device=self.device).manual_seed(_seed_of(key))
        done, robust, seconds, gen_state = self.partial.get(key, (0, torch.zeros(0, dtype=torch.bool), 0.0, None))
        if gen_state is not None:
            generator.set_state(gen_state)
        bs = self.suite.batch_size
        for i in range(done, unit.size(), bs):
            t0 = time.perf_counter()
            j = min(i + bs, unit.size())
            picked = slice(i, j) if unit.rows is None else list(unit.rows[i:j])
            x, y = self.data.x[picked], self.data.y[picked]
            x_adv = attack.perturb(predict, x, y, generator)
            with torch.no_grad():
                ok = (self.scored(x_adv).argmax(1) == y).cpu()
            robust = torch.cat([robust, ok & clean[picked]])
            seconds += time.perf_counter() - t0
            self.partial[key] = (j, robust, seconds, generator.get_state())
            self._save()
            self.done_batches += 1
            if self.progress is not None:
                self.progress(EvalProgress(self.done_batches, max(self.total_batches, self.done_batches), label))
        if unit.rows is not None:  # back to one entry per example of the first n
            robust = torch.zeros(unit.n, dtype=torch.bool).index_put_((torch.tensor(unit.rows, dtype=torch.long),), robust)
        self.results[key], self.seconds[key] = robust, seconds
        self.partial.pop(key, None)
        self._save()
        return robust

    def build(self, unit: Unit) -> Attack:
        kwargs = dict(unit.params)
        if unit.attack == "transfer":
            if self.transfer_source is None:
                raise ValueError("the suite has a transfer attack: pass evaluate(..., transfer_source=<plain model>)")
            kwargs["source"] = self.transfer_source.to(self.device).eval()
        return create_attack(unit.attack, eps_pixels=unit.eps, **kwargs)

    # -- resumable state --------------------------------------------------------
    def _save(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        torch.save({"fingerprint": self.fingerprint, "results": self.results, "seconds": self.seconds,
                    "partial": self.partial}, tmp)
        tmp.replace(self.state_path)

    def _load(self) -> None:
        assert self.state_path is not None
        raw = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if raw.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.state_path}: saved state belongs to a different evaluation "
                             "(model weights, data or suite differ); delete it or pass another state_path")
        self.results, self.seconds, self.partial = raw["results"], raw["seconds"], raw["partial"]


def _seed_of(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")


def _fingerprint(model: nn.Module, data: ArrayDataset, suite: Suite) -> str:
    h = hashlib.sha256(repr(suite).encode())
    for t in (*model.state_dict().values(), data.x, data.y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    suite: Suite,
    *,
    transfer_source: Optional[nn.Module] = None,
    split: str = "val",
    progress: Optional[Progress] = None,
    state_path: Optional[str | Path] = None,
    kernels: str = "auto",
) -> EvalReport:
    """Run `suite` on the first suite.n_examples images of `data`.

    model: a FeedbackNet (targets and feedback iterations apply) or any plain
    classifier nn.Module (images in the model input range -> logits).
    transfer_source: the model transfer attacks craft on (a plain CNN of the
    same backbone, cnnf-spec "Transfer").
    state_path: a file where finished work is saved after every batch; an
    evaluation restarted with the same model, data, suite and path resumes
    from it. It is left in place at the end (delete it to start over).
    kernels: 'fused', 'eager' or 'auto' (fused on the CPU from
    fused.AUTO_MIN_IMAGES evaluated images), as TrainConfig.kernels.
    """
    from cnnf.checks import run_checks

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    if device.type == "cpu":
        tune_cpu_allocator()
    kernels_on = fused.choose(kernels, device, suite.examples_in(data), fused.AUTO_MIN_IMAGES)
    was_training = model.training
    model.eval()
    try:
        with fused.use_kernels(kernels_on):
            ev = _Evaluator(model, data, suite, transfer_source, Path(state_path) if state_path is not None else None, progress)
            main_units = [ev.unit(spec, s) for spec in suite.attacks for s in suite.seeds]
            curve_units = [ev.unit(spec, s, eps=e) for spec in suite.attacks for e in spec.eps_grid for s in suite.seeds]
            ev.planned(main_units + curve_units)
            clean = ev.clean_correct()
            results = tuple(_attack_result(ev, spec) for spec in suite.attacks)
            curves = tuple(_curve(ev, spec) for spec in suite.attacks if spec.eps_grid)
            per_seed_min = []
            for s in suite.seeds:
                worst = clean.clone()
                for spec in suite.attacks:
                    worst &= ev.run(ev.unit(spec, s), spec.name())
                per_seed_min.append(worst.float().mean().item())
            min_acc, min_std = mean_std(per_seed_min) if suite.attacks else (clean.float().mean().item(), 0.0)
            n_classes = _n_classes(ev)
            checks: tuple[Check, ...] = ()
            t_checks = 0.0
            if suite.checks:
                t_checks = time.perf_counter()
                checks = run_checks(ev, results, curves, n_classes)
                t_checks = time.perf_counter() - t_checks
    finally:
        model.train(was_training)
    return EvalReport(split, ev.n, n_classes, ev.n_iterations, ev.prediction, suite.seeds,
                      clean.float().mean().item(), 0.0, results, min_acc, min_std, curves, checks,
                      time.perf_counter() - t0, t_checks)


def _n_classes(ev: _Evaluator) -> int:
    with torch.no_grad():
        return int(ev.scored(ev.data.x[:1]).shape[1])


def _attack_result(ev: _Evaluator, spec: AttackSpec) -> AttackResult:
    per_seed, seconds = [], 0.0
    for s in ev.suite.seeds:
        u = ev.unit(spec, s)
        per_seed.append(ev.run(u, spec.name()).float().mean().item())
        seconds += ev.seconds[u.key()]
    acc, std = mean_std(per_seed)
    target, gates = ev.resolve_target(spec.target, spec.gates)
    norm = _attack_class_norm(spec.attack, dict(spec.params))
    ips = ev.n * len(ev.suite.seeds) / seconds if seconds > 0 else float("inf")
    return AttackResult(spec.name(), spec.attack, target, gates, spec.eps, norm, acc, std, tuple(per_seed), seconds, ips)


def _curve(ev: _Evaluator, spec: AttackSpec) -> Curve:
    grid = sorted(set(spec.eps_grid))
    accs, stds = [], []
    for e in grid:
        acc, std = mean_std([ev.run(ev.unit(spec, s, eps=e), f"{spec.name()} eps {e:g}").float().mean().item()
                             for s in ev.suite.seeds])
        accs.append(acc)
        stds.append(std)
    target, _ = ev.resolve_target(spec.target, spec.gates)
    return Curve(spec.name(), spec.attack, target, _attack_class_norm(spec.attack, dict(spec.params)), tuple(grid), tuple(accs), tuple(stds))


__all__ = ["AttackSpec", "EvalProgress", "EvalReport", "Progress", "Suite", "cnnf_paper_suite", "evaluate",
           "fl_paper_suite", "pgd_suite", "suite_from_config"]

