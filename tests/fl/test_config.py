"""fl.config: the paper's MNIST defaults are valid, and every impossible
setting is rejected up front with a ConfigError naming its field."""

from __future__ import annotations

import pytest

from cnnf.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from fl.config import FLConfig, FLEvalConfig, RetrainConfig, SearchConfig, SelectionConfig, samples_per_class


def field_of(make, **kw) -> str:
    """The field named by the ConfigError that make(**kw) raises."""
    with pytest.raises(ConfigError) as e:
        make(**kw)
    assert e.value.message and e.value.field in str(e.value)
    return e.value.field


# ---------------------------------------------------------------- FLConfig


def test_fl_defaults_are_the_papers_mnist_settings() -> None:
    cfg = FLConfig()
    assert cfg.data.dataset == "mnist" and cfg.model.arch == "cnn_mnist_small" and cfg.train.n_iterations == 0
    s = cfg.search
    assert (s.n_samples, s.n_directions, s.step, s.max_margin, s.mode) == (1500, None, 0.02, 0.5, "exact")
    assert s.max_steps == 25 and cfg.n_directions == 784
    q = cfg.selection
    assert (q.high_fraction, q.low_fraction, q.quota_high, q.quota_medium, q.quota_low) == (0.2, 0.5, 20, 100, 150)
    assert (q.directions_per_sample, q.strength_min, q.strength_max, q.equal_quotas) == (40, 1.5, 2.0, False)


def test_fl_config_valid_variants() -> None:
    assert FLConfig(search=SearchConfig(n_directions=784)).n_directions == 784
    assert FLConfig(search=SearchConfig(n_directions=100)).n_directions == 100
    FLConfig(selection=SelectionConfig(equal_quotas=True))
    FLConfig(model=ModelConfig(arch="cnnf_mnist_small"), train=TrainConfig(n_iterations=1))
    FLConfig(search=SearchConfig(n_samples=200), selection=SelectionConfig(quota_medium=20, quota_low=20))


def test_fl_rejects_more_directions_than_the_input_dimension() -> None:
    assert field_of(FLConfig, search=SearchConfig(n_directions=785)) == "search.n_directions"


def test_fl_rejects_a_quota_larger_than_the_searched_samples() -> None:
    # 1000 samples over 10 classes: 100 per class, the low tier wants 150.
    assert field_of(FLConfig, search=SearchConfig(n_samples=1000)) == "selection.quota_low"
    assert field_of(FLConfig, search=SearchConfig(n_samples=1000),
                    selection=SelectionConfig(equal_quotas=True)) == "selection.equal_quota"  # 109 > 100
    assert field_of(FLConfig, selection=SelectionConfig(high_fraction=0.04)) == "selection.high_fraction"


def test_fl_rejects_feedback_iterations_for_a_plain_cnn() -> None:
    assert field_of(FLConfig, train=TrainConfig(n_iterations=1)) == "train.n_iterations"


def test_fl_rejects_a_model_for_other_images() -> None:
    assert field_of(FLConfig, data=DataConfig(dataset="cifar10")) == "model.arch"


def test_retrain_experiment_keeps_the_base_training_unless_set() -> None:
    base = FLConfig(train=TrainConfig(n_iterations=0, lr=0.01, batch_size=64, epochs=10, seed=3))
    r = base.retrain_experiment().train
    assert (r.epochs, r.seed, r.lr, r.batch_size) == (5, 1, 0.01, 64)
    assert base.base_experiment().train.epochs == 10
    set_ = FLConfig(retrain=RetrainConfig(epochs=2, lr=0.5, batch_size=8, seed=9)).retrain_experiment().train
    assert (set_.epochs, set_.seed, set_.lr, set_.batch_size) == (2, 9, 0.5, 8)


# ---------------------------------------------------------------- parts


@pytest.mark.parametrize("kw, field", [
    ({"n_samples": 0}, "n_samples"),
    ({"n_directions": 0}, "n_directions"),
    ({"step": 0.0}, "step"),
    ({"max_margin": 0.01}, "max_margin"),  # below one step
    ({"step": 1e-6, "max_margin": 0.5}, "max_margin"),  # 500,000 steps per direction
    ({"step": 1e-308, "max_margin": 1e308}, "max_margin"),  # an infinite number of steps
    ({"coarse_factor": 1}, "coarse_factor"),
    ({"batch_size": 0}, "batch_size"),
])
def test_search_config_errors(kw: dict, field: str) -> None:
    assert field_of(SearchConfig, **kw) == field


