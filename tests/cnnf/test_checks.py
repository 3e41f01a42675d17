"""The integrity checks fire on a deliberately gradient-masked model and stay
quiet on a plain one (robustness-eval.md, checks 1-8)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cnnf.data import ArrayDataset, DataSplits
from cnnf.evaluate import AttackSpec, Suite, evaluate, pgd_suite
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.report import CHECK_NAMES, EvalReport

# A converged attack on the check images: 50 steps, so that doubling the effort
# (check 4) changes nothing on the small trained model.
SUITE = pgd_suite(0.1, 50, prediction="first", n_iterations=0, n_examples=64, check_examples=64)


class Quantized(nn.Module):
    """Rounds its input to 5 grey levels before the model: the input gradient is
    0 everywhere (the textbook gradient masking of Athalye et al. 2018)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round((x + 1) * 2) / 2 - 1)


@pytest.fixture(scope="module")
def data(sample_splits: DataSplits) -> ArrayDataset:
    return sample_splits.val


@pytest.fixture(scope="module")
def plain_report(trained_net: FeedbackNet, data: ArrayDataset) -> EvalReport:
    return evaluate(InferenceModel(trained_net, 0, "first"), data, SUITE)


@pytest.fixture(scope="module")
def masked_report(trained_net: FeedbackNet, data: ArrayDataset) -> EvalReport:
    return evaluate(Quantized(InferenceModel(trained_net, 0, "first")), data, SUITE)


def test_every_check_is_reported_with_its_numbers(plain_report: EvalReport) -> None:
    assert [c.id for c in plain_report.checks] == list(range(1, 9))
    assert [(c.id, c.name) for c in plain_report.checks] == list(CHECK_NAMES.items()), "the ids the metrics are declared from"
    assert 0 < plain_report.checks_seconds < plain_report.seconds
    for c in plain_report.checks:
        assert c.detail
        if c.status != "skipped":
            assert c.numbers, c


def test_checks_stay_quiet_on_a_plain_model(plain_report: EvalReport) -> None:
    assert plain_report.clean_acc > 0.5, "a trained model, so attacks have predictions to break"
    assert plain_report.flagged == (), [(c.id, c.detail) for c in plain_report.flagged]
    by_id = {c.id: c for c in plain_report.checks}
    assert by_id[8].status == "skipped", "no feedback: nothing to compare end to end"
    assert dict(by_id[1].numbers)["acc_at_0.5"] <= 0.1


def test_checks_fire_on_a_gradient_masked_model(masked_report: EvalReport) -> None:
    flagged = {c.id for c in masked_report.flagged}
    assert 7 in flagged, "zero input gradients must be flagged"
    assert dict(masked_report.checks[6].numbers)["zero_grad_share_first"] == 1.0
    assert 1 in flagged, "PGD at eps 0.5 cannot reach chance without gradients"
    assert masked_report.metrics()["checks_flagged"] == len(flagged) >= 2
    assert masked_report.metrics()["check_7_ok"] == 0.0
    # Every metric the report gives is one the suite declares (check 8, skipped here, is declared but absent).
    assert set(masked_report.metrics("val_")) == set(SUITE.metric_names("val_")) - {"val_check_8_ok"}


def test_cnnf_end_to_end_check_compares_first_e2e_and_bpda(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    suite = Suite((AttackSpec.of("pgd_linf", 0.1, target="first", steps=5), AttackSpec.of("pgd_linf", 0.1, steps=5),
                   AttackSpec.of("pgd_linf", 0.1, steps=5, gates="bpda")),
                  n_iterations=2, prediction="avg", n_examples=32, check_examples=32)
    r = evaluate(trained_net, data, suite)
    check = r.checks[7]
    assert check.status in ("pass", "flag")
    numbers = dict(check.numbers)
    assert numbers["first_acc"] == r.acc("pgd_linf/first")
    assert numbers["e2e_acc"] == r.acc("pgd_linf/e2e")
    assert numbers["e2e_bpda_acc"] == r.acc("pgd_linf/e2e_bpda")
    flagged = numbers["e2e_acc"] > numbers["first_acc"] + 1 / 32 or numbers["e2e_bpda_acc"] < numbers["e2e_acc"] - 1 / 32
    assert check.flagged == flagged


def test_monotone_check_reads_attack_curves_not_noise_curves(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    """Check 3 asks whether an attack gets weaker with more budget; a noise
    curve (a fresh random draw at each strength) is not an attack, and its
    sampling error must not raise the flag or be reported as a failure."""
    suite = Suite((AttackSpec.of("pgd_linf", 0.1, steps=10, eps_grid=(0.0, 0.05, 0.1), label="pgd"),
                   AttackSpec.of("uniform_noise", 0.3, draws=1, eps_grid=(0.0, 0.2, 0.4, 0.6), label="noise")),
                  prediction="first", n_iterations=0, n_examples=64, check_examples=32)
    report = evaluate(InferenceModel(trained_net, 0, "first"), data, suite)
    assert {c.label for c in report.curves} == {"pgd", "noise"}
    check3 = next(c for c in report.checks if c.id == 3)
    assert "pgd" in check3.detail and "noise" not in check3.detail
