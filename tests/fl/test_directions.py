"""fl.directions: seeded random orthogonal directions of per-pixel RMS 1
(L2 norm sqrt(dim)), the same on every machine for a seed."""

from __future__ import annotations

import math

import pytest
import torch

from fl.directions import orthogonal_directions


@pytest.mark.parametrize("n, dim", [(1, 4), (5, 8), (8, 8), (20, 784)])
def test_directions_are_orthogonal_with_norm_sqrt_dim(n: int, dim: int) -> None:
    d = orthogonal_directions(n, dim, seed=0)
    assert d.shape == (n, dim) and d.dtype == torch.float32 and d.is_contiguous()
    gram = d.double() @ d.double().T
    torch.testing.assert_close(gram, dim * torch.eye(n, dtype=torch.float64), atol=1e-4 * dim, rtol=0)
    torch.testing.assert_close(d.norm(dim=1), torch.full((n,), math.sqrt(dim)), atol=1e-4, rtol=1e-5)
    # Per-pixel RMS 1: a margin m moves each pixel by m on average.
    torch.testing.assert_close(d.pow(2).mean(1), torch.ones(n), atol=1e-5, rtol=1e-5)


def test_full_basis_spans_the_space() -> None:
    d = orthogonal_directions(6, 6, seed=3).double()
    torch.testing.assert_close(d.T @ d, 6 * torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)


def test_same_seed_same_directions() -> None:
    assert torch.equal(orthogonal_directions(10, 50, seed=7), orthogonal_directions(10, 50, seed=7))


def test_different_seeds_differ() -> None:
    a, b = orthogonal_directions(10, 50, seed=0), orthogonal_directions(10, 50, seed=1)
    assert not torch.allclose(a, b)
    # Not merely a sign flip or a permutation of the same rows.
    assert (a.double() @ b.double().T).abs().max() < 0.9 * 50


@pytest.mark.parametrize("n, dim", [(9, 8), (785, 784), (0, 8)])
def test_impossible_counts_are_rejected(n: int, dim: int) -> None:
    with pytest.raises(ValueError, match=rf"1\.\.{dim}"):
        orthogonal_directions(n, dim, seed=0)