def test_search_max_steps() -> None:
    assert SearchConfig().max_steps == 25
    assert SearchConfig(step=0.05, max_margin=0.3).max_steps == 6
    assert SearchConfig(step=0.1, max_margin=0.1).max_steps == 1
    assert SearchConfig(step=0.02, max_margin=0.3).max_steps == 15  # 0.3 / 0.02 = 14.999... in floating point


def test_he_et_al_cifar_grid_is_accepted() -> None:
    """He et al.'s CIFAR-10 search (cifar10/gxr3.py): step 2/255 over the range
    0.5, i.e. 63 steps up to 126/255; a range that is not a whole number of
    steps scans the steps that fit inside it."""
    cifar = SearchConfig(step=2 / 255, max_margin=0.5)
    assert cifar.max_steps == 63
    assert cifar.max_steps * cifar.step == pytest.approx(126 / 255)
    assert SearchConfig(max_margin=0.51).max_steps == 25


@pytest.mark.parametrize("kw, field", [
    ({"high_fraction": 1.1}, "high_fraction"),
    ({"low_fraction": -0.1}, "low_fraction"),
    ({"high_fraction": 0.6, "low_fraction": 0.5}, "low_fraction"),
    ({"quota_medium": -1}, "quota_medium"),
    ({"equal_quota": 0}, "equal_quota"),
    ({"directions_per_sample": 0}, "directions_per_sample"),
    ({"strength_min": 0.0}, "strength_min"),
    ({"strength_min": 2.5, "strength_max": 2.0}, "strength_max"),
])
def test_selection_config_errors(kw: dict, field: str) -> None:
    assert field_of(SelectionConfig, **kw) == field


@pytest.mark.parametrize("make, kw, field", [
    (RetrainConfig, {"epochs": 0}, "epochs"),
    (RetrainConfig, {"lr": 0.0}, "lr"),
    (RetrainConfig, {"batch_size": 0}, "batch_size"),
    (FLEvalConfig, {"eps_linf": 1.5}, "eps_linf"),
    (FLEvalConfig, {"fgsm_grid": (0.1, 2.0)}, "fgsm_grid"),
    (FLEvalConfig, {"seeds": ()}, "seeds"),
    (FLEvalConfig, {"l2_eps": 0.0}, "l2_eps"),
    (FLEvalConfig, {"noise_grid": (0.1, 1.5)}, "noise_grid"),
    (FLEvalConfig, {"noise_worst_of": 1}, "noise_worst_of"),
    (SearchConfig, {"heldout_seed": 0}, "heldout_seed"),
])
def test_retrain_and_eval_config_errors(make, kw: dict, field: str) -> None:
    assert field_of(make, **kw) == field


def test_eval_config_normalises_sequences() -> None:
    e = FLEvalConfig(fgsm_grid=[0.1, 0.2], seeds=[1, 2])
    assert e.fgsm_grid == (0.1, 0.2) and e.seeds == (1, 2)
    hash(e)  # frozen and hashable once lists are tuples


@pytest.mark.parametrize("n, c, want", [(1500, 10, (150,) * 10), (10, 4, (3, 3, 2, 2)), (3, 4, (1, 1, 1, 0))])
def test_samples_per_class(n: int, c: int, want: tuple[int, ...]) -> None:
    assert samples_per_class(n, c) == want and sum(want) == n


def test_search_batch_defaults_by_device() -> None:
    assert SearchConfig().batch_for("cpu") == 512 and SearchConfig().batch_for("cuda") == 16384
    assert SearchConfig(batch_size=7).batch_for("cpu") == SearchConfig(batch_size=7).batch_for("cuda") == 7


def test_the_search_clips_by_default_and_holds_out_another_direction_seed() -> None:
    """He et al.'s search clips every point to the pixel range (gxr3.py); the
    paper adopts it. The held-out directions default to the next seed."""
    c = SearchConfig()
    assert c.clip is True
    assert c.heldout_directions_seed == 1 and SearchConfig(seed=4).heldout_directions_seed == 5
    assert SearchConfig(heldout_seed=9).heldout_directions_seed == 9


def test_the_eval_defaults_follow_the_paper() -> None:
    """FGSM to 0.5 (Fig. 3) and single-draw noise over a grid, worst-of-100 apart."""
    e = FLEvalConfig()
    assert max(e.fgsm_grid) == 0.5 and e.noise_grid and e.noise_worst_of == 100
    assert FLEvalConfig(noise_worst_of=None).noise_worst_of is None
