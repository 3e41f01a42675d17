"""The files of a CNN-F evaluation's report: evaluation.md (the accuracies as
a table, the integrity checks) and, when the suite ran an eps grid,
accuracy_vs_eps.png. A sweep trial writes them into its checkpoint's report
folder (logged as the trial run's artifacts)."""

from __future__ import annotations

from pathlib import Path

from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import autoattack_table, checks_table, cnnf_table, has_autoattack


def write_eval_report(folder: Path, val: EvalReport, test: EvalReport, name: str) -> None:
    """evaluation.md (validation split with its integrity checks, then the
    test split) and, when the reports have curves, accuracy_vs_eps.png, in `folder`."""
    def tables(report: EvalReport) -> list[str]:
        out = [cnnf_table([(name, [report])])]
        if has_autoattack(report):  # APGD-CE in the default suite, or the autoattack suite
            out += ["\nAPGD and Square (Croce & Hein 2020, Andriushchenko et al. 2020):\n", autoattack_table([(name, [report])])]
        return out

    text = [f"# Robustness evaluation of {name}\n", "## Validation split\n", *tables(val),
            "\n### Integrity checks\n", checks_table(val), "\n## Test split (reporting only)\n", *tables(test)]
    (folder / "evaluation.md").write_text("\n".join(text) + "\n")
    if val.curves:
        accuracy_vs_eps([(f"{name} val", val), (f"{name} test", test)], folder / "accuracy_vs_eps.png",
                        title=f"{name}: accuracy vs Linf budget")
