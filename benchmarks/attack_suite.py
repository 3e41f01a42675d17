"""Attack-suite throughput: images/s of every registered attack on the
Fashion-MNIST models, measured in one run.

Models: the B.2 CNN-F `cnnf_fmnist_adv` (ind 2, 1 feedback iteration,
scored prediction "avg") and its plain CNN `cnn_fmnist_adv`; with `--std`
also the B.1 pair `cnnf_fmnist_std` (ind 0, 1 iteration, "avg") and
`cnn_fmnist_std`. Weights are randomly initialised unless `--weights
NAME=PATH` loads a state dict (or a `cnnf.train` checkpoint) for a model.

Targets (what the attack differentiates or queries): a plain CNN is
attacked through its only pass ("first"); a CNN-F through its first pass
(`InferenceModel(net, 0, "first")`), end to end (`InferenceModel(net, 1,
"avg")`, "e2e") and, for PGD, end to end with straight-through feedback
gates ("e2e_bpda"; also APGD). Every attack is built with its registry defaults and
eps 0.1 in [0, 1] pixel units (Linf, and the Gaussian noise's std); L2 PGD
with an L2 budget of 1.5; CW-L2 and DeepFool unbounded. The transfer
attack runs PGD-Linf on a separately initialised plain CNN of the same
backbone and never calls the target.

Full work: the attacks stop on an example once it is fooled, and random
weights are fooled within a few steps, which would make every figure
meaninglessly fast. So, by default, every label is class 0 and the
target's (and transfer source's) class-0 logit is raised by 1e4: no example
is ever fooled, and each attack does its full nominal work on every image,
the cost of an image the model defends (an upper bound of its evaluation
cost). The offset leaves the cost and the logit differences the attacks use
unchanged; cross-entropy gradients saturate to 0, which changes no amount
of work. `--early-stop` uses the true labels and the plain target instead,
as an evaluation does: meaningful with trained `--weights`.

Measured per row: the median seconds of `attack.perturb(predict, x, y,
generator)` (a fresh generator seeded 0 per call, so every call does the
same work) over the calls made within `--seconds` (at least one; with two
or more the first is dropped as warm-up), outside torch.inference_mode;
images/s; the rows the target's forward saw per image (`fwd/img`) and how
many of those were taken with an input gradient (`grad/img`), counted; and
the cost in forward-pass equivalents (`x fwd`: the target's inference
images/s over the attack's). The reference forward passes (inference_mode,
and forward + input gradient) are timed in the same run, per target, at the
run's largest batch. Images are the first of the Fashion-MNIST test split
from $CNNF_DATA_ROOT, else of the bundled sample: 64 per call by default,
more for FGSM and fewer for the attacks with hundreds to thousands of
forward passes per image (`DEFAULT_BATCH`; `--batch` sets one for all:
mind SPSA, ~26,000 forward passes per image, and Square, 5,001). A default
CPU run took about 7 minutes on 2 cores before APGD-CE, APGD-DLR, APGD-T
(AutoAttack's 100 iterations, 9 targets) and Square (5,000 queries) were
added; with them, expect several minutes more (their full-work figures are
to be measured alone). Run it alone: the machine is shared and any other
load lowers every figure. The host (CPU model, avx2 / avx512f / avx512_bf16 /
amx flags, threads) is printed first and stored under "host" in the JSON.
Everything runs in fp32: there are no bf16 rows to skip on a CPU without
native bf16.

The full benchmark, then a smoke run (figures meaningless):

    .venv/bin/python benchmarks/attack_suite.py [--attacks fgsm pgd_linf] [--batch 64] [--seconds 10] \\
        [--device cpu|cuda] [--std] [--early-stop] [--weights cnnf_fmnist_adv=ckpt.pt] [--json out.json]
    .venv/bin/python benchmarks/attack_suite.py --attacks fgsm pgd_linf --batch 2 --seconds 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from cnnf.attacks import ATTACKS, Attack, attack_names, create_attack
from cnnf.config import DataConfig
from cnnf.data import DATA_ROOT_ENV, DataNotFoundError, load_raw, to_inputs
from cnnf.models import InferenceModel, create_model
from cnnf.runtime import tune_cpu_allocator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import print_host  # noqa: E402

EPS_PIXELS = {"linf": 0.1, "l2": 1.5, "none": 0.1}  # [0, 1] pixel units, by the attack's norm
UNBOUNDED = ("cw_l2", "deepfool")  # minimal-perturbation attacks, run without a budget
# Images per call by attack (others: 64): at most ~50 s of full work per call on the CNN-F end to end on a
# quiet 2-core machine, except SPSA (~26,000 forward passes per image: ~2.5 min for one).
# APGD-CE: 101 gradient rows per image (2.5x PGD-40); APGD-T: 9 targets x 101; Square: 5,001 forward rows.
DEFAULT_BATCH = {"fgsm": 256, "uniform_noise": 32, "gaussian_noise": 32, "deepfool": 8, "cw_l2": 8, "spsa": 1,
                 "apgd_ce": 24, "apgd_dlr": 24, "apgd_t": 4, "square": 8}
GRADIENT_THROUGH_GATES = ("pgd_linf", "apgd_ce", "apgd_dlr", "apgd_t")  # also timed with straight-through gates (e2e_bpda)
# model -> (ind, feedback iterations, scored prediction); plain CNNs run 0 iterations.
MODELS = {"cnnf_fmnist_adv": (2, 1, "avg"), "cnn_fmnist_adv": (0, 0, "first"),
          "cnnf_fmnist_std": (0, 1, "avg"), "cnn_fmnist_std": (0, 0, "first")}
SETTINGS = ("steps", "restarts", "n_targets", "queries", "binary_search_steps", "n_candidates", "n_samples", "draws")
NEVER_FOOLED_OFFSET = 1e4


class Target(nn.Module):
    """A prediction function that counts the rows it sees (with and without an
    input gradient); with never_fooled, class 0's logit is raised so far that
    argmax is always 0."""

    def __init__(self, model: nn.Module, never_fooled: bool):
        super().__init__()
        self.model, self.never_fooled = model, never_fooled
        self.rows = self.grad_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        self.grad_rows += len(x) if x.requires_grad and torch.is_grad_enabled() else 0
        logits = self.model(x)
        return torch.cat([logits[:, :1] + NEVER_FOOLED_OFFSET, logits[:, 1:]], 1) if self.never_fooled else logits


@dataclass
class Timing:
    """One attack on one target."""

    norm: str
    eps_pixels: float | None
    settings: str
    batch: int
    calls: int
    seconds_per_call: float
    images_per_s: float
    forward_per_image: float  # rows the target's forward saw, per attacked image
    grad_forward_per_image: float  # of those, rows taken with an input gradient


@dataclass
class Row:
    model: str
    target: str
    attack: str
    timing: Timing
    forward_equivalents: float  # the target's inference images/s (reference batch) over the attack's

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "target": self.target, "attack": self.attack, **asdict(self.timing),
                "forward_equivalents": self.forward_equivalents}


@dataclass
class Forward:
    model: str
    target: str
    batch: int
    images_per_s: float  # inference_mode forward
    grad_images_per_s: float  # forward + backward to the input


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], seconds: float, device: torch.device) -> tuple[float, int]:
    """(median seconds per call, calls timed): calls until `seconds` have passed
    (at least one); with two or more, the first is dropped as warm-up."""
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while not times or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    if len(times) >= 2:
        times = times[1:]
    times.sort()
    return times[len(times) // 2], len(times)


def load_test_images(n: int) -> tuple[Tensor, Tensor, str]:
    """The first n test images (inputs in [-1, 1]) and labels: real Fashion-MNIST if found, else the bundled sample."""
    root = os.environ.get(DATA_ROOT_ENV)
    cfg = DataConfig(dataset="fashion-mnist", root=root) if root else DataConfig(dataset="fashion-mnist-sample")
    try:
        _, _, test_x, test_y = load_raw(cfg)
    except DataNotFoundError:  # $CNNF_DATA_ROOT without Fashion-MNIST
        cfg = DataConfig(dataset="fashion-mnist-sample")
        _, _, test_x, test_y = load_raw(cfg)
    if n > len(test_y):
        raise SystemExit(f"--batch {n}: the {cfg.dataset} test split has only {len(test_y)} images")
    return to_inputs(test_x[:n]), test_y[:n].long(), f"{cfg.dataset} test split"


def build_net(name: str, seed: int, weights: dict[str, str]) -> nn.Module:
    ind, _, _ = MODELS[name]
    torch.manual_seed(seed)
    net = create_model(name, ind=ind)
    if name in weights:
        state = torch.load(weights[name], map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"] if "model" in state else state)
    return net.eval()


def targets(name: str, net: nn.Module) -> dict[str, InferenceModel]:
    _, n_iterations, prediction = MODELS[name]
    if n_iterations == 0:
        return {"first": InferenceModel(net, 0, "first")}
    return {"first": InferenceModel(net, 0, "first"), "e2e": InferenceModel(net, n_iterations, prediction),
            "e2e_bpda": InferenceModel(net, n_iterations, prediction, gates="bpda")}


def make_attack(name: str, source: Target) -> Attack:
    if name == "transfer":
        return create_attack(name, eps_pixels=EPS_PIXELS["linf"], source=source, base="pgd_linf")
    norm = ATTACKS.get(name).factory.norm  # type: ignore[attr-defined]
    return create_attack(name, eps_pixels=None if name in UNBOUNDED else EPS_PIXELS[norm])


def settings(attack: Attack) -> str:
    """The attack's amount of work, e.g. "steps=40 restarts=1"; a transfer's is its base attack's."""
    base = getattr(attack, "base", None)
    if isinstance(base, Attack):
        return f"{type(base).__name__}: {settings(base)}"
    shown = [k for k in SETTINGS if hasattr(attack, k) and (k != "n_targets" or getattr(attack, "loss", "") == "dlr_targeted")]
    return " ".join(f"{k}={getattr(attack, k)}" for k in shown)


