"""The feedback-learning steps end to end on the bundled Fashion-MNIST sample
(tiny settings): stages are reused, generation follows the plan, retraining
starts from the trained weights, evaluation runs the FL suite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnnf.config import DataConfig, TrainConfig
from cnnf.data import load_splits
from fl.config import FLConfig, FLEvalConfig, RetrainConfig, SearchConfig, SelectionConfig
from fl.pipeline import centre_margins, evaluate_model, retrain, run_feedback_learning, search_margins, train_base
from fl.stats import margin_stats

pytestmark = pytest.mark.slow

TINY = FLConfig(
    data=DataConfig(dataset="fashion-mnist-sample", n_train=1500),
    train=TrainConfig(epochs=2, batch_size=32, lr=3e-3, n_iterations=0, device="cpu"),
    search=SearchConfig(n_samples=20, n_directions=8, step=0.05, max_margin=0.5, device="cpu"),
    selection=SelectionConfig(quota_high=1, quota_medium=1, quota_low=2, directions_per_sample=3),
    retrain=RetrainConfig(epochs=1),
    eval=FLEvalConfig(n_examples=16, check_examples=8, fgsm_grid=(0.05, 0.2), l2_eps=1.0),
)


@pytest.fixture(scope="module")
def splits():
    return load_splits(TINY.data)


def test_base_model_and_margins_are_computed_once_per_stage_dir(splits, tmp_path: Path) -> None:
    logs: list[str] = []
    net, history = train_base(TINY, splits, stage_dir=tmp_path, log=logs.append)
    again, history2 = train_base(TINY, splits, stage_dir=tmp_path, log=logs.append)
    assert history == history2 and len(history) == 2
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    m1 = search_margins(net, splits, TINY, stage_dir=tmp_path, log=logs.append)
    m2 = search_margins(again, splits, TINY, stage_dir=tmp_path, log=logs.append)
    assert torch.equal(m1.margin, m2.margin) and m1.fingerprint == m2.fingerprint
    assert [line.split(":")[0] for line in logs] == ["base", "base", "margins", "margins"]
    assert "stored" in logs[0] and "reusing" in logs[1] and "stored" in logs[2] and "reusing" in logs[3]
    assert len(list(tmp_path.glob("base-*.pt"))) == 1 and len(list(tmp_path.glob("margins-*.pt"))) == 1
    # A different training config is a different stage.
    train_base(replace(TINY, train=replace(TINY.train, seed=5)), splits, stage_dir=tmp_path)
    assert len(list(tmp_path.glob("base-*.pt"))) == 2


def test_retrain_generates_by_plan_and_starts_from_the_trained_weights(splits) -> None:
    net, _ = train_base(TINY, splits)
    margins = search_margins(net, splits, TINY)
    stats = margin_stats(margins, splits.n_classes)
    fl = retrain(net, splits, margins, stats, TINY)
    reduced = retrain(net, splits, margins, stats, TINY, equal_quotas=True)
    assert fl.name == "fl" and reduced.name == "reduced_fl"
    assert sorted(set(fl.plan.tier)) == ["high", "low", "medium"] and set(reduced.plan.tier) == {"equal"}
    assert sum(fl.plan.quota) == len(fl.plan.rows) == 2 * 1 + 3 * 1 + 5 * 2
    for variant in (fl, reduced):
        # At most directions_per_sample examples per chosen sample, counted per class.
        assert sum(variant.generated_per_class) == variant.n_generated
        for c, n in enumerate(variant.generated_per_class):
            assert n <= variant.plan.quota[c] * TINY.selection.directions_per_sample
    # Retraining starts from the trained model: one epoch later it is close to it, not a fresh init.
    fresh = train_base(replace(TINY, train=replace(TINY.train, seed=9)), splits)[0]
    def dist(a, b) -> float:
        return sum(float((a.state_dict()[k] - b.state_dict()[k]).norm()) for k in a.state_dict() if a.state_dict()[k].is_floating_point())
    assert dist(fl.net, net) < dist(fresh, net)


def test_run_compares_original_fl_and_reduced_fl(splits, tmp_path: Path) -> None:
    progress_calls: list[tuple[str, int, int]] = []

    def search_progress(name: str):
        return lambda done, total: progress_calls.append((name, done, total))

    run = run_feedback_learning(TINY, splits, stage_dir=tmp_path, split_names=("val",), search_progress=search_progress)
    assert list(run.outcomes) == ["original", "fl", "reduced_fl"]
    for name, o in run.outcomes.items():
        report = o.reports["val"]
        assert [a.label for a in report.attacks] == ["fgsm", "cw_l2", "pgd_linf", "bim", "mim", "deepfool", "uniform_noise",
                                                     "gaussian_noise", "uniform_noise_worst", "gaussian_noise_worst"]
        curves = {c.label: c.eps for c in report.curves}
        # FGSM's curve, and single-draw noise accuracy along the noise grid (+ the nominal strength 0.3).
        assert curves == {"fgsm": (0.0, 0.05, 0.1, 0.2), "uniform_noise": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                          "gaussian_noise": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)}
        assert o.stats is not None and o.stats.robustness > 0
        assert o.centre_margin.shape == (10,)
        # One sample set for every model, along the original's and the held-out directions.
        assert torch.equal(o.margins.indices, run.margins.indices) and torch.equal(o.heldout.indices, run.margins.indices)
        assert o.margins.directions_seed == TINY.search.seed and o.heldout.directions_seed == TINY.search.seed + 1
        assert not torch.equal(o.heldout.margin, o.margins.margin)
        assert o.stats.n_samples == o.heldout_stats.n_samples == 20 and o.stats.n_wrong == o.heldout_stats.n_wrong
    assert run.outcomes["original"].stats.n_wrong == 0  # drawn from its correctly classified images
    # The class-centre margins read off a retrained model's search equal a fresh scan of just those samples.
    fl = run.outcomes["fl"]
    torch.testing.assert_close(fl.centre_margin, centre_margins(fl.variant.net, splits, run.margins, run.stats, TINY),
                               rtol=0, atol=0, equal_nan=True)
    assert torch.equal(run.outcomes["original"].centre_margin, run.stats.centre_margin)
    # The last progress call of each search reports it finished: every direction of each correctly classified sample.
    for name in ("original", "fl", "reduced_fl", "original (held-out)", "fl (held-out)"):
        calls = [c for c in progress_calls if c[0] == name]
        searched = 20 - run.outcomes[name.split(" ")[0]].stats.n_wrong
        assert calls and calls[-1][1] == calls[-1][2] == searched * 16


def test_evaluation_scores_a_cnnf_with_its_iterations(splits) -> None:
    cfg = replace(TINY, model=replace(TINY.model, arch="cnnf_mnist_small"), train=replace(TINY.train, n_iterations=1),
                  eval=replace(TINY.eval, checks=False))
    net, _ = train_base(cfg, splits)
    reports = evaluate_model(net, splits, cfg, split_names=("val",))
    assert reports["val"].n_iterations == 1 and reports["val"].prediction == "avg"
