"""Random orthogonal search directions (fl-spec step 3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def orthogonal_directions(n: int, dim: int, seed: int) -> Tensor:
    """n mutually orthogonal directions in R^dim, (n, dim) float32.

    The Q factor of the QR decomposition of a seeded Gaussian (dim, n)
    matrix, its signs fixed by R's diagonal so the draw is unique (Haar
    distributed), scaled to per-pixel RMS 1: each row has L2 norm sqrt(dim),
    so moving a margin m along it changes pixels by m on average (He et al.).
    Computed in float64 on the CPU: the same seed gives the same directions
    on every machine and device.
    """
    if not 1 <= n <= dim:
        raise ValueError(f"n_directions must be in 1..{dim} (orthogonal directions in {dim} dimensions), got {n}")
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(1, dtype=torch.float64))
    return (q.T * math.sqrt(dim)).float().contiguous()