def time_attack(attack: Attack, target: Target, x: Tensor, y: Tensor, seconds: float, device: torch.device) -> Timing:
    def run() -> None:  # every call does the same work; the counts are the last call's
        target.rows = target.grad_rows = 0
        attack.perturb(target, x, y, torch.Generator(device=device).manual_seed(0))

    sec, calls = time_calls(run, seconds, device)
    n = len(x)
    return Timing(attack.norm, attack.eps_pixels, settings(attack), n, calls, sec, n / sec, target.rows / n, target.grad_rows / n)


def time_forward(model: nn.Module, x: Tensor, seconds: float, device: torch.device) -> tuple[float, float]:
    """(inference images/s, forward + input-gradient images/s) at x's batch."""
    def infer() -> None:
        with torch.inference_mode():
            model(x)

    def with_grad() -> None:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).logsumexp(1).sum(), xg)

    return len(x) / time_calls(infer, seconds, device)[0], len(x) / time_calls(with_grad, seconds, device)[0]


def print_tables(forward: list[Forward], rows: list[Row], early_stop: bool) -> None:
    print("\nforward passes (reference; inference_mode, and forward + input gradient):")
    print(f"{'model':16} {'target':9} {'batch':>5} {'img/s':>8} {'w/ grad':>8}")
    for f in forward:
        print(f"{f.model:16} {f.target:9} {f.batch:5d} {f.images_per_s:8.0f} {f.grad_images_per_s:8.0f}")
    print(f"\nattacks ({'early stop' if early_stop else 'full work'}; eps in [0, 1] pixel units):")
    print(f"{'model':16} {'target':9} {'attack':15} {'norm':4} {'eps':>4} {'batch':>5} {'calls':>5} {'img/s':>9} "
          f"{'x fwd':>8} {'fwd/img':>8} {'grad/img':>8}  settings")
    for r in rows:
        t = r.timing
        eps = "-" if t.eps_pixels is None else f"{t.eps_pixels:g}"
        print(f"{r.model:16} {r.target:9} {r.attack:15} {t.norm:4} {eps:>4} {t.batch:5d} {t.calls:5d} {t.images_per_s:9.2f} "
              f"{r.forward_equivalents:8.1f} {t.forward_per_image:8.1f} {t.grad_forward_per_image:8.1f}  {t.settings}")


