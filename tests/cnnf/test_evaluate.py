"""cnnf.evaluate.evaluate: the returned report, against an independent recomputation."""

from __future__ import annotations

import pytest
import torch

from cnnf.attacks import LinfPGDAttack
from cnnf.config import EvalConfig
from cnnf.data import ArrayDataset, DataSplits
from cnnf.evaluate import EvalReport, evaluate
from cnnf.models import FeedbackNet, InferenceModel

CFG = EvalConfig(eps_linf=0.05, pgd_steps=2, n_examples=48, batch_size=64, prediction="avg", seed=0)


@pytest.fixture(scope="module")
def data(sample_splits: DataSplits) -> ArrayDataset:
    return sample_splits.test.head(80)


@pytest.fixture(scope="module")
def report(trained_net: FeedbackNet, data: ArrayDataset) -> EvalReport:
    return evaluate(trained_net, data, CFG, n_iterations=1, split="test")


def test_report_fields(report: EvalReport) -> None:
    assert isinstance(report, EvalReport)
    assert report.split == "test" and report.n_examples == 48 and report.n_iterations == 1
    assert report.prediction == "avg" and report.pgd_steps == 2
    assert report.eps_linf == 0.05, "eps is reported in [0, 1] pixel units, not input units"
    assert report.seconds > 0
    assert report.metrics("val/") == {
        "val/clean_acc": report.clean_acc,
        "val/pgd_first_acc": report.pgd_first_acc,
        "val/pgd_e2e_acc": report.pgd_e2e_acc,
    }


def test_robust_accuracy_is_at_most_clean(report: EvalReport) -> None:
    assert 0.5 < report.clean_acc <= 1.0
    assert report.pgd_first_acc <= report.clean_acc
    assert report.pgd_e2e_acc <= report.clean_acc
    assert report.pgd_e2e_acc < report.clean_acc, "the attack should break some predictions"


def test_report_matches_independent_recomputation(trained_net: FeedbackNet, data: ArrayDataset, report: EvalReport) -> None:
    """Only the first n_examples count; 'first' attacks logits_0 and is scored by
    the full CNN-F; 'e2e' attacks the scored prediction itself."""
    x, y = data.x[:48], data.y[:48]
    scored = InferenceModel(trained_net, 1, "avg")
    first = InferenceModel(trained_net, 0, "first")
    pgd = LinfPGDAttack(0.05, 2, None, True, 0)
    x_first, x_e2e = pgd.perturb(first, x, y), pgd.perturb(scored, x, y)
    with torch.no_grad():
        clean_ok = scored(x).argmax(1) == y
        first_ok = clean_ok & (scored(x_first).argmax(1) == y)
        e2e_ok = clean_ok & (scored(x_e2e).argmax(1) == y)
    assert report.clean_acc == pytest.approx(clean_ok.float().mean().item())
    assert report.pgd_first_acc == pytest.approx(first_ok.float().mean().item())
    assert report.pgd_e2e_acc == pytest.approx(e2e_ok.float().mean().item())


def test_n_examples_and_progress(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    calls: list[tuple[int, int]] = []
    cfg = EvalConfig(eps_linf=0.05, pgd_steps=1, n_examples=20, batch_size=8, prediction="first")
    r = evaluate(trained_net, data, cfg, n_iterations=3, progress=lambda done, total: calls.append((done, total)))
    assert r.n_examples == 20
    assert calls == [(8, 20), (16, 20), (20, 20)]
    assert r.n_iterations == 0, "the 'first' prediction runs no feedback iterations"
    assert r.pgd_first_acc == r.pgd_e2e_acc  # with 'first' both attacks are the same
    all_data = evaluate(trained_net, data, EvalConfig(eps_linf=0.05, pgd_steps=1, prediction="first"), n_iterations=0)
    assert all_data.n_examples == len(data) == 80


def test_zero_eps_gives_clean_accuracy(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    r = evaluate(trained_net, data, EvalConfig(eps_linf=0.0, pgd_steps=2, n_examples=32), n_iterations=1)
    assert r.eps_linf == 0.0
    assert r.pgd_first_acc == r.clean_acc and r.pgd_e2e_acc == r.clean_acc


def test_evaluate_is_reproducible(trained_net: FeedbackNet, data: ArrayDataset, report: EvalReport) -> None:
    again = evaluate(trained_net, data, CFG, n_iterations=1, split="test")
    assert again.metrics() == report.metrics()


def test_result_does_not_depend_on_batch_size(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """One random-start stream per evaluation: batches get fresh starts, so the
    split into batches does not change the numbers (an earlier version re-seeded
    every batch, giving each batch the same noise)."""
    data = sample_splits.val.head(32)
    reports = [
        evaluate(trained_net, data, EvalConfig(pgd_steps=2, batch_size=b), n_iterations=1)
        for b in (8, 32)
    ]
    assert reports[0].metrics() == reports[1].metrics()


def test_perturb_works_inside_no_grad(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    first = InferenceModel(trained_net, 0, "first")
    x, y = sample_splits.val.x[:4], sample_splits.val.y[:4]
    with torch.no_grad():
        x_adv = LinfPGDAttack(0.1, steps=2, seed=0).perturb(first, x, y)
    assert not torch.equal(x_adv, x) and (x_adv - x).abs().max() <= 0.2 + 1e-6
