"""The evaluation of issue #4 end to end at small scale: the CNN-F paper's
Table 2 format and the feedback-learning paper's Table III format, an
accuracy-vs-eps plot and the integrity checks, from models trained here.

Trains, on the first `--n-train` Fashion-MNIST training images (standard
training, B.1), a plain CNN (`cnn_fmnist_std`) and a CNN-F
(`cnnf_fmnist_std`, ind 0, 1 iteration), then evaluates on the first
`--n-eval` test images:
- CNN-F table: Clean, PGD first / e2e, SPSA first / e2e (the reference's
  SPSA: 7 Adam steps, 128 antithetic samples), transfer from the plain CNN,
  Min, for the CNN and the CNN-F's `last` and `avg` predictions; PGD end to
  end also with straight-through (BPDA) gates; every attack at Linf 0.1.
- FL Table III: FGSM, CW-L2, PGD, BIM, MIM, DeepFool, uniform and Gaussian
  noise on both models (the FL models themselves come with issue #5).
- AutoAttack's attacks in the CNN-F suites, each on every image
  and in the Min: APGD-CE and APGD-T (9 targets) against the first pass, end
  to end and end to end with BPDA gates (the CNN: its only pass), and Square
  end to end; `--apgd-steps`, `--square-queries` (AutoAttack: 100, 5000),
  `--no-autoattack` leaves them out. Rendered as a table of their own.
- the feedback-learning models (`--no-fl` leaves them out): the original
  `cnn_mnist_small`, FL and reduced FL as `benchmarks/fl_small.py` makes
  them with its defaults (offline MNIST, 300 searched samples x 196
  directions; stages kept in `--out`/state/fl/), each under the CNN's suite
  with AutoAttack's attacks, on the first `--fl-n-eval` MNIST test images.
- accuracy vs eps of the end-to-end PGD, and the integrity checks of every
  evaluation.
Writes results.md, a PNG and the raw reports (JSON) to `--out` (README.md
there is the hand-written reading of them); the evaluation
state goes to `--out`/state/ (delete it to start over), so an interrupted run
resumes. Budgets are in [0, 1] pixel units (Linf; L2 for CW and DeepFool).
With `--n-eval 200 --seeds 0` (the published page) the Fashion-MNIST
models' evaluations took 25 min alone on a 2-core Xeon with AVX-512
(2026-12-02; AutoAttack's attacks included), the FL models 2 min to make
and about 2 min each to evaluate on 500 images; the default second seed
doubles the Fashion-MNIST part.
The host (CPU model, avx2 / avx512f / avx512_bf16 / amx flags, threads) is
printed first and stored under "host" in reports.json. Everything runs in
fp32: nothing to skip on a CPU without native bf16.

The full benchmark:

    CNNF_DATA_ROOT=../shared/datasets .venv/bin/python benchmarks/robustness_tables.py [--out docs/reproductions/robustness]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from cnnf.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import load_splits
from cnnf.evaluate import EvalProgress, evaluate
from cnnf.suite import AttackSpec, autoattack_suite, cnnf_paper_suite, fl_paper_suite
from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import autoattack_table, checks_table, cnnf_table, fl_table
from cnnf.train import fit
from fl.pipeline import retrain, search_margins, train_base
from fl.stats import margin_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import host_line, print_host  # noqa: E402
from fl_small import NAMES as FL_NAMES, small_config  # noqa: E402

EPS = 0.1
GRID = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="attack seeds (mean ± std)")
    parser.add_argument("--out", default="docs/reproductions/robustness")
    parser.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE / APGD-T iterations (AutoAttack: 100)")
    parser.add_argument("--square-queries", type=int, default=5000, help="Square attack queries (AutoAttack: 5000)")
    parser.add_argument("--no-autoattack", action="store_true", help="leave out APGD-CE, APGD-T and Square (the PGD-only tables)")
    parser.add_argument("--no-fl", action="store_true", help="leave out the feedback-learning models (MNIST)")
    parser.add_argument("--fl-n-train", type=int, default=None, help="FL models: MNIST training images (default: all offline)")
    parser.add_argument("--fl-epochs", type=int, default=8, help="FL models: epochs of the original model (fl_small.py: 8)")
    parser.add_argument("--fl-samples", type=int, default=300, help="FL models: searched samples (fl_small.py: 300)")
    parser.add_argument("--fl-directions", type=int, default=196, help="FL models: search directions (fl_small.py: 196)")
    parser.add_argument("--fl-n-eval", type=int, default=500, help="FL models: MNIST test images evaluated (cheap: a small CNN)")
    args = parser.parse_args()
    host = print_host("cpu")
    out = Path(args.out)
    (out / "state").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    dataset = "fashion-mnist"
    try:
        splits = load_splits(DataConfig(dataset=dataset, n_train=args.n_train))
    except (FileNotFoundError, RuntimeError):
        dataset = "fashion-mnist-sample"
        splits = load_splits(DataConfig(dataset=dataset, n_train=args.n_train))
    print(f"data: {dataset}, {len(splits.train)} training images, evaluating the first {args.n_eval} test images")

    models = {}
    for arch, t in (("cnn_fmnist_std", 0), ("cnnf_fmnist_std", 1)):
        cfg = ExperimentConfig(data=DataConfig(dataset=dataset, n_train=args.n_train), model=ModelConfig(arch=arch, ind=0),
                               train=TrainConfig(epochs=args.epochs, batch_size=64, n_iterations=t, device="cpu", seed=0))
        t0 = time.perf_counter()
        models[arch] = fit(cfg, splits).model.eval()
        print(f"trained {arch} ({args.epochs} epochs) in {time.perf_counter() - t0:.0f} s")
    cnn, cnnf = models["cnn_fmnist_std"], models["cnnf_fmnist_std"]

    def run(name: str, model, suite, data=None, **kw) -> EvalReport:
        t0 = time.perf_counter()
        last = [""]

        def progress(p: EvalProgress) -> None:
            if p.label != last[0]:
                print(f"  {name}: {p.label} ({p.done}/{p.total} batches)", flush=True)
                last[0] = p.label

        # Resumable: a rerun retrains the same weights (seeded) and continues from here.
        state = out / "state" / (name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "") + ".pt")
        r = evaluate(model, splits.test if data is None else data, suite, split="test", progress=progress, state_path=state, **kw)
        print(f"{name}: {time.perf_counter() - t0:.0f} s, {len(r.flagged)} flagged checks")
        return r

    common = dict(n_examples=args.n_eval, seeds=tuple(args.seeds), batch_size=100)
    paper = dict(pgd_steps=args.pgd_steps, **common)

    def with_autoattack(suite, targets):
        """The suite plus APGD-CE and APGD-T against `targets` and Square end to end
        (AutoAttack's settings, not cascaded: each attack on every image, so each
        has its own accuracy), all in the suite's per-example Min."""
        if args.no_autoattack:
            return suite
        aa = autoattack_suite(EPS, targets=targets, apgd_steps=args.apgd_steps, square_queries=args.square_queries,
                              cascade=False)
        return dataclasses.replace(suite, attacks=suite.attacks + aa.attacks)

    def with_curve(suite):
        """The same suite with the end-to-end PGD also swept over GRID."""
        attacks = tuple(dataclasses.replace(a, eps_grid=GRID) if a.attack == "pgd_linf" and a.target is None and a.gates == "exact"
                        else a for a in suite.attacks)
        return dataclasses.replace(suite, attacks=attacks)

    cnnf_targets = ("first", "e2e", "e2e_bpda")
    reports = {
        "CNN": run("CNN", cnn, with_autoattack(with_curve(cnnf_paper_suite(EPS, n_iterations=0, prediction="first", transfer=False,
                                                                           bpda=False, **paper)), ("e2e",))),
        "CNN-F (last)": run("CNN-F (last)", cnnf, with_autoattack(cnnf_paper_suite(EPS, n_iterations=1, prediction="last", **paper),
                                                                  cnnf_targets), transfer_source=cnn),
        "CNN-F (avg)": run("CNN-F (avg)", cnnf, with_autoattack(with_curve(cnnf_paper_suite(EPS, n_iterations=1, prediction="avg",
                                                                                            **paper)), cnnf_targets),
                           transfer_source=cnn),
    }
    fl_suite = fl_paper_suite(EPS, l2_eps=1.5, **common)
    fl_reports = {
        "CNN": run("CNN (FL suite)", cnn, fl_suite),
        "CNN-F (avg)": run("CNN-F (avg, FL suite)", cnnf,
                           dataclasses.replace(fl_suite, n_iterations=1, prediction="avg",
                                               attacks=fl_suite.attacks + (AttackSpec.of("pgd_linf", EPS, gates="bpda", label="pgd_bpda"),))),
    }

    # The feedback-learning models (MNIST): fl_small.py's defaults, its stages cached under state/fl.
    fl_models: dict[str, EvalReport] = {}
    if not args.no_fl:
        fl_cfg = small_config(n_train=args.fl_n_train, epochs=args.fl_epochs, samples=args.fl_samples,
                              directions=args.fl_directions)
        mnist = load_splits(fl_cfg.data)
        stages = out / "state" / "fl"
        t0 = time.perf_counter()
        base, _ = train_base(fl_cfg, mnist, stage_dir=stages)
        margins = search_margins(base, mnist, fl_cfg, stage_dir=stages)
        stats = margin_stats(margins, mnist.n_classes)
        nets = {"original": base, "fl": retrain(base, mnist, margins, stats, fl_cfg).net,
                "reduced_fl": retrain(base, mnist, margins, stats, fl_cfg, equal_quotas=True).net}
        print(f"FL models (original, FL, reduced FL) ready in {time.perf_counter() - t0:.0f} s")
        for key, net in nets.items():
            suite = cnnf_paper_suite(EPS, n_iterations=0, prediction="first", transfer=False, bpda=False,
                                     **(paper | dict(n_examples=args.fl_n_eval)))
            fl_models[FL_NAMES[key]] = run(f"{FL_NAMES[key]} (MNIST)", net.eval(), with_autoattack(suite, ("e2e",)), data=mnist.test)

    every = [*reports.values(), *fl_reports.values(), *fl_models.values()]
    attack_minutes = sum(a.seconds for r in every for a in r.attacks) / 60  # saved with the state: survives resuming
    md = [
        "# Robustness evaluation at small scale: measured (`benchmarks/robustness_tables.py`)\n",
        f"{host_line(host)}. fp32 on the CPU. The reading of these numbers is in [README.md](README.md).\n",
        f"Fashion-MNIST standard training (B.1) on {len(splits.train)} images for {args.epochs} epochs; "
        f"the first {args.n_eval} test images; attack seeds {args.seeds}; Linf eps {EPS} in [0, 1] pixel units "
        f"(0.2 in the models' [-1, 1] input units); PGD-{args.pgd_steps} with random start. "
        f"The attacks of the tables took {attack_minutes:.0f} min on this 2-core machine (the checks' probes "
        f"come on top); this run took {(time.perf_counter() - t_start) / 60:.0f} min, resuming from "
        f"{args.out}/state/ what an earlier run had finished.\n",
        "## CNN-F paper format (Tables 2-5)\n",
        cnnf_table([(name, [r]) for name, r in reports.items()]),
        *([] if args.no_autoattack else [
            f"\n## AutoAttack's attacks (APGD-CE and APGD-T {args.apgd_steps} iterations, APGD-T 9 targets, "
            f"Square {args.square_queries} queries), each on every image; Min over every attack of the suite\n",
            autoattack_table([(name, [r]) for name, r in reports.items()])]),
        *([] if not fl_models else [
            "\n## The feedback-learning models (MNIST, `cnn_mnist_small` as `benchmarks/fl_small.py` trains them), "
            "CNN-F paper format\n",
            cnnf_table([(name, [r]) for name, r in fl_models.items()])]),
        *([] if not fl_models or args.no_autoattack else [
            "\n## The feedback-learning models: AutoAttack's attacks\n",
            autoattack_table([(name, [r]) for name, r in fl_models.items()])]),
        "\n## Feedback-learning paper format (Table III), on the two models\n",
        fl_table([(name, [r]) for name, r in fl_reports.items()]),
        "\n## Accuracy vs eps (end-to-end PGD)\n",
        "![accuracy vs eps](accuracy_vs_eps.png)\n",
    ]
    for name, r in {**{f"{k} · paper suite": v for k, v in reports.items()},
                    **{f"{k} · FL suite": v for k, v in fl_reports.items()},
                    **{f"{k} (MNIST) · paper suite": v for k, v in fl_models.items()}}.items():
        md += [f"\n## Integrity checks: {name}\n", checks_table(r)]
    (out / "results.md").write_text("\n".join(md) + "\n")
    accuracy_vs_eps([("CNN", reports["CNN"]), ("CNN-F (avg)", reports["CNN-F (avg)"])], out / "accuracy_vs_eps.png",
                    title="Fashion-MNIST, standard training: end-to-end PGD")
    (out / "reports.json").write_text(json.dumps({"host": host} | {k: r.as_dict() for k, r in {**reports, **{f"FL {k}": v for k, v in fl_reports.items()},
                                                                                    **{f"{k} (MNIST)": v for k, v in fl_models.items()}}.items()},
                                                 indent=1))
    print("\n".join(md[3:5]))
    print(f"wrote {out}/results.md, accuracy_vs_eps.png, reports.json in {(time.perf_counter() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
