"""The AutoAttack suite: cascaded stages (each on the examples
the earlier ones left robust), the per-example Min, the sweep config's
`eval.suite`, APGD-CE in the default suite, and integrity check 4 comparing
APGD with PGD."""

from __future__ import annotations

import json

import pytest
import torch

from cnnf.config import ConfigError, EvalConfig
from cnnf.data import ArrayDataset, DataSplits
from cnnf.evaluate import AttackSpec, Suite, _Evaluator, autoattack_suite, evaluate, suite_from_config
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.report import EvalReport
from cnnf.tables import autoattack_table
from sweeps.spec import SpecError, parse_sweep
from tests.cnnf.test_tables import row_cells
from tests.conftest import TINY_SWEEP

FAST_AA = dict(apgd_steps=5, n_targets=2, square_queries=20)


@pytest.fixture(scope="module")
def data(sample_splits: DataSplits) -> ArrayDataset:
    return sample_splits.test.head(48)


def test_autoattack_suite_runs_each_stage_on_the_survivors(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    suite = autoattack_suite(0.1, targets=("first", "e2e"), n_iterations=1, prediction="avg", n_examples=48,
                             batch_size=48, checks=False, **FAST_AA)
    assert [a.name() for a in suite.attacks] == ["apgd_ce/first", "apgd_ce/e2e", "apgd_t/first", "apgd_t/e2e", "square/e2e"]
    assert all(a.cascade for a in suite.attacks)
    report = evaluate(trained_net, data, suite)
    accs = [a.acc for a in report.attacks]
    assert accs == sorted(accs, reverse=True), f"accuracy after each stage never rises: {accs}"
    assert report.min_acc == pytest.approx(accs[-1]), "the Min is the accuracy after the last stage"
    assert accs[0] < report.clean_acc
    table = autoattack_table([("CNN-F", [report])])
    for row in ("APGD-CE (first) †", "APGD-CE (e2e) †", "APGD-T (e2e) †", "Square (e2e) †", "Min (all attacks)"):
        assert f"| {row} " in table, table
    assert f"{100 * report.min_acc:.2f} ± 0.00" in table and "FAB-T" in table
    assert all(a.images_per_s > 0 for a in report.attacks)
    # The units: stage k attacks exactly the examples clean-correct and robust after stages 1..k-1.
    trained_net.eval()
    ev = _Evaluator(trained_net, data, suite, None, None, None)
    survivors = ev.clean_correct().clone()
    for spec in suite.attacks:
        unit = ev.unit(spec, 0)
        assert unit.rows == tuple(torch.nonzero(survivors).flatten().tolist()), spec.name()
        robust = ev.run(unit, spec.name())
        assert not (robust & ~survivors).any(), "an example broken earlier stays broken"
        survivors &= robust
    assert survivors.float().mean().item() == pytest.approx(report.min_acc)


def test_cascade_false_runs_every_attack_on_every_image(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    suite = autoattack_suite(0.1, cascade=False, square=False, n_iterations=1, n_examples=16, batch_size=16, checks=False,
                             **FAST_AA)
    ev = _Evaluator(trained_net.eval(), data, suite, None, None, None)
    assert all(ev.unit(spec, 0).rows is None for spec in suite.attacks)
    report = evaluate(trained_net, data, suite)
    worst = min(a.acc for a in report.attacks)
    assert report.min_acc <= worst


def test_the_report_gives_the_min_without_autoattacks_attacks(trained_net: FeedbackNet, data: ArrayDataset) -> None:
    pgd = AttackSpec.of("pgd_linf", 0.1, steps=3)
    fgsm = AttackSpec.of("fgsm", 0.1)
    apgd = AttackSpec.of("apgd_ce", 0.1, steps=5)
    common = dict(n_iterations=1, prediction="avg", n_examples=32, batch_size=32, checks=False)
    before = evaluate(trained_net, data, Suite(attacks=(pgd, fgsm), **common))
    after = evaluate(trained_net, data, Suite(attacks=(pgd, fgsm, apgd), **common))
    assert before.min_acc_no_aa is None and before.autoattack_gap is None, "no AutoAttack attack: nothing to compare"
    assert after.min_acc_no_aa == pytest.approx(before.min_acc), "the same images and attacks without APGD"
    assert after.min_acc <= after.min_acc_no_aa
    assert after.min_acc <= after.acc("apgd_ce/e2e")
    assert after.autoattack_gap == pytest.approx(after.min_acc_no_aa - after.min_acc)
    only_aa = evaluate(trained_net, data, Suite(attacks=(apgd,), **common))
    assert only_aa.min_acc_no_aa is None, "only AutoAttack's attacks: no Min without them"
    assert EvalReport.from_dict(json.loads(json.dumps(after.as_dict()))) == after
    table = autoattack_table([("CNN-F", [after]), ("PGD only", [before])])
    assert row_cells(table, "Min without APGD and Square") == [f"{100 * after.min_acc_no_aa:.2f} ± 0.00", "–"], table
    assert row_cells(table, "Gap (points)") == [f"{100 * after.autoattack_gap:.2f}", "–"], table


def test_bad_autoattack_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="targets: expected"):
        autoattack_suite(0.1, targets=("middle",))
    with pytest.raises(ValueError, match="norm: expected linf or l2"):
        autoattack_suite(0.1, norm="l1")
    with pytest.raises(ValueError, match="cascade"):
        AttackSpec.of("apgd_ce", 0.1, cascade=True, eps_grid=(0.0, 0.1))
    assert autoattack_suite(1.5, norm="l2").attacks[0].eps == 1.5, "an L2 budget may exceed one pixel"


def test_the_default_sweep_suite_adds_apgd_ce_on_the_pgd_survivors() -> None:
    suite = suite_from_config(EvalConfig(eps_linf=0.1, pgd_steps=7), 2)
    assert [a.name() for a in suite.attacks] == ["pgd_first", "pgd_e2e", "fgsm", "apgd_ce"]
    apgd = suite.attacks[-1]
    assert apgd.cascade and apgd.target is None and dict(apgd.params) == {"steps": 100}
    assert "val_apgd_ce_acc" in suite.metric_names("val_")
    old = suite_from_config(EvalConfig(apgd_steps=0), 2)
    assert [a.name() for a in old.attacks] == ["pgd_first", "pgd_e2e", "fgsm"], "apgd_steps 0: the PGD-only suite"


def test_the_autoattack_sweep_suite() -> None:
    cfg = EvalConfig(suite="autoattack", eps_linf=0.1, apgd_steps=50, apgd_targets=3, square_queries=1000, n_examples=100)
    cnnf = suite_from_config(cfg, 1)
    assert [a.name() for a in cnnf.attacks] == ["apgd_ce/first", "apgd_ce/e2e", "apgd_t/first", "apgd_t/e2e", "square/e2e"]
    assert dict(cnnf.attacks[3].params) == {"n_targets": 3, "norm": "linf", "steps": 50}
    assert dict(cnnf.attacks[4].params) == {"norm": "linf", "queries": 1000}
    assert cnnf.n_examples == 100 and all(a.cascade for a in cnnf.attacks)
    assert {"val_apgd_ce_e2e_acc", "val_square_e2e_acc", "val_min_acc"} <= set(cnnf.metric_names("val_"))
    plain = suite_from_config(cfg, 0)
    assert [a.name() for a in plain.attacks] == ["apgd_ce/e2e", "apgd_t/e2e", "square/e2e"]
    no_square = suite_from_config(EvalConfig(suite="autoattack", square_queries=0), 0)
    assert [a.attack for a in no_square.attacks] == ["apgd_ce", "apgd_t"]


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(suite="fab"), "suite"),
    (dict(apgd_steps=-1), "apgd_steps"),
    (dict(suite="autoattack", apgd_steps=0), "apgd_steps"),
    (dict(apgd_targets=0), "apgd_targets"),
    (dict(square_queries=-5), "square_queries"),
    (dict(suite="autoattack", eps_grid=(0.05,)), "eps_grid"),
])
def test_bad_eval_config_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        EvalConfig(**kwargs)
    assert info.value.field == field and "\n" not in str(info.value)


