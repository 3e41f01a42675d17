"""The contract every registered attack keeps (cnnf.attacks.base), checked
for each name in the registry on a tiny trained CNN."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor, nn

from cnnf.attacks import Attack, attack_names, create_attack
from cnnf.data import INPUT_RANGE, to_input_units
from tests.cnnf.attacks.conftest import FAST, accuracy, build, correct

NAMES = attack_names()
# The knob that adds iterations (or draws) to each iterative attack, and the
# overrides that fix its step size so that more iterations extend the same
# trajectory. CW: with one binary-search round (see CWL2Attack).
MORE: dict[str, tuple[str, dict]] = {
    "pgd_linf": ("steps", dict(step_pixels=0.01)),
    "pgd_l2": ("steps", dict(step_pixels=0.2)),
    "bim": ("steps", dict(step_pixels=0.01)),
    "mim": ("steps", dict(step_pixels=0.01)),
    "cw_l2": ("steps", dict(binary_search_steps=1)),
    "deepfool": ("steps", {}),
    "spsa": ("steps", {}),
    "uniform_noise": ("draws", {}),
    "gaussian_noise": ("draws", {}),
    "transfer": ("steps", dict(step_pixels=0.01)),
    # APGD's checkpoints are fractions of `steps` (a longer run is another
    # trajectory) and Square's square sizes follow the query budget: their
    # extending knobs are the restarts (APGD-T: the target classes, in order).
    "apgd_ce": ("restarts", {}),
    "apgd_dlr": ("restarts", {}),
    "apgd_t": ("n_targets", {}),
    "square": ("restarts", {}),
}


def test_every_attack_has_fast_settings() -> None:
    assert sorted(FAST) == NAMES
    assert set(MORE) == set(NAMES) - {"fgsm"}
    assert set(NAMES) >= {"fgsm", "pgd_linf", "pgd_l2", "bim", "mim", "cw_l2", "deepfool", "spsa",
                          "uniform_noise", "gaussian_noise", "transfer", "apgd_ce", "apgd_dlr", "apgd_t", "square"}


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError) as info:
        create_attack("fab_t", eps_pixels=0.1)
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_the_first_argument_in_pixel_units(name: str, tiny_net: nn.Module) -> None:
    attack = build(name, tiny_net)
    first = next(iter(inspect.signature(type(attack)).parameters))
    assert first == "eps_pixels"
    assert attack.eps_pixels == FAST[name]["eps_pixels"]
    assert attack.eps == pytest.approx(to_input_units(FAST[name]["eps_pixels"]))
    assert attack.norm in ("linf", "l2", "none")
    assert isinstance(attack.gradient_free, bool) and isinstance(attack.stochastic, bool)
    again = build(name, tiny_net, eps_pixels=0.01)  # the evaluator rebuilds an attack at another budget
    assert type(again) is type(attack) and again.eps == pytest.approx(0.02)


def within_budget(attack: Attack, x_adv: Tensor, x: Tensor) -> None:
    lo, hi = INPUT_RANGE
    assert x_adv.min() >= lo and x_adv.max() <= hi
    delta = (x_adv - x).flatten(1)
    if attack.norm == "linf":
        assert delta.abs().max() <= attack.eps + 1e-6
    elif attack.norm == "l2":
        assert delta.norm(dim=1).max() <= attack.eps + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_in_budget_and_range_and_not_stronger_than_clean(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    x_before = x.clone()
    attack = build(name, tiny_net)
    x_adv = attack.perturb(tiny_net, x, y)
    assert torch.equal(x, x_before), "the clean batch must not be modified in place"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    within_budget(attack, x_adv, x)
    assert not torch.equal(x_adv, x), "the attack should move some example"
    assert accuracy(tiny_net, x_adv, y) <= accuracy(tiny_net, x, y)


@pytest.mark.parametrize("name", NAMES)
def test_a_large_budget_breaks_most_examples(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Every attack does damage on an undefended model when the budget is generous."""
    x, y = batch
    large = {"pgd_l2": 2.0, "cw_l2": None, "deepfool": None, "gaussian_noise": 0.5, "uniform_noise": 1.0}.get(name, 0.15)
    more = dict(steps=20, n_samples=32, lr_pixels=0.01) if name == "spsa" else {}  # Adam moves ~lr a step: reach the surface
    more = dict(queries=100) if name == "square" else more
    x_adv = build(name, tiny_net, eps_pixels=large, **more).perturb(tiny_net, x, y)
    assert accuracy(tiny_net, x_adv, y) < 0.5 * accuracy(tiny_net, x, y)


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_and_every_draw_from_the_generator(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Without a generator the draws come from one seeded with `seed` (0), so
    runs repeat; with one, two calls sharing it get fresh draws (stochastic
    attacks only), and two generators seeded alike agree."""
    x, y = batch[0][:4], batch[1][:4]
    attack = build(name, tiny_net)
    a = attack.perturb(tiny_net, x, y)
    assert torch.equal(a, attack.perturb(tiny_net, x, y))
    assert torch.equal(a, attack.perturb(tiny_net, x, y, torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(7)
    first, second = attack.perturb(tiny_net, x, y, g), attack.perturb(tiny_net, x, y, g)
    assert torch.equal(first, second) != attack.stochastic
    assert torch.equal(first, a) != attack.stochastic


@pytest.mark.parametrize("name", NAMES)
def test_no_grad_context_parameters_and_mode_are_left_alone(name: str, tiny_net: nn.Module,
                                                            batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:8], batch[1][:8]
    attack = build(name, tiny_net)
    expected = attack.perturb(tiny_net, x, y)
    frozen = tiny_net[0].bias
    frozen.requires_grad_(False)
    try:
        for training in (False, True):  # the tiny net has no dropout or batch norm: same logits
            tiny_net.train(training)
            with torch.no_grad():
                assert torch.equal(attack.perturb(tiny_net, x, y), expected)
            assert all(m.training == training for m in tiny_net.modules())
    finally:
        tiny_net.eval()
        frozen.requires_grad_(True)
    assert [p.requires_grad for p in tiny_net.parameters()] == [True] * 6
    assert all(p.grad is None for p in tiny_net.parameters())


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_iterations_never_break_fewer_examples(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Same seed, same step size: the longer run extends the shorter one and
    each example keeps its first success, so whatever 3 iterations break,
    12 break too (per example, not only on average)."""
    x, y = batch
    knob, fixed = MORE[name]
    broken = [~correct(tiny_net, build(name, tiny_net, **{**fixed, knob: n}).perturb(tiny_net, x, y), y) for n in (3, 12)]
    assert (broken[1] | ~broken[0]).all(), f"broken by 3 {knob} but not by 12: {(broken[0] & ~broken[1]).nonzero().flatten()}"
    assert broken[1].sum() >= broken[0].sum()
