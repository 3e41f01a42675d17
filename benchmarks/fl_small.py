"""Feedback learning at small scale: the paper's MNIST comparison (original,
Madry-adversarial, FL, reduced FL) with its evaluation, on the offline MNIST.

What it runs, all on one sample set and in fp32 on the CPU:

- the small MNIST CNN (`cnn_mnist_small`) trained on the offline training
  split (`--epochs`);
- the boundary search of He et al. as the paper adopts it (clipped to the
  pixel range, step 0.02 up to 0.5) on `--samples` correctly classified
  training samples (paper 1,500) along `--directions` random orthogonal
  directions (paper 784);
- FL: tiers by R_i with the paper's quotas 20 / 100 / 150 scaled to the
  samples per class, 40 directions per sample at 1.5-2.0 x the margin;
  reduced FL twice: at FL's total ("equal_total", isolates the spread) and
  at the paper's size (every class the largest quota, "max_quota");
- the control (the same retraining on the original images only), a Madry
  baseline as the paper trains it: eps 0.3, PGD-40, step 0.01,
  adversarial-only loss (`--adv-epochs`), and the lighter adversarial
  training this script used before (eps 0.1, PGD-7, the mixed loss);
- every model searched on the original model's samples along its directions
  (those FL's examples were generated from) and along held-out directions,
  and once more unclipped (the N/A share both ways);
- the FL attack suite on the first `--n-eval` test images: single-draw noise
  accuracy over a strength grid (the paper's metric) with worst-of-100 as a
  separate row, FGSM up to eps 0.5 (the paper's Fig. 3).

Stages (trained models, margins) are kept in `--out`/state/ and reused on a
rerun (delete it to start over). The host is printed first and stored under
"host" in results.json. Writes results.md, results.json and the figures to
`--out`; docs/reproductions/fl/README.md is the hand-written reading of them.

    CNNF_DATA_ROOT=../shared/datasets .venv/bin/python benchmarks/fl_small.py [--out docs/reproductions/fl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cnnf.config import DataConfig, ModelConfig, TrainConfig
from cnnf.data import load_splits
from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import _markdown, checks_table
from fl.config import FLConfig, FLEvalConfig, RetrainConfig, SearchConfig, SelectionConfig, equal_quota
from fl.pipeline import (Variant, VariantOutcome, centre_images, continue_training, measure_variant, retrain, search_again,
                         search_margins, train_base)
from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.stats import MarginStats, margin_stats, r_spread
from fl.tables import adjacent_share_table, centre_table, fl_table, robustness_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import host_line, print_host  # noqa: E402

NAMES = {"original": "Ori", "continued": "Ori + retraining", "adv": "Adv (Madry PGD)", "adv_light": "Adv (eps 0.1, PGD-7, mixed)", "fl": "FL",
         "reduced_fl": "Reduced FL (FL's total)", "reduced_fl_paper": "Reduced FL (paper: max quota)"}
ORDER = ("original", "continued", "adv", "adv_light", "fl", "reduced_fl", "reduced_fl_paper")
# The paper's MNIST figures (fl-spec "Published numbers"): Ori / Adv / FL accuracy (%), R per model.
PAPER_ACC = {"fgsm": (50.50, 97.57, 76.96), "pgd_linf": (18.62, 98.03, 64.54),
             "uniform_noise": (78.19, 31.09, 91.07), "gaussian_noise": (77.31, 34.77, 90.65)}
PAPER_R = {"original": 36.15, "adv": 31.74, "fl": 39.12, "reduced_fl_paper": 35.52}
PAPER_NA = 79.0


def small_config(*, n_train: Optional[int] = None, epochs: int = 8, samples: int = 300, directions: int = 196,
                 retrain_epochs: int = 4, n_eval: int = 1000) -> FLConfig:
    """This benchmark's FL setting (its defaults are the command line's): `cnn_mnist_small` on the
    offline MNIST, the paper's quotas 20 / 100 / 150 scaled to `samples` // 10 searched samples per class."""
    scale = samples // 10 / 150  # the paper's quotas are of 150 searched samples per class
    return FLConfig(
        data=DataConfig(dataset="mnist", n_train=n_train),
        model=ModelConfig(arch="cnn_mnist_small"),
        train=TrainConfig(epochs=epochs, batch_size=128, n_iterations=0, device="cpu"),
        search=SearchConfig(n_samples=samples, n_directions=directions, device="cpu"),
        selection=SelectionConfig(quota_high=max(1, round(20 * scale)), quota_medium=round(100 * scale), quota_low=round(150 * scale)),
        retrain=RetrainConfig(epochs=retrain_epochs),
        eval=FLEvalConfig(n_examples=n_eval, check_examples=100),
    )


