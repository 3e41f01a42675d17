"""fl.search: the boundary search against closed-form margins of linear
classifiers, the batched work-queue scan against the one-image-at-a-time
reference on a small CNN, coarse-to-fine and bf16 as measured
approximations, sample drawing, the margins file and the search cache.

Units: margins and steps in [0, 1] pixel units; the model sees input units
(2 x pixel units) along directions of L2 norm sqrt(dim).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import pytest
import torch
from torch import Tensor, nn

import fl.search
from cnnf.data import ArrayDataset, to_input_units
from cnnf.models import InferenceModel
from fl.config import SearchConfig, samples_per_class
from fl.directions import orthogonal_directions
from fl.search import NA, Margins, boundary_search, draw_samples, fingerprint, naive_scan, scan
from tests.cnnf.conftest import images, make_net

STEP, MAX_MARGIN = 0.02, 0.5  # the paper's MNIST search: 25 steps
SHAPES = [(8,), (2, 2, 2)]  # flat inputs, and a 3-dim per-sample shape (channels_last applies)


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: the searches here forward a handful of tiny images
    per call, where a second thread only adds synchronisation (20x slower on a
    busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def linear_classifier(shape: Sequence[int] = (8,), n_classes: int = 4, seed: int = 0) -> tuple[nn.Module, nn.Linear]:
    """A seeded linear classifier on inputs of per-sample `shape`: (the model
    the search sees, its linear layer for the closed form)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(math.prod(shape), n_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_classes, layer.in_features, generator=g))
        layer.bias.copy_(torch.rand(n_classes, generator=g) - 0.5)
    model = layer if len(shape) == 1 else nn.Sequential(nn.Flatten(), layer)
    return model.eval(), layer


@torch.no_grad()
def predicted(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)


