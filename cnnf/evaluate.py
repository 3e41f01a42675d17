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
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from cnnf import fused
from cnnf.attacks import Attack, create_attack
from cnnf.data import ArrayDataset
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.report import AUTOATTACK_ATTACKS, AttackResult, Check, Curve, EvalReport, mean_std
from cnnf.runtime import tune_cpu_allocator
# The suite types and builders live in cnnf.suite; re-exported here, where users meet them.
from cnnf.suite import (UNBOUNDED, AttackSpec, Suite, attack_norm, autoattack_suite, cnnf_paper_suite,  # noqa: F401
                        fl_paper_suite, pgd_suite, suite_from_config)


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
        self.planned_keys: set[str] = set()

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
        """The work of `spec` with `seed` on the first n images (all by default).
        A cascade spec of the suite at its nominal budget on all images attacks
        only the examples every earlier attack left robust: finding them runs
        (or reads from the cache) the earlier attacks' units."""
        target, gates = self.resolve_target(spec.target, spec.gates)
        rows = None
        if spec.cascade and eps == "nominal" and n is None and spec in self.suite.attacks:
            survivors = self.clean_correct().clone()
            for earlier in self.suite.attacks[: self.suite.attacks.index(spec)]:
                survivors &= self.run(self.unit(earlier, seed), earlier.name())
            rows = tuple(torch.nonzero(survivors).flatten().tolist())
        return Unit(spec.attack, spec.eps if eps == "nominal" else eps, target, gates, spec.params, seed,
                    self.n if n is None else min(n, self.n), rows)

    def planned(self, units: Sequence[Unit]) -> None:
        """Count the batches still to run, for the progress callback (units
        not planned here, cascade stages and check probes, are counted when they start)."""
        todo = {u.key(): u for u in units if u.key() not in self.results and not (u.eps == 0.0)}
        self.planned_keys.update(todo)
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
        if key not in self.planned_keys:
            self.planned_keys.add(key)
            self.total_batches += -(-(unit.size() - self.partial.get(key, (0,))[0]) // self.suite.batch_size)
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
            # Cascade stages are planned when they start: their images are known only then.
            main_units = [ev.unit(spec, s) for spec in suite.attacks for s in suite.seeds if not spec.cascade]
            curve_units = [ev.unit(spec, s, eps=e) for spec in suite.attacks for e in spec.eps_grid for s in suite.seeds]
            ev.planned(main_units + curve_units)
            clean = ev.clean_correct()
            results = tuple(_attack_result(ev, spec) for spec in suite.attacks)
            curves = tuple(_curve(ev, spec) for spec in suite.attacks if spec.eps_grid)
            others = [spec for spec in suite.attacks if spec.attack not in AUTOATTACK_ATTACKS]
            per_seed_min, per_seed_no_aa = [], []
            for s in suite.seeds:
                worst = clean.clone()
                for spec in others:
                    worst &= ev.run(ev.unit(spec, s), spec.name())
                per_seed_no_aa.append(worst.float().mean().item())
                for spec in suite.attacks:
                    if spec.attack in AUTOATTACK_ATTACKS:
                        worst &= ev.run(ev.unit(spec, s), spec.name())
                per_seed_min.append(worst.float().mean().item())
            min_acc, min_std = mean_std(per_seed_min) if suite.attacks else (clean.float().mean().item(), 0.0)
            # The Min without AutoAttack's attacks, when the suite runs both kinds.
            min_no_aa, std_no_aa = mean_std(per_seed_no_aa) if others and len(others) < len(suite.attacks) else (None, None)
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
                      time.perf_counter() - t0, t_checks, min_no_aa, std_no_aa)


def _n_classes(ev: _Evaluator) -> int:
    with torch.no_grad():
        return int(ev.scored(ev.data.x[:1]).shape[1])


def _attack_result(ev: _Evaluator, spec: AttackSpec) -> AttackResult:
    per_seed, seconds, attacked = [], 0.0, 0
    for s in ev.suite.seeds:
        u = ev.unit(spec, s)
        per_seed.append(ev.run(u, spec.name()).float().mean().item())
        seconds += ev.seconds[u.key()]
        attacked += u.size()  # a cascade stage attacks only the survivors of the earlier ones
    acc, std = mean_std(per_seed)
    target, gates = ev.resolve_target(spec.target, spec.gates)
    norm = attack_norm(spec.attack, dict(spec.params))
    ips = attacked / seconds if seconds > 0 else float("inf")
    return AttackResult(spec.name(), spec.attack, target, gates, spec.eps, norm, acc, std, tuple(per_seed), seconds, ips,
                        spec.cascade)


def _curve(ev: _Evaluator, spec: AttackSpec) -> Curve:
    grid = sorted(set(spec.eps_grid))
    accs, stds = [], []
    for e in grid:
        acc, std = mean_std([ev.run(ev.unit(spec, s, eps=e), f"{spec.name()} eps {e:g}").float().mean().item()
                             for s in ev.suite.seeds])
        accs.append(acc)
        stds.append(std)
    target, _ = ev.resolve_target(spec.target, spec.gates)
    return Curve(spec.name(), spec.attack, target, attack_norm(spec.attack, dict(spec.params)), tuple(grid), tuple(accs), tuple(stds))


__all__ = ["AttackSpec", "EvalProgress", "EvalReport", "Progress", "Suite", "autoattack_suite", "cnnf_paper_suite", "evaluate",
           "fl_paper_suite", "pgd_suite", "suite_from_config"]

