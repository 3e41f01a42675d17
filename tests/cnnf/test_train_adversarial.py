"""Adversarial training (B.2), the optimiser knobs, augmentation, bf16, and
exact resumption with scheduler and RNG state."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cnnf.config import ConfigError, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import INPUT_RANGE, DataSplits, load_splits, random_crop_flip
from cnnf.models import create_model
from cnnf.train import TrainStep, adv_step_linf, build_optimizer, build_scheduler, fit, load_train_state, save_train_state
from tests.cnnf.test_train import without_timing

TINY_DATA = DataConfig(n_train=128, val_fraction=0.05)
# B.2 optimisation on the small B.1 backbone so that the test stays fast.
ADV = ExperimentConfig(
    data=TINY_DATA,
    model=ModelConfig(arch="cnnf_fmnist_std", ind=0),
    train=TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, lr_schedule="poly", grad_clip=0.5,
                      adv_eps_linf=0.1, adv_steps=2, clean_coef=0.1, n_iterations=1, device="cpu", seed=5),
    eval=EvalConfig(n_iterations=2),
)


@pytest.fixture(scope="module")
def tiny_splits() -> DataSplits:
    return load_splits(TINY_DATA)


def test_resume_restores_scheduler_rng_and_matches_uninterrupted(tiny_splits: DataSplits, tmp_path: Path) -> None:
    """SGD + poly LR + PGD random starts + crop/flip: a run resumed from the
    epoch-1 checkpoint ends bit-identical to the uninterrupted run."""
    cfg = dataclasses.replace(ADV, train=dataclasses.replace(ADV.train, augment="crop_flip"))
    path = tmp_path / "state.pt"

    def keep_epoch1(result, state) -> None:
        if result.epoch == 1:
            save_train_state(state, path)

    full = fit(cfg, tiny_splits, callback=keep_epoch1)
    state = load_train_state(path)
    assert state.scheduler["last_epoch"] == 4  # 128 images / 32 per step, stepped every batch
    assert state.rng is not None
    resumed = fit(cfg, tiny_splits, resume=state)
    assert without_timing(resumed.history) == without_timing(full.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_save_is_atomic_and_leaves_no_temporary(tiny_splits: DataSplits, tmp_path: Path) -> None:
    cfg = dataclasses.replace(ADV, train=dataclasses.replace(ADV.train, epochs=1))
    states = []
    fit(cfg, tiny_splits, callback=lambda r, s: states.append(s))
    save_train_state(states[0], tmp_path / "s.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]
    assert load_train_state(tmp_path / "s.pt").epoch == 1


def _step(tc: TrainConfig, arch: str = "cnnf_fmnist_std", total: int = 10, dataset: str = "fashion-mnist") -> TrainStep:
    torch.manual_seed(0)
    net = create_model(arch, ind=0)
    opt = build_optimizer(net, tc)
    return TrainStep(net, tc, opt, build_scheduler(opt, tc, total), dataset)


def test_poly_schedule_decays_every_batch_to_zero() -> None:
    tc = TrainConfig(optimizer="sgd", lr=0.05, lr_schedule="poly", lr_power=0.9)
    step = _step(tc, total=4)
    lrs = []
    for _ in range(4):
        lrs.append(step.optimizer.param_groups[0]["lr"])
        step.optimizer.step()
        step.scheduler.step()
    lrs.append(step.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.05 * (1 - k / 4) ** 0.9 for k in range(5)])
    assert lrs[-1] == 0.0


def test_gradient_clipping_bounds_the_global_norm() -> None:
    """With plain SGD (lr 1, no momentum, no decay) the update is minus the
    clipped gradient, so its global norm is at most grad_clip."""
    tc = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=0.01, n_iterations=1)
    step = _step(tc)
    before = [p.detach().clone() for p in step.model.parameters()]
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    step(x, torch.arange(8), torch.Generator().manual_seed(0))
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(step.model.parameters(), before, strict=True)])
    assert 0.005 < update.norm().item() <= 0.01 * (1 + 1e-4)


def test_adversarial_step_attacks_the_first_pass_with_b2_step() -> None:
    tc = TrainConfig(adv_eps_linf=0.1, adv_steps=7, n_iterations=1)
    step = _step(tc)
    assert step.attack is not None and step.attack.steps == 7
    assert step.attack.eps == pytest.approx(0.2)  # [-1, 1] code units
    assert step.attack.alpha == pytest.approx(0.071)  # B.2 step for eps 0.2
    assert step.first_pass.n_iterations == 0 and step.first_pass.prediction == "first"
    assert _step(TrainConfig()).attack is None


@pytest.mark.parametrize(
    ("dataset", "eps", "code_step"),
    [("fashion-mnist", 0.1, 0.071), ("fashion-mnist-sample", 0.1, 0.071), ("cifar10", 8 / 255, 0.02)],
)
def test_adversarial_step_is_the_papers_per_dataset(dataset: str, eps: float, code_step: float) -> None:
    """Appendix B.2 / the reference scripts: --eps-iter 0.071 for Fashion-MNIST
    (eps 0.2) and 0.02 for CIFAR-10 (eps 0.063 ~ 2 * 8/255), both in [-1, 1]
    units. One ratio for both (0.355 eps) gave CIFAR 0.0223."""
    tc = TrainConfig(adv_eps_linf=eps, adv_steps=7, n_iterations=1)
    assert adv_step_linf(tc, dataset) == pytest.approx(code_step / 2)
    step = _step(tc, dataset=dataset)
    assert step.attack.alpha == pytest.approx(code_step)  # the attack works in [-1, 1] units
    # an explicit step wins over the dataset's
    assert adv_step_linf(dataclasses.replace(tc, adv_step_linf=0.005), dataset) == 0.005


def test_adversarial_training_sees_twice_the_batch() -> None:
    """The clean and adversarial halves go through the CNN-F together (2B rows)."""
    tc = TrainConfig(adv_eps_linf=0.1, adv_steps=1, n_iterations=1)
    step = _step(tc)
    seen: list[int] = []
    handle = step.model.stages[-1].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    step(torch.rand(6, 1, 28, 28) * 2 - 1, torch.arange(6), torch.Generator().manual_seed(0))
    handle.remove()
    # PGD: first pass per step (6 rows), then the training forward: first pass + 1 iteration on 12 rows.
    assert seen == [6, 12, 12]


def test_weight_decay_applies_once_per_tied_weight() -> None:
    """The feedback reuses each forward weight; the optimiser holds it once."""
    net = create_model("cnnf_fmnist_adv", ind=2)
    opt = build_optimizer(net, TrainConfig(optimizer="sgd"))
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(net.parameters()))


def test_bf16_step_runs_convs_in_bf16_and_keeps_fp32_weights() -> None:
    tc = TrainConfig(precision="bf16", n_iterations=1)
    step = _step(tc)
    dtypes: list[torch.dtype] = []
    handle = step.model.stages[0].conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    sums = step(torch.rand(4, 1, 28, 28) * 2 - 1, torch.arange(4), torch.Generator().manual_seed(0))
    handle.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert torch.isfinite(sums).all()
    assert all(p.dtype == torch.float32 for p in step.model.parameters())


def test_random_crop_flip() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    outs = [random_crop_flip(x, 2, g) for _ in range(40)]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=INPUT_RANGE[0])
    windows = [padded[..., i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
    candidates = windows + [w.flip(-1) for w in windows]
    flipped = 0
    for out in outs:
        assert out.shape == x.shape
        for n in range(2):  # each image is some window of its padded self, maybe mirrored
            match = [k for k, c in enumerate(candidates) if torch.equal(out[n], c[n])]
            assert match, "not a crop of the padded image"
            flipped += match[0] >= len(windows)
    assert 20 <= flipped <= 60  # about half of 80
    again = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(again, outs[0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "rmsprop"}, None),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"adv_eps_linf": 1.5}, "adv_eps_linf"),
        ({"adv_steps": 0}, "adv_steps"),
        ({"momentum": 1.0}, "momentum"),
        ({"lr_power": 0.0}, "lr_power"),
    ],
)
def test_bad_train_values_name_the_field(kwargs: dict, field: str | None) -> None:
    if field is None:  # a Literal is checked by the YAML layer, not by the dataclass
        return
    with pytest.raises(ConfigError) as info:
        TrainConfig(**kwargs)
    assert info.value.field == field


def test_arch_must_match_the_dataset_image_size() -> None:
    with pytest.raises(ConfigError, match="32x32") as info:
        ExperimentConfig(data=DataConfig(dataset="fashion-mnist-sample"), model=ModelConfig(arch="cnnf_wrn40_2", ind=5))
    assert info.value.field == "model.arch"


def test_plain_cnn_refuses_recon_levels() -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(model=ModelConfig(arch="cnn_fmnist_adv", recon_levels=(3,)), train=TrainConfig(n_iterations=0))
    assert info.value.field in ("recon_levels", "model.recon_levels")


@pytest.mark.slow
def test_adversarial_training_of_the_b2_model_on_the_sample(sample_splits: DataSplits) -> None:
    """3 epochs of B.2 training (PGD-7, T=1, ind 2, SGD poly, clip 0.5) on 1,000 sample images.

    Measured on 2 CPU cores (~50 s): seeds 0 and 1 reach validation accuracy
    0.52 and 0.43 after 3 epochs (0.19 and 0.27 after the first), training
    loss 1.58 -> 1.05 and 1.62 -> 1.15. The threshold asserts learning well
    above chance (0.10) with room for platform differences.
    """
    splits = dataclasses.replace(sample_splits, train=sample_splits.train.head(1000))
    cfg = ExperimentConfig(
        model=ModelConfig(arch="cnnf_fmnist_adv", ind=2),
        train=TrainConfig(epochs=3, batch_size=64, optimizer="sgd", lr=0.05, lr_schedule="poly", grad_clip=0.5,
                          adv_eps_linf=0.1, clean_coef=0.1, n_iterations=1, device="cpu", seed=0),
        eval=EvalConfig(prediction="avg"),
    )
    result = fit(cfg, splits)
    assert result.history[-1].val_acc >= 0.35
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_adversarial_only_loss_trains_and_is_checked(tiny_splits: DataSplits) -> None:
    """train.adv_loss adversarial (the Madry baseline of the FL paper) runs
    through fit, differs from the mixed loss from the first step, and needs
    adversarial training to mean anything."""
    one = dataclasses.replace(ADV, train=dataclasses.replace(ADV.train, epochs=1))
    mixed = fit(one, tiny_splits)
    adv_only = fit(dataclasses.replace(one, train=dataclasses.replace(one.train, adv_loss="adversarial")), tiny_splits)
    assert adv_only.history[0].train_loss == adv_only.history[0].train_loss  # finite, not NaN
    assert adv_only.history[0].train_ce != pytest.approx(mixed.history[0].train_ce, rel=1e-3)
    for kw, needle in (({"adv_loss": "adversarial"}, "adv_eps_linf"), ({"adv_loss": "clean"}, "mixed or adversarial")):
        with pytest.raises(ConfigError, match=needle) as info:
            TrainConfig(**kw)
        assert info.value.field == "adv_loss"