def random_points(n: int, shape: Sequence[int], seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


def balanced_points(model: nn.Module, shape: Sequence[int], n_classes: int, per_class: int, seed: int = 1) -> ArrayDataset:
    """per_class points of each predicted class (so all correctly classified), grouped by class."""
    x = random_points(400 * n_classes, shape, seed)
    y = predicted(model, x)
    rows = [torch.nonzero(y == c).flatten()[:per_class] for c in range(n_classes)]
    assert all(len(r) == per_class for r in rows), "the seeded draw has too few points of some class"
    rows_t = torch.cat(rows)
    return ArrayDataset(x[rows_t], y[rows_t])


class Truth(NamedTuple):
    """Closed form along each signed direction, in pixel units."""

    crossing: Tensor  # (S, 2D, C) float64: distance at which class j overtakes the true class (inf: never)
    margin: Tensor  # (S, 2D): the first crossing
    first: Tensor  # (S, 2D): the class that crosses first
    second: Tensor  # (S, 2D): the next crossing of another class


def linear_truth(layer: nn.Linear, x: Tensor, y: Tensor, directions: Tensor) -> Truth:
    """Along x + t * d (t in input units) the logit gap z_y - z_j = gap_j +
    t * slope_j is linear: class j overtakes y at t = gap_j / -slope_j when
    slope_j < 0, never otherwise."""
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    z = x.reshape(len(x), -1).double() @ w.T + b
    gap = z.gather(1, y[:, None]) - z  # (S, C), > 0 off the true class
    signed = torch.cat([directions, -directions]).double()  # column order of Margins
    slope = torch.einsum("scd,jd->sjc", w[y][:, None, :] - w[None], signed)  # (S, 2D, C); 0 for j = y
    t = torch.where(slope < 0, gap[:, None, :] / -slope.clamp(max=-1e-300), torch.tensor(math.inf, dtype=torch.float64))
    crossing = t / to_input_units(1.0)
    srt = crossing.sort(-1)
    return Truth(crossing, srt.values[..., 0], srt.indices[..., 0], srt.values[..., 1])


def assert_known_answers(m: Margins, truth: Truth, step: float, max_margin: float) -> None:
    """margin_scan - step < true margin <= margin_scan; the adjacent class is
    the first to overtake y where no other class has also overtaken it by
    that step, and one that has overtaken it otherwise; N/A at max_margin
    beyond the range. Searches whose true margin lies within float rounding
    of a step are not judged (either neighbouring step is right)."""
    ratio = truth.margin / step
    clear = ratio.isinf() | ((ratio - ratio.round()).abs() > 1e-3)
    assert clear.float().mean() > 0.9, "too many near-ties: choose another seed"
    inside, outside = clear & (truth.margin <= max_margin), clear & (truth.margin > max_margin)
    assert inside.sum() >= 5 and outside.sum() >= 5, "the setup must have searches both within and beyond the range"

    got = m.margin.double()
    assert (got[inside] - step < truth.margin[inside]).all(), (got[inside], truth.margin[inside])
    assert (truth.margin[inside] <= got[inside]).all(), (got[inside], truth.margin[inside])
    # Every in-range adjacent class has overtaken y by the flipped step.
    adj = m.adjacent[inside]
    assert (adj != NA).all()
    assert (truth.crossing[inside].gather(1, adj.clamp(min=0)[:, None]).squeeze(1) <= got[inside]).all()
    # Where only one class has overtaken y by then, it is that class.
    unambiguous = inside & (truth.second > got + 1e-3 * step)
    assert unambiguous.sum() >= 0.8 * inside.sum()
    assert torch.equal(m.adjacent[unambiguous], truth.first[unambiguous])
    assert (m.adjacent[outside] == NA).all()
    assert (m.margin[outside] == max_margin).all()


def assert_same_search(a: Margins, b: Margins, passes: bool = True) -> None:
    assert torch.equal(a.margin, b.margin), (a.margin - b.margin).abs().max()
    assert torch.equal(a.adjacent, b.adjacent)
    if passes:
        assert a.forward_passes == b.forward_passes


def cfg(**kw) -> SearchConfig:
    """Unclipped unless asked: the closed-form answers below hold for the
    unclipped walk (clipping is tested on its own)."""
    return SearchConfig(**{"step": STEP, "max_margin": MAX_MARGIN, "device": "cpu", "clip": False, **kw})


class LinearCase(NamedTuple):
    model: nn.Module
    layer: nn.Linear
    x: Tensor
    y: Tensor
    directions: Tensor


def linear_case(shape: Sequence[int] = (8,), n_classes: int = 4, n: int = 6) -> LinearCase:
    model, layer = linear_classifier(shape, n_classes)
    x = random_points(n, shape)
    dim = math.prod(shape)
    return LinearCase(model, layer, x, predicted(model, x), orthogonal_directions(dim, dim, seed=0))


# ---------------------------------------------------------------- known answers


def test_hand_computed_margins_on_a_one_feature_classifier() -> None:
    """Class 1 wins when x0 > 0.5 (input units). Along +-e0 (norm 2 = sqrt(4))
    a step of 0.02 pixels moves x0 by 2 * 0.02 * 2 = 0.08; the other axes
    change nothing."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0]]))
        model.bias.copy_(torch.tensor([0.0, -0.5]))
    x = torch.tensor([[0.0, 0, 0, 0], [0.3, 0.5, -0.5, 0], [1.0, 0, 0, 0]])
    y = torch.tensor([0, 0, 1])
    directions = 2 * torch.eye(4)
    na = [NA] * 3
    # Needed x0 moves: 0.5 -> 7 steps (0.56 > 0.5 > 0.48); 0.2 -> 3 steps; -0.5 -> 7 steps.
    want_margin = torch.tensor([[0.14] + [0.5] * 7, [0.06] + [0.5] * 7, [0.5] * 4 + [0.14] + [0.5] * 3])
    want_adjacent = torch.tensor([[1] + na + [NA] + na, [1] + na + [NA] + na, [NA] + na + [0] + na])
    want_passes = 3 + (7 + 7 * 25) + (3 + 7 * 25) + (7 + 7 * 25)  # 3: one pass at each sample itself
    for m in (naive_scan(model, x, y, directions, STEP, 25), scan(model, x, y, directions, cfg(batch_size=5))):
        torch.testing.assert_close(m.margin, want_margin, rtol=0, atol=1e-7)
        assert torch.equal(m.adjacent, want_adjacent)
        assert m.forward_passes == want_passes
        assert m.labels.tolist() == [0, 0, 1] and m.max_margin == pytest.approx(0.5)
    c2f = scan(model, x, y, directions, cfg(mode="coarse_to_fine", coarse_factor=5))
    torch.testing.assert_close(c2f.margin, want_margin, rtol=0, atol=1e-7)
    assert torch.equal(c2f.adjacent, want_adjacent)
    # 7 steps: k = 5, 10, then bisection 7, 6 (4 passes); 3 steps: 5, then 2, 3 (3 passes);
    # unflipped: 5, 10, ..., 25 (5 passes).
    assert c2f.forward_passes == 3 + 4 + 3 + 4 + 21 * 5  # 3: one pass at each sample itself


def test_clip_keeps_search_points_in_the_pixel_range() -> None:
    """Class 1 needs x0 > 1.1, outside [-1, 1]: reachable unclipped, never clipped."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0], [1, 0]]))
        model.bias.copy_(torch.tensor([0.0, -1.1]))
    x, y, directions = torch.tensor([[0.9, 0.0]]), torch.tensor([0]), math.sqrt(2) * torch.eye(2)
    # Unclipped: 0.9 + k * 0.04 * sqrt(2) > 1.1 from k = 4.
    for m in (naive_scan(model, x, y, directions, STEP, 25), scan(model, x, y, directions, cfg())):
        assert m.adjacent[0, 0] == 1 and m.margin[0, 0] == pytest.approx(0.08)
    for m in (naive_scan(model, x, y, directions, STEP, 25, clip=True), scan(model, x, y, directions, cfg(clip=True))):
        assert (m.adjacent == NA).all() and (m.margin == MAX_MARGIN).all()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_naive_scan_matches_the_closed_form(shape: tuple[int, ...]) -> None:
    c = linear_case(shape)
    m = naive_scan(c.model, c.x, c.y, c.directions, STEP, 25)
    assert m.margin.shape == (6, 16) and m.margin.dtype == torch.float32 and m.adjacent.dtype == torch.int64
    assert_known_answers(m, linear_truth(c.layer, c.x, c.y, c.directions), STEP, MAX_MARGIN)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("batch_size", [1, 5, 4096])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_exact_scan_matches_the_closed_form(shape: tuple[int, ...], batch_size: int, channels_last: bool) -> None:
    c = linear_case(shape)
    m = scan(c.model, c.x, c.y, c.directions, cfg(batch_size=batch_size, channels_last=channels_last))
    assert m.mode == "exact"
    assert_known_answers(m, linear_truth(c.layer, c.x, c.y, c.directions), STEP, MAX_MARGIN)
    assert_same_search(m, naive_scan(c.model, c.x, c.y, c.directions, STEP, 25))


def test_known_answers_at_another_step_and_range() -> None:
    c = linear_case()
    m = scan(c.model, c.x, c.y, c.directions, cfg(step=0.05, max_margin=0.3))
    assert_known_answers(m, linear_truth(c.layer, c.x, c.y, c.directions), 0.05, 0.3)
    k = m.margin.double() / 0.05
    assert (k - k.round()).abs().max() < 1e-5 and k.round().min() >= 1 and k.round().max() <= 6


def test_range_that_is_not_a_whole_number_of_steps() -> None:
    """He et al.'s CIFAR grid has this form (step 2/255, range 0.5: 63 steps to
    126/255). Here step 0.07 over 0.3: the scan visits 0.07 .. 0.28 (4 steps),
    as the naive loop does, and a search without a flip counts as the range."""
    c = linear_case()
    m = scan(c.model, c.x, c.y, c.directions, cfg(step=0.07, max_margin=0.3))
    naive = naive_scan(c.model, c.x, c.y, c.directions, 0.07, 4)
    flipped = naive.adjacent != NA
    assert flipped.any() and (~flipped).any()
    assert torch.equal(m.adjacent, naive.adjacent)
    assert torch.equal(m.margin[flipped], naive.margin[flipped])
    assert (m.margin[~flipped] == 0.3).all() and m.max_margin == 0.3


@pytest.mark.parametrize("coarse_factor", [3, 5])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_coarse_to_fine_is_exact_on_a_linear_classifier(n_classes: int, coarse_factor: int) -> None:
    """Along a line a linear classifier leaves the true class once and never
    returns (every gap to y is linear), so bisection in the first flipped
    bracket finds the exact first step and its label; 25 steps are not a
    multiple of 3, so the last coarse point is clamped to the range."""
    c = linear_case(n_classes=n_classes, n=8)
    exact = scan(c.model, c.x, c.y, c.directions, cfg())
    c2f = scan(c.model, c.x, c.y, c.directions, cfg(mode="coarse_to_fine", coarse_factor=coarse_factor, batch_size=7))
    assert c2f.mode == "coarse_to_fine"
    assert_same_search(c2f, exact, passes=False)
    assert c2f.forward_passes < exact.forward_passes
    assert_known_answers(c2f, linear_truth(c.layer, c.x, c.y, c.directions), STEP, MAX_MARGIN)


# ---------------------------------------------------------------- the batched scan on a CNN


class CNNCase(NamedTuple):
    model: nn.Module
    x: Tensor
    y: Tensor
    directions: Tensor
    naive: Margins


@pytest.fixture(scope="module")
def cnn() -> CNNCase:
    """A random cnn_mnist_small, 2 samples labelled by its own predictions and
    one mislabelled (already past a boundary: margin 0), 10 directions: 60 searches,
    about half of the correctly labelled ones flipping within range."""
    model = InferenceModel(make_net("cnn_mnist_small", seed=0), 0, "first").eval()
    x = images(3, seed=0)
    y = predicted(model, x)
    y[2] = (y[2] + 1) % 10
    directions = orthogonal_directions(10, 784, seed=0)
    naive = naive_scan(model, x, y, directions, STEP, 25)
    flipped = naive.flipped[:2].float().mean()
    assert 0.2 < flipped < 0.8, f"the random net should flip some searches and not others, flipped {flipped:.2f}"
    return CNNCase(model, x, y, directions, naive)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("batch_size", [1, 7, 4096])  # 7 < 60 searches: the work queue refills
def test_exact_scan_equals_the_naive_scan(cnn: CNNCase, batch_size: int, channels_last: bool) -> None:
    m = scan(cnn.model, cnn.x, cnn.y, cnn.directions, cfg(batch_size=batch_size, channels_last=channels_last))
    assert_same_search(m, cnn.naive)
    predicted_2 = int(cnn.model(cnn.x[2:]).argmax(1))
    assert (m.adjacent[2] == predicted_2).all() and (m.margin[2] == 0).all(), "a misclassified sample is at margin 0"
    assert m.wrong.tolist() == [False, False, True] and m.n_wrong == 1
    assert m.forward_passes == int((m.margin / STEP).round().sum()) + 3  # + one pass at each sample


def test_clipped_exact_scan_equals_the_clipped_naive_scan(cnn: CNNCase) -> None:
    naive = naive_scan(cnn.model, cnn.x[:2], cnn.y[:2], cnn.directions[:6], STEP, 25, clip=True)
    assert_same_search(scan(cnn.model, cnn.x[:2], cnn.y[:2], cnn.directions[:6], cfg(clip=True, batch_size=5)), naive)


def test_naive_margins_are_whole_steps_with_the_true_label_before(cnn: CNNCase) -> None:
    m = cnn.naive
    k = (m.margin / STEP).round()
    torch.testing.assert_close(m.margin, (k * STEP).float(), rtol=0, atol=1e-6)
    assert ((k[:2] >= 1) & (k[:2] <= 25)).all() and (k[2] == 0).all()  # the mislabelled sample: margin 0
    assert (m.margin[~m.flipped] == MAX_MARGIN).all()
    assert (m.adjacent[m.flipped] != cnn.y[:, None].expand_as(m.adjacent)[m.flipped]).all()
    assert m.forward_passes == int(k.sum()) + 3


def test_coarse_to_fine_costs_less_and_never_finds_an_earlier_flip(cnn: CNNCase) -> None:
    """It can miss a flip that reverts between coarse points (a larger margin
    or N/A) but every point before the bracket it bisects is unflipped, so
    its margin is never below the exact one; mostly they agree."""
    c2f = scan(cnn.model, cnn.x, cnn.y, cnn.directions, cfg(mode="coarse_to_fine", batch_size=16))
    exact = cnn.naive
    assert c2f.forward_passes < exact.forward_passes / 2
    assert (c2f.margin >= exact.margin).all()
    same = c2f.margin == exact.margin
    assert same.float().mean() >= 0.8
    assert torch.equal(c2f.adjacent[same], exact.adjacent[same])


def test_bf16_runs_and_mostly_agrees_with_fp32(cnn: CNNCase) -> None:
    bf16 = scan(cnn.model, cnn.x, cnn.y, cnn.directions, cfg(precision="bf16", batch_size=64))
    k = (bf16.margin / STEP).round()
    torch.testing.assert_close(bf16.margin, (k * STEP).float(), rtol=0, atol=1e-6)
    assert ((bf16.adjacent >= NA) & (bf16.adjacent < 10)).all()
    assert (bf16.margin == cnn.naive.margin).float().mean() >= 0.7
    assert ((bf16.margin - cnn.naive.margin).abs() <= 2 * STEP + 1e-6).float().mean() >= 0.85
    assert (bf16.flipped == cnn.naive.flipped).float().mean() >= 0.85


CALLS: list[int] = []  # batch sizes seen by Recording (module level: the scan deep-copies its model)


class Recording(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        CALLS.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("mode", ["exact", "coarse_to_fine"])
def test_work_queue_keeps_every_forward_call_full_until_it_drains(mode: str) -> None:
    c = linear_case(n=6)  # 96 searches
    CALLS.clear()
    m = scan(Recording(c.model), c.x, c.y, c.directions, cfg(batch_size=7, mode=mode))
    assert sum(CALLS) == m.forward_passes
    assert CALLS[0] == 6  # the samples themselves (are they classified correctly?)
    del CALLS[0]
    full = [n == 7 for n in CALLS]
    n_full = full.index(False) if False in full else len(full)
    # Full batches while searches wait, then the last 7 drain: never more than 7, never growing.
    assert n_full * 7 >= 96 - 7 and all(n <= 7 for n in CALLS)
    tail = CALLS[n_full:]
    assert tail == sorted(tail, reverse=True)


def test_progress_reports_every_finished_search(cnn: CNNCase) -> None:
    calls: list[tuple[int, int]] = []
    scan(cnn.model, cnn.x[:2], cnn.y[:2], cnn.directions, cfg(batch_size=10), progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert calls[-1] == (40, 40) and {t for _, t in calls} == {40}
    assert done == sorted(done) and len(calls) > 1


def test_scan_keeps_the_given_indices(cnn: CNNCase) -> None:
    m = scan(cnn.model, cnn.x[:2], cnn.y[:2], cnn.directions[:2], cfg(), indices=torch.tensor([17, 42]))
    assert m.indices.tolist() == [17, 42] and torch.equal(m.labels, cnn.y[:2])
    assert scan(cnn.model, cnn.x[:2], cnn.y[:2], cnn.directions[:2], cfg()).indices.tolist() == [0, 1]


# ---------------------------------------------------------------- Margins


def hand_margins() -> Margins:
    return Margins(
        margin=torch.tensor([[0.1, 0.5, 0.04, 0.5], [0.5, 0.5, 0.5, 0.5]]),
        adjacent=torch.tensor([[1, NA, 2, NA], [NA, NA, NA, NA]]),
        labels=torch.tensor([0, 1]), indices=torch.tensor([5, 9]), step=0.02, max_margin=0.5,
        mode="exact", forward_passes=123, seconds=1.5, fingerprint="abc",
    )


def test_margins_shape_properties() -> None:
    m = hand_margins()
    assert (m.n_samples, m.n_directions) == (2, 2)
    assert m.flipped.tolist() == [[True, False, True, False], [False] * 4]
    d = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(m.signed_directions(d), torch.tensor([[1.0, 2.0], [3.0, 4.0], [-1.0, -2.0], [-3.0, -4.0]]))


def test_margins_save_load_round_trip(tmp_path: Path) -> None:
    m = hand_margins()
    path = tmp_path / "m.pt"
    m.save(path)
    assert path.exists() and not (tmp_path / "m.pt.tmp").exists()
    back = Margins.load(path)
    for name in m.__dataclass_fields__:
        a, b = getattr(m, name), getattr(back, name)
        if isinstance(a, Tensor):
            assert torch.equal(a, b) and a.dtype == b.dtype, name
        else:
            assert a == b and type(a) is type(b), name


# ---------------------------------------------------------------- drawing samples


def relabelled(data: ArrayDataset, labels: dict[int, int]) -> ArrayDataset:
    """data with the given rows relabelled (misclassified by the model that labelled it)."""
    y = data.y.clone()
    y[list(labels)] = torch.tensor(list(labels.values()))
    return ArrayDataset(data.x, y)


def test_draw_samples_is_stratified_and_correct_only() -> None:
    model, _ = linear_classifier((2, 2, 2))
    clean = balanced_points(model, (2, 2, 2), 4, per_class=10)
    data = relabelled(clean, {0: 1, 1: 1, 2: 3, 15: 0, 25: 3})  # rows 0..9 are class 0, 10..19 class 1, ...
    pred = predicted(model, data.x)
    rows = draw_samples(model, data, n_samples=26, n_classes=4, seed=0)
    assert torch.bincount(data.y[rows], minlength=4).tolist() == list(samples_per_class(26, 4)) == [7, 7, 6, 6]
    assert (pred[rows] == data.y[rows]).all()
    # Class 0 has exactly 7 correctly classified images (rows 3..9); row 15 is labelled 0 but predicted 1.
    assert rows[data.y[rows] == 0].tolist() == list(range(3, 10))
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert torch.equal(rows, draw_samples(model, data, 26, 4, seed=0))
    assert not torch.equal(rows, draw_samples(model, data, 26, 4, seed=1))


def test_draw_samples_names_the_class_with_too_few() -> None:
    model, _ = linear_classifier((2, 2, 2))
    # Swap three labels between classes 2 and 3: ten images each, seven correctly classified.
    data = relabelled(balanced_points(model, (2, 2, 2), 4, per_class=10), {20: 3, 21: 3, 22: 3, 30: 2, 31: 2, 32: 2})
    with pytest.raises(ValueError, match=r"class 2 has 7 correctly classified"):
        draw_samples(model, data, n_samples=32, n_classes=4, seed=0)
    # Without correct_only all 10 images of a class (some misclassified) count.
    rows = draw_samples(model, data, n_samples=40, n_classes=4, seed=0, correct_only=False)
    assert len(rows) == 40 and (predicted(model, data.x[rows]) != data.y[rows]).sum() == 6
    with pytest.raises(ValueError, match=r"class 0 has 10 training"):
        draw_samples(model, data, n_samples=44, n_classes=4, seed=0, correct_only=False)


# ---------------------------------------------------------------- fingerprint and cache


def search_setup() -> tuple[nn.Module, ArrayDataset, SearchConfig]:
    model, _ = linear_classifier((2, 2, 2))
    return model, balanced_points(model, (2, 2, 2), 4, per_class=5), cfg(n_samples=12, batch_size=64)


def no_scan(*args, **kwargs):
    raise AssertionError("searched again instead of loading the cache")


def test_boundary_search_caches_by_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data, c = search_setup()
    first = boundary_search(model, data, c, 4, cache_dir=tmp_path)
    rows = first.indices
    assert len(rows) == 12 and torch.equal(first.labels, data.y[rows])
    assert first.fingerprint == fingerprint(model, data.x[rows], data.y[rows], c, 8)
    path = tmp_path / f"margins-{first.fingerprint}.pt"
    assert path.exists() and [p.name for p in tmp_path.glob("margins-*.pt")] == [path.name]
    # The search itself: the seed's 8 directions over the drawn samples.
    assert_same_search(first, scan(model, data.x[rows], data.y[rows], orthogonal_directions(8, 8, c.seed), c))

    monkeypatch.setattr(fl.search, "scan", no_scan)
    logs: list[str] = []
    again = boundary_search(model, data, c, 4, cache_dir=tmp_path, log=logs.append)
    assert_same_search(again, first)
    assert again.fingerprint == first.fingerprint and torch.equal(again.indices, first.indices)
    assert logs and str(path) in logs[0]
    # Batch size, device and an explicit full n_directions cannot change a margin: still the cache.
    for same in (replace(c, batch_size=3), replace(c, device="cpu", batch_size=1), replace(c, n_directions=8)):
        assert boundary_search(model, data, same, 4, cache_dir=tmp_path).fingerprint == first.fingerprint


def test_fingerprint_changes_with_weights_samples_and_settings() -> None:
    model, data, c = search_setup()
    x, y = data.x[:8], data.y[:8]
    base = fingerprint(model, x, y, c, 8)
    assert base == fingerprint(model, x, y, replace(c, batch_size=1, device="cuda"), 8)
    changed = [fingerprint(model, x, y, replace(c, **kw), 8) for kw in
               ({"step": 0.05}, {"max_margin": 0.4}, {"seed": 1}, {"mode": "coarse_to_fine"},
                {"precision": "bf16"}, {"clip": True})]
    assert base == fingerprint(model, x, y, replace(c, heldout_seed=7), 8)  # picks another search, not this one's result
    changed.append(fingerprint(model, x, y, c, 8, directions_seed=c.seed + 1))
    changed += [fingerprint(model, x, y, c, 7), fingerprint(model, x[:7], y[:7], c, 8),
                fingerprint(model, x, (y + 1) % 4, c, 8)]
    other = linear_classifier((2, 2, 2))[0]
    with torch.no_grad():
        other[1].weight[0, 0] += 1e-3
    changed.append(fingerprint(other, x, y, c, 8))
    assert base not in changed and len(set(changed)) == len(changed)


def test_changed_weight_or_step_searches_again(tmp_path: Path) -> None:
    model, data, c = search_setup()
    first = boundary_search(model, data, c, 4, cache_dir=tmp_path)
    finer = boundary_search(model, data, replace(c, step=0.05), 4, cache_dir=tmp_path)
    with torch.no_grad():
        model[1].weight[1, 2] += 0.01
    moved = boundary_search(model, data, c, 4, cache_dir=tmp_path)
    fps = {first.fingerprint, finer.fingerprint, moved.fingerprint}
    assert len(fps) == 3
    assert {p.name for p in tmp_path.glob("margins-*.pt")} == {f"margins-{f}.pt" for f in fps}
    k = finer.margin.double() / 0.05
    assert finer.step == 0.05 and (k - k.round()).abs().max() < 1e-5, "searched again at the new step"


def test_boundary_search_without_cache_dir_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data, c = search_setup()
    monkeypatch.chdir(tmp_path)
    m = boundary_search(model, data, replace(c, n_directions=3), 4)
    assert m.n_directions == 3 and m.n_samples == 12 and len(m.fingerprint) == 16
    assert list(tmp_path.iterdir()) == []


def test_given_rows_are_searched_for_another_model_and_its_mistakes_are_counted() -> None:
    """A comparison searches every model on the original's samples: rows given
    are searched as they are (no fresh draw), a sample the other model gets
    wrong has margin 0 towards its predicted class in every direction, and the
    held-out seed gives other directions on the same samples."""
    model, data, c = search_setup()
    first = boundary_search(model, data, c, 4)
    other, _ = linear_classifier((2, 2, 2))
    with torch.no_grad():  # another model: shift class 0's score so it loses some of the samples
        other[1].bias[0] -= 3.0
    again = boundary_search(other, data, c, 4, rows=first.indices)
    assert torch.equal(again.indices, first.indices) and torch.equal(again.labels, first.labels)
    pred = other(data.x[first.indices]).argmax(1)
    wrong = pred != first.labels
    assert 0 < int(wrong.sum()) < len(wrong), "the setup must make the other model wrong on some samples, not all"
    assert torch.equal(again.wrong, wrong) and again.n_wrong == int(wrong.sum())
    assert (again.margin[wrong] == 0).all()
    assert torch.equal(again.adjacent[wrong], pred[wrong][:, None].expand(-1, again.adjacent.shape[1]))
    assert (again.margin[~wrong] > 0).all()
    held = boundary_search(other, data, c, 4, rows=first.indices, directions_seed=c.heldout_directions_seed)
    assert held.directions_seed == c.seed + 1 and again.directions_seed == c.seed
    assert torch.equal(held.indices, first.indices) and held.fingerprint != again.fingerprint
    assert not torch.equal(held.margin[~wrong], again.margin[~wrong])
