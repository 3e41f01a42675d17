"""Feedback learning at small scale (issue #5): original vs Madry-adversarial
vs FL vs reduced FL on the offline MNIST, comparing R, the R_i spread, the
class-centre margins and accuracy under the FL attack suite and noise.

The paper's MNIST setting scaled down to run in well under an hour on the
2-core machine: the small MNIST CNN (`cnn_mnist_small`) trained on the first
`--n-train` training images, `--samples` searched samples (paper 1,500)
along `--directions` random orthogonal directions (paper 784) with the
paper's step 0.02 and range 0.5, quotas scaled with the samples per class
(paper 20 / 100 / 150 of 150 per class), 40 directions per sample and
strength 1.5-2.0, retraining from the trained weights. Evaluated on the
first `--n-eval` MNIST test images. Stages (trained models, margins) are
kept in `--out`/state/, so a rerun reuses them (delete it to start over).
The host (CPU model, avx2 / avx512f / avx512_bf16 / amx flags, threads) is
printed first and stored under "host" in results.json. Everything runs in
fp32: nothing to skip on a CPU without native bf16.

The full benchmark:

    CNNF_DATA_ROOT=../shared/datasets .venv/bin/python benchmarks/fl_small.py [--out docs/fl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cnnf.config import DataConfig, ModelConfig, TrainConfig
from cnnf.data import load_splits
from cnnf.plots import accuracy_vs_eps
from fl.config import FLConfig, FLEvalConfig, RetrainConfig, SearchConfig, SelectionConfig
from fl.pipeline import VariantOutcome, centre_images, centre_margins, evaluate_model, run_feedback_learning, search_margins, train_base, Variant
from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.select import equal_quota
from fl.stats import margin_stats
from fl.tables import adjacent_share_table, centre_table, fl_table, robustness_table
from cnnf.tables import checks_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import print_host  # noqa: E402

NAMES = {"original": "Ori", "continued": "Ori + retraining", "adv": "Adv (Madry PGD)", "fl": "FL", "reduced_fl": "Reduced FL"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: all of the offline subset)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--directions", type=int, default=392)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--no-adv", action="store_true", help="leave out the adversarially trained model")
    parser.add_argument("--out", default="docs/fl")
    args = parser.parse_args()
    host = print_host("cpu")
    out = Path(args.out)
    stages = out / "state"
    t_start = time.perf_counter()

    per_class = args.samples // 10
    scale = per_class / 150  # the paper's quotas are of 150 searched samples per class
    cfg = FLConfig(
        data=DataConfig(dataset="mnist", n_train=args.n_train),
        model=ModelConfig(arch="cnn_mnist_small"),
        train=TrainConfig(epochs=args.epochs, batch_size=128, n_iterations=0, device="cpu"),
        search=SearchConfig(n_samples=args.samples, n_directions=args.directions, device="cpu"),
        selection=SelectionConfig(quota_high=max(1, round(20 * scale)), quota_medium=round(100 * scale), quota_low=round(150 * scale)),
        retrain=RetrainConfig(epochs=args.retrain_epochs),
        eval=FLEvalConfig(n_examples=args.n_eval, check_examples=100),
    )
    splits = load_splits(cfg.data)
    sel = cfg.selection
    print(f"MNIST: {len(splits.train)} training images; {args.samples} samples x {args.directions} directions x 2 signs; "
          f"quotas {sel.quota_high}/{sel.quota_medium}/{sel.quota_low} (reduced FL: {equal_quota(sel, 10)} per class)")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        def search_progress(name: str):
            task = bar.add_task(f"margins: {name}", total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        def log(msg: str) -> None:
            bar.console.print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}")

        run = run_feedback_learning(cfg, splits, variants=("original", "continued", "fl", "reduced_fl"), stage_dir=stages,
                                    split_names=("test",), log=log,
                                    search_progress=search_progress)
        outcomes = dict(run.outcomes)
        if not args.no_adv:
            adv_cfg = replace(cfg, train=replace(cfg.train, adv_eps_linf=0.1, adv_steps=7))
            log("adv: adversarial training (PGD-7, eps 0.1)")
            adv_net, adv_hist = train_base(adv_cfg, splits, stage_dir=stages, log=log)
            adv_margins = search_margins(adv_net, splits, cfg, stage_dir=stages, progress=search_progress("adv"), log=log)
            log("adv: evaluating")
            outcomes["adv"] = VariantOutcome(Variant("adv", adv_net, adv_hist), adv_margins,
                                             margin_stats(adv_margins, 10),
                                             centre_margins(adv_net, splits, run.margins, run.stats, cfg),
                                             evaluate_model(adv_net, splits, cfg, split_names=("test",)))
    order = [k for k in ("original", "continued", "adv", "fl", "reduced_fl") if k in outcomes]
    stats = [(NAMES[k], outcomes[k].stats) for k in order if outcomes[k].stats is not None]
    reports = {k: outcomes[k].reports["test"] for k in order}
    margin_heatmap(stats, out / "margin_heatmap.png", title="MNIST: mean margin (origin x adjacent class)")
    class_robustness(stats, out / "class_robustness.png", title="MNIST: class robustness R_i")
    class_centres(centre_images(splits, run.margins, run.stats), [(NAMES[k], outcomes[k].centre_margin.tolist()) for k in order],
                  out / "class_centres.png")
    accuracy_vs_eps([(NAMES[k], reports[k]) for k in order], out / "fgsm_curve.png", title="MNIST test accuracy vs FGSM strength")
    minutes = (time.perf_counter() - t_start) / 60
    # Measured when each stage was computed (stored with it), so they hold on a rerun that reuses stages.
    search_s = {k: outcomes[k].margins.seconds for k in order if outcomes[k].margins is not None}
    train_s = {k: sum(h.seconds for h in outcomes[k].variant.history) for k in order}
    timing = ("Compute (seconds, measured when each stage ran): training " + ", ".join(f"{NAMES[k]} {v:.0f}" for k, v in train_s.items())
              + "; boundary search " + ", ".join(f"{NAMES[k]} {v:.0f} ({outcomes[k].margins.forward_passes / v:,.0f} images/s)"
                                                  for k, v in search_s.items()) + ".")
    plan = outcomes["fl"].variant.plan
    md = [
        "# Feedback learning at small scale (`benchmarks/fl_small.py`)\n",
        f"MNIST, `cnn_mnist_small` trained on {len(splits.train)} images for {args.epochs} epochs (Adv: PGD-7 Madry "
        f"training at Linf 0.1). Boundary search on {args.samples} correctly classified training samples "
        f"({per_class} per class) x {args.directions} random orthogonal directions x 2 signs, step 0.02 up to 0.5 "
        f"([0, 1] pixel units along directions of per-pixel RMS 1). FL quotas {sel.quota_high} / {sel.quota_medium} / "
        f"{sel.quota_low} (high / medium / low tier, the paper's 20 / 100 / 150 scaled to {per_class} samples per class), "
        f"{sel.directions_per_sample} directions per sample at {sel.strength_min}-{sel.strength_max} x the margin; "
        f"reduced FL {equal_quota(sel, 10)} per class. Retraining from the trained weights for {args.retrain_epochs} "
        f"epochs on the original images + {outcomes['fl'].variant.n_generated} (FL) / "
        f"{outcomes['reduced_fl'].variant.n_generated} (reduced FL) generated examples. Test: first {args.n_eval} MNIST "
        f"test images. *Ori + retraining* is the control: the same retraining on the original images only, so "
        f"what FL adds beyond the extra epochs is FL minus that column. This invocation took {minutes:.0f} min "
        f"(stages reused from {args.out}/state/ if present). {timing}\n",
        "## Accuracy under the FL attack suite (paper Table III format)\n",
        fl_table([(NAMES[k], [reports[k]]) for k in order]),
        "\n## Robustness R and class robustness R_i (each model's own search)\n",
        robustness_table(stats),
        "\nFL tiers (by the original model's R_i): "
        + ", ".join(f"class {c}: {plan.tier[c]} ({plan.quota[c]})" for c in plan.order) + ".\n",
        "\n![margin heat maps](margin_heatmap.png)\n\n![class robustness](class_robustness.png)\n",
        "\n## Adjacent-class shares (paper Table I)\n", adjacent_share_table(stats),
        "\n## Class-centre images (largest mean margin per class, original model): mean margin under each model\n",
        centre_table([NAMES[k] for k in order], [outcomes[k].centre_margin.tolist() for k in order]),
        "\n![class-centre images](class_centres.png)\n",
        "\n## Accuracy vs FGSM strength\n\n![FGSM curve](fgsm_curve.png)\n",
    ]
    for k in order:
        md += [f"\n## Integrity checks: {NAMES[k]}\n", checks_table(reports[k])]
    (out / "README.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"host": host} | {k: {"report": reports[k].as_dict(), "margins": outcomes[k].stats.as_dict() if outcomes[k].stats else None,
             "centre_margin": outcomes[k].centre_margin.tolist(), "n_generated": outcomes[k].variant.n_generated,
             "history": [h.__dict__ for h in outcomes[k].variant.history]} for k in order}, indent=1, default=str))
    print("\n".join(md[2:5]))
    print(f"written {out}/README.md in {minutes:.1f} min")


if __name__ == "__main__":
    main()