def parse_weights(items: list[str], models: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in models:
            parser.error(f"--weights {item!r}: expected NAME=PATH with NAME one of the models run: {', '.join(models)}")
        weights[name] = path
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", nargs="+", default=attack_names(), choices=attack_names(), metavar="ATTACK",
                        help=f"subset of: {', '.join(attack_names())}")
    parser.add_argument("--batch", type=int, help="images per call for every attack (default: per attack, see DEFAULT_BATCH)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing window per row (at least one call)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--std", action="store_true", help="also the standard-training models cnnf_fmnist_std, cnn_fmnist_std")
    parser.add_argument("--early-stop", action="store_true",
                        help="true labels and the plain target: attacks stop on fooled examples (use with trained --weights)")
    parser.add_argument("--weights", nargs="+", default=[], metavar="NAME=PATH", help="state dict or checkpoint per model")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    models = list(MODELS) if args.std else ["cnnf_fmnist_adv", "cnn_fmnist_adv"]
    weights = parse_weights(args.weights, models, parser)
    batches = {a: args.batch or DEFAULT_BATCH.get(a, 64) for a in args.attacks}
    x_all, y_all, data = load_test_images(max(batches.values()))
    x_all = x_all.to(device)
    y_all = y_all.to(device) if args.early_stop else torch.zeros_like(y_all, device=device)

    if device.type == "cpu":
        tune_cpu_allocator()  # as fit() and evaluate() do
    host = print_host(device)
    print(f"data: {data}; weights: " + ", ".join(f"{m} {weights.get(m, 'random init')}" for m in models))
    print("labels: true, attacks stop on fooled examples" if args.early_stop else
          "labels: all class 0, raised by 1e4 in the logits: no example is ever fooled, every attack does its full work")

    forward: list[Forward] = []
    rows: list[Row] = []
    for model_name in models:
        net = build_net(model_name, 0, weights).to(device)
        source_net = build_net(model_name.replace("cnnf_", "cnn_"), 1, {}).to(device)
        source = Target(InferenceModel(source_net, 0, "first"), not args.early_stop)
        for target_name, model in targets(model_name, net).items():
            attacks = [a for a in args.attacks if target_name != "e2e_bpda" or a in GRADIENT_THROUGH_GATES]
            if not attacks:
                continue
            forward.append(Forward(model_name, target_name, len(x_all), *time_forward(model, x_all, args.seconds, device)))
            for attack_name in attacks:
                batch = batches[attack_name]
                r = time_attack(make_attack(attack_name, source), Target(model, not args.early_stop),
                                x_all[:batch], y_all[:batch], args.seconds, device)
                rows.append(Row(model_name, target_name, attack_name, r, forward[-1].images_per_s / r.images_per_s))
                print(f"  {model_name} {target_name} {attack_name}: {r.images_per_s:.2f} img/s", flush=True)

    print_tables(forward, rows, args.early_stop)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"host": host, "device": str(device), "data": data, "early_stop": args.early_stop, "seconds": args.seconds,
                       "weights": {m: weights.get(m) for m in models}, "forward": [asdict(f) for f in forward],
                       "rows": [r.as_dict() for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
