"""The files of a feedback-learning comparison's report: evaluation.md (the
accuracies of the original, the control, reduced FL and the FL variant; the
margin statistics; the integrity checks) and its figures (margin heat map,
class robustness, class centres, FGSM and noise curves). A sweep trial writes
them into its checkpoint's report folder (logged as the trial run's artifacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from torch import Tensor

from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import checks_table
from fl.metrics import ReducedBaseline
from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.stats import MarginStats
from fl.tables import adjacent_share_table, centre_table, fl_table, robustness_table

REDUCED_NAME = "reduced FL, same budget"  # the reduced-FL baseline in a report


def write_fl_report(folder: Path, base: Mapping[str, EvalReport], control: Mapping[str, EvalReport],
                    trial: Mapping[str, EvalReport], stats: Sequence[tuple[str, MarginStats]],
                    centre: Sequence[tuple[str, list[float]]], centre_x: Tensor, variant_name: str,
                    reduced: Optional[ReducedBaseline] = None) -> None:
    """The report of FL variant `variant_name` against the original (`base`), the
    control (the original retrained on its own images) and, if given, reduced FL
    at the same budget: reports by split, margin statistics by model name, the
    class-centre images and their mean margin by model name."""

    def columns(split: str) -> list[tuple[str, list[EvalReport]]]:
        out = [("original", [base[split]]), ("original + retraining", [control[split]])]
        if reduced is not None:
            out.append((REDUCED_NAME, [reduced.reports[split]]))
        return out + [(variant_name, [trial[split]])]

    models, val_models = columns("test"), columns("val")
    text = [f"# Feedback learning: {variant_name}\n",
            "*original + retraining* is the control: the same retraining on the original images only.\n",
            *([f"*{REDUCED_NAME}* is reduced FL (equal quotas) choosing as many samples as this trial's FL.\n"]
              if reduced is not None else []),
            "## Accuracy under the FL attack suite, test split (reporting only)\n", fl_table(models),
            "\n## Validation split (what a sweep optimises)\n", fl_table(val_models),
            "\n## Margin statistics\n", robustness_table(stats), "\n### Adjacent-class shares (%)\n",
            adjacent_share_table(stats), "\n### Class-centre images: mean margin\n",
            centre_table([n for n, _ in centre], [m for _, m in centre]),
            "\n## Integrity checks (validation split)\n", checks_table(trial["val"])]
    (folder / "evaluation.md").write_text("\n".join(text) + "\n")
    margin_heatmap(stats, folder / "margin_heatmap.png", title="mean margin (origin x adjacent class)")
    class_robustness(stats, folder / "class_robustness.png", title="class robustness R_i")
    class_centres(centre_x, centre, folder / "class_centres.png")
    for name, labels, title in (("fgsm_curve.png", ("fgsm",), "test accuracy vs FGSM strength"),
                                ("noise_curve.png", ("uniform_noise", "gaussian_noise"),
                                 "test accuracy vs noise strength (one draw per image)")):
        if any(c.label in labels for c in trial["test"].curves):
            accuracy_vs_eps([("original", base["test"]), (variant_name, trial["test"])], folder / name,
                            labels=labels, title=title)
