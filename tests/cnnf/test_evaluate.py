"""cnnf.evaluate.evaluate: the report against independent recomputation,
targets, seeds, progress, resumption and suite validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cnnf.attacks import LinfPGDAttack
from cnnf.config import EvalConfig
from cnnf.data import ArrayDataset, DataSplits
from cnnf.evaluate import AttackSpec, EvalProgress, Suite, evaluate, pgd_suite, suite_from_config
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.report import EvalReport

# Deterministic PGD (no random start) so a test can recompute it independently.
SUITE = pgd_suite(0.05, 2, random_start=False, n_iterations=1, prediction="avg", n_examples=48, batch_size=64,
                  checks=False)


@pytest.fixture(scope="module")
def data(sample_splits: DataSplits) -> ArrayDataset:
    return sample_splits.test.head(80)


@pytest.fixture(scope="module")
def report(trained_net: FeedbackNet, data: ArrayDataset) -> EvalReport:
    return evaluate(trained_net, data, SUITE, split="test")


def test_report_fields(report: EvalReport) -> None:
    assert isinstance(report, EvalReport)
    assert report.split == "test" and report.n_examples == 48 and report.n_iterations == 1
    assert report.prediction == "avg" and report.n_classes == 10 and report.seeds == (0,)
    assert [r.label for r in report.attacks] == ["pgd_linf/first", "pgd_linf/e2e"]
    first, e2e = report.attacks
    assert (first.target, e2e.target) == ("first", "avg"), "e2e attacks the scored prediction"
    assert first.eps == 0.05 and first.norm == "linf", "eps is reported in [0, 1] pixel units, not input units"
    assert report.seconds > 0 and first.images_per_s > 0
    assert report.checks == () and report.flagged == ()
    # No checks ran: no checks_flagged (a 0 would claim they passed).
    assert report.metrics("val_") == {
        "val_clean_acc": report.clean_acc, "val_min_acc": report.min_acc,
        "val_pgd_linf_first_acc": first.acc, "val_pgd_linf_e2e_acc": e2e.acc,
    }
    assert tuple(report.metrics("val_")) == SUITE.metric_names("val_"), "the suite names every metric its report gives"
    assert report.timings("t_") == {"t_eval_s": report.seconds, "t_checks_s": 0.0,
                                    "t_pgd_linf_first_s": first.seconds, "t_pgd_linf_e2e_s": e2e.seconds}
    assert tuple(report.timings("t_")) == SUITE.timing_names("t_")
    with pytest.raises(KeyError, match="pgd_linf/first"):
        report.result("nope")


def test_report_matches_independent_recomputation(trained_net: FeedbackNet, data: ArrayDataset, report: EvalReport) -> None:
    """Only the first n_examples count; 'first' attacks logits_0 and is scored by
    the full CNN-F; 'e2e' attacks the scored prediction itself; Min is the mean
    over images of the worst case, not the minimum of the means."""
    x, y = data.x[:48], data.y[:48]
    scored = InferenceModel(trained_net, 1, "avg")
    first = InferenceModel(trained_net, 0, "first")
    pgd = LinfPGDAttack(0.05, 2, None, False, 0)
    x_first, x_e2e = pgd.perturb(first, x, y), pgd.perturb(scored, x, y)
    with torch.no_grad():
        clean_ok = scored(x).argmax(1) == y
        first_ok = clean_ok & (scored(x_first).argmax(1) == y)
        e2e_ok = clean_ok & (scored(x_e2e).argmax(1) == y)
    assert report.clean_acc == pytest.approx(clean_ok.float().mean().item())
    assert report.acc("pgd_linf/first") == pytest.approx(first_ok.float().mean().item())
    assert report.acc("pgd_linf/e2e") == pytest.approx(e2e_ok.float().mean().item())
    assert report.min_acc == pytest.approx((first_ok & e2e_ok).float().mean().item())
    assert report.acc("pgd_linf/e2e") < report.clean_acc, "the attack should break some predictions"


def test_progress_and_plain_first_prediction(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    """With the 'first' prediction there is no feedback: the first-pass and
    end-to-end attacks are one unit of work, run once."""
    calls: list[EvalProgress] = []
    suite = pgd_suite(0.05, 1, prediction="first", n_iterations=3, n_examples=20, batch_size=8, checks=False)
    r = evaluate(trained_net, data, suite, progress=calls.append)
    assert r.n_examples == 20 and r.n_iterations == 0
    assert [(c.done, c.total) for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert {c.label for c in calls} <= {"pgd_linf/first", "pgd_linf/e2e"}
    assert r.acc("pgd_linf/first") == r.acc("pgd_linf/e2e")
    everything = evaluate(trained_net, data, dataclasses.replace(suite, n_examples=None))
    assert everything.n_examples == len(data) == 80


def test_zero_eps_gives_clean_accuracy(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    r = evaluate(trained_net, data, pgd_suite(0.0, 2, n_examples=32, checks=False))
    assert r.acc("pgd_linf/first") == r.clean_acc == r.acc("pgd_linf/e2e")


def test_reproducible_and_independent_of_batch_size(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """One random-start stream per attack: batches get fresh starts, and how the
    images are split into batches does not change the numbers."""
    data = sample_splits.val.head(32)
    reports = [evaluate(trained_net, data, pgd_suite(0.1, 2, batch_size=b, checks=False)) for b in (8, 32, 8)]
    assert reports[0].metrics() == reports[1].metrics() == reports[2].metrics()


def test_seeds_give_mean_and_std(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    r = evaluate(trained_net, data, pgd_suite(0.1, 1, n_examples=64, seeds=(0, 1, 2), checks=False))
    res = r.result("pgd_linf/e2e")
    assert len(res.per_seed) == 3
    assert res.acc == pytest.approx(sum(res.per_seed) / 3)
    assert res.std == pytest.approx(torch.tensor(res.per_seed).std().item())
    # different seeds draw different random starts: on 64 images one of the two
    # targets can tie across seeds by chance (e2e did with the reference init), not both
    spreads = [len(set(r.result(label).per_seed)) for label in ("pgd_linf/first", "pgd_linf/e2e")]
    assert max(spreads) > 1, "different seeds draw different random starts"


def test_eps_grid_gives_a_monotone_curve(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    suite = Suite((AttackSpec.of("pgd_linf", 0.1, steps=5, eps_grid=(0.0, 0.05, 0.1, 0.2)),), n_examples=48, checks=False)
    r = evaluate(trained_net, data, suite)
    (curve,) = r.curves
    assert curve.eps == (0.0, 0.05, 0.1, 0.2) and curve.label == "pgd_linf/e2e"
    assert curve.acc[0] == r.clean_acc, "eps 0 is the clean accuracy"
    assert curve.acc[2] == r.acc("pgd_linf/e2e"), "the nominal budget is the same unit of work"
    assert all(b <= a for a, b in zip(curve.acc, curve.acc[1:])), curve.acc


def test_resume_after_interruption_gives_the_same_report(trained_net: FeedbackNet, data: ArrayDataset, tmp_path: Path) -> None:
    suite = pgd_suite(0.1, 2, n_examples=48, batch_size=16, checks=False)
    full = evaluate(trained_net, data, suite)
    state = tmp_path / "eval.pt"

    class Stop(Exception):
        pass

    def stop_after_four(p: EvalProgress) -> None:
        if p.done == 4:
            raise Stop

    with pytest.raises(Stop):
        evaluate(trained_net, data, suite, state_path=state, progress=stop_after_four)
    assert state.exists()
    calls: list[EvalProgress] = []
    resumed = evaluate(trained_net, data, suite, state_path=state, progress=calls.append)
    assert len(calls) == 6 - 4, "only the batches not saved before the interruption run again"
    assert resumed.metrics() == full.metrics()
    other = dataclasses.replace(suite, n_examples=32)
    with pytest.raises(ValueError, match="different evaluation"):
        evaluate(trained_net, data, other, state_path=state)


def test_plain_module_and_transfer(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    """Any classifier module can be evaluated; a transfer attack needs its source."""
    plain = InferenceModel(trained_net, 0, "first")
    suite = Suite((AttackSpec.of("fgsm", 0.1), AttackSpec.of("transfer", 0.1, base="pgd_linf", steps=3)),
                  n_examples=32, checks=False)
    with pytest.raises(ValueError, match="transfer_source"):
        evaluate(plain, data, suite)
    r = evaluate(plain, data, suite, transfer_source=plain)
    assert r.prediction == "first" and r.n_iterations == 0
    assert r.acc("transfer/e2e") <= r.clean_acc


def test_suite_from_config_keeps_the_sweep_metric_names() -> None:
    suite = suite_from_config(EvalConfig(eps_linf=0.1, pgd_steps=7, eps_grid=(0.05, 0.2), check_examples=50), 2)
    assert [a.name() for a in suite.attacks] == ["pgd_first", "pgd_e2e", "fgsm", "apgd_ce"]  # APGD-CE on the survivors
    assert suite.attacks[1].eps_grid == (0.0, 0.05, 0.1, 0.2)
    assert suite.n_iterations == 2 and suite.check_examples == 50 and suite.checks


@pytest.mark.parametrize(("make", "message"), [
    (lambda: AttackSpec.of("nope", 0.1), "unknown attack 'nope'"),
    (lambda: AttackSpec.of("pgd_linf", 2.0), r"eps 2.0 must be in \[0, 1\] pixel units"),
    (lambda: AttackSpec.of("pgd_linf"), "eps is required"),
    (lambda: AttackSpec.of("pgd_l2", -0.5), r"eps -0.5 must be >= 0"),
    (lambda: AttackSpec.of("pgd_linf", 0.1, target="middle"), "target must be one of"),
    (lambda: AttackSpec.of("pgd_linf", 0.1, gates="soft"), "gates must be one of"),
    (lambda: Suite((AttackSpec.of("fgsm", 0.1), AttackSpec.of("fgsm", 0.2))), "duplicate labels"),
    (lambda: Suite((), seeds=()), "at least one seed"),
])
def test_bad_suites_are_rejected_with_the_field(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_l2_budgets_may_exceed_one_pixel() -> None:
    """An L2 budget sums over all pixels: 1.5 is a normal MNIST-scale value."""
    assert AttackSpec.of("pgd_l2", 1.5).eps == 1.5
    assert AttackSpec.of("cw_l2", 2.0).eps == 2.0
