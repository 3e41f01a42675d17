"""The decision-boundary search (fl-spec step 3, He et al. 2018, Algorithm 1).

For each sample x with true label y and each signed direction +-d, walk
x + k * step * d for k = 1..max_steps; the first k whose predicted label
differs from y gives the margin k * step and the adjacent class (that
label). No flip within range: margin = the search range, adjacent class N/A
(-1).

Almost no random direction flips within range (fl-spec: 79 % N/A on MNIST),
so the exact scan costs about samples x 2 x directions x max_steps forward
passes and its speed is the model's inference throughput. `_scan` keeps one
batch of (sample, direction) pairs in flight, each at its own step; a pair
leaves the batch once it has flipped or reached the range and the next pair
takes its place, so every forward call is full until the queue drains. The
coarse-to-fine mode is the same loop visiting every `factor`-th step and
then bisecting inside the first flipped bracket.

Directions are in per-pixel RMS units and steps in [0, 1] pixel units; the
model sees [-1, 1] inputs, so offsets are converted once (`to_input_units`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from cnnf.data import INPUT_RANGE, ArrayDataset, to_input_units
from fl.config import SearchConfig, samples_per_class
from fl.directions import orthogonal_directions
from cnnf.stages import cached_stage

NA = -1  # adjacent class of a search that never flipped
Progress = Callable[[int, int], None]  # (finished searches, total searches)


@dataclass(frozen=True)
class Margins:
    """Margins of S samples along D directions in both signs.

    Column j < D is +d_j, column D + j is -d_j. margin: (S, 2D) float32 in
    pixel units (N/A searches hold max_margin); adjacent: (S, 2D) int64, NA
    where nothing flipped within range. indices: each sample's row in the
    dataset it was drawn from; labels: their true labels.
    """

    margin: Tensor
    adjacent: Tensor
    labels: Tensor
    indices: Tensor
    step: float
    max_margin: float
    mode: str
    forward_passes: int
    seconds: float
    fingerprint: str = ""
    # (S,) bool: the model misclassifies the sample itself. Such a sample is
    # already past a boundary: all its searches get margin 0 and the predicted
    # class as adjacent class (a comparison searches every model on one sample
    # set, so a retrained model may get some of them wrong). None: not recorded.
    wrong: Optional[Tensor] = None
    directions_seed: Optional[int] = None  # the seed of the directions searched (None: not recorded)

    @property
    def n_wrong(self) -> int:
        return int(self.wrong.sum()) if self.wrong is not None else 0

    @property
    def n_samples(self) -> int:
        return self.margin.shape[0]

    @property
    def n_directions(self) -> int:
        return self.margin.shape[1] // 2

    @property
    def flipped(self) -> Tensor:
        return self.adjacent != NA

    def signed_directions(self, directions: Tensor) -> Tensor:
        """(2D, dim): the directions in column order, +d then -d."""
        return torch.cat([directions, -directions])

    def save(self, path: str | Path) -> None:
        """Write atomically (a crash leaves no half-written file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, tmp)
        tmp.replace(path)

    @staticmethod
    def load(path: str | Path) -> "Margins":
        return Margins(**torch.load(path, map_location="cpu", weights_only=True))


def _offsets(k: Tensor, step_in: float, sign: Tensor) -> Tensor:
    """Offsets k * step * sign in input units, rounded once to float32. The
    naive loop and the batched scan share this so their points are bitwise equal."""
    return (k.double() * step_in * sign.double()).float()


def _points(x_flat: Tensor, dirs: Tensor, s: Tensor, j: Tensor, k: Tensor, step_in: float, clip: bool) -> Tensor:
    """Search points x[s] + k * step * (+-d_j), (B, dim) in input units."""
    n_dir = dirs.shape[0]
    sign = torch.where(j < n_dir, 1.0, -1.0).to(x_flat.device)
    p = x_flat[s] + _offsets(k, step_in, sign)[:, None] * dirs[j % n_dir]
    return p.clamp_(*INPUT_RANGE) if clip else p


class _Predictor:
    """Labels of a batch of flat points, with the memory layout and precision asked for."""

    def __init__(self, model: nn.Module, shape: Sequence[int], precision: str, channels_last: bool):
        self.shape, self.channels_last = tuple(shape), channels_last and len(shape) == 3
        self.model = copy.deepcopy(model).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device_type = next(self.model.parameters()).device.type
        self.bf16 = precision == "bf16"

    def __call__(self, flat: Tensor) -> Tensor:
        x = flat.view(-1, *self.shape)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return self.model(x).argmax(1)