def _acc(report: EvalReport, label: str) -> Optional[float]:
    a = next((a for a in report.attacks if a.label == label), None)
    return None if a is None else 100 * a.acc


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None or v != v else f"{v:.{digits}f}"


def paper_table(reports: dict[str, EvalReport], stats: dict[str, MarginStats]) -> str:
    """The paper's MNIST numbers beside ours for the models it reports."""
    rows = []
    for label, name in (("fgsm", "FGSM"), ("pgd_linf", "PGD"), ("uniform_noise", "Uniform noise (1 draw)"),
                        ("gaussian_noise", "Gaussian noise (1 draw)")):
        paper = PAPER_ACC[label]
        rows.append([name] + [f"{p:.2f} / {_fmt(_acc(reports[k], label))}" for p, k in zip(paper, ("original", "adv", "fl"))])
    rows.append(["R"] + [f"{PAPER_R[k]:.2f} / {_fmt(stats[k].robustness)}" for k in ("original", "adv", "fl")])
    table = _markdown(["MNIST (paper / here)", "Ori", "Adv (Madry)", "FL"], rows, right=(1, 2, 3))
    return table + (f"\nReduced FL R: paper {PAPER_R['reduced_fl_paper']:.2f}; here {_fmt(stats['reduced_fl_paper'].robustness)} "
                    f"(paper's size), {_fmt(stats['reduced_fl'].robustness)} (FL's total). The paper's attack strengths are "
                    "not published; ours are in the legend of the table above.\n")