def test_eval_suite_in_the_sweep_yaml(write_sweep) -> None:
    text = TINY_SWEEP.replace("    pgd_steps: 2\n", "    pgd_steps: 2\n    suite: autoattack\n    square_queries: 100\n")
    loaded = parse_sweep(text)
    assert loaded.config.base.eval.suite == "autoattack" and loaded.config.base.eval.square_queries == 100
    assert parse_sweep(TINY_SWEEP).config.base.eval.suite == "pgd", "the default"
    with pytest.raises(SpecError) as info:
        parse_sweep(text.replace("suite: autoattack", "suite: autoatack"))
    assert "\n" not in str(info.value) and "suite" in str(info.value)


def test_check_4_says_when_apgd_beats_pgd(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """A crippled PGD (one tiny step) beside APGD-CE: check 4 flags the images
    APGD breaks and PGD does not; beside a converged PGD it passes and says how many."""
    model = InferenceModel(trained_net, 0, "first")
    common = dict(n_iterations=0, prediction="first", n_examples=64, check_examples=64)
    apgd = AttackSpec.of("apgd_ce", 0.1, steps=20, cascade=True)
    weak = Suite((AttackSpec.of("pgd_linf", 0.1, steps=1, step_pixels=0.002, random_start=False), apgd), **common)
    check = evaluate(model, sample_splits.val, weak).checks[3]
    assert check.id == 4 and check.status == "flag", check
    assert "apgd_ce/e2e (with the stages before it) breaks" in check.detail and "PGD overstates robustness" in check.detail
    numbers = dict(check.numbers)
    assert numbers["apgd_ce/e2e_only_share"] > 0.1
    assert numbers["pgd_worst_acc"] - numbers["apgd_ce/e2e_acc"] == pytest.approx(numbers["apgd_ce/e2e_only_share"])
    strong = Suite((AttackSpec.of("pgd_linf", 0.1, steps=50), apgd), **common)
    check = evaluate(model, sample_splits.val, strong).checks[3]
    assert "PGD overstates" not in check.detail, check
    assert dict(check.numbers)["apgd_ce/e2e_only_share"] <= 0.02