@torch.inference_mode()
def _scan(predict: _Predictor, x: Tensor, y: Tensor, dirs: Tensor, step_in: float, max_steps: int, factor: int,
          batch_size: int, clip: bool, progress: Optional[Progress]) -> tuple[Tensor, Tensor, int]:
    """The work-queue scan. factor 1: the exact linear scan; factor f > 1:
    steps f, 2f, ... (and max_steps), then bisection in (last unflipped, first
    flipped]. Returns (first flipped step or 0, adjacent class or NA, forward passes)."""
    device = x.device
    n_samples, n_cols = len(y), 2 * dirs.shape[0]
    total = n_samples * n_cols
    x_flat = x.reshape(n_samples, -1)
    first_k = torch.zeros(total, dtype=torch.long, device=device)
    adjacent = torch.full((total,), NA, dtype=torch.long, device=device)
    empty = torch.empty(0, dtype=torch.long, device=device)
    pair, k, lo, hi, cls = empty, empty, empty, empty, empty  # hi 0: no flip seen yet
    next_pair, passes, finished = 0, 0, 0
    while True:
        room = batch_size - len(pair)
        if room > 0 and next_pair < total:
            new = torch.arange(next_pair, min(total, next_pair + room), device=device)
            next_pair += len(new)
            zeros = torch.zeros_like(new)
            pair, k = torch.cat([pair, new]), torch.cat([k, torch.full_like(new, min(factor, max_steps))])
            lo, hi, cls = torch.cat([lo, zeros]), torch.cat([hi, zeros]), torch.cat([cls, zeros])
        if len(pair) == 0:
            break
        s, j = pair // n_cols, pair % n_cols
        pred = predict(_points(x_flat, dirs, s, j, k, step_in, clip))
        passes += len(pair)
        flip = pred != y[s]
        hi, cls = torch.where(flip, k, hi), torch.where(flip, pred, cls)
        lo = torch.where(flip, lo, k)
        # Still scanning (no flip seen): next coarse point, or out of range.
        scanning = hi == 0
        out_of_range = scanning & (k >= max_steps)
        # A bracket (lo, hi] narrower than one step is resolved: margin hi.
        resolved = ~scanning & (hi - lo <= 1)
        done = out_of_range | resolved
        first_k[pair[resolved]] = hi[resolved]
        adjacent[pair[resolved]] = cls[resolved]
        k = torch.where(scanning, torch.clamp(k + factor, max=max_steps), (lo + hi) // 2)
        keep = ~done
        pair, k, lo, hi, cls = pair[keep], k[keep], lo[keep], hi[keep], cls[keep]
        finished += int(done.sum())
        if progress is not None:
            progress(finished, total)
    return first_k.view(n_samples, n_cols), adjacent.view(n_samples, n_cols), passes


@torch.inference_mode()
def naive_scan(model: nn.Module, x: Tensor, y: Tensor, directions: Tensor, step: float, max_steps: int,
               clip: bool = False) -> Margins:
    """The reference: one image per forward call, sample by sample, direction
    by direction, step by step (Algorithm 1 as written, the loop a researcher
    writes first). Its points are bitwise those of the batched scan (the same
    float32 offsets and operations). For tests and the benchmark; use
    `boundary_search` for real work."""
    t0 = time.perf_counter()
    model = model.eval()
    n_samples, n_dir = len(y), directions.shape[0]
    shape = (1, *x.shape[1:])
    x_flat = x.reshape(n_samples, -1)
    signed = torch.cat([directions, -directions]).to(x.device)
    margin = torch.full((n_samples, 2 * n_dir), max_steps * step)
    adjacent = torch.full((n_samples, 2 * n_dir), NA, dtype=torch.long)
    step_in, passes = to_input_units(step), 0
    # The offsets k * step in input units, rounded to float32 once, as `_offsets` does.
    offsets = _offsets(torch.arange(max_steps + 1), step_in, torch.ones(max_steps + 1)).tolist()
    wrong = torch.zeros(n_samples, dtype=torch.bool)
    for s in range(n_samples):
        label = int(y[s])
        origin = int(model(x_flat[s].view(shape)).argmax(1))
        passes += 1
        if origin != label:  # already past a boundary: margin 0 towards the predicted class
            wrong[s] = True
            margin[s], adjacent[s] = 0.0, origin
            continue
        for j in range(2 * n_dir):
            for k in range(1, max_steps + 1):
                # sign * (k * step) * d == (k * step) * (sign * d) exactly: negation is exact.
                p = x_flat[s] + offsets[k] * signed[j]
                if clip:
                    p = p.clamp(*INPUT_RANGE)
                pred = int(model(p.view(shape)).argmax(1))
                passes += 1
                if pred != label:
                    margin[s, j], adjacent[s, j] = k * step, pred
                    break
    return Margins(margin, adjacent, y.cpu(), torch.arange(n_samples), step, max_steps * step, "naive", passes,
                   time.perf_counter() - t0, wrong=wrong)


def scan(model: nn.Module, x: Tensor, y: Tensor, directions: Tensor, cfg: SearchConfig,
         indices: Optional[Tensor] = None, progress: Optional[Progress] = None) -> Margins:
    """Search the given samples (x in input units, on the model's device)
    along `directions` (D, dim) with cfg's step, range, mode and precision."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    x, y, dirs = x.to(device), y.to(device), directions.to(device)
    predict = _Predictor(model, x.shape[1:], cfg.precision, cfg.channels_last)
    factor = 1 if cfg.mode == "exact" else cfg.coarse_factor
    batch = cfg.batch_for(device.type)
    with torch.inference_mode():
        flat = x.reshape(len(y), -1)
        origin = torch.cat([predict(flat[i : i + batch]) for i in range(0, len(y), batch)]) if len(y) else y.clone()
    wrong = origin != y
    ok = torch.nonzero(~wrong).flatten()
    # Only correctly classified samples are searched; a misclassified one is
    # already past a boundary (margin 0, adjacent: its predicted class).
    first_k = torch.zeros(len(y), 2 * dirs.shape[0], dtype=torch.long, device=device)
    adjacent = origin[:, None].repeat(1, 2 * dirs.shape[0])
    k_ok, adj_ok, passes = _scan(predict, x[ok], y[ok], dirs, to_input_units(cfg.step), cfg.max_steps, factor,
                                 batch, cfg.clip, progress)
    first_k[ok], adjacent[ok] = k_ok, adj_ok
    margin = torch.where(adjacent != NA, first_k.double() * cfg.step, cfg.max_margin).float()
    return Margins(margin.cpu(), adjacent.cpu(), y.cpu(), (indices if indices is not None else torch.arange(len(y))).cpu(),
                   cfg.step, cfg.max_margin, cfg.mode, passes + len(y), time.perf_counter() - t0, wrong=wrong.cpu())


@torch.inference_mode()
def predict_labels(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def draw_samples(model: nn.Module, data: ArrayDataset, n_samples: int, n_classes: int, seed: int,
                 correct_only: bool = True) -> Tensor:
    """Rows of `data` to search: an equal share per class (`samples_per_class`),
    drawn by a seeded permutation from the correctly classified images
    (Algorithm 1) or from all. Raises ValueError naming the class that has
    too few."""
    ok = predict_labels(model, data.x) == data.y if correct_only else torch.ones(len(data), dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c, want in enumerate(samples_per_class(n_samples, n_classes)):
        pool = torch.nonzero((data.y == c) & ok).flatten()
        if len(pool) < want:
            kind = "correctly classified " if correct_only else ""
            raise ValueError(f"search.n_samples: class {c} has {len(pool)} {kind}training images, {want} needed")
        rows.append(pool[torch.randperm(len(pool), generator=g)[:want]])
    return torch.cat(rows).sort().values


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, cfg: SearchConfig, n_directions: int,
                directions_seed: Optional[int] = None) -> str:
    """Identifies a search result: the model's weights, the samples, the
    directions' seed (default cfg.seed) and every setting that can change a
    margin (not batch size, device or the held-out seed, which picks another search)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "device", "n_directions", "heldout_seed")}
    seed = cfg.seed if directions_seed is None else directions_seed
    h.update(json.dumps({**settings, "n_directions": n_directions, "directions_seed": seed}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def boundary_search(model: nn.Module, data: ArrayDataset, cfg: SearchConfig, n_classes: int, *,
                    rows: Optional[Tensor] = None, directions_seed: Optional[int] = None,
                    cache_dir: Optional[str | Path] = None, progress: Optional[Progress] = None,
                    log: Optional[Callable[[str], None]] = None) -> Margins:
    """Search samples of `data` (the training split) along cfg's random
    orthogonal directions and return the margins.

    rows: the samples (rows of data) to search, e.g. those another model's
    search drew, so every model of a comparison is measured on one sample set
    (the model may misclassify some: they get margin 0, `Margins.wrong`);
    None: draw cfg.n_samples of the model's correctly classified images.
    directions_seed: the directions' seed (None: cfg.seed; the held-out
    directions: cfg.heldout_directions_seed).

    With cache_dir, the result is stored as margins-<fingerprint>.pt and a
    later call with the same model, samples and settings loads it instead
    of searching again (a quota sweep searches once); a concurrent call
    waits for the search in progress.
    """
    if rows is None:
        rows = draw_samples(model, data, cfg.n_samples, n_classes, cfg.seed, cfg.correct_only)
    rows = torch.as_tensor(rows, dtype=torch.long)
    x, y = data.x[rows], data.y[rows]
    dim = x[0].numel()
    n_dir = cfg.n_directions or dim
    seed = cfg.seed if directions_seed is None else directions_seed
    fp = fingerprint(model, x, y, cfg, n_dir, seed)

    def compute() -> Margins:
        margins = scan(model, x, y, orthogonal_directions(n_dir, dim, seed), cfg, rows, progress)
        return Margins(**{**{k: getattr(margins, k) for k in margins.__dataclass_fields__}, "fingerprint": fp,
                          "directions_seed": seed})

    return cached_stage(Path(cache_dir) if cache_dir is not None else None, "margins", fp, compute,
                        Margins.save, Margins.load, log)