def na_table(order: list[str], clipped: dict[str, MarginStats], unclipped: dict[str, MarginStats],
             heldout: dict[str, MarginStats]) -> str:
    def na(s: MarginStats) -> str:
        return _fmt(100 * float(s.adjacent_share[-1]), 1)

    rows = [["N/A share, clipped (He et al., the default) (%)"] + [na(clipped[k]) for k in order],
            ["N/A share, unclipped (%)"] + [na(unclipped[k]) if k in unclipped else "–" for k in order],
            ["N/A share, clipped, held-out directions (%)"] + [na(heldout[k]) if k in heldout else "–" for k in order],
            ["R, clipped"] + [_fmt(clipped[k].robustness) for k in order],
            ["R, unclipped"] + [_fmt(unclipped[k].robustness) if k in unclipped else "–" for k in order]]
    return _markdown(["", *[NAMES[k] for k in order]], rows, right=tuple(range(1, len(order) + 1))) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: all of the offline subset)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--adv-epochs", type=int, default=8, help="epochs of the Madry baseline (PGD-40 at eps 0.3)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--directions", type=int, default=196)
    parser.add_argument("--heldout-models", default="original,fl,reduced_fl,adv",
                        help="models also searched along held-out directions (comma-separated keys of NAMES)")
    parser.add_argument("--unclipped-models", default="original,fl", help="models also searched unclipped")
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--no-adv", action="store_true", help="leave out the adversarially trained model")
    parser.add_argument("--out", default="docs/reproductions/fl")
    args = parser.parse_args()
    heldout_models, unclipped_models = set(args.heldout_models.split(",")) - {""}, set(args.unclipped_models.split(",")) - {""}
    unknown = (heldout_models | unclipped_models) - set(NAMES)
    if unknown:
        parser.error(f"--heldout-models / --unclipped-models: unknown {sorted(unknown)}; expected some of {', '.join(NAMES)}")
    host = print_host("cpu")
    out = Path(args.out)
    stages = out / "state"
    t_start = time.perf_counter()

    per_class = args.samples // 10
    cfg = small_config(n_train=args.n_train, epochs=args.epochs, samples=args.samples, directions=args.directions,
                       retrain_epochs=args.retrain_epochs, n_eval=args.n_eval)
    paper_reduced = replace(cfg, selection=replace(cfg.selection, reduced_size="max_quota"))
    splits = load_splits(cfg.data)
    sel = cfg.selection
    print(f"MNIST: {len(splits.train)} training images; {args.samples} samples x {args.directions} directions x 2 signs; "
          f"quotas {sel.quota_high}/{sel.quota_medium}/{sel.quota_low} (reduced FL: {equal_quota(sel, 10)} per class at "
          f"FL's total, {equal_quota(paper_reduced.selection, 10)} at the paper's size)")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        def search_progress(name: str):
            task = bar.add_task(f"margins: {name}", total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        def log(msg: str) -> None:
            bar.console.print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}")

        say = log
        say("training the base model")
        net, history = train_base(cfg, splits, stage_dir=stages, log=log)
        say("searching the base model's margins")
        margins = search_margins(net, splits, cfg, stage_dir=stages, progress=search_progress("original"), log=log)
        stats0 = margin_stats(margins, splits.n_classes)
        models = {"original": Variant("original", net, history)}
        say("continued: retraining on the original images only (the control)")
        models["continued"] = continue_training(net, splits, cfg)
        if not args.no_adv:
            adv_train = replace(cfg.train, epochs=args.adv_epochs, adv_eps_linf=0.3, adv_steps=40, adv_step_linf=0.01,
                                adv_loss="adversarial")
            say(f"adv: Madry training (PGD-40, eps 0.3, step 0.01, adversarial-only loss, {args.adv_epochs} epochs)")
            models["adv"] = Variant("adv", *train_base(replace(cfg, train=adv_train), splits, stage_dir=stages, log=log))
            # The lighter baseline this script used before (eps 0.1, PGD-7, the mixed loss), kept for comparison.
            say("adv_light: adversarial training (PGD-7, eps 0.1, (clean + adversarial CE) / 2)")
            light_train = replace(cfg.train, adv_eps_linf=0.1, adv_steps=7)
            models["adv_light"] = Variant("adv_light", *train_base(replace(cfg, train=light_train), splits, stage_dir=stages, log=log))
        say("fl: generating examples and retraining")
        models["fl"] = retrain(net, splits, margins, stats0, cfg)
        say("reduced_fl: equal quotas at FL's total")
        models["reduced_fl"] = retrain(net, splits, margins, stats0, cfg, equal_quotas=True)
        say("reduced_fl_paper: every class the largest quota (the paper's reduced FL employs more examples)")
        models["reduced_fl_paper"] = replace(retrain(net, splits, margins, stats0, paper_reduced, equal_quotas=True),
                                             name="reduced_fl_paper")
        outcomes: dict[str, VariantOutcome] = {}
        for k, variant in models.items():
            outcomes[k] = measure_variant(variant, splits, margins, stats0, cfg, stage_dir=stages, margins_after=True,
                                          heldout=k in heldout_models, split_names=("test",), log=log,
                                          search_progress=search_progress)
        # The N/A share both ways: models searched again without clipping.
        unclipped_cfg = replace(cfg, search=replace(cfg.search, clip=False))
        unclipped: dict[str, MarginStats] = {}
        for k in (k for k in ORDER if k in unclipped_models and k in outcomes):
            say(f"{k}: unclipped search (the ablation)")
            m = search_again(outcomes[k].variant.net, splits, margins, unclipped_cfg, stage_dir=stages,
                             progress=search_progress(f"{k} (unclipped)"), log=log)
            unclipped[k] = margin_stats(m, splits.n_classes)

    order = [k for k in ORDER if k in outcomes]
    stats = {k: outcomes[k].stats for k in order}
    heldout = {k: outcomes[k].heldout_stats for k in order if outcomes[k].heldout_stats is not None}
    reports = {k: outcomes[k].reports["test"] for k in order}
    named = [(NAMES[k], stats[k]) for k in order]
    margin_heatmap(named, out / "margin_heatmap.png", title="MNIST: mean margin (origin x adjacent class)")
    class_robustness(named, out / "class_robustness.png", title="MNIST: class robustness R_i")
    class_robustness([(NAMES[k], heldout[k]) for k in heldout], out / "class_robustness_heldout.png",
                     title="MNIST: class robustness R_i, held-out directions")
    class_centres(centre_images(splits, margins, stats0), [(NAMES[k], outcomes[k].centre_margin.tolist()) for k in order],
                  out / "class_centres.png")
    accuracy_vs_eps([(NAMES[k], reports[k]) for k in order], out / "fgsm_curve.png", labels=("fgsm",),
                    title="MNIST test accuracy vs FGSM strength")
    for label, what in (("uniform_noise", "uniform noise half-width"), ("gaussian_noise", "Gaussian noise sigma")):
        accuracy_vs_eps([(NAMES[k], reports[k]) for k in order], out / f"{label}_curve.png", labels=(label,),
                        title=f"MNIST test accuracy vs {what} (one draw per image)")
    minutes = (time.perf_counter() - t_start) / 60
    # Measured when each stage was computed (stored with it), so they hold on a rerun that reuses stages.
    search_s = {k: outcomes[k].margins.seconds for k in order if outcomes[k].margins is not None}
    train_s = {k: sum(h.seconds for h in outcomes[k].variant.history) for k in order}
    timing = ("Compute (seconds, measured when each stage ran): training " + ", ".join(f"{NAMES[k]} {v:.0f}" for k, v in train_s.items())
              + "; boundary search (clipped, the original's directions) "
              + ", ".join(f"{NAMES[k]} {v:.0f} ({outcomes[k].margins.forward_passes / v:,.0f} images/s)" for k, v in search_s.items()) + ".")
    plan = outcomes["fl"].variant.plan
    n_gen = {k: outcomes[k].variant.n_generated for k in ("fl", "reduced_fl", "reduced_fl_paper")}
    adv_line = (f"Adv: Madry training as the paper's baseline, PGD-40 at Linf 0.3 with step 0.01 and the adversarial-only "
                f"loss, {args.adv_epochs} epochs. " if "adv" in outcomes else "")
    md = [
        "# Feedback learning at small scale: measured (`benchmarks/fl_small.py`)\n",
        f"{host_line(host)}. fp32 on the CPU. The reading of these numbers is in [README.md](README.md).\n",
        f"MNIST, `cnn_mnist_small` trained on {len(splits.train)} images for {args.epochs} epochs. {adv_line}Boundary search "
        f"(clipped to the pixel range, as He et al.) on {args.samples} training samples the original model classifies "
        f"correctly ({per_class} per class), searched for every model, x {args.directions} random orthogonal directions x 2 "
        f"signs, step 0.02 up to 0.5 ([0, 1] pixel units along directions of per-pixel RMS 1); {', '.join(NAMES[k] for k in heldout)} also along "
        f"{args.directions} held-out directions (seed {cfg.search.heldout_directions_seed}). FL quotas {sel.quota_high} / "
        f"{sel.quota_medium} / {sel.quota_low} (high / medium / low tier, the paper's 20 / 100 / 150 scaled to {per_class} "
        f"samples per class), {sel.directions_per_sample} directions per sample at {sel.strength_min}-{sel.strength_max} x the "
        f"margin; reduced FL {equal_quota(sel, 10)} per class (FL's total) or {equal_quota(paper_reduced.selection, 10)} per "
        f"class (the paper's size). Retraining from the trained weights for {args.retrain_epochs} epochs on the original "
        f"images + {n_gen['fl']} (FL) / {n_gen['reduced_fl']} / {n_gen['reduced_fl_paper']} (reduced FL) generated examples. "
        f"Test: first {args.n_eval} MNIST test images. *Ori + retraining* is the control: the same retraining on the original "
        f"images only. This invocation took {minutes:.0f} min (stages reused from {args.out}/state/ if present). {timing}\n",
        "## Accuracy under the FL attack suite (paper Table III format)\n",
        fl_table([(NAMES[k], [reports[k]]) for k in order]),
        f"\nNoise rows: *Uniform / Gaussian noise* is the paper's metric, accuracy under one draw per image; *worst of k* "
        f"counts an image as broken if any of k = {cfg.eval.noise_worst_of} draws fools it.\n",
        "## The paper's MNIST numbers beside these\n",
        paper_table(reports, stats),
        "\n## Robustness R and class robustness R_i: the original's samples and directions\n",
        robustness_table(named),
        "\nFL tiers (by the original model's R_i): "
        + ", ".join(f"class {c}: {plan.tier[c]} ({plan.quota[c]})" for c in plan.order) + ".\n",
        "\n## The same, along held-out directions (no generated example was made from them)\n",
        robustness_table([(NAMES[k], heldout[k]) for k in heldout]),
        "\n## N/A share clipped and unclipped\n",
        na_table(order, stats, unclipped, heldout),
        "\n![margin heat maps](margin_heatmap.png)\n\n![class robustness](class_robustness.png)\n\n"
        "![class robustness, held-out directions](class_robustness_heldout.png)\n",
        "\n## Adjacent-class shares (paper Table I)\n", adjacent_share_table(named),
        "\n## Class-centre images (largest mean margin per class, original model): mean margin under each model\n",
        centre_table([NAMES[k] for k in order], [outcomes[k].centre_margin.tolist() for k in order]),
        "\n![class-centre images](class_centres.png)\n",
        "\n## Accuracy vs FGSM strength (to 0.5, as the paper's Fig. 3)\n\n![FGSM curve](fgsm_curve.png)\n",
        "\n## Accuracy vs noise strength (one draw per image)\n\n![uniform noise](uniform_noise_curve.png)\n\n"
        "![Gaussian noise](gaussian_noise_curve.png)\n",
    ]
    for k in order:
        md += [f"\n## Integrity checks: {NAMES[k]}\n", checks_table(reports[k])]
    (out / "results.md").write_text("\n".join(md) + "\n")

    def margin_dict(s: Optional[MarginStats]) -> Optional[dict]:
        return None if s is None else {**s.as_dict(), "R_spread": r_spread(s.class_robustness)}

    (out / "results.json").write_text(json.dumps(
        {"host": host, "args": vars(args), "minutes": minutes}
        | {k: {"report": reports[k].as_dict(), "margins": margin_dict(stats[k]), "margins_heldout": margin_dict(heldout.get(k)),
               "margins_unclipped": margin_dict(unclipped.get(k)), "centre_margin": outcomes[k].centre_margin.tolist(),
               "n_generated": outcomes[k].variant.n_generated,
               "search_seconds": outcomes[k].margins.seconds if outcomes[k].margins is not None else None,
               "history": [h.__dict__ for h in outcomes[k].variant.history]} for k in order}, indent=1, default=str))
    print("\n".join(md[3:8]))
    print(f"written {out}/results.md in {minutes:.1f} min")


if __name__ == "__main__":
    main()
